"""The rules that say which differences are real: summaries, the paired t-test over seeds, the bootstrap."""
import math

import numpy as np
import pytest

from experiments.verdicts import (
    Summary,
    bootstrap_interval,
    bootstrap_verdict,
    describe,
    paired_examples,
    paired_t_verdict,
    summarize,
)


def test_summary_by_hand():
    s = summarize([10.0, 12.0, 14.0])
    assert (s.mean, s.std, s.n) == (12.0, 2.0, 3)  # sample std: sqrt(((-2)^2 + 0 + 2^2) / 2)
    assert s.text() == "12.00 ± 2.00"
    assert summarize([401.52379]).text() == "401.52"  # one seed prints as a single number, as before
    assert summarize([]).text() == "failed"


def t_by_hand(d):
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return mean / (sd / math.sqrt(n))


def test_consistent_win_beats():
    ours, base = {0: 100.0, 1: 110.0, 2: 105.0}, {0: 200.0, 1: 230.0, 2: 190.0}
    v = paired_t_verdict(ours, base)
    d = [math.log(ours[s] / base[s]) for s in (0, 1, 2)]
    from scipy import stats
    assert v.p == pytest.approx(2 * stats.t.sf(abs(t_by_hand(d)), df=2))
    assert v.word == "beats" and v.n == 3 and v.p < 0.05 and v.difference == pytest.approx(np.mean(d))
    assert paired_t_verdict(base, ours).word == "loses to"
    assert "ratio 0.509" in describe(v)  # (100/200 · 110/230 · 105/190) ** (1/3), the geometric mean


def test_mixed_signs_are_within_noise():
    v = paired_t_verdict({0: 100.0, 1: 300.0, 2: 150.0}, {0: 200.0, 1: 200.0, 2: 200.0})
    assert v.word == "within noise" and v.p > 0.05 and not v.real


def test_same_sign_but_inconsistent_size_is_within_noise():
    """Every seed agrees on the sign, but the spread is too large for three seeds to tell: no claim."""
    v = paired_t_verdict({0: 99.0, 1: 60.0, 2: 95.0}, {0: 100.0, 1: 100.0, 2: 100.0})
    assert v.word == "within noise"


def test_one_seed_gives_no_verdict():
    v = paired_t_verdict({0: 100.0}, {0: 200.0})
    assert v.word == "no verdict" and v.n == 1 and v.p is None
    assert describe(v) == "1 seed: no verdict (needs 2 or more)"
    assert paired_t_verdict({0: 100.0, 1: 90.0}, {2: 200.0, 3: 180.0}).word == "no verdict"  # no seed in common


def test_higher_is_better_and_constant_shift():
    assert paired_t_verdict({0: 40.0, 1: 40.0}, {0: 20.0, 1: 20.0}, lower_is_better=False).word == "beats"
    assert paired_t_verdict({0: 5.0, 1: 7.0}, {0: 5.0, 1: 7.0}).word == "within noise"


def test_bootstrap_constant_difference_has_a_point_interval():
    ours = {"a": [1.0, 1.0, 0.0, 1.0], "b": [0.0, 1.0]}
    base = {"a": [0.0, 0.0, -1.0, 0.0], "b": [0.0, 1.0]}
    point, lo, hi = bootstrap_interval(ours, base, iters=500)
    assert point == lo == hi == pytest.approx(0.5)  # mean over tasks of (1 and 0)


def test_bootstrap_interval_of_a_known_proportion():
    """One task, 1000 examples, ours right and base wrong on 300, both equal elsewhere: the difference is a
    proportion 0.3 whose bootstrap interval is 0.3 ± 1.96·sqrt(0.3·0.7/1000) ≈ ± 0.0284."""
    ours = {"t": [1.0] * 300 + [0.0] * 700}
    base = {"t": [0.0] * 1000}
    point, lo, hi = bootstrap_interval(ours, base, iters=20_000)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 1000)
    assert point == pytest.approx(0.3)
    assert lo == pytest.approx(0.3 - half, abs=0.003) and hi == pytest.approx(0.3 + half, abs=0.003)
    assert bootstrap_interval(ours, base, iters=2000) == bootstrap_interval(ours, base, iters=2000)  # seeded
    v = bootstrap_verdict(ours, base)
    assert v.word == "beats" and v.n == 1000
    assert bootstrap_verdict(base, ours).word == "loses to"
    noise = bootstrap_verdict({"t": [1.0, 0.0] * 50}, {"t": [0.0, 1.0] * 50})  # 50 wins, 50 losses
    assert noise.word == "within noise" and noise.interval[0] < 0 < noise.interval[1]


def zs_record(seed, per_task):
    return {"config": {"seed": seed}, "metrics": {"zeroshot": {"tasks": {
        t: {"examples": {"doc_hash": list(h), "acc": list(a)}} for t, (h, a) in per_task.items()}}}}


def test_examples_pair_by_content_and_average_over_seeds():
    ours = [zs_record(0, {"rte": ("xyz", [1, 0, 1])}), zs_record(1, {"rte": ("xyz", [1, 1, 1])})]
    base = [zs_record(0, {"rte": ("zyw", [0, 1, 1])})]  # w has no partner; z, y in another order
    a, b = paired_examples(ours, base)
    assert a == {"rte": [50.0, 100.0]} and b == {"rte": [100.0, 0.0]}  # examples y, z (sorted), in percent
    no_examples = [{"config": {"seed": 0}, "metrics": {"zeroshot": {"tasks": {"rte": {"acc": 0.5}}}}}]
    assert paired_examples(ours, no_examples) is None


def test_summary_type_is_plain():
    assert Summary(1.0, 0.0, 1).text(3) == "1.000"
