"""ATP's search and DSnoT through the real command line on a tiny saved model."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

from baselines.allocations.atp import atp_sparsities

ROOT = Path(__file__).resolve().parent.parent


def run(workspace, *overrides):
    done = subprocess.run([sys.executable, "-m", "experiments.run", *tiny_overrides(workspace, "search_runs"),
                           *overrides], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip().splitlines()[-1].removeprefix("record: "))
    return {**json.loads(path.read_text()), "path": path}


def test_atp_search_scores_each_step_on_held_out_documents_and_leaves_the_model_dense(workspace):
    searched = run(workspace, "criterion=wanda", "allocation=atp", "allocation.step=0.1", "allocation.windows=2")
    allocation = searched["allocation"]
    tried = allocation["search"]["tried"]
    assert [t["beta"] for t in tried] == [0.1, 0.2, 0.3, 0.4, 0.5]  # up to min(2·0.5, 2·0.5) / 2 blocks' gaps
    best = min(tried, key=lambda t: t["ppl"])
    assert allocation["beta"] == best["beta"] and allocation["targets"] == atp_sparsities(3, 0.5, best["beta"])
    selection = allocation["search"]["selection"]
    assert selection["text"] == "calibration documents not drawn" and selection["windows"] == 2
    assert selection["name"] == "file:docs.txt" and allocation["search"]["trials"] == 5
    # Every trial put the dense weights back: the same step given outright prunes to the very same numbers.
    fixed = run(workspace, "criterion=wanda", "allocation=atp", f"allocation.beta={best['beta']}")
    assert fixed["metrics"]["ppl"] == searched["metrics"]["ppl"]
    assert fixed["sparsity"]["per_matrix"] == searched["sparsity"]["per_matrix"]


def test_atp_search_shows_each_trial_and_the_best_so_far(workspace):
    """A trial is a whole prune (minutes on a CPU): the search is a progress bar of its trials."""
    done = subprocess.run([sys.executable, "-m", "experiments.run", *tiny_overrides(workspace, "search_runs"),
                           "criterion=wanda", "allocation=atp", "allocation.step=0.1", "allocation.windows=2",
                           "progress=true", "force=true"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    record = json.loads(Path(done.stdout.strip().splitlines()[-1].removeprefix("record: ")).read_text())
    best = min(record["allocation"]["search"]["tried"], key=lambda t: t["ppl"])
    assert "atp: beta trials: 100%" in done.stderr and "5/5" in done.stderr
    assert f"best={best['beta']:g} ({best['ppl']:.2f})" in done.stderr, done.stderr[-500:]


def test_dsnot_on_wanda_keeps_each_matrix_sparsity_and_changes_the_model(workspace):
    wanda = run(workspace, "criterion=wanda", "sparsity=0.6")
    dsnot = run(workspace, "criterion=wanda", "sparsity=0.6", "refine=dsnot", "refine.skip=none",
                "refine.threshold=0")
    assert dsnot["config"]["refine"]["name"] == "dsnot" and dsnot["path"].name.startswith("tiny_wanda-dsnot_uniform")
    assert wanda["path"].name.startswith("tiny_wanda_uniform")
    assert dsnot["sparsity"]["per_matrix"] == wanda["sparsity"]["per_matrix"]
    assert dsnot["metrics"]["ppl"] != wanda["metrics"]["ppl"]


@pytest.mark.parametrize("overrides,message", [
    (["allocation=atp", "allocation.select_on=file"], "unknown select_on 'file'"),
    (["allocation=atp", "offload=cpu"], "a search prunes the model once per trial and restores it: it needs offload=none"),
    (["refine=dsnot", "refine.cycles=0"], "dsnot cycles must be an integer >= 1"),
    (["refine=nosuch"], "refine"),
])
def test_bad_settings_are_one_line(workspace, overrides, message):
    done = subprocess.run([sys.executable, "-m", "experiments.run", *tiny_overrides(workspace, "search_runs"),
                           *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr


def test_runs_without_a_refinement_keep_the_keys_they_had():
    from experiments import records
    from experiments.config import compose_config

    assert "refine" in compose_config(["criterion=wanda"])  # the default, refine=none, is in the config
    assert "refine" not in records.base_payload(compose_config(["criterion=wanda"]))
    assert records.base_payload(compose_config(["criterion=wanda", "refine=dsnot"]))["refine"]["name"] == "dsnot"


def test_selection_text_is_never_the_evaluations():
    from dlp.errors import UserError
    from experiments.config import compose_config
    from experiments.selection import check_selection

    cfg = compose_config(["allocation=atp", "eval=wiki-exllamav2"])
    with pytest.raises(UserError, match="select_on=wiki-exllamav2 is the evaluation's own text"):
        check_selection(cfg, "wiki-exllamav2", "none")
    check_selection(cfg, "c4-validation", "none")
    with pytest.raises(UserError, match="select_on=heldout takes calibration documents"):
        check_selection(compose_config(["allocation=atp", "data=wikitext2-train"]), "heldout", "none")


def test_a_table_row_can_name_a_criterion_and_its_refinement():
    from dlp.errors import UserError
    from experiments import grids, tables
    from experiments.methods import method_label

    g = tables.grid("table1", criteria=["wanda", "wanda+dsnot"], allocations=["uniform"])
    cells = grids.cells("table1", {"model": ["m"], "criterion": g.criteria, "allocation": g.allocations},
                        ["preset=cpu"], [])
    assert cells[("m", "wanda+dsnot", "uniform")] == [["+experiment=table1", "preset=cpu", "model=m",
                                                       "criterion=wanda", "refine=dsnot", "allocation=uniform"]]
    assert cells[("m", "wanda", "uniform")][0][3:] == ["criterion=wanda", "allocation=uniform"]
    assert [row for row, _ in tables.table_rows(g)][1:] == [("Wanda", "Uniform"), ("Wanda + DSnoT", "Uniform")]
    assert method_label("wanda+dsnot") == "Wanda + DSnoT"
    with pytest.raises(UserError, match="unknown refine 'nosuch'"):
        tables.grid("table1", criteria=["wanda+nosuch"])


def test_fidelity_dump_saves_what_the_criterion_saw_and_compare_counts_each_side(workspace, tmp_path):
    import torch

    dumped = subprocess.run([sys.executable, "-m", "experiments.fidelity", "dump", str(tmp_path / "d"),
                             *tiny_overrides(workspace, "fidelity_runs"), "criterion=ria", "sparsity=0.5"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert dumped.returncode == 0, dumped.stderr
    files = sorted((tmp_path / "d").glob("[0-9]*.pt"))
    assert len(files) == 3 * 7  # every Linear of the tiny model's 3 blocks
    first = torch.load(files[0])
    assert first["name"] == "self_attn.q_proj" and first["mask"].sum() == first["weight"].numel() // 2
    (tmp_path / "d" / "theirs").mkdir()
    for n, path in enumerate(files):  # "their" masks: ours, with one more weight pruned in the first matrix
        mask = torch.load(path)["mask"].clone()
        if n == 0:
            mask[~mask] = torch.tensor([True] + [False] * (int((~mask).sum()) - 1))
        torch.save({"mask": mask}, tmp_path / "d" / "theirs" / path.name)
    done = subprocess.run([sys.executable, "-m", "experiments.fidelity", "compare", str(tmp_path / "d"),
                           "--source", "test", "--results", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "fidelity-ria.md").read_text()
    total = sum(torch.load(p)["weight"].numel() for p in files)
    assert f"masks agree on {total - 1} of {total} weights" in text
    assert "matrices with any difference: 1; weights pruned by the authors' code only: 1, by this suite's only: 0" in text
