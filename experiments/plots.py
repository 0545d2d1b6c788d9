"""Layer-importance figures from run records: each block's score and resulting sparsity, per allocation.

`python -m experiments.plots --model smollm2-135m --criterion wanda --sparsity 0.7` runs the missing cells
(every registered allocation but the controls, with that criterion, or those of `--allocations`), then draws
`results/figures/<model>_<criterion>_s<s>.png`:
top, each allocation's per-block score (normalised to its own maximum: the scores are in different units);
bottom, the target sparsity per block with the measured one as dots.
"""
import io
from pathlib import Path

from dlp.registry import ALLOCATIONS, studied_allocations
from dlp.storage.paths import ROOT

from .cells import failures, run_cells
from .commandline import OneLineParser, one_line_errors
from .publish import publish
from .validation import check_choices


def gather(model, criterion, sparsity, preset="cpu", extra=(), allocations=None):
    allocations = list(allocations or studied_allocations())
    check_choices([f"criterion={criterion}", f"allocation={','.join(allocations)}"])
    grid = {alloc: [[f"model={model}", f"preset={preset}", f"criterion={criterion}", f"allocation={alloc}",
                     f"sparsity={sparsity}", *extra]] for alloc in allocations}
    return {alloc: records[0] for alloc, records in run_cells(grid, "plots").items()}


def draw(records: dict, title: str) -> bytes:
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
    return figure_bytes(fig)


def figure_bytes(fig) -> bytes:
    """A figure as png bytes (written atomically by experiments.publish), and the figure freed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def figure(model="smollm2-135m", criterion="wanda", sparsity=0.7, preset="cpu", extra=(), out_dir=None,
           allocations=None) -> Path:
    records = gather(model, criterion, sparsity, preset, extra, allocations)
    out = Path(out_dir or ROOT / "results" / "figures") / f"{model}_{criterion}_s{sparsity}.png"
    ok = next((r for r in records.values() if r.get("status") == "ok"), None)
    corpus = ok["metrics"]["eval_corpus"] if ok else "?"
    png = draw(records, f"{model}, {criterion}, target {sparsity:.0%} ({preset} preset, ppl on {corpus})")
    publish({out: png}, failures({alloc: [r] for alloc, r in records.items()}))
    return out


def main(argv=None):
    parser = OneLineParser(description="per-block score and sparsity plots")
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
