"""Does an allocation win by how it ranks blocks, or by the spread of sparsities it allows?

`python -m experiments.ablation --model smollm2-135m --preset cpu --seeds 0,1,2` runs the grid of
conf/experiment/ablation.yaml (the same one `python -m experiments.run -m +experiment=ablation` sweeps): per
criterion, uniform and five allocations of one spread (0.15 either side of the target, DLP's α) — a linear ramp
over depth, DLP's sparsities shuffled and reversed, OWL at λ = 0.15, DLP itself — at each sparsity, once per
calibration seed. It writes results/ablation.{md,csv}: WikiText-2 perplexity as mean ± std over seeds, and per
row one plain sentence of what the row shows, from the verdicts of experiments.verdicts (a paired t-test over
seeds on log perplexity).
"""
import csv
import functools
import io
import time
from pathlib import Path

from dlp.io import write_atomic
from dlp.paths import ROOT
from dlp.registry import ALLOCATIONS, CRITERIA

from . import tracking
from .cells import cell_overrides, launcher_overrides, run_cells
from .commandline import grid_options, grid_parser, one_line_errors
from .config import compose_config
from .tables import (VERDICT_COLUMNS, experiment_config, md_table, ppl, ppl_verdict, provenance_lines, seeds_text,
                     summary, sweep_lists, verdict_columns)
from .validation import check_choices

EXPERIMENT = "ablation"


@functools.lru_cache(maxsize=None)
def row_label(choice: str) -> str:
    """An allocation choice as a row names it: its method's label and the parameters that set its spread or
    its source (a YAML variant such as owl_matched is the method with other parameters)."""
    cfg = compose_config([f"allocation={choice}"])["allocation"]
    cls = ALLOCATIONS[cfg["name"]]
    if "of" in cfg:
        return f"{cls.label} {ALLOCATIONS[cfg['of']].label}"
    spread = {"alpha": "α", "lam": "λ"}
    shown = [f"{spread[k]} = {v}" for k, v in cfg.items() if k in spread]
    return f"{cls.label} ({', '.join(shown)})" if shown else cls.label


def collect(model, preset, criteria, allocations, sparsities, seeds, extra, launcher=None):
    """(criterion, allocation, sparsity) -> that cell's records, one per seed."""
    grid = {(crit, alloc, s): [[f"+experiment={EXPERIMENT}", f"model={model}", f"preset={preset}", f"criterion={crit}",
                                f"allocation={alloc}", f"sparsity={s}", *extra, f"seed={seed}"] for seed in seeds]
            for crit in criteria for alloc in allocations for s in sparsities}
    return run_cells(grid, EXPERIMENT, launcher)


def pct(values) -> str:
    return " and ".join(f"{float(s):.0%}" for s in values)


def across(cells, crit, ours, base, sparsities) -> tuple[str, list]:
    """How `ours` compares with `base` at each sparsity, in words ('beats uniform at 60% and 70%'), and the
    sparsities at which it beats it."""
    words = {}
    for s in sparsities:
        v = ppl_verdict(cells, crit, ours, base, s)
        words[s] = "failed against" if v is None else {"beats": "beats", "loses to": "loses to",
                                                        "within noise": "is within noise of",
                                                        "no verdict": "has no verdict (one seed) against"}[v.word]
    name = "uniform" if base == "uniform" else row_label(base)
    groups = {}
    for s, w in words.items():
        groups.setdefault(w, []).append(s)
    text = ", ".join(f"{w} {name} at {pct(ss)}" for w, ss in groups.items())
    return text, groups.get("beats", [])


def ranking(wins: list, sparsities, what: str) -> str:
    """What DLP beating (or not) a control of the same spread says about DLP's ranking of blocks."""
    if len(wins) == len(sparsities):
        return f"DLP's ranking of blocks matters beyond {what}"
    if not wins:
        return f"nothing here shows DLP's ranking of blocks doing better than {what}"
    return f"DLP's ranking of blocks matters beyond {what} at {pct(wins)} only"


def sentence(cells, crit, alloc, sparsities, allocations) -> str:
    """What the row shows, in one plain sentence built from its verdicts."""
    if alloc == "uniform":
        return "Every block at the target: the reference for the rows below."
    vs_uniform = across(cells, crit, alloc, "uniform", sparsities)[0] if "uniform" in allocations else ""
    subject = {"dlp": "DLP", "linear": "A ramp over depth that reads no data",
               "shuffled": "DLP's sparsities shuffled across blocks",
               "reversed": "DLP's sparsities in reverse block order",
               "owl_matched": "OWL at DLP's spread"}.get(alloc, row_label(alloc))
    plural = alloc in ("shuffled", "reversed")
    if plural:  # "sparsities ... are": put the verbs in the plural
        vs_uniform = (vs_uniform.replace("beats", "beat").replace("loses to", "lose to").replace("is within", "are within")
                      .replace("has no", "have no"))
    control = {"linear": "a plain ramp over depth", "shuffled": "the spread it allows (its sparsities in any order)",
               "reversed": "the spread it allows (its sparsities in reverse order)",
               "owl_matched": "OWL's ranking at the same spread"}
    if alloc == "dlp" or alloc not in control or "dlp" not in allocations:
        return f"{subject} {vs_uniform}."
    dlp_vs, wins = across(cells, crit, "dlp", alloc, sparsities)
    return f"{subject} {vs_uniform}; DLP {dlp_vs}: {ranking(wins, sparsities, control[alloc])}."


def render(model, preset, criteria, allocations, sparsities, seeds, cells, elapsed) -> tuple[str, str, list, list]:
    header = ["Allocation", *(f"{float(s):.0%}" for s in sparsities), "What it shows"]
    md = [f"# Ablation: ranking or spread? WikiText-2 perplexity of {model}", "",
          f"Mean ± standard deviation over {len(seeds)} calibration seed{'s' if len(seeds) > 1 else ''} "
          f"({', '.join(map(str, seeds))}); lower is better. Every non-uniform row spans the same spread of block "
          "sparsities (0.15 either side of the target). Verdicts: paired two-sided t-test over seeds on log "
          "perplexity at 5% (experiments/verdicts.py); 'within noise' when it does not reject."]
    csv_rows = [["criterion", "allocation", "sparsity", "mean", "std", "n", "seeds", *VERDICT_COLUMNS]]
    wb_rows = []
    for crit in criteria:
        rows = []
        for alloc in allocations:
            stats = [summary(ppl, cells[(crit, alloc, s)]) for s in sparsities]
            said = sentence(cells, crit, alloc, sparsities, allocations)
            rows.append([row_label(alloc), *(x.text() for x in stats), said])
            for s, x in zip(sparsities, stats):
                v = ppl_verdict(cells, crit, alloc, "uniform", s)
                csv_rows.append([crit, alloc, s, f"{x.mean:.6g}" if x.n else "failed", f"{x.std:.6g}" if x.n else "",
                                 x.n, seeds_text(cells[(crit, alloc, s)]), *verdict_columns(v)])
            wb_rows.append([CRITERIA[crit].label, row_label(alloc),
                            *(v for x in stats for v in (x.mean if x.n else None, x.std if x.n else None, x.n)), said])
        md += ["", f"## {CRITERIA[crit].label}", "", *md_table(header, rows)]
    by_model = {(k, model): v for k, v in cells.items()}
    md += ["", "Measured on:", *provenance_lines(by_model, [model], preset), "",
           f"Table rendered in {elapsed:.0f} s (cells reused from results/runs/ count as 0)."]
    buf = io.StringIO()
    csv.writer(buf).writerows(csv_rows)
    wb_columns = ["Method", "Layerwise", *(c for s in sparsities for c in (f"{float(s):.0%} mean", f"{float(s):.0%} std",
                                                                             f"{float(s):.0%} seeds")), "What it shows"]
    return "\n".join(md) + "\n", buf.getvalue(), wb_columns, wb_rows


def build(model="smollm2-135m", preset="cpu", seeds=None, extra=(), out_dir=ROOT / "results", criteria=None,
          allocations=None, sparsities=None, launcher=None):
    start = time.time()
    launch, extra = launcher_overrides(launcher, list(extra)), cell_overrides(list(extra))
    sweep = sweep_lists(experiment_config(EXPERIMENT))
    criteria = criteria or sweep["criterion"]
    allocations = allocations or sweep["allocation"]
    sparsities = sparsities or [float(s) for s in sweep["sparsity"]]
    seeds = seeds or [int(s) for s in sweep["seed"]]
    check_choices([f"model={model}", f"preset={preset}", f"criterion={','.join(criteria)}",
                   f"allocation={','.join(allocations)}"])
    wandb_cfg = compose_config([f"preset={preset}", *extra])["wandb"]
    cells = collect(model, preset, criteria, allocations, sparsities, seeds, list(extra), launch)
    md, csv_text, columns, rows = render(model, preset, criteria, allocations, sparsities, seeds, cells,
                                         time.time() - start)
    out_dir = Path(out_dir)
    write_atomic(out_dir / f"{EXPERIMENT}.md", md.encode())
    write_atomic(out_dir / f"{EXPERIMENT}.csv", csv_text.encode())
    notes = [r[-1] for r in rows]
    tracking.log_table_quietly(EXPERIMENT, columns, rows, wandb_cfg, group=EXPERIMENT, notes=notes,
                               settings={"model": model, "preset": preset, "seeds": seeds, "sparsities": sparsities,
                                         "criteria": criteria, "allocations": allocations, "overrides": list(extra)})
    return md, cells


def main(argv=None):
    args = grid_parser(__doc__.splitlines()[0], {
        "seeds": "the experiment config's", "criteria": "the experiment config's",
        "allocations": "the experiment config's", "sparsities": "the experiment config's"}).parse_args(argv)
    md, _ = one_line_errors(lambda: build(**grid_options(args)))
    print(md)


if __name__ == "__main__":
    main()
