"""Paper-style tables from run records: `python -m experiments.tables table1|table2 --models a,b --preset cpu`.

Table 1 of the DLP paper: WikiText-2 perplexity at 70% unstructured sparsity, a Dense row, then Magnitude,
SparseGPT and Wanda each with Uniform, OWL and DLP, one column per model. Table 2: mean zero-shot accuracy
over the seven tasks (acc, as the Wanda paper), Dense, then SparseGPT and Wanda with Uniform, OWL and DLP,
plus a per-task table. Missing cells are run first (finished ones are reused); a failed cell prints `failed`
and the table is still written. Beside the table we write what it was measured on, and say plainly where an
allocation does not beat uniform.
"""
import argparse
import csv
import io
import time
from pathlib import Path

from dlp.io import write_atomic
from dlp.paths import ROOT

from .cells import run_cell

CRITERIA = [("magnitude", "Magnitude"), ("sparsegpt", "SparseGPT"), ("wanda", "Wanda")]
ALLOCATIONS = [("uniform", "Uniform"), ("owl", "OWL"), ("dlp", "DLP")]


def table_rows(criteria):
    yield ("Dense", "-"), ["criterion=none"]
    for crit, crit_label in criteria:
        for alloc, alloc_label in ALLOCATIONS:
            yield (crit_label, alloc_label), [f"criterion={crit}", f"allocation={alloc}"]


# name -> (criteria rows, extra overrides, metric of a record, its label, lower is better)
TABLES = {
    "table1": (CRITERIA, [], lambda r: r["metrics"]["ppl"], "WikiText-2 perplexity", True),
    "table2": (CRITERIA[1:], ["zeroshot.enabled=true"], lambda r: 100 * r["metrics"]["zeroshot"]["mean_acc"],
               "mean zero-shot accuracy (%, acc) over 7 tasks", False),
}


def collect(table, models, preset, sparsity, extra):
    criteria, table_extra = TABLES[table][0], TABLES[table][1]
    cells = {}
    for model in models:
        for label, overrides in table_rows(criteria):
            cells[(label, model)] = run_cell([f"model={model}", f"preset={preset}", f"sparsity={sparsity}",
                                              *overrides, *table_extra, *extra])
    return cells


def fmt(table, record) -> str:
    return f"{TABLES[table][2](record):.2f}" if record.get("status") == "ok" else "failed"


def notes(table, cells, models) -> list[str]:
    """Plain statements of where OWL/DLP lose to uniform, and what data each column was evaluated on."""
    criteria, _, metric, _, lower_better = TABLES[table]
    out = []
    for model in models:
        for crit, crit_label in criteria:
            base = cells[((crit_label, "Uniform"), model)]
            for alloc_label in ("OWL", "DLP"):
                other = cells[((crit_label, alloc_label), model)]
                if base.get("status") == "ok" and other.get("status") == "ok":
                    a, b = metric(other), metric(base)
                    verdict = "beats" if (a < b if lower_better else a > b) else "does NOT beat"
                    out.append(f"{model}, {crit_label}: {alloc_label} {verdict} uniform ({a:.2f} vs {b:.2f}).")
    return out


def commits(records) -> str:
    """The code versions the cells ran under (a table can mix cells from several commits)."""
    seen = sorted({f"{str(r['environment'].get('commit'))[:10]}{'+dirty' if r['environment'].get('dirty') else ''}"
                   for r in records})
    return ", ".join(seen)


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
            f"{calib.get('seqlen', '-')}), dtype {precision(r['config']['model'])}; machine: {env['platform']}, "
            f"{env['cpu_count']} CPUs, GPU {env['cuda'] or 'none'}, torch {env['torch']}, transformers "
            f"{env['transformers']}, commits {commits(ok)}")
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


def render(table, cells, models, sparsity, preset, elapsed):
    criteria, _, _, metric_label, lower_better = TABLES[table]
    header = ["Method", "Layerwise", *models]
    rows = [[label[0], label[1], *(fmt(table, cells[(label, m)]) for m in models)] for label, _ in table_rows(criteria)]
    md = [f"# Table {table[-1]}: {metric_label} at {sparsity:.0%} unstructured sparsity",
          "", *md_table(header, rows)]
    md += ["", f"{'Lower' if lower_better else 'Higher'} is better. Measured on:", *provenance_lines(cells, models, preset)]
    if table == "table2":
        md += per_task_lines(cells, models)
    md += ["", "Against uniform:", *[f"- {n}" for n in notes(table, cells, models)], "",
           f"Table rendered in {elapsed:.0f} s (cells reused from results/runs/ count as 0)."]
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    tex = ["\\begin{tabular}{ll" + "r" * len(models) + "}", "\\toprule",
           " & ".join(header).replace("_", "\\_") + " \\\\", "\\midrule"]
    tex += [" & ".join(r) + " \\\\" for r in rows]
    tex += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(md) + "\n", buf.getvalue(), "\n".join(tex) + "\n"


def build(table, models, preset="cpu", sparsity=0.7, extra=(), out_dir=ROOT / "results"):
    start = time.time()
    cells = collect(table, models, preset, sparsity, list(extra))
    md, csv_text, tex = render(table, cells, models, sparsity, preset, time.time() - start)
    out_dir = Path(out_dir)
    for suffix, text in (("md", md), ("csv", csv_text), ("tex", tex)):
        write_atomic(out_dir / f"{table}.{suffix}", text.encode())
    return md, cells


def table1(models, preset="cpu", sparsity=0.7, extra=(), out_dir=ROOT / "results"):
    return build("table1", models, preset, sparsity, extra, out_dir)


def table2(models, preset="cpu", sparsity=0.7, extra=(), out_dir=ROOT / "results"):
    return build("table2", models, preset, sparsity, extra, out_dir)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--models", default="smollm2-135m", help="comma-separated model configs (conf/model)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every cell")
    args = parser.parse_args(argv)
    md, _ = build(args.table, args.models.split(","), args.preset, args.sparsity, args.overrides, args.out)
    print(md)


if __name__ == "__main__":
    main()
