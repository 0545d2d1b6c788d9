"""Does an allocation win by how it ranks blocks, or by the spread of sparsities it allows?

`python -m experiments.ablation --model smollm2-135m --preset cpu --seeds 0,1,2` runs the grid of
conf/experiment/ablation.yaml (the same one `python -m experiments.run -m +experiment=ablation` sweeps): per
criterion, uniform, four controls of DLP's spread (0.15 either side of the target, DLP's α) — a linear ramp over
depth, DLP's sparsities shuffled and reversed, OWL at λ = 0.15 — DLP itself, and the searched allocations (ATP,
EvoPress), which choose their own spread: against them DLP's ranking meets a search, not a control. At each
sparsity, once per calibration seed. It writes results/ablation.{md,csv}: WikiText-2 perplexity as mean ± std
over seeds, and per row one plain sentence of what the row shows, from the verdicts of experiments.verdicts (a
paired t-test over seeds on log perplexity). `--finished-only` runs nothing: a peek at a grid running elsewhere,
rendered from its finished records under the .partial names (as the tables do).
"""
import csv
import functools
import io
import time
from pathlib import Path

from dlp.registry import ALLOCATIONS, CRITERIA, central_allocation, reference_allocation
from dlp.storage.paths import ROOT

from . import grids, tracking
from .cells import failures, run_cells, sweep_setup
from .commandline import grid_options, grid_parser, one_line_errors
from .config import compose_config
from .publish import publish
from .reports.markdown import md_table, provenance_lines
from .reports.numbers import (NOT_RUN, VERDICT_COLUMNS, ppl, ppl_verdict, seeds_text, summary, unfinished,
                              verdict_columns, waiting_line)

EXPERIMENT = "ablation"
PENDING = "cannot yet be compared with"  # a verdict whose cells are not all run (--finished-only)


@functools.lru_cache(maxsize=None)
def allocation_config(choice: str) -> dict:
    """An allocation choice's parameters (a YAML variant such as owl_matched is a method with other ones)."""
    return compose_config([f"allocation={choice}"])["allocation"]


def allocation_class(choice: str) -> type:
    return ALLOCATIONS[allocation_config(choice)["name"]]


def studied_allocation(allocations: list[str]) -> str | None:
    """The allocation the other rows are set against: the one the reordering controls reorder (their `of`), else
    the one this suite reproduces (DLP) when it is drawn."""
    of = next((allocation_config(a)["of"] for a in allocations if "of" in allocation_config(a)), None)
    return of or next((a for a in allocations if a == central_allocation()), None)


def subject(choice: str, studied: str | None) -> str:
    """How a row's sentence names its allocation: the studied one by its label, a control by its description."""
    cls, cfg = allocation_class(choice), allocation_config(choice)
    if choice == studied:
        return cls.label
    named = (cls.description.format(of=ALLOCATIONS[cfg["of"]].label if "of" in cfg else "") if cls.description
             else row_label(choice))
    return named if cls.reads_data else f"{named} that reads no data"


@functools.lru_cache(maxsize=None)
def row_label(choice: str) -> str:
    """An allocation choice as a row names it: its method's label and the parameters that set its spread or
    its source."""
    cfg = allocation_config(choice)
    cls = ALLOCATIONS[cfg["name"]]
    if "of" in cfg:
        return f"{cls.label} {ALLOCATIONS[cfg['of']].label}"
    spread = {"alpha": "α", "lam": "λ"}
    shown = [f"{spread[k]} = {v}" for k, v in cfg.items() if k in spread]
    return f"{cls.label} ({', '.join(shown)})" if shown else cls.label


def collect(model, preset, criteria, allocations, sparsities, seeds, extra, launcher=None, run=True):
    """(criterion, allocation, sparsity) -> that cell's records, one per seed (`run` False: the finished ones
    alone, none for a cell without any)."""
    grid = grids.cells(EXPERIMENT, {"criterion": criteria, "allocation": allocations, "sparsity": sparsities,
                                    "seed": seeds}, [f"model={model}", f"preset={preset}"], extra)
    found = run_cells(grid, EXPERIMENT, launcher, run)
    return {key: found.get(key, []) for key in grid}


def pct(values) -> str:
    return " and ".join(f"{float(s):.0%}" for s in values)


def across(cells, crit, ours, base, sparsities) -> tuple[str, dict]:
    """How `ours` compares with `base` at each sparsity, in words ('beats uniform at 60% and 70%'), and the
    sparsities of each word ({'beats': [0.6, 0.7]})."""
    words = {}
    for s in sparsities:
        v = ppl_verdict(cells, crit, ours, base, s)
        if v is None and not (cells.get((crit, ours, s)) and cells.get((crit, base, s))):
            words[s] = PENDING  # a cell not run: rendered from the finished records only
            continue
        words[s] = "failed against" if v is None else {"beats": "beats", "loses to": "loses to",
                                                        "within noise": "is within noise of",
                                                        "no verdict": "has no verdict (one seed) against"}[v.word]
    name = ALLOCATIONS[base].label.lower() if base == reference_allocation() else row_label(base)
    groups = {}
    for s, w in words.items():
        groups.setdefault(w, []).append(s)
    text = ", ".join(f"{w} {name} at {pct(ss)}" for w, ss in groups.items())
    return text, groups


def ranking(studied: str, groups: dict, sparsities, what: str) -> str:
    """What the studied allocation beating (or losing to) another row says about its ranking of blocks: a
    control of the same spread, or a searched allocation (`what` is a singular noun phrase)."""
    wins, losses = groups.get("beats", []), groups.get("loses to", [])
    if len(groups.get(PENDING, [])) == len(sparsities):
        return f"too few finished records yet to say whether {studied}'s ranking of blocks matters beyond {what}"
    if len(wins) == len(sparsities):
        return f"{studied}'s ranking of blocks matters beyond {what}"
    if len(losses) == len(sparsities):
        return f"{what} does better than {studied}'s ranking of blocks"
    but = f", and {what} does better at {pct(losses)}" if losses else ""
    if wins:
        return f"{studied}'s ranking of blocks matters beyond {what} at {pct(wins)} only{but}"
    return f"nothing here shows {studied}'s ranking of blocks doing better than {what}{but}"


def sentence(cells, crit, alloc, sparsities, allocations) -> str:
    """What the row shows, in one plain sentence built from its verdicts and its allocation's facts."""
    cls, reference, studied = allocation_class(alloc), reference_allocation(), studied_allocation(allocations)
    if cls.reference:
        return "Every block at the target: the reference for the rows below."
    vs_uniform = across(cells, crit, alloc, reference, sparsities)[0] if reference in allocations else ""
    if cls.plural:  # "sparsities ... are": put the verbs in the plural
        vs_uniform = (vs_uniform.replace("beats", "beat").replace("loses to", "lose to").replace("is within", "are within")
                      .replace("has no", "have no"))
    if alloc == studied or not cls.isolates or studied not in allocations:
        return f"{subject(alloc, studied)} {vs_uniform}."
    name = allocation_class(studied).label
    studied_vs, groups = across(cells, crit, studied, alloc, sparsities)
    return (f"{subject(alloc, studied)} {vs_uniform}; {name} {studied_vs}: "
            f"{ranking(name, groups, sparsities, cls.isolates)}.")


def spreads(allocations) -> str:
    """Which rows share a spread of block sparsities and which choose their own, in one or two sentences."""
    searched = [row_label(a) for a in allocations if allocation_class(a).searches]
    fixed = "Every non-uniform row spans" if not searched else "Every other non-uniform row spans"
    text = f"{fixed} the same spread of block sparsities (0.15 either side of the target)."
    if searched:
        text = (f"{' and '.join(searched)} search for their own spread: against them DLP's ranking meets a search, "
                f"not a control of its spread. {text}")
    return text


def render(model, preset, criteria, allocations, sparsities, seeds, cells, elapsed) -> tuple[str, str, list, list]:
    header = ["Allocation", *(f"{float(s):.0%}" for s in sparsities), "What it shows"]
    md = [f"# Ablation: ranking or spread? WikiText-2 perplexity of {model}", "",
          f"Mean ± standard deviation over {len(seeds)} calibration seed{'s' if len(seeds) > 1 else ''} "
          f"({', '.join(map(str, seeds))}); lower is better. {spreads(allocations)} Verdicts: paired two-sided "
          "t-test over seeds on log perplexity at 5% (experiments/verdicts.py); 'within noise' when it does not "
          "reject."]
    csv_rows = [["criterion", "allocation", "sparsity", "mean", "std", "n", "seeds", *VERDICT_COLUMNS]]
    wb_rows = []
    for crit in criteria:
        rows = []
        for alloc in allocations:
            stats = [summary(ppl, cells[(crit, alloc, s)]) for s in sparsities]
            said = sentence(cells, crit, alloc, sparsities, allocations)
            rows.append([row_label(alloc), *(x.text() if cells[(crit, alloc, s)] else NOT_RUN
                                             for x, s in zip(stats, sparsities)), said])
            for s, x in zip(sparsities, stats):
                v = ppl_verdict(cells, crit, alloc, reference_allocation(), s)
                empty = "failed" if cells[(crit, alloc, s)] else NOT_RUN
                csv_rows.append([crit, alloc, s, f"{x.mean:.6g}" if x.n else empty, f"{x.std:.6g}" if x.n else "",
                                 x.n, seeds_text(cells[(crit, alloc, s)]), *verdict_columns(v)])
            wb_rows.append([CRITERIA[crit].label, row_label(alloc),
                            *(v for x in stats for v in (x.mean if x.n else None, x.std if x.n else None, x.n)), said])
        md += ["", f"## {CRITERIA[crit].label}", "", *md_table(header, rows)]
    by_model = {(k, model): v for k, v in cells.items()}
    if waiting := waiting_line(sum(1 for records in cells.values() if not records)):
        md += ["", *waiting]
    md += ["", "Measured on:", *provenance_lines(by_model, [model], preset), "",
           f"Table rendered in {elapsed:.0f} s (cells reused from results/runs/ count as 0)."]
    buf = io.StringIO()
    csv.writer(buf).writerows(csv_rows)
    wb_columns = ["Method", "Layerwise", *(c for s in sparsities for c in (f"{float(s):.0%} mean", f"{float(s):.0%} std",
                                                                             f"{float(s):.0%} seeds")), "What it shows"]
    return "\n".join(md) + "\n", buf.getvalue(), wb_columns, wb_rows


def build(model="smollm2-135m", preset="cpu", seeds=None, extra=(), out_dir=ROOT / "results", criteria=None,
          allocations=None, sparsities=None, launcher=None, finished_only=False):
    """`finished_only`: run nothing, render the finished records (an incomplete ablation goes under its .partial
    name and is not logged to W&B)."""
    start = time.time()
    launch, extra, (criteria, allocations, sparsities, seeds) = sweep_setup(
        EXPERIMENT, model, preset, launcher, extra, criterion=criteria, allocation=allocations, sparsity=sparsities,
        seed=seeds)
    wandb_cfg = compose_config([f"preset={preset}", *extra])["wandb"]
    cells = collect(model, preset, criteria, allocations, sparsities, seeds, list(extra), launch,
                    run=not finished_only)
    waiting = finished_only and unfinished(cells, seeds)
    md, csv_text, columns, rows = render(model, preset, criteria, allocations, sparsities, seeds, cells,
                                         time.time() - start)
    out_dir = Path(out_dir)
    publish({out_dir / f"{EXPERIMENT}.md": md.encode(), out_dir / f"{EXPERIMENT}.csv": csv_text.encode()}, failures(cells),
            incomplete=waiting)
    if waiting:
        return md, cells
    notes = [r[-1] for r in rows]
    tracking.log_table_quietly(EXPERIMENT, columns, rows, wandb_cfg, group=EXPERIMENT, notes=notes,
                               settings={"model": model, "preset": preset, "seeds": seeds, "sparsities": sparsities,
                                         "criteria": criteria, "allocations": allocations, "overrides": list(extra)})
    return md, cells


def main(argv=None):
    args = grid_parser(__doc__.splitlines()[0], {
        "seeds": "the experiment config's", "criteria": "the experiment config's",
        "allocations": "the experiment config's", "sparsities": "the experiment config's"}, peek=True).parse_args(argv)
    md, _ = one_line_errors(lambda: build(**grid_options(args)))
    print(md)


if __name__ == "__main__":
    main()
