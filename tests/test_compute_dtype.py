"""A compute dtype: float32 weights whose forward passes run under autocast (dlp.walk.compute_dtype).

The engine's block passes must equal the model's own autocast forward, the replay must see the pruned weights
(autocast caches its casts of the weights until its context exits), and statistics, criteria and weights stay
float32.
"""
import pytest
import torch
from tiny import FAMILIES, tiny_ids, tiny_model

from dlp.errors import UserError
from dlp.evaluation.perplexity import window_losses
from dlp.methods.profile import cached_profile
from dlp.registry import make_criterion
from dlp.walk.compute_dtype import check_compute_dtype, compute_dtype_of, computing, set_compute_dtype
from dlp.walk.engine import walk
from dlp.walk.prune import prune_model
from dlp.walk.selfcheck import model_block_outputs
from dlp.walk.stats import HESSIAN, SQNORM, attach
from dlp.walk.structure import find_blocks, find_linears
from experiments.records import run_key

BF16 = torch.bfloat16


def mixed(family="llama"):
    model = tiny_model(family)
    set_compute_dtype(model, "bfloat16")
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_walk_under_a_compute_dtype_is_the_models_autocast_forward(family):
    model, ids = mixed(family), tiny_ids(n=4)
    out = walk(model, ids, lambda *a: False, frozenset(), batch_size=4, progress=False, keep_outputs=True).outputs
    own = model_block_outputs(model, ids)[-1].float()  # the model's own forward, under its compute dtype
    set_compute_dtype(model, None)
    plain = model_block_outputs(model, ids)[-1].float()
    set_compute_dtype(model, "bfloat16")
    assert out.dtype == torch.float32  # the residual stream stays float32
    assert torch.allclose(out, own, rtol=1e-3, atol=1e-3)
    # Control: bfloat16 products are visibly not the float32 ones, so the check above is not vacuous.
    assert (out - plain).abs().max() > 10 * (out - own).abs().max()


def test_replay_sees_the_pruned_weights():
    """The visitor zeroes block 0 between its two passes; the last outputs must be the pruned model's. A single
    autocast context spanning the visit would replay with the cached bfloat16 copies of the unpruned weights."""
    model, ids = mixed(), tiny_ids(n=4)

    def prune_first(index, block, linears, stats):
        if index == 0:
            for layer in linears.values():
                layer.weight.data[:, ::2] = 0
        return index == 0

    out = walk(model, ids, prune_first, frozenset(), batch_size=4, progress=False, keep_outputs=True).outputs
    assert torch.allclose(out, model_block_outputs(model, ids)[-1].float(), rtol=1e-3, atol=1e-3)


def test_statistics_stay_float32_sums_under_autocast():
    """The Gram matrix of an input seen under bfloat16 autocast is the float32 sum of the exact inputs."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 8)
    stats, handles = attach({"l": layer}, frozenset({HESSIAN, SQNORM}))
    x = torch.randn(2, 40, 96)
    with torch.no_grad(), computing(BF16, torch.device("cpu")):
        y = layer(x)
    for h in handles:
        h.remove()
    assert y.dtype == BF16  # the product itself did run in bfloat16
    x64 = x.reshape(-1, 96).double()
    gram = stats["l"].full_gram()
    assert gram.dtype == torch.float32
    assert ((gram.double() - x64.T @ x64).abs().max() / (x64.T @ x64).abs().max()) < 1e-6  # bfloat16: ~1e-3
    assert torch.allclose(stats["l"].sqnorm, (x64 ** 2).sum(0), rtol=1e-6)


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_prune_under_a_compute_dtype(criterion):
    model = mixed("qwen2")
    prune_model(model, tiny_ids(), make_criterion(criterion), [0.5] * 3, progress=False)
    for block in find_blocks(model).blocks:
        for layer in find_linears(block).values():
            w = layer.weight
            assert w.dtype == torch.float32
            if criterion == "wanda":  # Wanda compares within a row, SparseGPT within 128-column blocks
                assert ((w == 0).sum(1) == w.shape[1] // 2).all()
            assert int((w == 0).sum()) == w.numel() // 2
    again = mixed("qwen2")
    prune_model(again, tiny_ids(), make_criterion(criterion), [0.5] * 3, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))  # deterministic


def test_perplexity_paths_agree_under_a_compute_dtype():
    model, ids = mixed(), tiny_ids(n=1, seqlen=6 * 32).flatten()
    chunked = window_losses(model, ids, 32, batch_size=3, progress=False, chunk_tokens=8)
    plain = window_losses(model, ids, 32, batch_size=3, progress=False, chunk_tokens=None)
    assert torch.allclose(chunked, plain, rtol=1e-4)
    set_compute_dtype(model, None)
    full = window_losses(model, ids, 32, batch_size=3, progress=False)
    assert not torch.allclose(chunked, full, rtol=1e-5)  # the compute dtype was applied
    assert torch.allclose(chunked, full, rtol=2e-2)


def test_dense_profile_cache_tells_compute_dtypes_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("DLP_CACHE", str(tmp_path))
    ids = tiny_ids()
    model = tiny_model("llama")
    _, cached = cached_profile(model, ids, {"id": "tiny"}, 5.0, 4, progress=False)
    assert not cached
    set_compute_dtype(model, "bfloat16")
    profile, cached = cached_profile(model, ids, {"id": "tiny"}, 5.0, 4, progress=False)
    assert not cached
    assert cached_profile(model, ids, {"id": "tiny"}, 5.0, 4, progress=False) == (profile, True)


def test_bad_compute_dtypes_are_one_line_errors():
    with pytest.raises(UserError, match="unknown compute_dtype 'int8'"):
        check_compute_dtype("int8", "float32")
    with pytest.raises(UserError, match="needs dtype=float32 weights"):
        check_compute_dtype("bfloat16", "float16")
    model = tiny_model("opt").to(BF16)
    with pytest.raises(UserError, match="needs dtype=float32 weights"):
        set_compute_dtype(model, "bfloat16")
    check_compute_dtype(None, "float16")
    assert compute_dtype_of(tiny_model("opt")) is None


def test_run_key_unchanged_by_a_null_compute_dtype():
    """Records made before the option existed are found again; a set compute dtype is another run."""
    cfg = {"model": {"name": "m", "dtype": "float32"}, "criterion": {"name": "wanda"}, "sparsity": 0.5,
           "eval": {}, "data": {}}
    null = {**cfg, "model": {**cfg["model"], "compute_dtype": None}}
    bf16 = {**cfg, "model": {**cfg["model"], "compute_dtype": "bfloat16"}}
    assert run_key(null) == run_key(cfg) != run_key(bf16)
