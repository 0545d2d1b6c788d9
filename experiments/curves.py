"""Perplexity against sparsity, per criterion: where allocations start to matter.

`python -m experiments.curves --model smollm2-135m --preset cpu --seeds 0,1,2` runs the missing cells (uniform,
OWL, DLP and the linear ramp under Wanda and SparseGPT at 30% to 80%, once per calibration seed; finished
records are reused) and writes results/curves-<model>.{png,csv}: one panel per criterion, WikiText-2 perplexity
on a log axis, mean over seeds with ± one standard deviation as error bars, the dense model as a dashed line.
A point is filled where it differs from uniform at its sparsity (paired t-test over seeds on log perplexity, as
in experiments/verdicts.py) and hollow where it is within noise; the csv carries that verdict, its ratio and p.
"""
import csv
import io
import textwrap
import time
from pathlib import Path

from dlp.io import write_atomic
from dlp.paths import ROOT
from dlp.registry import ALLOCATIONS, CRITERIA

from . import tracking
from .cells import cell_overrides, launcher_overrides, run_cells
from .commandline import grid_options, grid_parser, one_line_errors
from .config import compose_config
from .plots import save_figure
from .tables import VERDICT_COLUMNS, commits, finished, ppl, ppl_verdict, seeds_text, summary, verdict_columns
from .validation import check_choices

NAME = "curves"
CRITERIA_DEFAULT = ["wanda", "sparsegpt"]
ALLOCATIONS_DEFAULT = ["uniform", "owl", "dlp", "linear"]
SPARSITIES_DEFAULT = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def collect(model, preset, criteria, allocations, sparsities, seeds, extra, launcher=None):
    """(criterion, allocation, sparsity) -> records, one per seed; ("none", "-", 0.0) -> the dense record."""
    base = [f"model={model}", f"preset={preset}"]
    grid = {("none", "-", 0.0): [[*base, "criterion=none", *extra]]}
    for crit in criteria:
        for alloc in allocations:
            for s in sparsities:
                grid[(crit, alloc, s)] = [[*base, f"criterion={crit}", f"allocation={alloc}", f"sparsity={s}", *extra,
                                           f"seed={seed}"] for seed in seeds]
    return run_cells(grid, NAME, launcher)


def points(cells, crit, alloc, sparsities):
    """(sparsity, summary) for each sparsity with a finished cell."""
    out = []
    for s in sparsities:
        x = summary(ppl, cells[(crit, alloc, s)])
        if x.n:
            out.append((s, x))
    return out


def against_uniform(cells, criteria, allocations, sparsities) -> dict:
    """(criterion, allocation, sparsity) -> that point's verdict against uniform at the same criterion and
    sparsity (None for uniform itself, or when uniform is not drawn); the figure and the csv read the same."""
    return {(crit, alloc, s): ppl_verdict(cells, crit, alloc, "uniform", s)
            for crit in criteria for alloc in allocations for s in sparsities}


def draw(cells, verdicts, model, criteria, allocations, sparsities, title, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(criteria), figsize=(5.5 * len(criteria), 4.2), squeeze=False, sharey=True)
    dense = summary(ppl, cells[("none", "-", 0.0)])
    for ax, crit in zip(axes[0], criteria):
        for i, alloc in enumerate(allocations):
            pts = points(cells, crit, alloc, sparsities)
            if pts:
                # Uniform, the reference, is filled. Other allocations are filled where they differ from uniform and
                # hollow where they are within noise of it (or have no verdict).
                ax.errorbar([100 * s for s, _ in pts], [x.mean for _, x in pts], yerr=[x.std for _, x in pts],
                            marker="o", ms=4, mfc=None if alloc == "uniform" else "white", capsize=3, color=f"C{i}",
                            label=ALLOCATIONS[alloc].label)
                real = [(s, x) for s, x in pts if getattr(verdicts[(crit, alloc, s)], "real", False)]
                ax.plot([100 * s for s, _ in real], [x.mean for _, x in real], "o", ms=4, color=f"C{i}",
                        zorder=3)  # above errorbar's own markers (zorder 2.1)
        if dense.n:
            ax.axhline(dense.mean, color="gray", ls="--", lw=1, label=f"dense ({dense.mean:.1f})")
        ax.set_yscale("log")
        ax.set_title(CRITERIA[crit].label)
        ax.set_xlabel("target sparsity (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("WikiText-2 perplexity (log)")
    legend = "filled: differs from uniform (paired t-test over seeds on log ppl, 5%); hollow: within noise"
    # Wrapped to the figure's width: one panel is too narrow for the title on one line.
    width = round(fig.get_figwidth() * 14)  # characters of 9-point text per inch, about
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in (title, legend)), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def table_rows(cells, verdicts, criteria, allocations, sparsities) -> list[list]:
    rows = []
    dense = finished(cells[("none", "-", 0.0)])
    if dense:
        rows.append(["none", "-", 0.0, ppl(dense[0]), 0.0, 1, "", *verdict_columns(None), commits(dense)])
    for crit in criteria:
        for alloc in allocations:
            for s in sparsities:
                x = summary(ppl, cells[(crit, alloc, s)])
                rows.append([crit, alloc, s, x.mean if x.n else None, x.std if x.n else None, x.n,
                             seeds_text(cells[(crit, alloc, s)]), *verdict_columns(verdicts[(crit, alloc, s)]),
                             commits(finished(cells[(crit, alloc, s)]))])
    return rows


def build(model="smollm2-135m", preset="cpu", seeds=None, extra=(), out_dir=ROOT / "results", criteria=None,
          allocations=None, sparsities=None, launcher=None):
    start = time.time()
    launch, extra = launcher_overrides(launcher, list(extra)), cell_overrides(list(extra))
    criteria = criteria or CRITERIA_DEFAULT
    allocations = allocations or ALLOCATIONS_DEFAULT
    sparsities = sparsities or SPARSITIES_DEFAULT
    seeds = seeds or [0, 1, 2]
    check_choices([f"model={model}", f"preset={preset}", f"criterion={','.join(criteria)}",
                   f"allocation={','.join(allocations)}"])
    wandb_cfg = compose_config([f"preset={preset}", *extra])["wandb"]
    cells = collect(model, preset, criteria, allocations, sparsities, seeds, list(extra), launch)
    out_dir = Path(out_dir)
    ok = next((r for records in cells.values() for r in finished(records) if r["data"].get("calibration")), None)
    corpus = ok["metrics"]["eval_corpus"] if ok else "?"
    title = f"{model}, {preset} preset, ppl on {corpus}; mean ± std over seeds {', '.join(map(str, seeds))}"
    verdicts = against_uniform(cells, criteria, allocations, sparsities)
    png = draw(cells, verdicts, model, criteria, allocations, sparsities, title, out_dir / f"{NAME}-{model}.png")
    # Each point names the code versions its records ran under: a curve's cells can span several commits.
    columns = ["criterion", "allocation", "sparsity", "ppl_mean", "ppl_std", "n", "seeds", *VERDICT_COLUMNS, "commits"]
    rows = table_rows(cells, verdicts, criteria, allocations, sparsities)
    buf = io.StringIO()
    csv.writer(buf).writerows([columns, *([f"{v:.6g}" if isinstance(v, float) else v for v in r] for r in rows)])
    write_atomic(out_dir / f"{NAME}-{model}.csv", buf.getvalue().encode())
    tracking.log_table_quietly(f"{NAME}-{model}", columns, rows, wandb_cfg, group=NAME, figures={"curves": png},
                               settings={"model": model, "preset": preset, "seeds": seeds, "sparsities": sparsities,
                                         "criteria": criteria, "allocations": allocations, "overrides": list(extra)})
    print(f"{png}\n{out_dir / f'{NAME}-{model}.csv'} ({time.time() - start:.0f} s)")
    return png, cells


def main(argv=None):
    args = grid_parser(__doc__.splitlines()[0], {
        "seeds": "0,1,2", "criteria": ",".join(CRITERIA_DEFAULT), "allocations": ",".join(ALLOCATIONS_DEFAULT),
        "sparsities": "0.3 to 0.8 by 0.1"}).parse_args(argv)
    one_line_errors(lambda: build(**grid_options(args)))


if __name__ == "__main__":
    main()
