"""Invariants of the within-layer criteria on one Linear with known inputs."""
import pytest
import torch
import torch.nn as nn

from dlp.errors import UserError
from dlp.methods.pattern import NM, parse_pattern
from dlp.registry import make_criterion
from dlp.walk.stats import HESSIAN, SQNORM, attach

ROWS, COLS, NSEQ, SEQ = 48, 256, 16, 128


def layer_and_stats(seed=0, needs=frozenset({SQNORM, HESSIAN})):
    torch.manual_seed(seed)
    layer = nn.Linear(COLS, ROWS, bias=False)
    # Correlated inputs (as in real activations) with columns of different scales, so input-aware criteria
    # differ from magnitude. The scales are shuffled: SparseGPT prunes each 128-column block to the same
    # sparsity, so sorted scales (all the important columns in one block) would be adversarial to it.
    mix = torch.randn(COLS, COLS) / 16 + torch.eye(COLS)
    scales = torch.linspace(0.25, 4.0, COLS)[torch.randperm(COLS)]
    x = (torch.randn(NSEQ, SEQ, COLS) @ mix) * scales
    stats, handles = attach({"l": layer}, needs)
    with torch.no_grad():
        layer(x)
    for h in handles:
        h.remove()
    stats["l"].nsamples = NSEQ
    return layer, stats["l"], x


def test_stats_match_hand_computation():
    _, st, x = layer_and_stats()
    flat = x.reshape(-1, COLS)
    assert torch.allclose(st.column_norm(), torch.sqrt((flat ** 2).sum(0) / NSEQ), rtol=1e-5)
    assert torch.allclose(st.hessian(), 2.0 / NSEQ * flat.t() @ flat, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_wanda_exact_per_row_counts_and_untouched_kept(sparsity):
    layer, st, _ = layer_and_stats()
    W = layer.weight.data.clone()
    new = make_criterion("wanda").prune(W.clone(), st, sparsity, None)
    pruned = new == 0
    assert (pruned.sum(1) == int(COLS * sparsity)).all()
    assert torch.equal(new[~pruned], W[~pruned])
    score = W.abs() * st.column_norm().unsqueeze(0)
    # Every pruned score in a row is <= every kept score in that row.
    worst_kept = score.masked_fill(pruned, float("inf")).min(1).values
    best_pruned = score.masked_fill(~pruned, -1).max(1).values
    assert (best_pruned <= worst_kept).all()


def test_wanda_differs_from_row_magnitude():
    layer, st, _ = layer_and_stats()
    W = layer.weight.data.clone()
    wanda = make_criterion("wanda").prune(W.clone(), st, 0.5, None) == 0
    by_magnitude = torch.zeros_like(wanda).scatter_(1, W.abs().sort(1)[1][:, :COLS // 2], True)
    assert not torch.equal(wanda, by_magnitude)


def test_magnitude_one_threshold_per_matrix():
    layer, st, _ = layer_and_stats()
    W = layer.weight.data.clone()
    new = make_criterion("magnitude").prune(W.clone(), st, 0.6, None)
    pruned = new == 0
    assert pruned.sum() == int(W.numel() * 0.6)
    assert W.abs()[pruned].max() <= W.abs()[~pruned].min()
    assert pruned.sum(1).unique().numel() > 1  # not per row
    assert torch.equal(new[~pruned], W[~pruned])


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_sparsegpt_exact_per_block_sparsity_and_updates(sparsity):
    layer, st, _ = layer_and_stats()
    W = layer.weight.data.clone()
    new = make_criterion("sparsegpt").prune(W.clone(), st, sparsity, None)
    for start in range(0, COLS, 128):
        block = new[:, start:start + 128]
        assert (block == 0).sum() == int(block.numel() * sparsity)
    kept = new != 0
    assert not torch.allclose(new[kept], W[kept])  # the OBS update moved the kept weights



def test_sparsegpt_lower_output_error_than_wanda():
    layer, st, x = layer_and_stats()
    W = layer.weight.data.clone()
    flat = x.reshape(-1, COLS)
    errors = {}
    for name in ("wanda", "sparsegpt", "magnitude"):
        new = make_criterion(name).prune(W.clone(), st, 0.5, None)
        errors[name] = ((flat @ new.t()) - (flat @ W.t())).pow(2).sum().item()
    assert errors["sparsegpt"] < 0.9 * errors["wanda"]
    assert errors["wanda"] < errors["magnitude"]


def test_sparsegpt_dead_inputs_zeroed():
    layer, st, _ = layer_and_stats()
    st.gram[:, 5] = 0
    st.gram[5, :] = 0
    new = make_criterion("sparsegpt").prune(layer.weight.data.clone(), st, 0.5, None)
    assert (new[:, 5] == 0).all()


def test_sparsegpt_reversed_hessian_is_the_reference_fix_then_reversal_bit_for_bit():
    """J H J built straight from the Gram matrix (H never held beside it) equals the reference's order of steps:
    dead inputs set to 1, damping by the mean diagonal, then the reversal; the same weights zeroed."""
    layer, st, _ = layer_and_stats()
    for dead in (0, 5, COLS - 2):  # asymmetric positions, so a mirrored index would be caught
        st.gram[:, dead] = 0
        st.gram[dead, :] = 0
    W_ref, W_new = layer.weight.data.clone(), layer.weight.data.clone()
    H = st.hessian()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W_ref[:, dead] = 0
    idx = torch.arange(COLS)
    H[idx, idx] += 0.01 * torch.mean(torch.diag(H))
    got = make_criterion("sparsegpt").damped_reversed_hessian(st, W_new)
    assert dead.sum() == 3
    assert torch.equal(got, H.flip(0, 1))
    assert torch.equal(W_new, W_ref)


@pytest.mark.parametrize("name", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_groups(name, n, m):
    layer, st, _ = layer_and_stats()
    new = make_criterion(name).prune(layer.weight.data.clone(), st, n / m, NM(n, m))
    zeros = (new == 0).view(ROWS, COLS // m, m).sum(2)
    assert (zeros == n).all()


def test_pattern_validation():
    assert parse_pattern("unstructured", 0.7) is None
    assert parse_pattern("2:4", 0.5) == NM(2, 4)
    with pytest.raises(UserError, match="2:4 prunes exactly 0.5"):
        parse_pattern("2:4", 0.7)
    with pytest.raises(UserError):
        parse_pattern("4:2", 2.0)
    with pytest.raises(UserError):
        parse_pattern("two:four", 0.5)


def test_unknown_criterion():
    with pytest.raises(UserError, match="unknown criterion 'foo'"):
        make_criterion("foo")


def test_kthvalue_selection_equals_stable_sort_with_ties():
    """Scores drawn from four values (ties everywhere): the fast selection takes exactly the stable sort's first k."""
    from dlp.methods.masks import lowest_overall, lowest_per_row
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        rows, cols = torch.randint(1, 20, (2,), generator=g).tolist()
        score = torch.randint(0, 4, (rows, cols), generator=g).float()
        sparsity = torch.rand(1, generator=g).item()
        fast = lowest_per_row(score, sparsity)
        assert torch.equal(fast, lowest_per_row(score, sparsity, by_sort=True))
        assert (fast.sum(1) == int(cols * sparsity)).all()
        assert torch.equal(lowest_overall(score, sparsity), lowest_overall(score, sparsity, by_sort=True))
    # by hand: row [1, 0, 1, 1], k = 2 -> the 0 and the first 1
    assert lowest_per_row(torch.tensor([[1.0, 0.0, 1.0, 1.0]]), 0.5).tolist() == [[True, True, False, False]]


def test_numpy_selection_finds_torch_kthvalue_on_every_row():
    """The CPU path (numpy's partition) and the other devices' path (torch.kthvalue) give the same k-th values,
    with ties, in float32 and float64; bfloat16 scores take torch's path."""
    from dlp.methods.masks import _kth_smallest
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for _ in range(50):
            rows, cols = torch.randint(1, 40, (2,), generator=g).tolist()
            score = torch.randint(0, 7, (rows, cols), generator=g).to(dtype) * torch.rand(rows, 1, generator=g).to(dtype)
            k = int(torch.randint(1, cols + 1, (1,), generator=g))
            assert torch.equal(_kth_smallest(score, k), torch.kthvalue(score, k, dim=1, keepdim=True).values)
    assert _kth_smallest(torch.tensor([[3.0, 1.0, 2.0, 1.0]]), 3).item() == 2.0


@pytest.mark.parametrize("threads", [2, 3])
def test_selection_split_among_threads_finds_every_rows_kth_value(threads):
    """Enough rows and the CPU selection splits them among threads (rows // 64 at most): every row's k-th
    value and every mask still equal torch's and the stable sort's, ties included, in row order."""
    from dlp.methods.masks import _kth_smallest, lowest_per_row
    g = torch.Generator().manual_seed(2)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in (127, 128, 300, 1001):
            cols = int(torch.randint(2, 50, (1,), generator=g))
            score = torch.randint(0, 5, (rows, cols), generator=g).float() * torch.rand(rows, 1, generator=g)
            k = int(torch.randint(1, cols + 1, (1,), generator=g))
            assert torch.equal(_kth_smallest(score, k), torch.kthvalue(score, k, dim=1, keepdim=True).values)
            assert torch.equal(lowest_per_row(score, 0.5), lowest_per_row(score, 0.5, by_sort=True))
    finally:
        torch.set_num_threads(before)


def test_zero_where_is_masked_fill_to_the_bit():
    """+0.0 where masked (also over -0.0, inf and NaN), every other value untouched, bit for bit."""
    from dlp.methods.masks import zero_where
    w = torch.tensor([[-1.5, -0.0, float("inf"), float("nan")], [2.0, -3.0, float("-inf"), 0.0]])
    mask = torch.tensor([[True, True, True, True], [False, True, False, True]])
    got, expected = zero_where(w.clone(), mask), w.masked_fill(mask, 0.0)
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))


@pytest.mark.parametrize("width", [400, 576, 1000])
def test_gram_from_upper_blocks_is_the_full_product(width):
    """Wide inputs are multiplied in upper column blocks only (dlp.walk.stats); the mirrored result is X^T X, and the
    FLOPs counted for it are those of the blocks done."""
    from dlp.walk.stats import LinearStats, gram_block_edges, gram_flops_per_token
    torch.manual_seed(width)
    st = LinearStats(width, torch.device("cpu"), frozenset({HESSIAN}))
    xs = [torch.randn(3, 40, width) for _ in range(2)]
    for x in xs:
        st.add(x)
    edges = gram_block_edges(width)
    assert len(edges) > 2 and edges[0] == 0 and edges[-1] == width  # several blocks at these widths
    assert st.gram[edges[-2]:, :edges[1]].abs().sum() == 0  # the lower-left block is never multiplied
    flat = torch.cat(xs).reshape(-1, width).double()
    full = st.full_gram()
    assert torch.allclose(full.double(), flat.t() @ flat, rtol=1e-5, atol=1e-3)
    a = edges[1]
    assert torch.equal(full[a:, :a], full[:a, a:].t())  # mirrored, not recomputed
    assert torch.equal(st.full_gram(), full)  # mirroring twice changes nothing
    if width == 576:  # 3 blocks of 192: 2·192·(576 + 384 + 192) per token, not 2·576²
        assert gram_flops_per_token(width) == 2 * 192 * 1152 < 2 * 576 ** 2


@pytest.mark.parametrize("n", [5, 130, 576])
def test_upper_factor_of_inverse_equals_the_reference_three_steps(n):
    """One Cholesky + one triangular inverse gives the reference's factor (Cholesky, cholesky_inverse,
    Cholesky upper): upper triangular, and as close to the float64 factor as the reference's own float32 result."""
    from baselines.criteria.sparsegpt import upper_factor_of_inverse
    torch.manual_seed(n)
    X = torch.randn(3 * n, n) @ (torch.randn(n, n) / 8 + torch.eye(n))
    H = X.t() @ X
    H += 0.01 * H.diag().mean() * torch.eye(n)  # SparseGPT's damping
    U = upper_factor_of_inverse(H)
    reference = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    exact = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H.double())), upper=True)
    assert torch.equal(U, U.triu())
    scale = exact.abs().max()
    ours, theirs = (U - exact).abs().max() / scale, (reference - exact).abs().max() / scale
    assert ours < max(2 * theirs, 1e-6) and ours < 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gram_loses_nothing_in_either_activation_dtype(dtype):
    """bfloat16 activations: the Gram may use the CPU's bf16 matmul mode, exact for them (dlp.walk.precision);
    float32 activations must not (their products would be rounded: ~3e-4 relative error, caught here). The
    float32 mode is restored afterwards."""
    from dlp.walk.stats import LinearStats
    before = torch.backends.mkldnn.matmul.fp32_precision
    torch.manual_seed(0)
    x = torch.randn(2, 512, 768).to(dtype)
    st = LinearStats(768, torch.device("cpu"), frozenset({HESSIAN}))
    st.add(x)
    flat = x.reshape(-1, 768).double()
    exact = flat.t() @ flat
    err = (st.full_gram().double() - exact).abs().max() / exact.abs().max()
    assert err < 1e-5
    assert torch.backends.mkldnn.matmul.fp32_precision == before


@pytest.mark.parametrize("pattern", [None, NM(2, 4), NM(4, 8)])
def test_sparsegpt_lazy_slices_equal_the_plain_column_loop(pattern):
    """Pushing errors slice by slice (inner=16, dlp's way) gives the reference's column-by-column result
    (inner = the whole block): same masks, same updated weights and errors to float32 rounding."""
    from baselines.criteria.sparsegpt import SparseGPT, upper_factor_of_inverse
    torch.manual_seed(3)
    cols, rows = 128, 40
    X = torch.randn(4 * cols, cols) @ (torch.randn(cols, cols) / 8 + torch.eye(cols))
    H = X.t() @ X
    H += 0.01 * H.diag().mean() * torch.eye(cols)
    U = upper_factor_of_inverse(H)
    d = torch.diag(U)
    Wt = torch.randn(cols, rows)
    mask0 = (Wt ** 2 / d.unsqueeze(1) ** 2) < (Wt ** 2 / d.unsqueeze(1) ** 2).median() if pattern is None \
        else torch.zeros(cols, rows, dtype=torch.bool)
    out = {}
    for inner in (16, 10 ** 9):
        W, mask = Wt.clone(), mask0.clone()
        Err = torch.empty_like(W)
        SparseGPT._column_loop(W, Err, mask, mask.float(), U, d, pattern, inner=inner)
        out[inner] = (W, Err, mask)
    (W1, E1, M1), (W2, E2, M2) = out[16], out[10 ** 9]
    assert torch.equal(M1, M2) and M1.any()
    assert torch.allclose(W1, W2, rtol=1e-4, atol=1e-5) and torch.allclose(E1, E2, rtol=1e-4, atol=1e-5)


def test_in_place_factor_gives_the_same_bits_as_out_of_place():
    """`upper_factor_from_reversed` factorises and inverts in place (memory); the result must not change."""
    from baselines.criteria.sparsegpt import upper_factor_from_reversed
    g = torch.Generator().manual_seed(5)
    x = torch.randn(400, 96, generator=g)
    H = x.t() @ x + 0.1 * torch.eye(96)
    L = torch.linalg.cholesky(H.flip(0, 1))
    expected = torch.linalg.solve_triangular(L, torch.eye(96), upper=False).flip(0, 1)
    assert torch.equal(upper_factor_from_reversed(H.flip(0, 1)), expected)
