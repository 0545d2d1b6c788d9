"""Paper-style tables from run records: `python -m experiments.tables table1|table2 --models a,b --preset cpu`.

A table's grid is its experiment config, conf/experiment/<table>.yaml (the same grid `python -m experiments.run
-m +experiment=<table>` sweeps): its sparsity, its criteria x allocations, and its other settings. Table 1 of
the DLP paper: WikiText-2 perplexity at 70% unstructured sparsity, a Dense row, then Magnitude, SparseGPT and
Wanda each with Uniform, OWL and DLP, one column per model. Table 2: mean zero-shot accuracy over the seven
tasks (each task by the metric the papers report, acc or acc_norm), Dense, then SparseGPT and Wanda with Uniform,
OWL and DLP, plus a per-task table naming each task's metric and examples, and the seconds a cell's evaluation
took. `--criteria` / `--allocations` take any registered methods instead (dlp.registry); rows are labelled by
the registry. A model the config's `model_rows` names runs only those rows; its other cells read "not run".
Missing cells are run first (finished ones are reused); when a cell fails, the table with
`failed` in its cells goes beside the existing one under a `.partial` name (experiments.publish).
`--finished-only` runs nothing: a peek at a grid running elsewhere, from its finished records (the cells
without one read "not run"; an incomplete table goes under the `.partial` name too). Beside the
table we write what it was measured on, say plainly where an allocation does not beat uniform, and name each
model's best row with whether it beats the next best.

With `--seeds 0,1,2` every cell runs once per calibration seed (each its own record); a cell shows the mean ± std
over seeds, and each allocation is compared with uniform (and with DLP) under the same criterion, and a refined
criterion (Wanda + DSnoT) with itself unrefined under the same allocation, by the rule of experiments.verdicts
(perplexity: a paired t-test over seeds; zero-shot: a paired bootstrap over examples), which says "within noise"
when the difference is not consistent. One seed renders as it always has.
"""
import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from dlp.errors import UserError
from dlp.evaluation.answer_priors import references_for
from dlp.evaluation.zeroshot import TASKS as ZEROSHOT_TASKS
from dlp.registry import ALLOCATIONS, central_allocation, reference_allocation
from dlp.storage.paths import ROOT

from . import grids, tracking
from .cells import cell_overrides, failures, launcher_overrides, run_cells
from .commandline import FINISHED_ONLY_HELP, LAUNCHER_HELP, OneLineParser, one_line_errors, parse_seeds
from .config import compose_config
from .methods import method_label, split_method
from .publish import publish
from .records import machines_text
from .reports.markdown import md_table, provenance_lines
from .reports.numbers import NOT_RUN, by_seed, finished, on_common_seeds, ppl, summary, unfinished, waiting_line
from .reports.search_cost import cost_line
from .validation import check_choices
from .verdicts import Summary, Verdict, bootstrap_verdict, describe, paired_examples, paired_t_verdict


def zeroshot_mean(r: dict) -> float:
    """A record's mean zero-shot accuracy (%) over its tasks, each task by its own metric (records made before
    tasks had one: acc)."""
    zs = r["metrics"]["zeroshot"]
    return 100 * (zs["mean"] if "mean" in zs else zs["mean_acc"])


def mean_without(tasks: frozenset):
    """A record's mean zero-shot accuracy (%) over its tasks but `tasks`, each by its own metric."""
    def score(r: dict) -> float:
        kept = [t for t in r["metrics"]["zeroshot"]["tasks"] if t not in tasks]
        return sum(task_score(t)(r) for t in kept) / len(kept)
    return score


def task_score(task: str):
    """A record's accuracy (%) on one task, by the task's metric."""
    def score(r: dict) -> float:
        res = r["metrics"]["zeroshot"]["tasks"][task]
        return 100 * res[res.get("metric", "acc")]
    return score


# name -> (metric of a record, its label, lower is better)
METRICS = {
    "table1": (ppl, "WikiText-2 perplexity", True),
    "table2": (zeroshot_mean, "mean zero-shot accuracy (%) over 7 tasks", False),
}


@dataclass
class Grid:
    criteria: list[str]
    allocations: list[str]
    sparsity: float
    extra: tuple = ()  # (criterion, allocation) rows below the criteria x allocations: the config's `table_rows`
    # model -> the (criterion, allocation) rows it runs, for a model that runs fewer than all: the config's
    # `model_rows` (its other cells read "not run")
    model_rows: dict = field(default_factory=dict)
    # zero-shot tasks the verdicts are also given without: the config's `table_without_tasks`
    without_tasks: tuple = ()


def grid(table: str, criteria: list[str] | None = None, allocations: list[str] | None = None,
         sparsity: float | None = None) -> Grid:
    """The table's experiment config, with any of its criteria, allocations or sparsity replaced."""
    sweep = grids.axes(table, criterion=criteria, allocation=allocations)
    config = grids.experiment_config(table)
    # The config's extra rows come with its own grid only: --criteria/--allocations name the whole table.
    own = not (criteria or allocations)
    extra = [tuple(row.split("/")) for row in config.get("table_rows") or []] if own else []
    main = {(c, a) for c in sweep["criterion"] for a in sweep["allocation"]}
    g = Grid(sweep["criterion"], sweep["allocation"], float(config.sparsity if sparsity is None else sparsity),
             tuple(row for row in extra if row not in main),
             {str(m): frozenset(tuple(row.split("/")) for row in rows)
              for m, rows in (config.get("model_rows") or {}).items()} if own else {},
             tuple(config.get("table_without_tasks") or ()))
    unknown = sorted(set(g.without_tasks) - set(ZEROSHOT_TASKS))
    if unknown or (g.without_tasks and set(ZEROSHOT_TASKS) <= set(g.without_tasks)):
        raise UserError(f"conf/experiment/{table}.yaml: table_without_tasks must name some of the zero-shot tasks "
                        f"({', '.join(ZEROSHOT_TASKS)}), not all (got {', '.join(g.without_tasks)})")
    for model, rows in g.model_rows.items():
        unknown = sorted("/".join(r) for r in rows - main - set(g.extra))
        if unknown:
            raise UserError(f"conf/experiment/{table}.yaml: model_rows of {model} names {', '.join(unknown)}, "
                            "not a row of the table (criterion/allocation)")
    check_choices([f"criterion={','.join(g.criteria + [c for c, _ in g.extra])}",
                   f"allocation={','.join(g.allocations + [a for _, a in g.extra])}"])
    return g


def label(table: dict, name: str) -> str:
    return table[name].label


DENSE_ROW = ("Dense", "-")


def runs(g: Grid, model: str, method: tuple | None) -> bool:
    """Whether the table runs this (criterion, allocation) cell on `model`: every row (the dense row always),
    unless the config's `model_rows` names the rows that model runs."""
    return method is None or model not in g.model_rows or method in g.model_rows[model]


def not_run_cells(cells) -> set:
    """The (row labels, model) cells without a record: left out by `model_rows`, or not finished yet when the
    table is rendered from finished records only (a failed cell has its failure's record)."""
    return {key for key, records in cells.items() if not records}


def value_text(metric, records) -> str:
    return summary(metric, records).text() if records else NOT_RUN


def not_run_lines(g: Grid, cells, models) -> list[str]:
    """Why cells read "not run", said under the table so that it is never read as a failure: a model that runs
    fewer rows, and which; cells without a finished record yet (--finished-only)."""
    out = []
    for model in models:
        if model in g.model_rows:
            names = [" ".join(row) for row, method in table_rows(g) if method in g.model_rows[model]]
            out.append(f"{model} runs only {', '.join(names)} (and the dense row): the config's `model_rows`; its "
                       f"other cells read \"{NOT_RUN}\".")
    out += waiting_line(sum(1 for key in not_run_cells(cells) if runs(g, key[1], dict(table_rows(g))[key[0]])))
    return ["", *out] if out else []


def table_rows(g: Grid):
    """The rows in the paper's order, each as (its labels, (criterion, allocation)): the dense row first."""
    yield DENSE_ROW, None
    for crit, alloc in [*((c, a) for c in g.criteria for a in g.allocations), *g.extra]:
        yield (method_label(crit), label(ALLOCATIONS, alloc)), (crit, alloc)


def collect(table, g: Grid, models, preset, extra, seeds=None, launcher=None, run=True):
    """(row, model) -> the records of that cell, one per seed (the dense row's is one record for every seed)."""
    fixed = [f"preset={preset}", f"sparsity={g.sparsity}"]
    pruned = grids.cells(table, {"model": models, "criterion": g.criteria, "allocation": g.allocations,
                                 "seed": seeds}, fixed, list(extra))
    for crit, alloc in g.extra:
        pruned.update(grids.cells(table, {"model": models, "criterion": [crit], "allocation": [alloc], "seed": seeds},
                                  fixed, list(extra)))
    grid = {}
    for model in models:
        for row, method in table_rows(g):
            if runs(g, model, method):
                grid[(row, model)] = (pruned[(model, *method)] if method else
                                      grids.dense_cell(table, [f"model={model}", *fixed], list(extra)))
    out = run_cells(grid, table, launcher, run)
    return {(row, m): out.get((row, m), []) for m in models for row, _ in table_rows(g)}


def verdict(table, ours: list[dict], base: list[dict], without=frozenset()) -> Verdict:
    """`ours` against `base` (the same criterion and model, every seed of each), by the table's rule; zero-shot:
    over the tasks but those `without` names."""
    metric, _, lower_better = METRICS[table]
    if table == "table2":
        pairs = paired_examples(finished(ours), finished(base))
        pairs = pairs and tuple({t: v for t, v in side.items() if t not in without} for side in pairs)
        return (bootstrap_verdict(*pairs, higher_is_better=not lower_better) if pairs and pairs[0]
                else Verdict("no verdict", 0))
    return paired_t_verdict(by_seed(metric, ours), by_seed(metric, base), lower_better)


def statement(subject: str, v: Verdict, ours: Summary, base: Summary, lower_better: bool, what="seeds",
              against="uniform", scope="") -> str:
    """One plain sentence: whether `subject` beats `against` (uniform, DLP), and the evidence; `scope`: which
    seeds the numbers cover when not every finished one (on_common_seeds)."""
    numbers = f"{ours.text()} vs {base.text()}{f', {scope}' if scope else ''}"
    if v.word == "no verdict":
        direction = "lower" if ours.mean < base.mean else "higher" if ours.mean > base.mean else "equal"
        better = direction == ("lower" if lower_better else "higher")
        return (f"{subject} is {direction} than {against} ({numbers}; {'better' if better else 'not better'}), "
                f"but {describe(v, what)}.")
    if v.word == "within noise":
        return f"{subject} does NOT beat {against}: within noise ({numbers}; {describe(v, what)})."
    return (f"{subject} {'beats' if v.word == 'beats' else 'does NOT beat (loses to)'} {against} ({numbers}; "
            f"{describe(v, what)}).")


def paired_rows(table, g: Grid, cells, models, base_of, without=frozenset()):
    """(model, criterion, allocation, verdict, its summary, the base's summary, scope) for every row that
    `base_of(criterion, allocation)` gives a base row for, when the table has that row and the two share a finished
    seed; zero-shot tasks in `without` left out."""
    metric = mean_without(without) if without else METRICS[table][0]
    rows = [method for _, method in table_rows(g) if method]
    for model in models:
        for crit, alloc in rows:
            base_method = base_of(crit, alloc)
            if base_method is None or base_method not in rows:
                continue
            base = cells[((method_label(base_method[0]), label(ALLOCATIONS, base_method[1])), model)]
            ours = cells[((method_label(crit), label(ALLOCATIONS, alloc)), model)]
            ours, base, scope = on_common_seeds(ours, base)
            if base and ours:
                yield (model, crit, alloc, verdict(table, ours, base, without), summary(metric, ours),
                       summary(metric, base), scope)


def comparisons(table, g: Grid, cells, models, against: str | None = None, without=frozenset()):
    """paired_rows for every row whose criterion also has a row with the base allocation (`against`; default: the
    reference, uniform), but the base's own rows (and, against DLP, uniform's, which the uniform comparisons
    already cover)."""
    against = against or reference_allocation()
    skip = {against, reference_allocation()}
    return paired_rows(table, g, cells, models, lambda crit, alloc: None if alloc in skip else (crit, against),
                       without)


def allocation_lines(table, compared, against: str | None = None) -> list[str]:
    """The statements for these comparisons (rows against the base allocation `against`; default: uniform)."""
    lower_better = METRICS[table][2]
    what = "examples" if table == "table2" else "seeds"
    base = label(ALLOCATIONS, against) if against else "uniform"
    return [statement(f"{model}, {method_label(crit)}: {label(ALLOCATIONS, alloc)}", v, ours, summ, lower_better,
                      what, base, scope)
            for model, crit, alloc, v, ours, summ, scope in compared]


def notes(table, g: Grid, cells, models, against: str | None = None, without=frozenset()) -> list[str]:
    """Plain statements of where each allocation beats the base (uniform, or DLP) under the same criterion, or not
    (zero-shot: over the tasks but those in `without`)."""
    return allocation_lines(table, comparisons(table, g, cells, models, against, without), against)


def refinement_comparisons(table, g: Grid, cells, models, without=frozenset()):
    """paired_rows for every row whose criterion takes a refinement (Wanda + DSnoT) against its criterion unrefined
    under the same allocation: whether the refinement itself helps, which the comparisons between allocations
    (within one criterion row) never say."""
    def unrefined(crit, alloc):
        plain, refinement = split_method(crit)
        return (plain, alloc) if refinement else None

    return paired_rows(table, g, cells, models, unrefined, without)


def refinement_lines(table, compared) -> list[str]:
    """The statements for these refinement_comparisons."""
    lower_better = METRICS[table][2]
    what = "examples" if table == "table2" else "seeds"
    return [statement(f"{model}, {label(ALLOCATIONS, alloc)}: {method_label(crit)}", v, ours, summ, lower_better,
                      what, method_label(split_method(crit)[0]), scope)
            for model, crit, alloc, v, ours, summ, scope in compared]


def refinement_notes(table, g: Grid, cells, models, without=frozenset()) -> list[str]:
    """Plain statements of where a refined criterion beats the same criterion unrefined, or not."""
    return refinement_lines(table, refinement_comparisons(table, g, cells, models, without))


def best_lines(table, g: Grid, cells, models) -> list[str]:
    """Per model, the pruned row with the best mean and whether it beats the next best (the same paired rule as
    every verdict here): which method a model favours, said with its evidence."""
    metric, _, lower_better = METRICS[table]
    what = "examples" if table == "table2" else "seeds"
    out = []
    for model in models:
        ranked = sorted(((summary(metric, cells[(row, model)]), row) for row, method in table_rows(g)
                         if method and finished(cells[(row, model)])), key=lambda t: t[0].mean,
                        reverse=not lower_better)
        if len(ranked) < 2:
            continue
        (_, row), (_, next_row) = ranked[:2]
        ours, base, scope = on_common_seeds(cells[(row, model)], cells[(next_row, model)])
        if not ours:
            out.append(f"{model}: {' '.join(row)} has the best mean, {' '.join(next_row)} the next; they share no "
                       "finished seed to compare on.")
            continue
        out.append(statement(f"{model}: {' '.join(row)}", verdict(table, ours, base), summary(metric, ours),
                             summary(metric, base), lower_better, what, f"the next best, {' '.join(next_row)}", scope))
    return ["", "Best per model:", *[f"- {line}" for line in out]] if out else []


def per_task_lines(cells, models, skip=frozenset()) -> list[str]:
    """Table 2's companion: accuracy (%) per task by its metric, one block per model, from each record's own
    numbers (mean ± std over seeds when there are several); the header names each task's metric and examples."""
    out = []
    for model in models:
        ok = [r for (_, m), records in cells.items() if m == model for r in finished(records)]
        if not ok:
            continue
        zs = ok[0]["metrics"]["zeroshot"]
        tasks = list(zs["tasks"])
        rows = []
        for (label, m), records in cells.items():
            if m != model or (label, m) in skip:
                continue
            rows.append([*label, *(summary(task_score(t), records).text() for t in tasks),
                         summary(zeroshot_mean, records).text()])
        references, said = reference_rows(zs, tasks)
        header = [f"{t} ({zs['tasks'][t].get('metric', 'acc')})" for t in tasks]
        examples = [f"{t}: {examples_text(zs, t)}" for t in tasks]
        out += ["", f"### {model}: accuracy per task (%; harness {zs['harness_version']})", "",
                *md_table(["Method", "Layerwise", *header, "Mean"], rows + references), "",
                f"Examples per task: {'; '.join(examples)}."
                + (f" A limit of {zs['limit']} examples per task was set for this run." if zs.get("limit") else ""),
                *said, *seconds_line(ok)]
    return out


def reference_rows(zs: dict, tasks: list[str]) -> tuple[list[list[str]], list[str]]:
    """Two rows that read no text, over the examples a record scored (dlp.evaluation.answer_priors): chance, and
    always the answer most often gold there; and the line that says what they are. Nothing for records without
    per-example results."""
    hashes = {t: (zs["tasks"][t].get("examples") or {}).get("doc_hash") for t in tasks}
    if not all(hashes.values()):
        return [], []
    try:
        refs = references_for(hashes)
    except UserError as e:  # the task files cannot be built here: the table stands without its references
        return [], ["", f"No reference rows: {e}"]
    rows = []
    for name, key in (("Chance", "chance"), ("Most frequent answer", "most_frequent")):
        values = [100 * refs[t][key] if refs[t] else None for t in tasks]
        mean = f"{sum(values) / len(values):.2f}" if None not in values else "n/a"
        rows.append([name, "-", *(f"{v:.2f}" if v is not None else "n/a" for v in values), mean])
    answers = [f"{t}: {refs[t]['label']!r}" if refs[t]["label"] else f"{t}: choice {refs[t]['answer'] + 1}"
               for t in tasks if refs[t]]
    line = ("Reference rows, on the same examples, reading no text: Chance is a uniform random pick; Most frequent "
            f"answer always gives the answer that is gold most often there ({'; '.join(answers)}). A pruned model "
            "that leans to that answer gains on the task without having kept more.")
    missing = [t for t in tasks if not refs[t]]
    if missing:
        line += f" n/a: {', '.join(missing)} scored examples the local task files do not hold."
    return rows, ["", line]


def examples_text(zs: dict, task: str) -> str:
    """The examples a task scored, as its record says (records made before it did: the first N, or all)."""
    res = zs["tasks"][task]
    if res.get("selection"):
        return res["selection"]
    return f"first {zs['limit']}" if zs.get("limit") else f"all ({res.get('n')})"


def seconds_line(records: list[dict]) -> list[str]:
    """What the zero-shot evaluation of a cell cost, from the records' timings, with the machine it ran on."""
    timed = [(bool(r["data"].get("calibration")), r["timings_s"]["zeroshot"]) for r in records
             if "zeroshot" in r.get("timings_s", {})]  # (pruned: a dense record has no calibration, seconds)
    dense, pruned = ([s for calibrated, s in timed if calibrated == want] for want in (False, True))
    if not dense and not pruned:
        return []
    parts = ([f"dense {dense[0]:.0f} s"] if dense else []) + (
        [f"pruned cells {min(pruned):.0f} to {max(pruned):.0f} s ({len(pruned)} records)"] if pruned else [])
    batch = records[0]["config"].get("zeroshot", {}).get("batch_size")
    return ["", f"Zero-shot evaluation per cell: {', '.join(parts)}; batch {batch}; {machines_text(records)}."]


def seeds_line(cells, seeds, skip=frozenset()) -> list[str]:
    """How many seeds each number averages, said once under the table (nothing when there is one seed); `skip`:
    the cells not run."""
    if not seeds or len(seeds) < 2:
        return []
    short = sorted({len(finished(records)) for key, records in cells.items()
                    if key[0][0] != "Dense" and key not in skip} - {len(seeds)})
    return ["", f"Mean ± standard deviation over {len(seeds)} calibration seeds ({', '.join(map(str, seeds))}; "
            "the dense model has no calibration, so one run)"
            + (f"; some cells have only {', '.join(map(str, short))} finished seeds" if short else "") + "."]


def csv_rows(table, g: Grid, cells, models, seeds):
    """One column per model for one seed (as the paper); mean, std and n columns per model for several."""
    metric = METRICS[table][0]
    several = bool(seeds) and len(seeds) > 1
    header = ["Method", "Layerwise", *(c for m in models for c in ((m, f"{m} std", f"{m} n") if several else (m,)))]
    rows = []
    for row, _ in table_rows(g):
        out = [row[0], row[1]]
        for m in models:
            s = summary(metric, cells[(row, m)])
            text = NOT_RUN if not cells[(row, m)] else "failed" if s.n == 0 else f"{s.mean:.2f}"
            out += [text, f"{s.std:.2f}" if s.n else "", str(s.n)] if several else [text]
        rows.append(out)
    return header, rows


def render(table, g: Grid, cells, models, preset, elapsed, seeds=None, blocks=None):
    """The table as markdown, CSV and LaTeX; `blocks`: its verdict_blocks when the caller has them already."""
    metric, metric_label, lower_better = METRICS[table]
    header, skip = ["Method", "Layerwise", *models], not_run_cells(cells)
    rows = [[row[0], row[1], *(value_text(metric, cells[(row, m)]) for m in models)] for row, _ in table_rows(g)]
    md = [f"# Table {table[-1]}: {metric_label} at {g.sparsity:.0%} unstructured sparsity",
          "", *md_table(header, rows), *seeds_line(cells, seeds, skip), *not_run_lines(g, cells, models)]
    md += ["", f"{'Lower' if lower_better else 'Higher'} is better. Measured on:", *provenance_lines(cells, models, preset)]
    if table == "table2":
        md += per_task_lines(cells, models, skip)
    for block in verdict_blocks(table, g, cells, models) if blocks is None else blocks:
        if not block.lines and block.column != reference_allocation():  # against uniform is said even when empty
            continue
        leaving = f", without {', '.join(block.without)} (mean over the other tasks)" if block.without else ""
        md += ["", f"Against {block.base}{leaving}:", *[f"- {n}" for n in block.lines]]
    md += best_lines(table, g, cells, models)
    costs = [line for model in models for row, method in table_rows(g) if method
             for line in [cost_line(f"{model}, {' '.join(row)}", cells[(row, model)])] if line]
    if costs:
        md += ["", "Search cost per cell, on the machine named above:", *[f"- {c}" for c in costs]]
    md += ["",
           f"Table rendered in {elapsed:.0f} s (cells reused from results/runs/ count as 0)."]
    buf = io.StringIO()
    csv_header, csv_body = csv_rows(table, g, cells, models, seeds)
    csv.writer(buf).writerows([csv_header, *csv_body])
    tex = ["\\begin{tabular}{ll" + "r" * len(models) + "}", "\\toprule",
           " & ".join(header).replace("_", "\\_") + " \\\\", "\\midrule"]
    tex += [" & ".join(c.replace("±", "$\\pm$") for c in r) + " \\\\" for r in rows]
    tex += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(md) + "\n", buf.getvalue(), "\n".join(tex) + "\n"


def tasks_left_out(table, g: Grid, cells) -> tuple:
    """The config's `table_without_tasks` that the records scored, when others remain: the tasks the verdicts are
    given without as well (nothing to leave out of a table that never scored them)."""
    if table != "table2":
        return ()
    scored = {t for records in cells.values() for r in finished(records) for t in r["metrics"]["zeroshot"]["tasks"]}
    out = tuple(t for t in g.without_tasks if t in scored)
    return out if scored - set(out) else ()


def wandb_table(table, g: Grid, cells, models, blocks=None) -> tuple[list[str], list[list]]:
    """The table as W&B shows it: the paper's rows, and per model the mean, std, seeds and verdict columns (against
    uniform, against the allocation this suite reproduces, and for refined criteria against themselves unrefined),
    read from `blocks` (its verdict_blocks) when the caller has them already."""
    metric = METRICS[table][0]
    columns_of = [b for b in (verdict_blocks(table, g, cells, models) if blocks is None else blocks) if not b.without]
    columns = ["Method", "Layerwise", *(c for m in models for c in (f"{m} mean", f"{m} std", f"{m} seeds",
                                                                    *(f"{m} vs {b.column}" for b in columns_of)))]
    data = []
    for row, _ in table_rows(g):
        out = [row[0], row[1]]
        for m in models:
            s = summary(metric, cells[(row, m)])
            words = [v.word if v else "" for v in (b.verdicts.get((m, *row)) for b in columns_of)]
            out += [s.mean if s.n else None, s.std if s.n else None, s.n, *words]
        data.append(out)
    return columns, data


class Block(NamedTuple):
    """One set of verdicts a table gives: the base's label, the zero-shot tasks left out, the verdict lines, each
    compared row's Verdict by (model, criterion label, allocation label), and the W&B column it fills."""
    base: str
    without: tuple
    lines: list
    verdicts: dict
    column: str


def by_row(compared) -> dict:
    """Each comparison's Verdict under the row labels the tables show: (model, criterion, allocation)."""
    return {(model, method_label(crit), label(ALLOCATIONS, alloc)): v for model, crit, alloc, v, *_ in compared}


def verdict_blocks(table, g: Grid, cells, models):
    """A Block for every set of verdicts a table gives, each computed once (Table 2's are bootstraps of thousands
    of draws) for the markdown, the W&B notes and its verdict columns alike: against uniform, then DLP, then, when
    the table has refined criteria, those against themselves unrefined; for Table 2 again without the tasks the
    config leaves out. A block may have no lines (no row to compare); its W&B column is then empty."""
    central = central_allocation()
    refined = any(method and split_method(method[0])[1] for _, method in table_rows(g))
    for without in ((), *([left_out] if (left_out := tasks_left_out(table, g, cells)) else [])):
        for against in (None, *([central] if central else [])):
            compared = list(comparisons(table, g, cells, models, against, frozenset(without)))
            yield Block("uniform" if against is None else label(ALLOCATIONS, against), without,
                        allocation_lines(table, compared, against), by_row(compared), against or reference_allocation())
        if refined:
            compared = list(refinement_comparisons(table, g, cells, models, frozenset(without)))
            yield Block("the unrefined criterion", without, refinement_lines(table, compared), by_row(compared),
                        "unrefined")


def all_notes(blocks) -> list[str]:
    """Every verdict line of these verdict_blocks, as the markdown gives them, those without some tasks saying so."""
    return [n + (f" (without {', '.join(b.without)})" if b.without else "") for b in blocks for n in b.lines]


def build(table, models, preset="cpu", sparsity=None, extra=(), out_dir=ROOT / "results", criteria=None,
          allocations=None, seeds=None, launcher=None, finished_only=False):
    """`launcher`: run the missing cells through this Hydra launcher (experiments.cells); `hydra.*` overrides in
    `extra` are its options. `finished_only`: run nothing, render the finished records (the table then goes
    under its .partial name if any cell it runs has none, and is not logged to W&B)."""
    start = time.time()
    launch = launcher_overrides(launcher, list(extra))
    extra = cell_overrides(list(extra))
    g = grid(table, criteria, allocations, sparsity)
    check_choices([f"model={','.join(models)}", f"preset={preset}"])  # one line now, not one failed cell per row
    wandb_cfg = compose_config([f"preset={preset}", *extra])["wandb"]  # also refuses bad overrides before any cell
    cells = collect(table, g, models, preset, list(extra), seeds, launch, run=not finished_only)
    blocks = list(verdict_blocks(table, g, cells, models))
    md, csv_text, tex = render(table, g, cells, models, preset, time.time() - start, seeds, blocks)
    waiting = finished_only and unfinished({(row, m): cells[(row, m)] for m in models for row, method in table_rows(g)
                                            if runs(g, m, method)}, seeds or [0], {(DENSE_ROW, m) for m in models})
    out_dir = Path(out_dir)
    # Several seeds go beside the single-seed table, not over it: results/table1-3seeds.md next to table1.md.
    stem = table if not seeds or len(seeds) == 1 else f"{table}-{len(seeds)}seeds"
    publish({out_dir / f"{stem}.{suffix}": text.encode() for suffix, text in (("md", md), ("csv", csv_text), ("tex", tex))},
            failures(cells), incomplete=waiting)
    if waiting:
        return md, cells
    tracking.log_table_quietly(table, *wandb_table(table, g, cells, models, blocks), wandb_cfg, group=table,
                               notes=all_notes(blocks),
                               settings={"models": models, "preset": preset, "seeds": seeds, "sparsity": g.sparsity,
                                         "criteria": g.criteria, "allocations": g.allocations, "overrides": list(extra)})
    return md, cells


def table1(models, preset="cpu", sparsity=None, extra=(), out_dir=ROOT / "results", **options):
    return build("table1", models, preset, sparsity, extra, out_dir, **options)


def table2(models, preset="cpu", sparsity=None, extra=(), out_dir=ROOT / "results", **options):
    return build("table2", models, preset, sparsity, extra, out_dir, **options)


def main(argv=None):
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=sorted(METRICS))
    parser.add_argument("--models", default="smollm2-135m", help="comma-separated model configs (conf/model)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--sparsity", type=float, default=None, help="default: the experiment config's")
    parser.add_argument("--criteria", default=None, help="comma-separated registered criteria (default: the "
                        "experiment config's)")
    parser.add_argument("--allocations", default=None, help="comma-separated registered allocations")
    parser.add_argument("--seeds", default=None, help="comma-separated calibration seeds, each cell run once per "
                        "seed (default: the config's seed)")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--launcher", default=None, help=LAUNCHER_HELP)
    parser.add_argument("--finished-only", action="store_true", help=FINISHED_ONLY_HELP)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every cell (hydra.launcher.* for the "
                        "launcher)")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options, as `make table1 OVERRIDES=` puts them
    split = lambda text: text.split(",") if text else None  # noqa: E731
    md, _ = one_line_errors(lambda: build(args.table, args.models.split(","), args.preset, args.sparsity,
                                          args.overrides, args.out, split(args.criteria), split(args.allocations),
                                          parse_seeds(args.seeds), args.launcher, args.finished_only))
    print(md)


if __name__ == "__main__":
    main()
