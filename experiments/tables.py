"""Paper-style tables from run records: `python -m experiments.tables table1 --models a,b --preset cpu`.

Table 1 of the DLP paper: WikiText-2 perplexity at 70% unstructured sparsity, a Dense row, then Magnitude,
SparseGPT and Wanda each with Uniform, OWL and DLP, one column per model. Missing cells are run first
(finished ones are reused); a failed cell prints `failed` and the table is still written. Beside the table
we write what it was measured on, and say plainly where an allocation does not beat uniform.
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


def table1_rows():
    yield ("Dense", "-"), ["criterion=none"]
    for crit, crit_label in CRITERIA:
        for alloc, alloc_label in ALLOCATIONS:
            yield (crit_label, alloc_label), [f"criterion={crit}", f"allocation={alloc}"]


def collect(models, preset, sparsity, extra):
    cells = {}
    for model in models:
        for label, overrides in table1_rows():
            cells[(label, model)] = run_cell([f"model={model}", f"preset={preset}", f"sparsity={sparsity}",
                                              "progress=false", *overrides, *extra])
    return cells


def fmt(record) -> str:
    return f"{record['metrics']['ppl']:.2f}" if record.get("status") == "ok" else "failed"


def notes(cells, models) -> list[str]:
    """Plain statements of where OWL/DLP lose to uniform, and what data each column was evaluated on."""
    out = []
    for model in models:
        for crit, crit_label in CRITERIA:
            base = cells[((crit_label, "Uniform"), model)]
            for alloc_label in ("OWL", "DLP"):
                other = cells[((crit_label, alloc_label), model)]
                if base.get("status") == "ok" and other.get("status") == "ok":
                    a, b = other["metrics"]["ppl"], base["metrics"]["ppl"]
                    verdict = "beats" if a < b else "does NOT beat"
                    out.append(f"{model}, {crit_label}: {alloc_label} {verdict} uniform ({a:.2f} vs {b:.2f}).")
    return out


def provenance_lines(cells, models, preset) -> list[str]:
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
            f"{calib.get('seqlen', '-')}), dtype {r['config']['model']['dtype']}; machine: {env['platform']}, "
            f"{env['cpu_count']} CPUs, GPU {env['cuda'] or 'none'}, torch {env['torch']}, transformers "
            f"{env['transformers']}, commit {str(env.get('commit'))[:10]}")
    return lines


def render(cells, models, sparsity, preset, elapsed):
    header = ["Method", "Layerwise", *models]
    rows = [[label[0], label[1], *(fmt(cells[(label, m)]) for m in models)] for label, _ in table1_rows()]
    md = [f"# Table 1: WikiText-2 perplexity at {sparsity:.0%} unstructured sparsity", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "Lower is better. Measured on:", *provenance_lines(cells, models, preset), "",
           "Against uniform:", *[f"- {n}" for n in notes(cells, models)], "",
           f"Table rendered in {elapsed:.0f} s (cells reused from results/runs/ count as 0)."]
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    tex = ["\\begin{tabular}{ll" + "r" * len(models) + "}", "\\toprule",
           " & ".join(header).replace("_", "\\_") + " \\\\", "\\midrule"]
    tex += [" & ".join(r) + " \\\\" for r in rows]
    tex += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(md) + "\n", buf.getvalue(), "\n".join(tex) + "\n"


def table1(models, preset="cpu", sparsity=0.7, extra=(), out_dir=ROOT / "results"):
    start = time.time()
    cells = collect(models, preset, sparsity, list(extra))
    md, csv_text, tex = render(cells, models, sparsity, preset, time.time() - start)
    out_dir = Path(out_dir)
    for suffix, text in (("md", md), ("csv", csv_text), ("tex", tex)):
        write_atomic(out_dir / f"table1.{suffix}", text.encode())
    return md, cells


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=["table1"])
    parser.add_argument("--models", default="smollm2-135m", help="comma-separated model configs (conf/model)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every cell")
    args = parser.parse_args(argv)
    md, _ = table1(args.models.split(","), args.preset, args.sparsity, args.overrides, args.out)
    print(md)


if __name__ == "__main__":
    main()
