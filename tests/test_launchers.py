"""Tables through Hydra's launchers: the missing cells as one multirun (joblib processes, submitit jobs run by
its local executor with the SLURM config), the same table as the in-process run, bit for bit."""
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from experiments import tables

CRITERIA, ALLOCATIONS = ["wanda", "magnitude"], ["uniform", "dlp"]
# The SLURM config through submitit's local executor (conf/hydra/launcher/slurm_local.yaml), its options set on
# the command line as on a cluster: submitit checks every one, and applies those a local job has.
LOCAL_SLURM = ["hydra.launcher.timeout_min=10", "hydra.launcher.mem_gb=4", "hydra.launcher.cpus_per_task=1",
               "hydra.launcher.partition=debug"]


def table(workspace, out, results, launcher=None, launcher_options=()):
    md, cells = tables.table1(["smollm2-135m"], "cpu", 0.7, [*tiny_overrides(workspace, results), *launcher_options],
                              out, criteria=CRITERIA, allocations=ALLOCATIONS, launcher=launcher)
    return md, cells


def without_timing(md: str) -> str:
    return "\n".join(line for line in md.splitlines() if not line.startswith("Table rendered in"))


@pytest.fixture(scope="module")
def sequential(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential")
    md, cells = table(workspace, out, "launch_seq_runs")
    return out, md, cells


@pytest.mark.slow
@pytest.mark.parametrize("launcher,options", [("joblib", ["hydra.launcher.n_jobs=2"]), ("slurm_local", LOCAL_SLURM)],
                         ids=["joblib", "slurm-config-local-executor"])
def test_table_through_a_launcher_is_the_sequential_table(workspace, sequential, tmp_path, capfd, launcher,
                                                          options):
    seq_out, seq_md, seq_cells = sequential
    results = f"launch_{launcher}_runs"
    md, cells = table(workspace, tmp_path, results, launcher, options)
    printed = capfd.readouterr()
    assert f"5 cells without a finished record: running them through hydra/launcher={launcher}" in printed.out
    assert (tmp_path / "table1.csv").read_bytes() == (seq_out / "table1.csv").read_bytes()
    assert without_timing(md) == without_timing(seq_md)
    for key, records in cells.items():  # every cell computed by a job, with the numbers of the in-process run
        (record,) = records
        (seq_record,) = seq_cells[key]
        assert record["status"] == "ok" and Path(record["config"]["results_dir"]).name == results
        assert record["metrics"]["ppl"] == seq_record["metrics"]["ppl"]
        assert record["sparsity"]["per_matrix"] == seq_record["sparsity"]["per_matrix"]
        # local jobs compute with this process's thread count, not the launcher's share of the cores
        assert record["environment"]["torch_threads"] == torch.get_num_threads()
    again, _ = table(workspace, tmp_path, results, launcher, options)
    assert "without a finished record" not in capfd.readouterr().out  # a warm rerun launches nothing
    assert without_timing(again) == without_timing(md)


@pytest.mark.slow
def test_failed_job_is_a_failed_cell_and_the_others_finish(workspace, tmp_path, capfd):
    """A cell whose job fails (weights that do not load, found only when the job runs) is a failed cell whose
    line carries the job's error; the table files are left as they were."""
    from experiments.publish import CellsFailed

    md, cells = tables.table1(["smollm2-135m"], "cpu", 0.7,
                              [*tiny_overrides(workspace, "launch_fail_runs"), "hydra.launcher.n_jobs=2"], tmp_path,
                              criteria=["magnitude"], allocations=["uniform"], launcher="joblib")
    assert all(r[0]["status"] == "ok" for r in cells.values())
    table = (tmp_path / "table1.md").read_bytes()
    shutil.rmtree(workspace / "launch_fail_runs")
    broken = tmp_path / "broken-model"
    shutil.copytree(workspace / "model", broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    capfd.readouterr()
    with pytest.raises(CellsFailed, match="2 cells failed: .*table1.{md,csv,tex} left as they were"):
        tables.table1(["smollm2-135m"], "cpu", 0.7,
                      [*tiny_overrides(workspace, "launch_fail_runs"), "hydra.launcher.n_jobs=2", f"model.path={broken}"],
                      tmp_path, criteria=["magnitude"], allocations=["uniform"], launcher="joblib")
    said = [line for line in capfd.readouterr().err.splitlines() if line.startswith("failed: ")]
    assert len(said) == 2 and all(f"could not load model '{broken}'" in line for line in said), said
    assert (tmp_path / "table1.md").read_bytes() == table
    assert (tmp_path / "table1.partial.md").read_text().count("| failed |") == 2
    assert not list((workspace / "launch_fail_runs").glob("*.json"))  # bad input found in the jobs: no record
