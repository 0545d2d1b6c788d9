"""A grid's records as numbers: each cell's finished records, their summary over seeds, and an allocation's
verdict against another in a grid of perplexity cells (the tables, the ablation and the curves read these)."""
import math

from ..records import commit_label
from ..verdicts import Summary, Verdict, paired_t_verdict, summarize


NOT_RUN = "not run"  # a cell without a record: not drawn for this model, or not finished yet (--finished-only)


def waiting_line(n: int) -> list[str]:
    """Why `n` cells read "not run" when a grid is rendered from its finished records only, so that it is never
    read as a failure; nothing when every cell has a record."""
    return [f"{n} cell{'s' if n > 1 else ''} without a finished record yet read \"{NOT_RUN}\": rendered from the "
            "finished records only (--finished-only); cells with only some seeds finished average those."] if n else []


def unfinished(cells: dict, seeds, one_record=frozenset()) -> bool:
    """Whether some cell has fewer finished records than it will have: one per seed, or one for the cells
    `one_record` names (the dense model's: no calibration, one record whatever the seeds). A grid still running."""
    return any(len(finished(records)) < (1 if key in one_record else len(seeds)) for key, records in cells.items())


def ppl(record: dict) -> float:
    """A record's perplexity on its evaluation corpus: the metric of Table 1, the ablation and the curves."""
    return record["metrics"]["ppl"]


def finished(records: list[dict]) -> list[dict]:
    """The cell's finished records, each once (every seed of the dense row reads the same record)."""
    seen, out = set(), []
    for r in records:
        if r.get("status") == "ok" and r["key"] not in seen:
            seen.add(r["key"])
            out.append(r)
    return out


def summary(metric, records: list[dict]) -> Summary:
    return summarize(metric(r) for r in finished(records))


def by_seed(metric, records: list[dict]) -> dict:
    return {r["config"]["seed"]: metric(r) for r in finished(records)}


def on_common_seeds(ours: list[dict], base: list[dict]) -> tuple[list[dict], list[dict], str]:
    """Two cells' finished records on the seeds both finished, and what was left out (empty when nothing was):
    a comparison of means over different seeds would credit one row with an easier seed."""
    a, b = finished(ours), finished(base)
    seeds_a, seeds_b = ({r["config"]["seed"] for r in x} for x in (a, b))
    if seeds_a == seeds_b:
        return a, b, ""
    both = seeds_a & seeds_b
    return ([r for r in a if r["config"]["seed"] in both], [r for r in b if r["config"]["seed"] in both],
            f"on the {len(both)} seed{'' if len(both) == 1 else 's'} both finished")


def seeds_text(records: list[dict]) -> str:
    """The seeds of a cell's finished records, as csv files list them: '0 1 2'."""
    return " ".join(str(r["config"]["seed"]) for r in finished(records))


def ppl_verdict(cells: dict, crit: str, ours: str, base: str, s: float) -> Verdict | None:
    """In a grid of perplexity cells keyed (criterion, allocation, sparsity): allocation `ours` against `base`
    under the same criterion and sparsity, paired over the seeds both finished. None for an allocation against
    itself, or where either cell is not in the grid or has no finished record."""
    a, b = cells.get((crit, ours, s)), cells.get((crit, base, s))
    if ours == base or not a or not b or not finished(a) or not finished(b):
        return None
    return paired_t_verdict(by_seed(ppl, a), by_seed(ppl, b), lower_is_better=True)


VERDICT_COLUMNS = ["vs_uniform", "ratio_to_uniform", "p"]


def verdict_columns(v: Verdict | None) -> list:
    """A csv row's verdict against uniform: the word, the geometric-mean perplexity ratio over the paired seeds
    and the test's p-value (empty where there is no comparison, or no test with one seed)."""
    if v is None:
        return ["", "", ""]
    ratio = f"{math.exp(v.difference):.6g}" if v.difference is not None else ""
    return [v.word, ratio, f"{v.p:.4g}" if v.p is not None else ""]


def commits(records) -> str:
    """The code versions the cells ran under (a table can mix cells from several commits)."""
    return ", ".join(sorted({commit_label(r["environment"]) for r in records}))
