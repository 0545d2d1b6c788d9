"""Tables over calibration seeds, the ablation and the curves, on the tiny model; and their W&B tables."""
import csv
import json
import math
import re
from pathlib import Path

import pytest
from conftest import tiny_overrides

from experiments import ablation, curves, grids, tables
from experiments.verdicts import summarize


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    return ["wandb.mode=offline", f"wandb.dir={tmp_path / 'wb'}"]


def logged_table(wb_dir: Path, name: str) -> dict:
    (path,) = wb_dir.glob(f"wandb/offline-run-*/files/media/table/{name}_*.table.json")
    return json.loads(path.read_text())


def overrides_without_wandb(workspace, results):
    return [o for o in tiny_overrides(workspace, results) if not o.startswith("wandb.")]


def test_table_over_three_seeds(workspace, tmp_path, offline_wandb):
    extra = overrides_without_wandb(workspace, "seeded_runs") + offline_wandb
    md, cells = tables.table1(["smollm2-135m"], "cpu", 0.7, extra, tmp_path, criteria=["wanda"],
                              allocations=["uniform", "dlp"], seeds=[0, 1, 2])
    dense = cells[(("Dense", "-"), "smollm2-135m")]
    assert len(dense) == 1  # the dense model has no calibration: one cell, one record, whatever the seeds
    uniform, dlp = (cells[(("Wanda", a), "smollm2-135m")] for a in ("Uniform", "DLP"))
    assert [r["config"]["seed"] for r in dlp] == [0, 1, 2] and len({r["key"] for r in dlp}) == 3
    ppl = [r["metrics"]["ppl"] for r in dlp]
    s = summarize(ppl)
    row = next(line for line in md.splitlines() if line.startswith("| Wanda | DLP |"))
    assert row == f"| Wanda | DLP | {s.mean:.2f} ± {s.std:.2f} |"
    assert "Mean ± standard deviation over 3 calibration seeds (0, 1, 2;" in md
    statement = next(line for line in md.splitlines() if line.startswith("- smollm2-135m, Wanda: DLP"))
    assert "over 3 seeds" in statement and ("within noise" in statement or "uniform (" in statement)
    with open(tmp_path / "table1-3seeds.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Method", "Layerwise", "smollm2-135m", "smollm2-135m std", "smollm2-135m n"]
    assert rows[2] == ["Wanda", "Uniform", *(lambda x: [f"{x.mean:.2f}", f"{x.std:.2f}", "3"])(
        summarize(r["metrics"]["ppl"] for r in uniform))]
    assert rows[1][4] == "1"  # dense: one record
    assert "$\\pm$" in (tmp_path / "table1-3seeds.tex").read_text()
    assert not (tmp_path / "table1.md").exists()  # the single-seed table is not overwritten
    logged = logged_table(tmp_path / "wb", "table1")
    assert logged["columns"] == ["Method", "Layerwise", "smollm2-135m mean", "smollm2-135m std",
                                 "smollm2-135m seeds", "smollm2-135m vs uniform", "smollm2-135m vs dlp"]
    by_row = {tuple(r[:2]): r[2:] for r in logged["data"]}
    assert by_row[("Wanda", "DLP")][:3] == [pytest.approx(s.mean), pytest.approx(s.std), 3]
    assert by_row[("Wanda", "DLP")][3] in ("beats", "loses to", "within noise")
    assert logged_table(tmp_path / "wb", "verdicts")["data"][0][0] == statement[2:]
    (table_run,) = {p.parents[3] for p in (tmp_path / "wb").glob("wandb/offline-run-*/files/media/table/table1_*")}
    (log,) = table_run.glob("run-*.wandb")  # the offline log `wandb sync` uploads: it holds the run's config
    data = log.read_bytes()
    assert b"seeds" in data and b"[0,1,2]" in data  # the grid's seeds, JSON in the run's config record


def test_one_seed_renders_as_before(workspace, tmp_path):
    """--seeds 0 is the config's own seed: the same records, the same table as no seeds at all."""
    extra = tiny_overrides(workspace, "seeded_runs")
    plain, _ = tables.table1(["smollm2-135m"], "cpu", 0.7, extra, tmp_path / "a", criteria=["wanda"],
                             allocations=["uniform", "dlp"])
    seeded, _ = tables.table1(["smollm2-135m"], "cpu", 0.7, extra, tmp_path / "b", criteria=["wanda"],
                              allocations=["uniform", "dlp"], seeds=[0])
    strip = lambda md: md.split("\nTable rendered in")[0]  # noqa: E731
    assert strip(plain) == strip(seeded) and "±" not in plain
    assert "1 seed: no verdict (needs 2 or more)" in plain
    assert (tmp_path / "a" / "table1.csv").read_text() == (tmp_path / "b" / "table1.csv").read_text()


def test_ablation_rows_sentences_and_shared_records(workspace, tmp_path, offline_wandb):
    extra = overrides_without_wandb(workspace, "seeded_runs") + offline_wandb
    controls_and_dlp = ["uniform", "linear", "shuffled", "reversed", "owl_matched", "dlp"]  # the searches: below
    md, cells = ablation.build("smollm2-135m", "cpu", [0, 1], extra, tmp_path, criteria=["wanda"],
                               sparsities=[0.5, 0.7], allocations=controls_and_dlp)
    assert "Every non-uniform row spans the same spread of block sparsities" in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0] == "| Allocation | 50% | 70% | What it shows |"
    assert [r.split(" | ")[0][2:] for r in rows[1:]] == ["Uniform", "Linear (α = 0.15)", "Shuffled DLP",
                                                          "Reversed DLP", "OWL (λ = 0.15)", "DLP (α = 0.15)"]
    assert all(r.endswith(". |") for r in rows[1:])  # every row says in a sentence what it shows
    said = {r.split(" | ")[0][2:]: r.split(" | ")[-1][:-2] for r in rows[1:]}  # row -> its sentence
    assert said["Uniform"] == "Every block at the target: the reference for the rows below."
    assert said["DLP (α = 0.15)"].startswith("DLP ") and ";" not in said["DLP (α = 0.15)"]
    # Each control is named by its class's description, then DLP is set against it with what the control isolates.
    controls = (("Linear (α = 0.15)", "A ramp over depth that reads no data", "a plain ramp over depth"),
                ("Shuffled DLP", "DLP's sparsities shuffled across blocks ", "in any order"),
                ("Reversed DLP", "DLP's sparsities in reverse block order ", "in reverse order"),
                ("OWL (λ = 0.15)", "OWL (λ = 0.15) ", "OWL's ranking at the same spread"))
    for row, subject, isolates in controls:
        assert said[row].startswith(subject) and "; DLP " in said[row] and isolates in said[row], said[row]
        assert "DLP's ranking of blocks" in said[row]
    assert " are within noise of uniform" in said["Shuffled DLP"] or " beat uniform" in said["Shuffled DLP"] or \
        " lose to uniform" in said["Shuffled DLP"]  # a plural subject takes plural verbs
    shuffled = cells[("wanda", "shuffled", 0.7)]
    assert [r["allocation"]["order"] for r in shuffled][0] != [r["allocation"]["order"] for r in shuffled][1]
    owl = cells[("wanda", "owl_matched", 0.7)][0]
    assert owl["config"]["allocation"] == {"name": "owl", "m": 5.0, "lam": 0.15}
    assert max(owl["sparsity"]["per_block_target"]) - min(owl["sparsity"]["per_block_target"]) == pytest.approx(0.3)
    # the ablation's uniform and DLP cells at 70% are Table 1's records (same key): nothing computed twice
    _, t1 = tables.table1(["smollm2-135m"], "cpu", 0.7, tiny_overrides(workspace, "seeded_runs"), tmp_path / "t1",
                          criteria=["wanda"], allocations=["uniform", "dlp"], seeds=[0, 1])
    assert [r["key"] for r in t1[(("Wanda", "DLP"), "smollm2-135m")]] == [r["key"] for r in cells[("wanda", "dlp", 0.7)]]
    with open(tmp_path / "ablation.csv", newline="") as f:
        table = list(csv.reader(f))
    assert len(table) == 1 + 6 * 2 and table[0][-3:] == ["vs_uniform", "ratio_to_uniform", "p"]
    for row in table[1:]:
        assert (row[-3] == "") == (row[1] == "uniform")  # every other row says how it compares with uniform
        if row[1] != "uniform":
            assert row[-3] in ("beats", "loses to", "within noise") and float(row[-1]) <= 1
    logged = logged_table(tmp_path / "wb", "ablation")
    assert len(logged["data"]) == 6 and logged["columns"][-1] == "What it shows"


def hand_cells(ppls: dict, sparsities, crit="wanda") -> dict:
    """(criterion, allocation, sparsity) -> three seeds' records of perplexity ppls[allocation][sparsity][seed]."""
    return {(crit, alloc, s): [{"status": "ok", "key": f"{alloc}{s}{seed}", "config": {"seed": seed},
                                "metrics": {"ppl": v}} for seed, v in enumerate(by_s[s])]
            for alloc, by_s in ppls.items() for s in sparsities}


def test_ablation_sets_dlp_against_the_searched_allocations():
    """ATP and EvoPress choose their own spread: the ablation says so, and says of each what DLP beating or losing
    to it shows, with the verdicts computed from hand-made seeds (each row's ratio to the other is the same in every
    seed, so the paired test rejects whenever the ratio is not 1)."""
    s6, s7 = 0.6, 0.7
    base = {s6: [100.0, 110.0, 90.0], s7: [300.0, 330.0, 270.0]}
    scaled = lambda f6, f7: {s6: [v * f6 for v in base[s6]], s7: [v * f7 for v in base[s7]]}  # noqa: E731
    ppls = {"uniform": base, "dlp": scaled(0.8, 0.5), "atp": scaled(0.9, 0.6), "evopress": scaled(0.7, 0.4)}
    allocations = list(ppls)
    cells = hand_cells(ppls, [s6, s7])
    said = {a: ablation.sentence(cells, "wanda", a, [s6, s7], allocations) for a in allocations}
    assert said["dlp"] == "DLP beats uniform at 60% and 70%."
    assert said["atp"] == ("ATP's searched ramp over depth beats uniform at 60% and 70%; DLP beats ATP at 60% and "
                           "70%: DLP's ranking of blocks matters beyond a ramp over depth whose slope is searched.")
    assert said["evopress"] == (
        "EvoPress's searched per-block levels beat uniform at 60% and 70%; DLP loses to EvoPress at 60% and 70%: "
        "a search over per-block levels against the dense model's outputs does better than DLP's ranking of blocks.")
    # Mixed: EvoPress better at 70% only, ATP worse at 60% only.
    ppls.update(evopress=scaled(0.8, 0.4), atp=scaled(0.9, 0.5))
    cells = hand_cells(ppls, [s6, s7])
    assert ablation.sentence(cells, "wanda", "evopress", [s6, s7], allocations).endswith(
        "DLP is within noise of EvoPress at 60%, loses to EvoPress at 70%: nothing here shows DLP's ranking of blocks "
        "doing better than a search over per-block levels against the dense model's outputs, and a search over "
        "per-block levels against the dense model's outputs does better at 70%.")
    assert ablation.sentence(cells, "wanda", "atp", [s6, s7], allocations).endswith(
        "DLP beats ATP at 60%, is within noise of ATP at 70%: DLP's ranking of blocks matters beyond a ramp over "
        "depth whose slope is searched at 60% only.")
    assert ablation.spreads(allocations).startswith("ATP and EvoPress search for their own spread")
    assert "Every other non-uniform row spans the same spread" in ablation.spreads(allocations)
    # The config's grid holds them at 60% and 70%
    assert {"atp", "evopress"} <= set(grids.sweep_lists("ablation")["allocation"])
    assert grids.sweep_lists("ablation")["sparsity"] == ["0.6", "0.7"]


def test_curves_draw_the_searched_allocations_at_a_few_sparsities(workspace, tmp_path, monkeypatch):
    """The config's partial rows run beside its grid at their sparsities only: the csv has no row where a partial
    row was not drawn, the markdown says 'not drawn' there (not 'failed'), the figure has their points only.
    A cheap allocation stands in for the searched ones here."""
    assert curves.partial_rows(None, None) == (["atp", "evopress"], [0.6, 0.7])
    assert curves.partial_rows(["uniform"], None) == ([], []) and curves.partial_rows(None, [0.5]) == ([], [])
    monkeypatch.setattr(curves, "partial_rows", lambda allocations, sparsities: (["linear"], [0.5]))
    extra = tiny_overrides(workspace, "seeded_runs")
    _, cells = curves.build("smollm2-135m", "cpu", [0, 1], extra, tmp_path, criteria=["wanda"],
                            allocations=["uniform"], sparsities=[0.3, 0.5])
    assert ("wanda", "linear", 0.5) in cells and ("wanda", "linear", 0.3) not in cells
    with open(tmp_path / "curves-smollm2-135m.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert [r[:3] for r in rows[1:]] == [["none", "-", "0"], ["wanda", "uniform", "0.3"], ["wanda", "uniform", "0.5"],
                                         ["wanda", "linear", "0.5"]]
    md = (tmp_path / "curves-smollm2-135m.md").read_text()
    linear = next(line for line in md.splitlines() if line.startswith("| Linear |"))
    assert linear.startswith("| Linear | not drawn | ") and "failed" not in md
    again = curves.from_csv("smollm2-135m", "cpu", tmp_path).read_text()
    assert again.split("Measured on:")[0] == md.split("Measured on:")[0]


def test_curves_png_csv_and_wandb_figure(workspace, tmp_path, offline_wandb):
    extra = overrides_without_wandb(workspace, "seeded_runs") + offline_wandb
    png, cells = curves.build("smollm2-135m", "cpu", [0, 1], extra, tmp_path, allocations=["uniform", "linear"],
                              sparsities=[0.3, 0.5])
    assert png.exists() and png.stat().st_size > 10_000
    with open(tmp_path / "curves-smollm2-135m.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["criterion", "allocation", "sparsity", "ppl_mean", "ppl_std", "n", "seeds", "vs_uniform",
                       "ratio_to_uniform", "p", "commits"]
    assert len(rows) == 1 + 1 + 2 * 2 * 2 and rows[1][:2] == ["none", "-"]
    linear = next(r for r in rows if r[:3] == ["sparsegpt", "linear", "0.5"])
    x = summarize(r["metrics"]["ppl"] for r in cells[("sparsegpt", "linear", 0.5)])
    assert float(linear[3]) == pytest.approx(x.mean, rel=1e-5) and linear[5:7] == ["2", "0 1"]
    # The verdict against uniform, recomputed by hand from the two seeds' records: t-test on log-ratios.
    d = [math.log(a["metrics"]["ppl"] / b["metrics"]["ppl"])
         for a, b in zip(cells[("sparsegpt", "linear", 0.5)], cells[("sparsegpt", "uniform", 0.5)])]
    t = (sum(d) / 2) / (abs(d[0] - d[1]) / math.sqrt(2) / math.sqrt(2))  # mean / (sample std / sqrt(n)), n = 2
    p = 2 * (0.5 - math.atan(abs(t)) / math.pi)  # Student's t with 1 degree of freedom is the Cauchy law
    assert float(linear[8]) == pytest.approx(math.exp(sum(d) / 2), rel=1e-5)
    assert float(linear[9]) == pytest.approx(p, rel=1e-3)
    assert linear[7] == ("within noise" if p >= 0.05 else "beats" if sum(d) < 0 else "loses to")
    assert all(r[7:10] == ["", "", ""] for r in rows if r[1] in ("-", "uniform"))
    from experiments.records import commit_label
    assert linear[10] == commit_label(cells[("sparsegpt", "linear", 0.5)][0]["environment"])  # one commit ran them
    assert list((tmp_path / "wb").glob("wandb/offline-run-*/files/media/images/curves_*.png"))
    # The markdown says the same in words, and re-rendered from the csv alone it is the same but for provenance.
    md = (tmp_path / "curves-smollm2-135m.md").read_text()
    word = {"within noise": "is within noise of", "beats": "beats", "loses to": "loses to"}[linear[7]]
    assert f"{float(linear[3]):.2f} ± {float(linear[4]):.2f} ({linear[7]})" in md
    section = md.split("## SparseGPT")[1]
    sentence = next(line for line in section.splitlines() if line.startswith("- Linear ")).removeprefix("- Linear ")
    clauses = {c.split(" uniform at ")[0]: c.split(" uniform at ")[1].split(", ") for c in sentence[:-1].split("; ")}
    assert "50%" in clauses[word]
    again = curves.from_csv("smollm2-135m", "cpu", tmp_path).read_text()
    assert again.split("Measured on:")[0] == md.split("Measured on:")[0]


def test_curves_markers_and_title_of_one_panel(tmp_path, monkeypatch):
    """Hand-made records: DLP 10% lower than uniform in every seed is filled (beats), a point that goes both ways
    is hollow (within noise), uniform has no verdict; a one-panel figure's title stays inside the figure."""
    def cell(alloc, s, ppls):
        return [{"status": "ok", "key": f"{alloc}{s}{seed}", "config": {"seed": seed}, "metrics": {"ppl": v}}
                for seed, v in enumerate(ppls)]
    cells = {("none", "-", 0.0): cell("none", 0, [20.0]),
             ("wanda", "uniform", 0.5): cell("uniform", 0.5, [100.0, 110.0, 90.0]),
             ("wanda", "dlp", 0.5): cell("dlp", 0.5, [90.0, 99.0, 81.0]),
             ("wanda", "uniform", 0.6): cell("uniform", 0.6, [200.0, 220.0, 180.0]),
             ("wanda", "dlp", 0.6): cell("dlp", 0.6, [180.0, 240.0, 181.0])}
    verdicts = curves.against_uniform(cells, ["wanda"], ["uniform", "dlp"], [0.5, 0.6])
    assert verdicts[("wanda", "uniform", 0.5)] is None and verdicts[("wanda", "uniform", 0.6)] is None
    assert verdicts[("wanda", "dlp", 0.5)].word == "beats"
    assert verdicts[("wanda", "dlp", 0.5)].difference == pytest.approx(math.log(0.9))
    assert verdicts[("wanda", "dlp", 0.6)].word == "within noise"
    drawn = {}
    monkeypatch.setattr(curves, "figure_bytes", lambda fig: drawn.setdefault("fig", fig) and b"")
    title = "smollm2-135m, cpu preset, ppl on wikitext2-test-nonempty; mean ± std over seeds 0, 1, 2"
    curves.draw(cells, verdicts, "m", ["wanda"], ["uniform", "dlp"], [0.5, 0.6], title)
    fig = drawn["fig"]
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width
    ax = fig.axes[0]
    filled = [tuple(line.get_xydata()[:, 0]) for line in ax.lines if line.get_linestyle() == "None"
              and line.get_markerfacecolor() != "white" and line.get_zorder() == 3]
    assert (50.0,) in filled and not any(60.0 in xs for xs in filled)


def test_ablation_grid_sweeps_seeds_with_hydra(workspace, tmp_path, monkeypatch):
    """`python -m experiments.run -m +experiment=ablation` sweeps the experiment's seeds; a shuffled run's order
    follows its run's seed. The command line narrows the other sweep keys to one cell each."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from experiments import run

    results = tmp_path / "runs"
    overrides = [o if not o.startswith("results_dir=") else f"results_dir={results}" for o in tiny_overrides(workspace)]
    monkeypatch.setattr(sys, "argv", ["run", "-m", "+experiment=ablation", "criterion=wanda", "allocation=shuffled",
                                      "sparsity=0.5", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides])
    try:
        run.cli()
    finally:
        GlobalHydra.instance().clear()
    records = sorted((json.loads(p.read_text()) for p in results.glob("*.json")), key=lambda r: r["config"]["seed"])
    assert [r["config"]["seed"] for r in records] == [0, 1, 2]
    assert [r["config"]["allocation"]["seed"] for r in records] == [0, 1, 2]
    from baselines.allocations.shuffled import shuffled_order
    assert all(r["allocation"]["order"] == shuffled_order(3, r["config"]["seed"]) for r in records)


def fake_cells(g, model, ppl_of):
    """Three seeds' records per row, perplexity ppl_of(criterion, allocation) · (1 + seed/100)."""
    cells = {}
    for row, method in tables.table_rows(g):
        if method:
            value = [ppl_of(*method) * (1 + seed / 100) + seed * len(method[1]) / 7 for seed in range(3)]
            cells[(row, model)] = [{"status": "ok", "key": f"{method}{seed}", "config": {"seed": seed},
                                    "metrics": {"ppl": value[seed]}} for seed in range(3)]
    return cells


def test_table1_adds_the_newer_rows_and_compares_them_with_uniform_and_with_dlp():
    g = tables.grid("table1")
    assert g.extra == (("wanda", "atp"), ("wanda", "evopress"), ("sparsegpt", "atp"), ("sparsegpt", "evopress"),
                       ("ria", "uniform"), ("ria", "dlp"), ("wanda+dsnot", "uniform"), ("wanda+dsnot", "dlp"))
    rows = [row for row, _ in tables.table_rows(g)]
    assert rows[10:] == [("Wanda", "ATP"), ("Wanda", "EvoPress"), ("SparseGPT", "ATP"), ("SparseGPT", "EvoPress"),
                         ("RIA", "Uniform"), ("RIA", "DLP"), ("Wanda + DSnoT", "Uniform"), ("Wanda + DSnoT", "DLP")]
    ppl = {"uniform": 100.0, "owl": 90.0, "dlp": 80.0, "atp": 79.0, "evopress": 60.0}
    cells = fake_cells(g, "m", lambda crit, alloc: ppl[alloc])
    against_dlp = tables.notes("table1", g, cells, ["m"], "dlp")
    # OWL, ATP and EvoPress against DLP under their criterion; never uniform or DLP itself, nor RIA/DSnoT's DLP row.
    head = lambda note: re.split(r" \(\d", note)[0]  # noqa: E731
    assert [head(n) for n in against_dlp] == [
        "m, Magnitude: OWL does NOT beat (loses to) DLP", "m, SparseGPT: OWL does NOT beat (loses to) DLP",
        "m, Wanda: OWL does NOT beat (loses to) DLP", "m, Wanda: ATP beats DLP", "m, Wanda: EvoPress beats DLP",
        "m, SparseGPT: ATP beats DLP", "m, SparseGPT: EvoPress beats DLP"]
    against_uniform = tables.notes("table1", g, cells, ["m"])
    assert "m, RIA: DLP beats uniform" in [head(n) for n in against_uniform]
    assert "m, Wanda + DSnoT: DLP beats uniform" in [head(n) for n in against_uniform]
    assert len(against_uniform) == 3 * 2 + 4 + 2  # OWL and DLP per paper criterion, the four searches, RIA and DSnoT
    # --criteria/--allocations name the whole table: no extra rows
    assert tables.grid("table1", criteria=["wanda"], allocations=["uniform", "dlp"]).extra == ()


def test_table1_names_the_best_row_per_model_against_the_next_best():
    g = tables.grid("table1")
    ppl = {"uniform": 100.0, "owl": 90.0, "dlp": 80.0, "atp": 79.0, "evopress": 60.0}
    cells = fake_cells(g, "m", lambda crit, alloc: ppl[alloc] * (0.9 if crit == "sparsegpt" else 1.0))
    lines = tables.best_lines("table1", g, cells, ["m"])
    assert lines[:2] == ["", "Best per model:"] and len(lines) == 3
    # 54 (SparseGPT EvoPress) against 60 (Wanda EvoPress) at seed 0, by a consistent 10% over three seeds
    assert lines[2].startswith("- m: SparseGPT EvoPress beats the next best, Wanda EvoPress (55.68 ± 1.68 vs 61.74 ± 1.74;")
    assert "paired t-test p = " in lines[2] and "over 3 seeds" in lines[2]
    one_seed = {key: records[:1] for key, records in cells.items()}
    (line,) = tables.best_lines("table1", g, one_seed, ["m"])[2:]
    assert line == ("- m: SparseGPT EvoPress is lower than the next best, Wanda EvoPress (54.00 vs 60.00; better), "
                    "but 1 seed: no verdict (needs 2 or more).")
    assert tables.best_lines("table1", g, {key: [] for key in cells}, ["m"]) == []  # nothing finished


def test_finished_only_renders_the_records_there_are_and_runs_nothing(workspace, tmp_path, monkeypatch, capsys):
    """A peek at a grid still running elsewhere: finished cells as they are, a seed short said under the table,
    the others "not run"; the result goes under the .partial name and nothing is computed."""
    from experiments import pipeline

    extra = tiny_overrides(workspace, "peek_runs")  # records of its own: no other test's DLP cells
    _, ran = tables.table1(["smollm2-135m"], "cpu", 0.7, extra, tmp_path / "full", criteria=["wanda"],
                           allocations=["uniform"], seeds=[0, 1])
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: pytest.fail("--finished-only ran a cell"))
    out = tmp_path / "peek"
    md, cells = tables.table1(["smollm2-135m"], "cpu", 0.7, extra, out, criteria=["wanda"],
                              allocations=["uniform", "dlp"], seeds=[0, 1, 2], finished_only=True)
    uniform = ran[(("Wanda", "Uniform"), "smollm2-135m")]
    s = summarize(r["metrics"]["ppl"] for r in uniform)
    lines = md.splitlines()
    assert f"| Wanda | Uniform | {s.mean:.2f} ± {s.std:.2f} |" in lines  # seeds 0 and 1 of three
    assert "| Wanda | DLP | not run |" in lines and cells[(("Wanda", "DLP"), "smollm2-135m")] == []
    assert "; some cells have only 2 finished seeds." in md
    assert ("1 cell without a finished record yet read \"not run\": rendered from the finished records only "
            "(--finished-only); cells with only some seeds finished average those.") in lines
    assert sorted(p.name for p in out.iterdir()) == ["table1-3seeds.partial.csv", "table1-3seeds.partial.md",
                                                     "table1-3seeds.partial.tex"]
    assert "not run (finished records only)" in capsys.readouterr().out
    # every cell finished: the table under its own name, as running the grid wrote it
    tables.table1(["smollm2-135m"], "cpu", 0.7, extra, out, criteria=["wanda"], allocations=["uniform"], seeds=[0, 1],
                  finished_only=True)
    strip = lambda path: path.read_text().split("\nTable rendered in")[0]  # noqa: E731
    assert strip(out / "table1-2seeds.md") == strip(tmp_path / "full" / "table1-2seeds.md")


def test_finished_only_names_a_cell_that_failed_elsewhere(workspace, tmp_path, monkeypatch, capsys):
    """A cell whose record says it failed is a failure in the peek too, named with its reason, never a cell
    "not run" as if it were still to come."""
    from dlp.methods.dlp_allocation import DLP
    from experiments import pipeline
    from experiments.publish import CellsFailed

    extra = tiny_overrides(workspace, "peek_failed_runs")

    def broken(self, *args, **kwargs):
        raise RuntimeError("allocation broke")

    monkeypatch.setattr(DLP, "allocate", broken)
    with pytest.raises(CellsFailed):  # the run that fails writes the failed cell's record
        tables.table1(["smollm2-135m"], "cpu", 0.7, extra, tmp_path / "run", criteria=["wanda"],
                      allocations=["uniform", "dlp"], seeds=[0])
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: pytest.fail("--finished-only ran a cell"))
    capsys.readouterr()
    with pytest.raises(CellsFailed, match="1 cell failed"):
        tables.table1(["smollm2-135m"], "cpu", 0.7, extra, tmp_path / "peek", criteria=["wanda"],
                      allocations=["uniform", "dlp"], seeds=[0], finished_only=True)
    err = capsys.readouterr().err
    assert "RuntimeError: allocation broke" in err and "allocation=dlp" in err
    md = (tmp_path / "peek" / "table1.partial.md").read_text()
    assert "| Wanda | DLP | not run |" not in md and "without a finished record yet" not in md


def test_ablation_and_curves_finished_only_render_the_records_there_are(workspace, tmp_path, monkeypatch, capsys):
    """The peek works for the ablation and the curves as for the tables: finished cells as they are, a cell
    without a record "not run" (never "failed", never a verdict drawn from it), the result under the .partial
    names, nothing computed; once every cell is finished, the same files as running the grid wrote."""
    from experiments import pipeline

    extra = tiny_overrides(workspace, "peek_grid_runs")
    ran_md, ran = ablation.build("smollm2-135m", "cpu", [0, 1], extra, tmp_path / "full", criteria=["wanda"],
                                 allocations=["uniform", "dlp"], sparsities=[0.5])
    curves.build("smollm2-135m", "cpu", [0, 1], extra, tmp_path / "full", criteria=["wanda"],
                 allocations=["uniform", "dlp"], sparsities=[0.5])
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: pytest.fail("--finished-only ran a cell"))
    capsys.readouterr()
    peek = tmp_path / "peek"
    md, cells = ablation.build("smollm2-135m", "cpu", [0, 1, 2], extra, peek, criteria=["wanda"],
                               allocations=["uniform", "linear", "dlp"], sparsities=[0.5], finished_only=True)
    assert cells[("wanda", "linear", 0.5)] == [] and len(cells[("wanda", "dlp", 0.5)]) == 2
    rows = {r.split(" | ")[0][2:]: r.split(" | ")[1:] for r in md.splitlines() if r.startswith("| ")}
    s = summarize(r["metrics"]["ppl"] for r in ran[("wanda", "dlp", 0.5)])
    assert rows["DLP (α = 0.15)"][0] == f"{s.mean:.2f} ± {s.std:.2f}"  # seeds 0 and 1 of three
    assert rows["Linear (α = 0.15)"][0] == "not run"
    assert rows["Linear (α = 0.15)"][1] == (
        "A ramp over depth that reads no data cannot yet be compared with uniform at 50%; DLP cannot yet be compared "
        "with Linear (α = 0.15) at 50%: too few finished records yet to say whether DLP's ranking of blocks matters "
        "beyond a plain ramp over depth. |")
    assert ('1 cell without a finished record yet read "not run": rendered from the finished records only '
            "(--finished-only); cells with only some seeds finished average those.") in md.splitlines()
    with open(peek / "ablation.partial.csv", newline="") as f:
        linear = next(r for r in csv.reader(f) if r[1] == "linear")
    assert linear[3:7] == ["not run", "", "0", ""]
    _, cells = curves.build("smollm2-135m", "cpu", [0, 1], extra, peek, criteria=["wanda"],
                            allocations=["uniform", "linear", "dlp"], sparsities=[0.5], finished_only=True)
    assert cells[("wanda", "linear", 0.5)] == []
    curve_md = (peek / "curves-smollm2-135m.partial.md").read_text()
    assert "| Linear | not run |" in curve_md and "failed" not in curve_md and "1 cell without" in curve_md
    with open(peek / "curves-smollm2-135m.partial.csv", newline="") as f:
        assert [r[1] for r in csv.reader(f)][1:] == ["-", "uniform", "dlp"]  # no row for the cell not run
    assert sorted(p.name for p in peek.iterdir()) == [
        "ablation.partial.csv", "ablation.partial.md", "curves-smollm2-135m.partial.csv",
        "curves-smollm2-135m.partial.md", "curves-smollm2-135m.partial.png"]
    out = capsys.readouterr().out
    assert out.count("not run (finished records only)") == 2
    # every cell finished: the files under their own names, as running the grid wrote them
    ablation.build("smollm2-135m", "cpu", [0, 1], extra, peek, criteria=["wanda"], allocations=["uniform", "dlp"],
                   sparsities=[0.5], finished_only=True)
    curves.build("smollm2-135m", "cpu", [0, 1], extra, peek, criteria=["wanda"], allocations=["uniform", "dlp"],
                 sparsities=[0.5], finished_only=True)
    strip = lambda text: text.split("\nTable rendered in")[0]  # noqa: E731
    assert strip((peek / "ablation.md").read_text()) == strip(ran_md)
    for name in ("ablation.csv", "curves-smollm2-135m.csv", "curves-smollm2-135m.md"):
        assert (peek / name).read_text() == (tmp_path / "full" / name).read_text(), name


def test_rows_with_different_finished_seeds_are_compared_on_the_seeds_they_share():
    """A peek can hold rows with different seeds finished: the sentences compare them on the seeds both have
    (saying so), never one row's seed 0 against another's seed 1."""
    g = tables.grid("table1")
    ppl = {"uniform": 100.0, "owl": 90.0, "dlp": 80.0, "atp": 79.0, "evopress": 60.0}
    cells = fake_cells(g, "m", lambda crit, alloc: ppl[alloc])
    cells[(("Wanda", "Uniform"), "m")] = cells[(("Wanda", "Uniform"), "m")][:2]  # seeds 0, 1
    cells[(("Wanda", "DLP"), "m")] = cells[(("Wanda", "DLP"), "m")][1:2]  # seed 1
    cells[(("Wanda", "OWL"), "m")] = cells[(("Wanda", "OWL"), "m")][2:]  # seed 2: none in common with uniform
    wanda = [n for n in tables.notes("table1", g, cells, ["m"]) if n.startswith("m, Wanda: ")]
    # seed 1: uniform 100 · 1.01 + 7/7 = 102.00, DLP 80 · 1.01 + 3/7 = 81.23
    assert wanda[0] == ("m, Wanda: DLP is lower than uniform (81.23 vs 102.00, on the 1 seed both finished; better), "
                        "but 1 seed: no verdict (needs 2 or more).")
    assert not any(n.startswith("m, Wanda: OWL") for n in wanda)
    assert len(wanda) == 3  # DLP, ATP, EvoPress (all three seeds of the searches, two shared with uniform)
    assert "on the 2 seeds both finished" in wanda[1] and "over 2 seeds" in wanda[1]
    only = {key: [] for key in cells}
    only[(("Wanda", "EvoPress"), "m")] = cells[(("Wanda", "EvoPress"), "m")][:1]  # seed 0: 60.00
    only[(("Wanda", "ATP"), "m")] = cells[(("Wanda", "ATP"), "m")][1:2]  # seed 1: 79 · 1.01 + 3/7 = 80.22
    assert tables.best_lines("table1", g, only, ["m"])[2:] == [
        "- m: Wanda EvoPress has the best mean, Wanda ATP the next; they share no finished seed to compare on."]
