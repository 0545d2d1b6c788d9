"""Paper-style tables from run records: `python -m experiments.tables table1|table2 --models a,b --preset cpu`.

A table's grid is its experiment config, conf/experiment/<table>.yaml (the same grid `python -m experiments.run
-m +experiment=<table>` sweeps): its sparsity, its criteria x allocations, and its other settings. Table 1 of
the DLP paper: WikiText-2 perplexity at 70% unstructured sparsity, a Dense row, then Magnitude, SparseGPT and
Wanda each with Uniform, OWL and DLP, one column per model. Table 2: mean zero-shot accuracy over the seven
tasks (acc, as the Wanda paper), Dense, then SparseGPT and Wanda with Uniform, OWL and DLP, plus a per-task
table. `--criteria` / `--allocations` take any registered methods instead (dlp.registry); rows are labelled by
the registry. Missing cells are run first (finished ones are reused); a failed cell prints `failed` and the
table is still written. Beside the table we write what it was measured on, and say plainly where an
allocation does not beat uniform.
"""
import argparse
import csv
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from dlp.errors import UserError
from dlp.io import write_atomic
from dlp.paths import ROOT
from dlp.registry import ALLOCATIONS, CRITERIA

from . import methods  # noqa: F401  (every criterion and allocation registered)
from .cells import run_cell
from .records import commit_label, machine_line
from .validation import check_choices

UNIFORM = "uniform"  # the allocation every other is compared with

# name -> (metric of a record, its label, lower is better)
METRICS = {
    "table1": (lambda r: r["metrics"]["ppl"], "WikiText-2 perplexity", True),
    "table2": (lambda r: 100 * r["metrics"]["zeroshot"]["mean_acc"], "mean zero-shot accuracy (%, acc) over 7 tasks",
               False),
}


@dataclass
class Grid:
    criteria: list[str]
    allocations: list[str]
    sparsity: float


def grid(table: str, criteria: list[str] | None = None, allocations: list[str] | None = None,
         sparsity: float | None = None) -> Grid:
    """The table's experiment config, with any of its criteria, allocations or sparsity replaced."""
    experiment = OmegaConf.load(ROOT / "conf" / "experiment" / f"{table}.yaml")
    sweep = experiment.hydra.sweeper.params
    g = Grid(criteria or str(sweep.criterion).split(","), allocations or str(sweep.allocation).split(","),
             float(experiment.sparsity if sparsity is None else sparsity))
    check_choices([f"criterion={','.join(g.criteria)}", f"allocation={','.join(g.allocations)}"])
    return g


def label(table: dict, name: str) -> str:
    return table[name].label


def table_rows(g: Grid):
    yield ("Dense", "-"), ["criterion=none"]
    for crit in g.criteria:
        for alloc in g.allocations:
            yield (label(CRITERIA, crit), label(ALLOCATIONS, alloc)), [f"criterion={crit}", f"allocation={alloc}"]


def collect(table, g: Grid, models, preset, extra):
    cells = {}
    for model in models:
        for row, overrides in table_rows(g):
            cells[(row, model)] = run_cell([f"+experiment={table}", f"model={model}", f"preset={preset}",
                                            f"sparsity={g.sparsity}", *overrides, *extra])
    return cells


def fmt(table, record) -> str:
    return f"{METRICS[table][0](record):.2f}" if record.get("status") == "ok" else "failed"


def notes(table, g: Grid, cells, models) -> list[str]:
    """Plain statements of where each allocation loses to (or beats) uniform under the same criterion."""
    metric, _, lower_better = METRICS[table]
    if UNIFORM not in g.allocations:
        return []
    out = []
    for model in models:
        for crit in g.criteria:
            base = cells[((label(CRITERIA, crit), label(ALLOCATIONS, UNIFORM)), model)]
            for alloc in g.allocations:
                other = cells[((label(CRITERIA, crit), label(ALLOCATIONS, alloc)), model)]
                if alloc == UNIFORM or base.get("status") != "ok" or other.get("status") != "ok":
                    continue
                a, b = metric(other), metric(base)
                verdict = "beats" if (a < b if lower_better else a > b) else "does NOT beat"
                out.append(f"{model}, {label(CRITERIA, crit)}: {label(ALLOCATIONS, alloc)} {verdict} uniform "
                           f"({a:.2f} vs {b:.2f}).")
    return out


def commits(records) -> str:
    """The code versions the cells ran under (a table can mix cells from several commits)."""
    return ", ".join(sorted({commit_label(r["environment"]) for r in records}))


def precision(model_cfg: dict) -> str:
    """The weights' dtype, and the compute dtype their passes ran under when one was set (dlp.compute_dtype)."""
    compute = model_cfg.get("compute_dtype")
    return model_cfg["dtype"] + (f" (forward passes under {compute} autocast)" if compute else "")


def provenance_lines(cells, models, preset) -> list[str]:
    """What each column was measured on: data, sizes, dtype, machine and commit, from its records."""
    lines = []
    for model in models:
        ok = [r for (label, m), r in cells.items() if m == model and r.get("status") == "ok"]
        if not ok:
            lines.append(f"- {model}: no finished cell")
            continue
        r = next((x for x in ok if x["data"].get("calibration")), ok[0])
        ev, env = r["metrics"]["eval"], r["environment"]
        calib = r["data"].get("calibration", {})
        lines.append(
            f"- {model}: preset `{preset}`, eval on `{r['metrics']['eval_corpus']}` ({ev['windows']} windows x "
            f"{ev['seqlen']} tokens), calibration `{calib.get('name', '-')}` ({calib.get('nsamples', '-')} x "
            f"{calib.get('seqlen', '-')}), dtype {precision(r['config']['model'])}; machine: {machine_line(env)}, "
            f"commits {commits(ok)}")
    return lines


def md_table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def per_task_lines(cells, models) -> list[str]:
    """Table 2's companion: accuracy (acc, %) per task, one block per model, from each record's own numbers."""
    out = []
    for model in models:
        ok = [r for (_, m), r in cells.items() if m == model and r.get("status") == "ok"]
        if not ok:
            continue
        tasks = list(ok[0]["metrics"]["zeroshot"]["tasks"])
        rows = []
        for (label, m), r in cells.items():
            if m != model:
                continue
            if r.get("status") != "ok":
                rows.append([*label, *["failed"] * (len(tasks) + 1)])
                continue
            zs = r["metrics"]["zeroshot"]
            rows.append([*label, *(f"{100 * zs['tasks'][t]['acc']:.2f}" for t in tasks), f"{100 * zs['mean_acc']:.2f}"])
        limit = ok[0]["metrics"]["zeroshot"]["limit"]
        out += ["", f"### {model}: accuracy per task (acc, %; {'first ' + str(limit) if limit else 'all'} examples "
                f"per task; harness {ok[0]['metrics']['zeroshot']['harness_version']})", "",
                *md_table(["Method", "Layerwise", *tasks, "Mean"], rows)]
    return out


def render(table, g: Grid, cells, models, preset, elapsed):
    _, metric_label, lower_better = METRICS[table]
    header = ["Method", "Layerwise", *models]
    rows = [[row[0], row[1], *(fmt(table, cells[(row, m)]) for m in models)] for row, _ in table_rows(g)]
    md = [f"# Table {table[-1]}: {metric_label} at {g.sparsity:.0%} unstructured sparsity",
          "", *md_table(header, rows)]
    md += ["", f"{'Lower' if lower_better else 'Higher'} is better. Measured on:", *provenance_lines(cells, models, preset)]
    if table == "table2":
        md += per_task_lines(cells, models)
    md += ["", "Against uniform:", *[f"- {n}" for n in notes(table, g, cells, models)], "",
           f"Table rendered in {elapsed:.0f} s (cells reused from results/runs/ count as 0)."]
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    tex = ["\\begin{tabular}{ll" + "r" * len(models) + "}", "\\toprule",
           " & ".join(header).replace("_", "\\_") + " \\\\", "\\midrule"]
    tex += [" & ".join(r) + " \\\\" for r in rows]
    tex += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(md) + "\n", buf.getvalue(), "\n".join(tex) + "\n"


def build(table, models, preset="cpu", sparsity=None, extra=(), out_dir=ROOT / "results", criteria=None,
          allocations=None):
    start = time.time()
    g = grid(table, criteria, allocations, sparsity)
    check_choices([f"model={','.join(models)}", f"preset={preset}"])  # one line now, not one failed cell per row
    cells = collect(table, g, models, preset, list(extra))
    md, csv_text, tex = render(table, g, cells, models, preset, time.time() - start)
    out_dir = Path(out_dir)
    for suffix, text in (("md", md), ("csv", csv_text), ("tex", tex)):
        write_atomic(out_dir / f"{table}.{suffix}", text.encode())
    return md, cells


def table1(models, preset="cpu", sparsity=None, extra=(), out_dir=ROOT / "results", **grid_options):
    return build("table1", models, preset, sparsity, extra, out_dir, **grid_options)


def table2(models, preset="cpu", sparsity=None, extra=(), out_dir=ROOT / "results", **grid_options):
    return build("table2", models, preset, sparsity, extra, out_dir, **grid_options)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=sorted(METRICS))
    parser.add_argument("--models", default="smollm2-135m", help="comma-separated model configs (conf/model)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--sparsity", type=float, default=None, help="default: the experiment config's")
    parser.add_argument("--criteria", default=None, help="comma-separated registered criteria (default: the "
                        "experiment config's)")
    parser.add_argument("--allocations", default=None, help="comma-separated registered allocations")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every cell")
    args = parser.parse_args(argv)
    split = lambda text: text.split(",") if text else None  # noqa: E731
    try:
        md, _ = build(args.table, args.models.split(","), args.preset, args.sparsity, args.overrides, args.out,
                      split(args.criteria), split(args.allocations))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(md)


if __name__ == "__main__":
    main()
