"""EvoPress: its level arithmetic, database, fitness and search against the authors' code (fixtures made by running
IST-DASLab/EvoPress at 50888a01 outside this project: src/fast_obc.py's FastOBC, the level lines of src/pruner.py and
src/metrics.py's compute_kl_div on the tensors in tests/fixtures/evopress_authors.pt) and independent paths."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from authors import our_stats
from conftest import tiny_overrides
from tiny import tiny_ids, tiny_model

from baselines.allocations.evopress import (
    EvoPress,
    LevelDatabase,
    PackedMask,
    draw_tokens,
    level_sparsities,
    mean_token_kl,
    mutate,
)
from dlp.errors import UserError
from dlp.registry import make_criterion
from dlp.walk.prune import prune_model
from dlp.walk.stats import HESSIAN
from dlp.walk.structure import find_blocks, find_linears

ROOT = Path(__file__).resolve().parent.parent
AUTHORS = torch.load(Path(__file__).parent / "fixtures" / "evopress_authors.pt")


@pytest.mark.parametrize("case", AUTHORS["level_cases"], ids=lambda c: f"{c['sparsity']}-{c['numel']}")
def test_levels_are_the_authors_arithmetic(case):
    ours = level_sparsities(case["sparsity"], case["weights_diff"], case["numel"], case["levels"])
    assert list(ours) == case["their_levels"]
    assert list(ours.values()) == case["their_sparsities"]  # bit for bit, in their order of operations


def test_the_released_llama_level_ranges():
    # Meta-Llama-3-8B at 70% with weights_diff 1e6 (their script): q/o -8..5, k/v -2..1, MLP -8..8.
    ranges = [level_sparsities(0.7, 1_000_000, n, 8) for n in (4096 * 4096, 4096 * 1024, 4096 * 14336)]
    assert [(min(r), max(r)) for r in ranges] == [(-8, 5), (-2, 1), (-8, 8)]


def test_levels_summing_to_zero_keep_the_targets_number_of_weights():
    numels = [3000, 5000, 8000]
    allowed = [level_sparsities(0.6, 250, n, 4) for n in numels]
    for levels in ([0, 0, 0], [-3, 1, 2], [4, -4, 0], [2, 2, -4]):
        pruned = sum(allowed[b][lv] * n for b, (lv, n) in enumerate(zip(levels, numels)))
        assert pruned == pytest.approx(0.6 * sum(numels), abs=1e-9)


def test_the_sparsegpt_database_is_the_authors_fastobc():
    """Our SparseGPT at each level's sparsity, on the same inputs, against their FastOBC: the same masks and the same
    updated weights. Their per-block count is kthvalue(round(n·s)) (src/fast_obc.py:132), ours floor(n·s) as the
    SparseGPT reference: where n·s has a fraction of at least one half they prune one more weight per 128 columns."""
    stats = our_stats(AUTHORS, needs=frozenset({HESSIAN}))
    sparsegpt = make_criterion("sparsegpt")
    for sparsity, theirs in zip(AUTHORS["sparsities"], AUTHORS["pruned"]):
        ours = sparsegpt.prune(AUTHORS["weight"].clone(), stats, sparsity, None)
        assert torch.equal(ours == 0, theirs == 0), sparsity
        assert torch.allclose(ours, theirs, rtol=0, atol=2e-6)
    block = AUTHORS["weight"].shape[0] * 128
    for sparsity, theirs in zip(AUTHORS["rounding"]["sparsities"], AUTHORS["rounding"]["pruned"]):
        ours = sparsegpt.prune(AUTHORS["weight"].clone(), stats, sparsity, None)
        extra = round(block * sparsity) - int(block * sparsity)
        for columns in (slice(0, 128), slice(128, 256)):
            assert int((theirs[:, columns] == 0).sum()) - int((ours[:, columns] == 0).sum()) == extra
        assert int(((ours == 0) != (theirs == 0)).sum()) <= 4 * extra


def test_fitness_is_the_authors_kl_and_a_float64_sum():
    kl = AUTHORS["kl"]
    targets, logits = [], []
    for dense, candidate, length in zip(kl["dense"], kl["candidate"], kl["lengths"]):
        targets.append(torch.log_softmax(dense[0, :length - 1].float(), -1))  # their targets, cut, last dropped
        logits.append(candidate[0, :length - 1])
    ours = mean_token_kl(targets, logits)
    assert ours == pytest.approx(kl["value"], rel=1e-6)
    p = torch.cat(targets).double()
    q = torch.log_softmax(torch.cat(logits).double(), -1)
    independent = F.kl_div(q, p, log_target=True, reduction="sum").item() / p.shape[0]
    assert ours == pytest.approx(independent, rel=1e-6)
    assert mean_token_kl(targets, [t.clone() for t in targets]) == pytest.approx(0.0, abs=1e-6)


def test_a_stage_draws_exactly_its_tokens_from_distinct_windows():
    rng = random.Random(3)
    for tokens in (64, 100, 640):
        draw = draw_tokens(rng, 10, 64, tokens)
        assert sum(length for _, length in draw) == tokens
        assert len({w for w, _ in draw}) == len(draw)
        assert all(length == 64 for _, length in draw[:-1]) and 0 < draw[-1][1] <= 64
    assert draw_tokens(random.Random(5), 10, 64, 200) == draw_tokens(random.Random(5), 10, 64, 200)


def test_mutations_keep_the_level_sum_and_stay_in_each_blocks_range():
    allowed = [{-1: 0.4, 0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6}, {-2: 0.3, -1: 0.4, 0: 0.5}]
    rng = random.Random(0)
    parent = [0, 0, 0]
    seen = set()
    for _ in range(300):
        child = mutate(rng, parent, allowed)
        assert sum(child) == 0 and all(level in a for level, a in zip(child, allowed))
        seen.add(tuple(child))
        parent = child
    assert (1, 1, -2) in seen and (-1, 1, 0) in seen  # the search reaches the ends of the ranges


def tiny_model_and_calibration():
    return tiny_model(), tiny_ids(4, 32)


def test_database_levels_are_the_criterion_on_dense_inputs_and_load_restores():
    model, calib = tiny_model_and_calibration()
    wanda, sparsegpt = make_criterion("wanda"), make_criterion("sparsegpt")
    n = len(find_blocks(model))
    allowed = [level_sparsities(0.5, 300, sum(w.weight.numel() for w in find_linears(b).values()), 2)
               for b in find_blocks(model).blocks]
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    for criterion in (wanda, sparsegpt):
        db = LevelDatabase(model, calib, criterion, None, 4, None, allowed, progress=False)
        assert all(torch.equal(v, dense[k]) for k, v in model.state_dict().items())  # building it changed nothing
        for block in range(n):
            for level in (-1, 2):
                # Only this block pruned: its inputs are the dense model's, as the database's are.
                sparsities = [allowed[block][level] if b == block else 0.0 for b in range(n)]
                prune_model(model, calib, criterion, sparsities, batch_size=4, progress=False)
                expected = {k: v.clone() for k, v in model.state_dict().items()}
                model.load_state_dict(dense)
                db.load([level if b == block else None for b in range(n)])
                for k, v in model.state_dict().items():
                    assert torch.allclose(v, expected[k], rtol=0, atol=1e-6), (criterion.name, block, level, k)
                db.restore()
        assert all(torch.equal(v, dense[k]) for k, v in model.state_dict().items())
        stored_as_masks = criterion is wanda
        assert all(isinstance(e, PackedMask) == stored_as_masks
                   for entry in db.entries for lv in entry.values() for e in lv.values() if e is not None)
        if stored_as_masks:  # one bit per weight
            assert db.bytes == sum(-(-w.weight.numel() // 8) for block in find_blocks(model).blocks
                                   for w in find_linears(block).values()) * sum(len(a) for a in allowed) // n


def test_a_database_the_host_cannot_hold_is_refused_after_its_first_block(monkeypatch):
    """The first block's bytes, scaled by weights x pruned levels, are the whole database's (equal blocks: exactly);
    beyond the host's available memory the build stops there with one line naming the fix."""
    import baselines.allocations.evopress as evopress

    if Path("/proc/meminfo").exists():
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        assert 0 < evopress.host_memory_available() <= physical
    model, calib = tiny_model_and_calibration()
    allowed = [level_sparsities(0.5, 300, sum(w.weight.numel() for w in find_linears(b).values()), 2)
               for b in find_blocks(model).blocks]
    pruned_levels = sum(1 for s in allowed[0].values() if s > 0)
    calls = []
    real = evopress.pruned_block
    monkeypatch.setattr(evopress, "pruned_block", lambda *a, **k: calls.append(1) or real(*a, **k))
    for name in ("wanda", "sparsegpt"):
        monkeypatch.setattr(evopress, "host_memory_available", lambda: 1 << 40)
        db = LevelDatabase(model, calib, make_criterion(name), None, 4, None, allowed, progress=False)
        assert db.projected == db.bytes > 0
        monkeypatch.setattr(evopress, "host_memory_available", lambda: 1000)
        calls.clear()
        with pytest.raises(UserError) as refused:
            LevelDatabase(model, calib, make_criterion(name), None, 4, None, allowed, progress=False)
        assert len(calls) == pruned_levels  # the first block's levels only
        message = str(refused.value)
        assert "\n" not in message and f"{db.bytes / 2**30:.1f} GiB" in message and "0.0 GiB available" in message
        assert ("updates the weights it keeps" in message) == (name == "sparsegpt")
    monkeypatch.setattr(evopress, "host_memory_available", lambda: None)  # a kernel that does not say: no check
    LevelDatabase(model, calib, make_criterion("sparsegpt"), None, 4, None, allowed, progress=False)


def run(workspace, *overrides, expect=0):
    done = subprocess.run([sys.executable, "-m", "experiments.run", *tiny_overrides(workspace, "evopress_runs"),
                           *overrides], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == expect, done.stderr
    if expect:
        return done
    path = Path(done.stdout.strip().splitlines()[-1].removeprefix("record: "))
    return json.loads(path.read_text())


SMALL = ["allocation=evopress", "allocation.generations=4", "allocation.offspring=6", "allocation.survivors=[2,1]",
         "allocation.tokens=[64,128]", "allocation.levels=3"]


def test_search_keeps_the_target_records_its_cost_and_repeats_with_its_seed(workspace):
    first = run(workspace, "criterion=wanda", "sparsity=0.6", *SMALL)
    allocation = first["allocation"]
    levels, targets = allocation["levels"], allocation["targets"]
    assert sum(levels) == 0 and len(levels) == 3
    assert sum(targets) / 3 == pytest.approx(0.6, abs=1e-12)  # the tiny model's blocks are of one size
    search = allocation["search"]
    assert search["generations"] == 4 and len(search["fitness"]) == 4 and search["seed"] == 0
    assert search["budget"] == "cpu" and search["selection"] == "calibration windows"
    assert search["forward_tokens"] > 4 * (6 * 64 + 3 * 128)  # the stages, and the dense targets once
    # Wanda prunes floor(columns·s) per row: at a level's sparsity a tiny matrix of 32 columns loses up to a weight
    # a row to the floor.
    assert all(target - 1 / 32 <= actual <= target + 1e-9
               for target, actual in zip(targets, first["sparsity"]["per_block"]))
    again = run(workspace, "criterion=wanda", "sparsity=0.6", *SMALL, "force=true")
    assert again["allocation"]["levels"] == levels and again["metrics"]["ppl"] == first["metrics"]["ppl"]
    assert again["allocation"]["search"]["fitness"] == search["fitness"]


@pytest.mark.parametrize("overrides,message", [
    (["allocation.survivors=[2,2]"], "evopress survivors must shrink from at most offspring=6 to 1"),
    (["allocation.tokens=[64,4096]"], "evopress draws 4096 tokens in a stage, more than the calibration's 4 x 64"),
    (["allocation.budget=huge"], "unknown evopress budget 'huge'"),
    (["allocation.step=1.5"], "evopress step must be a sparsity in (0, 1) or null"),
    (["offload=cpu"], "a search prunes the model once per trial and restores it: it needs offload=none"),
])
def test_bad_settings_are_one_line(workspace, overrides, message):
    done = run(workspace, *SMALL, *overrides, expect=2)
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr


def test_budgets_follow_the_preset():
    from experiments.config import compose_config

    assert compose_config(["allocation=evopress"])["allocation"]["budget"] == "cpu"
    paper = compose_config(["allocation=evopress", "preset=paper"])["allocation"]
    allocator = EvoPress(**{k: v for k, v in paper.items() if k != "name"})
    assert (allocator.generations, allocator.offspring, allocator.survivors, allocator.tokens, allocator.levels) == (
        400, 64, [8, 2, 1], [2048, 16384, 65536], 8)
    budgets = paper["budgets"]
    assert budgets["cpu"] == {"levels": 4, "generations": 14, "offspring": 16, "survivors": [2, 1],
                              "tokens": [512, 2048]}
    with pytest.raises(UserError, match="evopress survivors and tokens name the stages"):
        EvoPress(budgets=budgets, survivors=[4, 1], tokens=[512])
    with pytest.raises(UserError, match="evopress budget 'cpu' does not set generations"):
        EvoPress(budgets={"cpu": {k: v for k, v in budgets["cpu"].items() if k != "generations"}})
    # every size given: no budget needed
    assert EvoPress(budget="none", levels=2, generations=3, offspring=4, survivors=[1], tokens=[64]).generations == 3
    # the budgets' numbers are in a record's key: another number, another record
    from experiments.records import run_key
    cpu = compose_config(["allocation=evopress"])
    assert run_key(cpu) != run_key(compose_config(["allocation=evopress", "allocation.budgets.cpu.generations=15"]))


def test_fidelity_levels_saves_every_level_and_compare_counts_each_side(workspace, tmp_path):
    folder = tmp_path / "levels"
    done = subprocess.run([sys.executable, "-m", "experiments.fidelity", "levels", str(folder),
                           *tiny_overrides(workspace, "fidelity_levels"), "criterion=sparsegpt", "allocation=evopress",
                           "allocation.tokens=[64,128]", "allocation.levels=2", "--blocks", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    files = sorted(folder.glob("[0-9]*-*.pt"))
    assert len(files) == 7  # block 1's Linears
    first = torch.load(files[0])
    assert first["block"] == 1 and first["name"] == "mlp.down_proj" and list(first["ours"]) == [-2, -1, 0, 1, 2]
    assert first["hessian"].shape == (first["weight"].shape[1],) * 2
    fit = json.loads((folder / "fitness.json").read_text())
    assert fit["candidates"][0] == [0, 0, 0] and len(fit["kl"]) == 4 and all(v > 0 for v in fit["kl"])
    (folder / "theirs").mkdir()
    for n, path in enumerate(files):  # "theirs": ours, with one more weight pruned in the first matrix's level 0
        levels = {level: w.clone() for level, w in torch.load(path)["ours"].items()}
        if n == 0:
            row, col = (levels[0] != 0).nonzero()[0].tolist()
            levels[0][row, col] = 0
        torch.save({"levels": levels}, folder / "theirs" / path.name)
    (folder / "theirs" / "fitness.json").write_text(json.dumps({"kl": [v * (1 + 1e-6) for v in fit["kl"]]}))
    done = subprocess.run([sys.executable, "-m", "experiments.fidelity", "compare-levels", str(folder), "--source",
                           "test", "--results", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "fidelity-evopress.md").read_text()
    total = sum(w.numel() for path in files for w in torch.load(path)["ours"].values())
    assert "- matrices x levels: 35, of which 34 with identical masks" in text
    assert f"masks agree on {total - 1} of {total} weights" in text
    assert "pruned by the authors' code only: 1, by this suite's only: 0" in text
    assert "| uniform | 0 |" in text and text.count("| 1.00e-06 |") == 4
