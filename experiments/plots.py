"""Layer-importance figures from run records: each block's score and resulting sparsity, per allocation.

`python -m experiments.plots --model smollm2-135m --criterion wanda --sparsity 0.7` runs the missing cells
(every registered allocation but the controls, with that criterion, or those of `--allocations`), then draws
`results/figures/<model>_<criterion>_s<s>.png`:
top, each allocation's per-block score (normalised to its own maximum: the scores are in different units);
bottom, the target sparsity per block with the measured one as dots.
"""
import argparse
from pathlib import Path

from dlp.paths import ROOT
from dlp.registry import ALLOCATIONS, studied_allocations

from . import methods  # noqa: F401  (every criterion and allocation registered)
from .cells import run_cell
from .commandline import one_line_errors
from .validation import check_choices


def gather(model, criterion, sparsity, preset="cpu", extra=(), allocations=None):
    allocations = list(allocations or studied_allocations())
    check_choices([f"criterion={criterion}", f"allocation={','.join(allocations)}"])
    return {alloc: run_cell([f"model={model}", f"preset={preset}", f"criterion={criterion}", f"allocation={alloc}",
                             f"sparsity={sparsity}", *extra], group="plots") for alloc in allocations}


def draw(records: dict, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    colors = {alloc: f"C{i}" for i, alloc in enumerate(records)}  # matplotlib's default cycle, one per allocation
    for alloc, record in records.items():
        if record.get("status") != "ok":
            continue
        s = record["sparsity"]
        blocks = range(len(s["per_block_target"]))
        scores = (record.get("allocation") or {}).get("scores")
        if scores:
            peak = max(abs(v) for v in scores) or 1.0
            score_label = ALLOCATIONS[alloc].score_label if alloc in ALLOCATIONS else "score"
            top.plot(blocks, [v / peak for v in scores], marker=".", color=colors[alloc],
                     label=f"{alloc}: {score_label}")
        bottom.plot(blocks, s["per_block_target"], color=colors[alloc],
                    label=f"{alloc} (ppl {record['metrics']['ppl']:.1f})")
        bottom.plot(blocks, s["per_block"], ".", color=colors[alloc])
    top.set_ylabel("score / max")
    top.legend(fontsize=8)
    top.set_title(title)
    bottom.set_xlabel("decoder block")
    bottom.set_ylabel("sparsity (line: target, dots: actual)")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Write a figure atomically (a reader never sees half a png) and free it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def figure(model="smollm2-135m", criterion="wanda", sparsity=0.7, preset="cpu", extra=(), out_dir=None,
           allocations=None) -> Path:
    records = gather(model, criterion, sparsity, preset, extra, allocations)
    out = Path(out_dir or ROOT / "results" / "figures") / f"{model}_{criterion}_s{sparsity}.png"
    ok = next((r for r in records.values() if r.get("status") == "ok"), None)
    corpus = ok["metrics"]["eval_corpus"] if ok else "?"
    return draw(records, f"{model}, {criterion}, target {sparsity:.0%} ({preset} preset, ppl on {corpus})", out)


def main(argv=None):
    parser = argparse.ArgumentParser(description="per-block score and sparsity plots")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--criterion", default="wanda")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--allocations", default=None,
                        help="comma-separated (default: every registered one but the controls)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    print(one_line_errors(lambda: figure(args.model, args.criterion, args.sparsity, args.preset, args.overrides,
                                         allocations=args.allocations.split(",") if args.allocations else None)))


if __name__ == "__main__":
    main()
