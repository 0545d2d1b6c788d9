"""The command line: a real run on a tiny saved model, record reuse, and a failed run losing nothing (bad input
has its own table of cases in test_bad_input.py)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


def cli(workspace, *overrides, multirun=False):
    args = [sys.executable, "-m", "experiments.run", *(["-m"] if multirun else []), *tiny_overrides(workspace),
            *overrides]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_run_writes_a_complete_record_and_reuses_it(workspace):
    first = cli(workspace, "criterion=wanda", "sparsity=0.5")
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip().splitlines()[-1].removeprefix("record: "))
    record = json.loads(path.read_text())
    assert record["status"] == "ok"
    assert record["config"]["criterion"]["name"] == "wanda"
    assert abs(record["sparsity"]["actual"] - 0.5) < 0.005 and record["sparsity"]["target_met"]
    assert record["sparsity"]["per_block_target"] == [0.5, 0.5, 0.5]
    assert record["metrics"]["eval"]["windows"] == 3
    assert record["data"]["calibration"]["name"] == "file:docs.txt" and record["data"]["calibration"]["tokens"] == 256
    assert record["data"]["calibration"]["batch_size"] == 4  # as configured; "auto" records the batch it chose
    assert len(record["data"]["evaluation"]["sha256"]) == 64 and record["data"]["evaluation"]["tokens"] > 0
    for key in ("load", "prune", "evaluation"):
        assert record["timings_s"][key] >= 0
    for key in ("python", "torch", "transformers", "commit"):
        assert key in record["environment"]
    assert record["peak_rss_bytes"] > 0
    second = cli(workspace, "criterion=wanda", "sparsity=0.5")
    assert "reused" in second.stdout
    assert json.loads(path.read_text())["started_unix"] == record["started_unix"]


def test_dense_is_one_record_however_asked(workspace):
    a = cli(workspace, "criterion=none")
    b = cli(workspace, "sparsity=0", "criterion=sparsegpt")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout.splitlines()[-1] == b.stdout.splitlines()[-1]
    assert "reused" in b.stdout


def test_failed_run_keeps_earlier_records(workspace):
    ok = cli(workspace, "criterion=magnitude", "sparsity=0.3")
    assert ok.returncode == 0, ok.stderr
    before = {p: p.read_bytes() for p in (workspace / "runs").glob("*.json")
              if json.loads(p.read_text())["status"] == "ok"}
    assert before
    cli(workspace, "model.path=/nonexistent/model")
    for p, data in before.items():
        assert p.read_bytes() == data


@pytest.mark.slow
def test_sweep_runs_every_cell_and_survives_a_failed_one(workspace):
    out = cli(workspace, "allocation=uniform,dlp", "criterion=wanda,magnitude", "sparsity=0.4",
              "model.device=bogus_device_for_one_cell", multirun=True)
    assert out.returncode == 0  # the sweep finished although every cell failed
    assert out.stderr.count("error:") == 4
    good = cli(workspace, "allocation=uniform,dlp", "criterion=wanda,magnitude", "sparsity=0.4", multirun=True)
    assert good.returncode == 0, good.stderr
    assert good.stdout.count("record: ") == 4
    again = cli(workspace, "allocation=uniform,dlp", "criterion=wanda,magnitude", "sparsity=0.4", multirun=True)
    assert again.stdout.count("reused") == 4  # a finished cell is never recomputed


@pytest.mark.slow
def test_sweep_with_joblib_launcher(workspace):
    out = cli(workspace, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "criterion=wanda", "sparsity=0.2,0.3",
              multirun=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("record: ") == 2 or out.stdout.count("ppl ") == 2


@pytest.mark.slow
def test_sweep_with_local_submitit_launcher(workspace, tmp_path):
    out = cli(workspace, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "criterion=magnitude",
              "sparsity=0.2,0.25", f"hydra.sweep.dir={tmp_path}", multirun=True)
    assert out.returncode == 0, out.stderr
    records = [json.loads(p.read_text()) for p in (workspace / "runs").glob("tiny_magnitude_uniform_s0.2*.json")]
    assert {r["config"]["sparsity"] for r in records if r["status"] == "ok"} >= {0.2, 0.25}


def test_forced_rerun_that_fails_keeps_the_finished_record(workspace, tmp_path):
    import shutil

    from dlp.errors import UserError
    from experiments import pipeline
    from experiments.config import compose_config

    docs = tmp_path / "docs.txt"
    shutil.copy(workspace / "docs.txt", docs)
    overrides = [o for o in tiny_overrides(workspace) if not o.startswith(("data.path", "eval.path"))]
    cfg = compose_config(overrides + [f"data.path={docs}", f"eval.path={docs}", "criterion=wanda", "sparsity=0.35"])
    path, record, _ = pipeline.run(cfg)
    before = path.read_bytes()
    docs.unlink()  # the same config can no longer run
    with pytest.raises(UserError, match="not found"):
        pipeline.run({**cfg, "force": True})
    assert path.read_bytes() == before


def test_compute_dtype_is_its_own_run(workspace):
    """model.compute_dtype=bfloat16 runs the passes under autocast (dlp.walk.compute_dtype): a record of its own,
    float32 weights pruned to the target, perplexity near float32's but not equal to it."""
    from experiments import pipeline
    from experiments.config import compose_config

    base = tiny_overrides(workspace) + ["criterion=sparsegpt", "allocation=dlp", "sparsity=0.5"]
    path32, rec32, _ = pipeline.run(compose_config(base))
    path16, rec16, _ = pipeline.run(compose_config(base + ["model.compute_dtype=bfloat16"]))
    assert path16 != path32 and rec16["status"] == "ok"
    assert rec16["config"]["model"]["compute_dtype"] == "bfloat16"
    assert rec16["sparsity"]["target_met"]
    assert rec16["metrics"]["ppl"] != rec32["metrics"]["ppl"]
    assert abs(rec16["metrics"]["ppl"] / rec32["metrics"]["ppl"] - 1) < 0.05


def test_record_names_the_commit_the_run_started_on(workspace, tmp_path, monkeypatch):
    """A checkout that moves on while a cell runs must not relabel it: the commit is read before the run."""
    from experiments import pipeline, records
    from experiments.config import compose_config

    commit = {"commit": "started-on", "dirty": False}
    monkeypatch.setattr(records, "loaded_commit", lambda: dict(commit))
    run_for_real = pipeline.execute

    def execute_while_the_checkout_moves(cfg, hold=None, **options):
        out = run_for_real(cfg, hold, **options)
        commit["commit"] = "moved-to"
        return out

    monkeypatch.setattr(pipeline, "execute", execute_while_the_checkout_moves)
    cfg = compose_config([*tiny_overrides(workspace, "moving_runs"), "criterion=magnitude", "sparsity=0.5"])
    _, record, reused = pipeline.run(cfg)
    assert not reused and record["environment"]["commit"] == "started-on"


def test_a_process_names_the_commit_it_loaded_in_every_record(monkeypatch):
    """A sweep's later cells keep the commit the process read first, though the checkout moves on meanwhile."""
    from experiments import records

    checkout = {"commit": "loaded", "dirty": False}
    monkeypatch.setattr(records, "git_commit", lambda: dict(checkout))
    records.loaded_commit.cache_clear()
    try:
        first = records.environment()["commit"]
        checkout["commit"] = "moved-on"
        assert (first, records.environment()["commit"]) == ("loaded", "loaded")
        assert records.git_commit()["commit"] == "moved-on"
    finally:
        records.loaded_commit.cache_clear()
