"""Perplexity against sparsity, per criterion: where allocations start to matter.

`python -m experiments.curves --model smollm2-135m --preset cpu --seeds 0,1,2` runs the missing cells (uniform,
OWL, DLP and the linear ramp under Wanda and SparseGPT at 30% to 80%, and ATP and EvoPress at 60% and 70% only: the
config's `partial_rows`; once per calibration seed; finished records are reused) and writes
results/curves-<model>.{png,csv,md}: one panel per criterion, WikiText-2 perplexity on a log axis, mean over seeds
with ± one standard deviation as error bars, the dense model as a dashed line. A point is filled where it differs
from uniform at its sparsity (paired t-test over seeds on log perplexity, as in experiments/verdicts.py) and hollow
where it is within noise; the csv carries that verdict, its ratio and p, and the markdown says it in words
(`--from-csv` re-renders the markdown alone from the csv; `--finished-only` runs nothing and draws the finished
records under the .partial names).
"""
import csv
import io
import textwrap
import time
from pathlib import Path

from dlp.errors import UserError
from dlp.registry import ALLOCATIONS, CRITERIA, reference_allocation
from dlp.storage.paths import ROOT

from . import grids, tracking
from .cells import failures, run_cells, sweep_setup
from .commandline import grid_options, grid_parser, one_line_errors
from .config import compose_config
from .plots import figure_bytes
from .publish import publish
from .reports.markdown import md_table, provenance_lines
from .reports.numbers import (NOT_RUN, VERDICT_COLUMNS, commits, finished, ppl, ppl_verdict, seeds_text, summary,
                              unfinished, verdict_columns, waiting_line)

NAME = "curves"  # its grid: conf/experiment/curves.yaml
DENSE = ("none", "-", 0.0)  # the dense model's cell: one record whatever the seeds


def partial_rows(allocations, sparsities) -> tuple[list[str], list[float]]:
    """The config's allocations drawn at a few sparsities only (the searched ones: a search per cell), with
    those sparsities; none when the command line names its own allocations or sparsities."""
    rows = grids.experiment_config(NAME).get("partial_rows")
    if allocations or sparsities or not rows:
        return [], []
    return list(rows.allocations), [float(s) for s in rows.sparsities]


def collect(model, preset, criteria, allocations, sparsities, seeds, extra, launcher=None, partial=((), ()),
            run=True):
    """(criterion, allocation, sparsity) -> records, one per seed; DENSE -> the dense record.
    `partial` = (allocations, sparsities) drawn beside the grid at those sparsities only. `run` False: the
    finished records alone, none for a cell without any."""
    fixed = [f"model={model}", f"preset={preset}"]
    grid = {DENSE: grids.dense_cell(NAME, fixed, extra),
            **grids.cells(NAME, {"criterion": criteria, "allocation": allocations, "sparsity": sparsities,
                                 "seed": seeds}, fixed, extra)}
    if partial[0]:
        grid.update(grids.cells(NAME, {"criterion": criteria, "allocation": list(partial[0]),
                                       "sparsity": list(partial[1]), "seed": seeds}, fixed, extra))
    found = run_cells(grid, NAME, launcher, run)
    return {key: found.get(key, []) for key in grid}


def points(cells, crit, alloc, sparsities):
    """(sparsity, summary) for each sparsity with a finished cell."""
    out = []
    for s in sparsities:
        x = summary(ppl, cells.get((crit, alloc, s), []))
        if x.n:
            out.append((s, x))
    return out


def against_uniform(cells, criteria, allocations, sparsities) -> dict:
    """(criterion, allocation, sparsity) -> that point's verdict against uniform at the same criterion and
    sparsity (None for uniform itself, or when uniform is not drawn); the figure and the csv read the same."""
    reference = reference_allocation()
    return {(crit, alloc, s): ppl_verdict(cells, crit, alloc, reference, s)
            for crit in criteria for alloc in allocations for s in sparsities}


def draw(cells, verdicts, model, criteria, allocations, sparsities, title) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(criteria), figsize=(5.5 * len(criteria), 4.2), squeeze=False, sharey=True)
    dense = summary(ppl, cells[DENSE])
    reference = reference_allocation()
    for ax, crit in zip(axes[0], criteria):
        for i, alloc in enumerate(allocations):
            pts = points(cells, crit, alloc, sparsities)
            if pts:
                # Uniform, the reference, is filled. Other allocations are filled where they differ from uniform and
                # hollow where they are within noise of it (or have no verdict).
                ax.errorbar([100 * s for s, _ in pts], [x.mean for _, x in pts], yerr=[x.std for _, x in pts],
                            marker="o", ms=4, mfc=None if alloc == reference else "white", capsize=3, color=f"C{i}",
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
    return figure_bytes(fig)


def table_rows(cells, verdicts, criteria, allocations, sparsities) -> list[list]:
    """The csv's rows: the dense point, then every drawn cell with a record (a cell not run has no row)."""
    rows = []
    dense = finished(cells[DENSE])
    if dense:
        rows.append(["none", "-", 0.0, ppl(dense[0]), 0.0, 1, "", *verdict_columns(None), commits(dense)])
    for crit in criteria:
        for alloc in allocations:
            for s in (s for s in sparsities if cells.get((crit, alloc, s))):  # a partial row: its sparsities only
                x = summary(ppl, cells[(crit, alloc, s)])
                rows.append([crit, alloc, s, x.mean if x.n else None, x.std if x.n else None, x.n,
                             seeds_text(cells[(crit, alloc, s)]), *verdict_columns(verdicts[(crit, alloc, s)]),
                             commits(finished(cells[(crit, alloc, s)]))])
    return rows


WORDS = {"beats": "beats", "loses to": "loses to", "within noise": "is within noise of",
         "no verdict": "has no verdict (one seed) against"}


def findings(rows: list[dict], criteria, allocations, sparsities, not_run=frozenset()) -> list[str]:
    """The curves in words, from the csv's rows: per criterion a table of mean ± std (with its verdict against
    uniform) and one sentence per allocation saying where it beats uniform, loses to it or is within noise.
    `not_run`: the (criterion, allocation, sparsity) cells drawn but without a record yet (--finished-only)."""
    at = {(r["criterion"], r["allocation"], float(r["sparsity"])): r for r in rows}
    out = []
    for crit in criteria:
        table, said = [], []
        for alloc in allocations:
            cells, groups = [], {}
            for s in sparsities:
                r = at.get((crit, alloc, float(s)))
                if r is None or r["ppl_mean"] in ("", None):
                    # a partial row has a few sparsities; a cell not run yet has no csv row either
                    cells.append("failed" if r is not None else NOT_RUN if (crit, alloc, float(s)) in not_run
                                 else "not drawn")
                    continue
                word = r["vs_uniform"] or ""
                cells.append(f"{float(r['ppl_mean']):.2f} ± {float(r['ppl_std'] or 0):.2f}" + (f" ({word})" if word else ""))
                if word:
                    groups.setdefault(WORDS[word], []).append(f"{float(s):.0%}")
            table.append([ALLOCATIONS[alloc].label, *cells])
            if groups:
                said.append(f"- {ALLOCATIONS[alloc].label} " + "; ".join(f"{w} uniform at {', '.join(ss)}"
                                                                    for w, ss in groups.items()) + ".")
        out += ["", f"## {CRITERIA[crit].label}", "",
                *md_table(["Allocation", *(f"{float(s):.0%}" for s in sparsities)], table), "", *said]
    return out


def render_md(model: str, preset: str, rows: list[dict], criteria, allocations, sparsities, provenance,
              not_run=frozenset()) -> str:
    dense = next((r for r in rows if r["criterion"] == "none"), None)
    seeds = sorted({s for r in rows for s in str(r.get("seeds") or "").split()}, key=int)
    md = [f"# Perplexity against sparsity: {model}", "",
          f"WikiText-2 perplexity (lower is better), mean ± standard deviation over calibration seeds "
          f"{', '.join(seeds)}; in brackets each point's verdict against uniform at the same sparsity (paired "
          "t-test over seeds on log perplexity, 5%: experiments/verdicts.py). Figure and data: "
          f"`{NAME}-{model}.png`, `{NAME}-{model}.csv`."
          + (f" Dense model: {float(dense['ppl_mean']):.2f}." if dense else ""),
          *findings(rows, criteria, allocations, sparsities, not_run),
          *(["", *waiting_line(len(not_run))] if not_run else []), "", "Measured on:", *provenance]
    return "\n".join(md) + "\n"


def csv_dicts(columns: list[str], rows: list[list]) -> list[dict]:
    return [{c: ("" if v is None else v) for c, v in zip(columns, r)} for r in rows]


def from_csv(model: str, preset: str, out_dir: Path) -> Path:
    """Re-render the curves' markdown from their committed csv (no records needed): the same rows, the same
    words; the csv names the commits, the preset is the command line's."""
    csv_path = Path(out_dir) / f"{NAME}-{model}.csv"
    if not csv_path.is_file():
        raise UserError(f"no curves csv at {csv_path}: run the curves first")
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    pick = lambda key: list(dict.fromkeys(r[key] for r in rows if r["criterion"] != "none"))  # noqa: E731
    commits = sorted({c.strip() for r in rows for c in r["commits"].split(",") if c.strip()})
    provenance = [f"- {model}: preset `{preset}`, the records behind `{csv_path.name}` (commits {', '.join(commits)})"]
    md = render_md(model, preset, rows, pick("criterion"), pick("allocation"), [float(s) for s in pick("sparsity")],
                   provenance)
    publish({csv_path.with_suffix(".md"): md.encode()}, [])
    return csv_path.with_suffix(".md")


def build(model="smollm2-135m", preset="cpu", seeds=None, extra=(), out_dir=ROOT / "results", criteria=None,
          allocations=None, sparsities=None, launcher=None, finished_only=False):
    """`finished_only`: run nothing, draw the finished records (incomplete curves go under their .partial names
    and are not logged to W&B)."""
    start = time.time()
    partial = partial_rows(allocations, sparsities)
    launch, extra, (criteria, allocations, sparsities, seeds) = sweep_setup(
        NAME, model, preset, launcher, extra, partial[0], criterion=criteria, allocation=allocations,
        sparsity=sparsities, seed=seeds)
    wandb_cfg = compose_config([f"preset={preset}", *extra])["wandb"]
    cells = collect(model, preset, criteria, allocations, sparsities, seeds, list(extra), launch, partial,
                    run=not finished_only)
    waiting = finished_only and unfinished(cells, seeds, {DENSE})
    not_run = {key for key, records in cells.items() if not records}
    allocations = allocations + [a for a in partial[0] if a not in allocations]
    sparsities = sorted(set(sparsities) | set(partial[1]))
    out_dir = Path(out_dir)
    ok = next((r for records in cells.values() for r in finished(records) if r["data"].get("calibration")), None)
    corpus = ok["metrics"]["eval_corpus"] if ok else "?"
    title = f"{model}, {preset} preset, ppl on {corpus}; mean ± std over seeds {', '.join(map(str, seeds))}"
    verdicts = against_uniform(cells, criteria, allocations, sparsities)
    png_path, csv_path = out_dir / f"{NAME}-{model}.png", out_dir / f"{NAME}-{model}.csv"
    png = draw(cells, verdicts, model, criteria, allocations, sparsities, title)
    # Each point names the code versions its records ran under: a curve's cells can span several commits.
    columns = ["criterion", "allocation", "sparsity", "ppl_mean", "ppl_std", "n", "seeds", *VERDICT_COLUMNS, "commits"]
    rows = table_rows(cells, verdicts, criteria, allocations, sparsities)
    buf = io.StringIO()
    csv.writer(buf).writerows([columns, *([f"{v:.6g}" if isinstance(v, float) else v for v in r] for r in rows)])
    by_model = {(k, model): v for k, v in cells.items()}
    md = render_md(model, preset, csv_dicts(columns, rows), criteria, allocations, sparsities,
                   provenance_lines(by_model, [model], preset), not_run)
    written = publish({png_path: png, csv_path: buf.getvalue().encode(), csv_path.with_suffix(".md"): md.encode()},
                      failures(cells), incomplete=waiting)
    if waiting:
        print("\n".join(map(str, written)))
        return written[0], cells
    tracking.log_table_quietly(f"{NAME}-{model}", columns, rows, wandb_cfg, group=NAME, figures={"curves": png_path},
                               settings={"model": model, "preset": preset, "seeds": seeds, "sparsities": sparsities,
                                         "criteria": criteria, "allocations": allocations, "overrides": list(extra)})
    print(f"{png_path}\n{csv_path} ({time.time() - start:.0f} s)")
    return png_path, cells


def main(argv=None):
    parser = grid_parser(__doc__.splitlines()[0], {
        "seeds": "the experiment config's", "criteria": "the experiment config's",
        "allocations": "the experiment config's", "sparsities": "the experiment config's"}, peek=True)
    parser.add_argument("--from-csv", action="store_true", help="only re-render the markdown from the committed csv")
    args = parser.parse_args(argv)
    if args.from_csv:
        print(one_line_errors(lambda: from_csv(args.model, args.preset, Path(args.out))))
        return
    one_line_errors(lambda: build(**grid_options(args)))


if __name__ == "__main__":
    main()
