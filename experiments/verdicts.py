"""Which differences are real: mean ± std over calibration seeds, and a verdict for each comparison.

Perplexity: a method beats (or loses to) a baseline only when a paired two-sided t-test on the per-seed
differences of log perplexity rejects "no difference" at the 5% level; the pairs are the two methods run on the
same calibration draw. Logs, because at high sparsity perplexity spans orders of magnitude and its noise grows
with it: a ratio is what stays comparable. One seed gives no verdict; two or more are needed, and with three the
test needs |t| > 4.30, so only a large, consistent difference passes.

Zero-shot accuracy: the pairs are examples (the same examples for both methods, matched by their content, each
example's accuracy, by its task's metric, averaged over the seeds a method ran with). A percentile bootstrap over
examples, resampled within each task, gives a 95% interval for the difference of the mean-over-tasks accuracy; the
verdict is a win or a loss only when that interval excludes zero.
"""
import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.05  # two-sided test level, and 1 - the interval's coverage


@dataclass
class Summary:
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for one value
    n: int

    def text(self, digits: int = 2) -> str:
        if self.n == 0:
            return "failed"
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def summarize(values) -> Summary:
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return Summary(math.nan, math.nan, 0)
    return Summary(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size))


@dataclass
class Verdict:
    word: str  # "beats", "loses to", "within noise", or "no verdict"
    n: int  # pairs (seeds, or examples for zero-shot)
    p: float | None = None  # the test's p-value, when there was a test
    interval: tuple[float, float] | None = None  # the bootstrap interval, for zero-shot
    difference: float | None = None  # ours - baseline: mean log-ratio (perplexity) or accuracy points

    @property
    def real(self) -> bool:
        return self.word in ("beats", "loses to")


def paired_t_verdict(ours: dict, base: dict, lower_is_better: bool = True) -> Verdict:
    """`ours` and `base` map a calibration seed to a metric (> 0); only seeds both have are paired."""
    from scipy import stats

    seeds = sorted(set(ours) & set(base))
    d = np.array([math.log(ours[s]) - math.log(base[s]) for s in seeds])
    if d.size < 2:
        return Verdict("no verdict", int(d.size), difference=float(d.mean()) if d.size else None)
    if np.all(d == d[0]):  # no spread: the t statistic is undefined; a constant nonzero shift is consistent
        p = 1.0 if d[0] == 0 else 0.0
    else:
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    better = (d.mean() < 0) == lower_is_better
    word = ("beats" if better else "loses to") if p < LEVEL else "within noise"
    return Verdict(word, int(d.size), p=p, difference=float(d.mean()))


def bootstrap_interval(ours: dict, base: dict, iters: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """`ours[task]` and `base[task]`: per-example scores, aligned (the same examples in the same order).

    Returns the difference of the mean-over-tasks score (ours - base) and its percentile bootstrap interval at
    1 - LEVEL, resampling examples with replacement within each task, the same draw for both methods."""
    rng = np.random.default_rng(seed)
    tasks = sorted(ours)
    point = float(np.mean([np.mean(np.subtract(ours[t], base[t])) for t in tasks]))
    totals = np.zeros(iters)
    chunk = 1000  # resample in chunks: iters x examples indices would not fit in memory for a full task
    for t in tasks:
        d = np.subtract(ours[t], base[t], dtype=np.float64)
        for start in range(0, iters, chunk):
            k = min(chunk, iters - start)
            totals[start:start + k] += d[rng.integers(0, d.size, size=(k, d.size))].mean(axis=1)
    totals /= len(tasks)
    lo, hi = np.quantile(totals, [LEVEL / 2, 1 - LEVEL / 2])
    return point, float(lo), float(hi)


def bootstrap_verdict(ours: dict, base: dict, higher_is_better: bool = True, iters: int = 10_000) -> Verdict:
    point, lo, hi = bootstrap_interval(ours, base, iters)
    n = sum(len(v) for v in ours.values())
    if lo > 0 or hi < 0:
        better = (point > 0) == higher_is_better
        word = "beats" if better else "loses to"
    else:
        word = "within noise"
    return Verdict(word, n, interval=(lo, hi), difference=point)


def paired_examples(records_a: list[dict], records_b: list[dict]) -> tuple[dict, dict] | None:
    """Per-task example accuracies (%, as tables print them, by each task's metric: acc or acc_norm) of two
    methods on the examples both have, each averaged over its records (seeds); None when a record has no
    per-example results for its metric."""
    def by_example(records):
        tasks = {}
        for r in records:
            for task, res in r["metrics"]["zeroshot"]["tasks"].items():
                ex = res.get("examples")
                metric = res.get("metric", "acc")
                if not ex or metric not in ex:
                    return None
                for h, acc in zip(ex["doc_hash"], ex[metric]):
                    tasks.setdefault(task, {}).setdefault(h, []).append(acc)
        return {t: {h: 100 * float(np.mean(v)) for h, v in ex.items()} for t, ex in tasks.items()}

    a, b = by_example(records_a), by_example(records_b)
    if not a or not b:
        return None
    ours, base = {}, {}
    for task in sorted(set(a) & set(b)):
        shared = sorted(set(a[task]) & set(b[task]))
        if shared:
            ours[task] = [a[task][h] for h in shared]
            base[task] = [b[task][h] for h in shared]
    return (ours, base) if ours else None


def describe(v: Verdict, what: str = "seeds") -> str:
    """The verdict's evidence in a few words, for tables."""
    if v.word == "no verdict":
        return f"{v.n} seed: no verdict (needs 2 or more)" if what == "seeds" else "no per-example results"
    if v.interval is not None:
        return (f"{v.difference:+.2f} points, 95% bootstrap interval [{v.interval[0]:+.2f}, {v.interval[1]:+.2f}] "
                f"over {v.n} examples")
    ratio = math.exp(v.difference)
    return f"ratio {ratio:.3f} (geometric mean), paired t-test p = {v.p:.3f} over {v.n} seeds"
