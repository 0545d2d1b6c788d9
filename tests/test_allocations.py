"""Invariants and hand-computed values of the layerwise allocations."""
import json

import numpy as np
import pytest
import torch
from tiny import tiny_ids, tiny_model

from baselines.allocations.alpha import alpha_sparsities, esd_alpha
from baselines.allocations.owl import owl_sparsities
from dlp.errors import UserError
from dlp.methods.dlp_allocation import dlp_sparsities
from dlp.methods.profile import FORMAT_VERSION, block_profile, compute_profile
from dlp.methods.select import kth_smallest
from dlp.registry import make_allocator, make_criterion
from dlp.walk.engine import walk
from dlp.walk.prune import prune_model
from dlp.walk.sparsity import measure_sparsity
from dlp.walk.stats import SQNORM


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 4097])
def test_streamed_median_is_exact(n):
    g = torch.Generator().manual_seed(n)
    values = torch.rand(n, generator=g) * 10
    values[: n // 3] = values[0]  # ties
    if n > 5:
        values[1] = 0.0
    chunks = list(values.split(max(1, n // 3)))
    assert kth_smallest(lambda: iter(chunks), (n - 1) // 2) == torch.median(values).item()  # the lower median
    for k in {0, n - 1, n // 2}:
        assert kth_smallest(lambda: iter(chunks), k) == torch.sort(values).values[k].item()
    with pytest.raises(ValueError, match="outside a stream"):
        kth_smallest(lambda: iter(chunks), n)


def test_dlp_hand_computed():
    got, clamped = dlp_sparsities([1.0, 2.0, 3.0, 4.0], target=0.5, alpha=0.15)
    assert np.allclose(got, [0.35, 0.45, 0.55, 0.65]) and not clamped


@pytest.mark.parametrize("target,alpha", [(0.5, 0.15), (0.7, 0.15), (0.7, 0.05), (0.6, 0.3)])
def test_dlp_invariants(target, alpha):
    scores = np.random.default_rng(0).uniform(0.5, 2.0, 30)
    got = np.array(dlp_sparsities(scores, target, alpha)[0])
    assert got.mean() == pytest.approx(target)
    assert got.max() - got.min() == pytest.approx(2 * alpha)
    order = np.argsort(scores)
    assert np.all(np.diff(got[order]) >= 0)  # higher score → higher sparsity


def test_owl_hand_computed_and_invariants():
    got, _ = owl_sparsities([0.1, 0.3, 0.2], target=0.7, lam=0.08)
    assert np.allclose(got, [0.78, 0.62, 0.70])
    ratios = np.random.default_rng(1).uniform(0, 0.05, 24)
    got = np.array(owl_sparsities(ratios, 0.6, 0.08)[0])
    assert got.mean() == pytest.approx(0.6) and got.max() - got.min() == pytest.approx(0.16)
    order = np.argsort(ratios)
    assert np.all(np.diff(got[order]) <= 0)  # more outliers → lower sparsity


def test_clamp_and_flag():
    got, clamped = dlp_sparsities([1.0, 5.0], target=0.05, alpha=0.2)
    assert clamped and min(got) == 0.01


def test_alpha_weighted_mean_and_order():
    alphas, params = [2.0, 3.0, 5.0, 4.0], [100, 300, 200, 400]
    got = np.array(alpha_sparsities(alphas, params, 0.7, 0.3))
    assert (got * params).sum() / sum(params) == pytest.approx(0.7)
    assert np.all(np.diff(got[np.argsort(alphas)]) > 0)  # heavier tail (smaller alpha) → pruned less
    assert got.max() / got.min() == pytest.approx(1.3 / 0.7)


@pytest.mark.parametrize("exponent", [2.5, 4.0])
def test_esd_alpha_recovers_a_power_law(exponent):
    torch.manual_seed(0)
    lam = torch.rand(512, dtype=torch.float64) ** (-1 / (exponent - 1))  # Pareto eigenvalues, pdf ∝ λ^-a
    u, _ = torch.linalg.qr(torch.randn(1024, 512, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(512, 512, dtype=torch.float64))
    assert esd_alpha((u * lam.sqrt()) @ v.T) == pytest.approx(exponent, abs=0.35)


def test_median_and_mean_strategies_differ_where_they_should():
    skewed = [1.0, 1.0, 1.0, 100.0]  # mean 25.75, median 1
    flat = [5.0, 5.0, 5.0, 5.0]
    stats = []
    for block in (skewed, flat):
        values = torch.tensor(block)
        stats.append({"mean": values.mean().item(), "median": torch.median(values).item()})
    by_mean = dlp_sparsities([s["mean"] for s in stats], 0.5, 0.15)[0]
    by_median = dlp_sparsities([s["median"] for s in stats], 0.5, 0.15)[0]
    assert by_mean[0] > by_mean[1] and by_median[0] < by_median[1]


def test_block_profile_matches_direct_computation():
    model, ids = tiny_model(), tiny_ids()
    seen = []

    def visit(index, block, linears, stats):
        scores = torch.cat([(l.weight.abs() * stats[n].column_norm()).flatten() for n, l in linears.items()])
        seen.append((block_profile(linears, stats, 5.0), scores))
        return False
    walk(model, ids, visit, frozenset({SQNORM}), progress=False)
    for prof, scores in seen:
        assert prof["count"] == scores.numel()
        assert prof["median"] == torch.median(scores).item()
        assert prof["mean"] == pytest.approx(scores.double().mean().item())
        assert prof["outlier_ratio"] == pytest.approx((scores > 5.0 * scores.double().mean()).float().mean().item())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DLP_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name", ["uniform", "owl", "dlp", "alphapruning", "linear", "shuffled", "reversed"])
@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
def test_every_allocation_drives_every_criterion(cache, name, criterion):
    model, ids = tiny_model("qwen2"), tiny_ids()
    alloc = make_allocator(name).allocate(model, ids, 0.5, 4, progress=False, model_id={"m": "qwen2"})
    assert len(alloc.sparsities) == 3 and np.mean(alloc.sparsities) == pytest.approx(0.5, abs=1e-9)
    prune_model(model, ids, make_criterion(criterion), alloc.sparsities, progress=False)
    actual = measure_sparsity(model)["per_block"]
    assert np.allclose(actual, alloc.sparsities, atol=1 / 64 + 1e-6)  # per-row rounding on 64 inputs


def test_profile_cached_and_corrupt_cache_recomputed(cache, caplog):
    model, ids = tiny_model(), tiny_ids()
    dlp = make_allocator("dlp")
    first = dlp.allocate(model, ids, 0.5, 4, progress=False, model_id={"m": 1})
    second = dlp.allocate(model, ids, 0.5, 4, progress=False, model_id={"m": 1})
    assert not first.info["profile_cached"] and second.info["profile_cached"]
    assert first.sparsities == second.sparsities
    owl = make_allocator("owl").allocate(model, ids, 0.5, 4, progress=False, model_id={"m": 1})
    assert owl.info["profile_cached"]  # one dense pass serves DLP and OWL
    (path,) = (cache / "profiles").glob("*.json")
    path.write_text("{not json")
    third = dlp.allocate(model, ids, 0.5, 4, progress=False, model_id={"m": 1})
    assert not third.info["profile_cached"] and third.sparsities == first.sparsities
    assert sum("corrupt profile cache" in r.getMessage() for r in caplog.records) == 1  # said once, in one line
    assert "\n" not in next(r.getMessage() for r in caplog.records if "corrupt profile cache" in r.getMessage())
    assert json.loads(path.read_text())["version"] == FORMAT_VERSION


def test_mean_statistic_uses_means(cache):
    model, ids = tiny_model(), tiny_ids()
    profile = compute_profile(model, ids, 5.0, 4, progress=False)
    got = make_allocator("dlp", statistic="mean").allocate(model, ids, 0.5, 4, progress=False)
    assert got.scores == [b["mean"] for b in profile]


def test_bad_allocation_parameters():
    with pytest.raises(UserError):
        make_allocator("dlp", statistic="mode")
    with pytest.raises(UserError):
        make_allocator("owl", lam=0.9)
    with pytest.raises(UserError, match="unknown allocation"):
        make_allocator("random")


def test_linear_ramp_by_hand():
    """Five blocks at s = 0.6, alpha = 0.1: 0.5, 0.55, 0.6, 0.65, 0.7 (mean s, rising with depth)."""
    from baselines.allocations.linear import linear_sparsities
    got, clamped = linear_sparsities(5, 0.6, 0.1)
    assert got == pytest.approx([0.5, 0.55, 0.6, 0.65, 0.7], abs=1e-12) and not clamped
    assert np.mean(got) == pytest.approx(0.6, abs=1e-12) and max(got) - min(got) == pytest.approx(0.2, abs=1e-12)
    low, clamped = linear_sparsities(3, 0.1, 0.15)  # the first block would be at -0.05: clamped as OWL and DLP are
    assert low[0] == 0.01 and clamped


HAND_SCORES = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0]  # DLP's ranking statistic per block, made up


@pytest.fixture
def hand_made_dlp(monkeypatch):
    """DLP allocating from hand-made block scores, so the controls' reorderings can be checked exactly."""
    from dlp.methods.allocator import Allocation
    from dlp.methods.dlp_allocation import DLP

    def allocate(self, model, calib_ids, target, batch_size, progress=True, model_id=None):
        return Allocation(dlp_sparsities(HAND_SCORES, target, self.alpha)[0], list(HAND_SCORES), {})
    monkeypatch.setattr(DLP, "allocate", allocate)
    return dlp_sparsities(HAND_SCORES, 0.7, 0.15)[0]


def test_shuffled_is_a_seeded_permutation_of_its_source(hand_made_dlp):
    source = hand_made_dlp
    runs = {seed: make_allocator("shuffled", of="dlp", seed=seed).allocate(None, None, 0.7, 4) for seed in (0, 1, 2)}
    for seed, got in runs.items():
        order = got.info["order"]
        assert sorted(order) == list(range(6))
        assert got.sparsities == [source[j] for j in order] and got.scores == [HAND_SCORES[j] for j in order]
        assert sorted(got.sparsities) == sorted(source)  # same multiset: same mean and same spread
        assert np.mean(got.sparsities) == pytest.approx(0.7, abs=1e-12)
        assert got.info["source_sparsities"] == source
    assert make_allocator("shuffled", seed=1).allocate(None, None, 0.7, 4).sparsities == runs[1].sparsities
    assert len({tuple(r.info["order"]) for r in runs.values()}) == 3  # seeds give different orders
    assert all(r.info["order"] != list(range(6)) for r in runs.values())


def test_reversed_reverses_its_source(hand_made_dlp):
    got = make_allocator("reversed").allocate(None, None, 0.7, 4)
    assert got.sparsities == hand_made_dlp[::-1] and got.scores == HAND_SCORES[::-1]
    # the block with the largest score (the last, 9.0) is DLP's sparsest; reversed, the first block is
    assert int(np.argmax(hand_made_dlp)) == 5 and int(np.argmax(got.sparsities)) == 0


def test_controls_refuse_an_unknown_source():
    with pytest.raises(UserError, match="of: unknown allocation 'nosuch'"):
        make_allocator("reversed", of="nosuch")


def test_shuffled_follows_the_run_seed_and_owl_matched_sets_the_spread():
    from experiments.config import compose_config
    assert compose_config(["allocation=shuffled", "seed=4"])["allocation"] == {"name": "shuffled", "of": "dlp", "seed": 4}
    assert compose_config(["allocation=owl_matched"])["allocation"] == {"name": "owl", "m": 5.0, "lam": 0.15}
    assert compose_config(["allocation=linear"])["allocation"]["alpha"] == compose_config(["allocation=dlp"])["allocation"]["alpha"]
