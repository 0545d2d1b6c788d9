"""EvoPress (Sieberling et al., ICML 2025): per-block sparsity levels found by an evolutionary search.

Each block is pruned, once, at every one of its levels (the database): level 0 is the global target and each level
up or down prunes `weights_diff` more or fewer weights of the block (equal steps in non-zeros, so any levels that sum
to 0 keep exactly the target's number of weights). The database is built from the dense weights with the dense
model's inputs, the run's own criterion choosing what goes (the authors build it with SparseGPT only). The search
starts from uniform (all levels 0); each generation draws distinct offspring from the parent by
min(randint(1, 3), randint(1, 3)) swaps (one block a level down, another a level up), and keeps the best in stages
of growing size, each on a fresh draw of exactly that many calibration tokens shared by all candidates; the parent
joins the last stage. Fitness is the mean per-token KL divergence from the dense model's next-token distribution to
the candidate's (float32 log-softmax, the last position of each sequence dropped), as their `compute_kl_div`.

Two differences from the authors' code (IST-DASLab/EvoPress at 50888a01), both because this suite's allocation is one
sparsity per block: their search units are single Linear layers (q, k, v, o, gate, up, down apart), here whole
blocks; and their final model is the database's weights stitched together, while here the allocation found is handed
to the engine like every other allocation, which prunes each block on the pruned prefix's inputs. The level
arithmetic is theirs (pruner.py:154-156); the draw of a stage's tokens, the mutation and the elitism follow
evo_prune_search.py line by line, driven by a `random.Random` seeded with the run's seed (blocks in depth order; they
sort layer names as strings). The budget is a preset: `cpu` fits about 10 minutes on the embedded model on two CPU
cores, `paper` is the authors' script (400 generations, 64 offspring, survivors 8, 2, 1 on 2048, 16384, 65536 tokens).
"""
import math
import random
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from dlp.errors import UserError
from dlp.methods.allocator import Allocation, Allocator
from dlp.registry import register_allocation
from dlp.walk.compute_dtype import compute_dtype_of, computing
from dlp.walk.engine import walk
from dlp.walk.prune import pruned_block
from dlp.walk.structure import find_blocks, find_linears

SIZES = ("levels", "generations", "offspring", "survivors", "tokens")  # what a budget sets (conf/allocation/evopress.yaml)
TARGET_CACHE_BYTES = 4 << 30  # the dense model's log-probabilities kept for reuse; beyond this, recomputed
DUPLICATE_DRAWS = 1000  # consecutive duplicate offspring after which a generation stops drawing (a tiny search space)


def host_memory_available() -> int | None:
    """Bytes the host can still hand out (Linux's MemAvailable); None where the kernel does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def level_sparsities(sparsity: float, weights_diff: int, numel: int, levels: int) -> dict[int, float]:
    """Level -> sparsity of a unit of `numel` weights: the authors' arithmetic (src/pruner.py:154-156), levels as far
    as `levels` each way and no further than sparsity 0 or 1."""
    step = weights_diff / numel
    low = min(int(sparsity // step), levels)
    high = min(int((1 - sparsity) // step), levels)
    return {level: sparsity + level * weights_diff / numel for level in range(-low, high + 1)}


def default_weights_diff(sparsity: float, levels: int, numels: list[int], step: float | None) -> int:
    """Weights per level: `step` of the mean block, or min(s, 1 - s) / (2 levels) of it, the authors' default
    (0.5 min(s, 1 - s) / levels of a hidden x hidden matrix) with a block in place of that matrix."""
    step = step if step is not None else 0.5 * min(sparsity, 1 - sparsity) / levels
    return max(1, round(step * sum(numels) / len(numels)))


def draw_tokens(rng: random.Random, n_windows: int, seqlen: int, tokens: int) -> list[tuple[int, int]]:
    """(window, length) pairs with exactly `tokens` tokens: distinct windows drawn at random, the last cut short
    (evo_prune_search.py:52-70)."""
    chosen, used = [], 0
    while used < tokens:
        window = rng.randint(0, n_windows - 1)
        if window in (w for w, _ in chosen):
            continue
        length = min(seqlen, tokens - used)
        chosen.append((window, length))
        used += length
    return chosen


def mean_token_kl(dense_logprobs, logits) -> float:
    """Mean over positions of KL(dense || candidate), each a (positions, vocab) pair; log-softmax in float32. Pairs
    are taken one at a time (`logits` may be a generator: one window's logits alive at once), on the logits'
    device."""
    total, positions = 0.0, 0
    for target, own in zip(dense_logprobs, logits):
        target = target.to(own.device)
        log_q = torch.log_softmax(own.float(), dim=-1)
        total += float((target.exp() * (target - log_q)).sum(dtype=torch.float64))
        positions += target.shape[0]
    return total / positions


class PackedMask:
    """A mask in host memory at one bit per weight (a 7B model's level of Wanda masks: 0.8 GB, not 6.5)."""

    def __init__(self, mask: torch.Tensor):
        self.shape = mask.shape
        self.bits = np.packbits(mask.cpu().numpy().reshape(-1))
        self.nbytes = self.bits.nbytes

    def unpack(self, device) -> torch.Tensor:
        flat = np.unpackbits(self.bits, count=int(np.prod(self.shape))).astype(bool)
        return torch.from_numpy(flat).view(self.shape).to(device)


class LevelDatabase:
    """Every block's Linears pruned at each of the block's levels, from the dense weights and the dense model's
    inputs, kept in host memory; `load` puts a level vector's weights in the model, copying only the blocks whose
    level changed. An entry whose kept weights are the dense ones (magnitude, Wanda, RIA) is stored as its mask."""

    def __init__(self, model, calib: torch.Tensor, criterion, pattern, batch_size, refinement, levels: list[dict],
                 progress: bool = True, observe=None):
        """`observe(index, linears, stats)`, when given, sees each block's dense weights and input statistics
        before its levels are pruned (experiments.fidelity saves them for the authors' code)."""
        self.model = model
        self.linears = [find_linears(block) for block in find_blocks(model).blocks]
        self.dense = [{name: layer.weight.data.clone() for name, layer in linears.items()}
                      for linears in self.linears]
        self.entries: list[dict[int, dict]] = [{} for _ in self.linears]
        self.state: list[int | None] = [None] * len(self.linears)  # None: the block holds its dense weights
        self.bytes = 0
        self.projected = 0  # the whole database's bytes as projected from its first block (check_room)
        t = time.perf_counter()

        def visit(index, block, linears, stats):
            if observe is not None:
                observe(index, linears, stats)
            for level, sparsity in levels[index].items():
                new = pruned_block(linears, stats, criterion, sparsity, pattern, refinement) if sparsity > 0 else {}
                self.entries[index][level] = {name: self._entry(index, name, new.get(name)) for name in linears}
            if index == 0:
                self.check_room(levels, criterion)
            return False  # the block stays dense: the next one is calibrated on dense inputs

        needs = criterion.needs | (refinement.needs if refinement is not None else frozenset())
        if needs:
            walk(model, calib, visit, needs, batch_size=batch_size, desc="evopress: level database", progress=progress)
        else:
            for index, linears in enumerate(tqdm(self.linears, desc="evopress: level database", disable=not progress)):
                visit(index, None, linears, {name: None for name in linears})
        self.seconds = time.perf_counter() - t

    def check_room(self, levels: list[dict], criterion) -> None:
        """Once the first block is stored, project the whole database's host bytes (`projected`) and refuse one
        the host cannot hold before building the rest: a paper-budget search with a criterion that updates weights
        (SparseGPT) stores 2 x levels + 1 copies of a 7B model's weights, ~220 GB, and would otherwise die of
        memory late in the build, its work lost. Every block stores a pruned level alike per weight (a mask, or
        weights), so the projection is exact for equal blocks."""
        weight_levels = [sum(t.numel() for t in dense.values()) * sum(1 for s in block.values() if s > 0)
                         for dense, block in zip(self.dense, levels)]
        self.projected = round(self.bytes * sum(weight_levels) / weight_levels[0]) if weight_levels[0] else 0
        total, available = self.projected, host_memory_available()
        if available is None or total - self.bytes <= available:
            return
        masks = all(isinstance(e, PackedMask) for e in self.entries[0][max(levels[0])].values() if e is not None)
        stored = "as a mask" if masks else f"as weights ({criterion.name} updates the weights it keeps)"
        advice = "" if masks else ", or build it with a criterion whose levels are masks (magnitude, wanda, ria)"
        raise UserError(f"evopress: its level database would hold {total / 2**30:.1f} GiB in host memory "
                        f"({sum(len(b) for b in levels)} block levels, each stored {stored}), more than the "
                        f"{available / 2**30:.1f} GiB available: lower allocation.levels{advice}")

    def _entry(self, index: int, name: str, new: torch.Tensor | None):
        dense = self.dense[index][name]
        if new is None:
            return None
        new = new.to(dense.dtype)
        kept = new != 0
        if torch.equal(new, dense * kept):
            packed = PackedMask(kept)
            self.bytes += packed.nbytes
            return packed
        self.bytes += new.numel() * new.element_size()
        return new.cpu()

    def load(self, levels: list[int | None]) -> None:
        for index, level in enumerate(levels):
            if self.state[index] == level:
                continue
            for name, layer in self.linears[index].items():
                dense = self.dense[index][name]
                entry = None if level is None else self.entries[index][level][name]
                if entry is None:
                    layer.weight.data.copy_(dense)
                elif isinstance(entry, PackedMask):
                    torch.mul(dense, entry.unpack(dense.device), out=layer.weight.data)
                else:
                    layer.weight.data.copy_(entry)
            self.state[index] = level

    def restore(self) -> None:
        self.load([None] * len(self.linears))


class Fitness:
    """KL of candidates to the dense model on draws of the calibration windows, one window per forward as the
    authors (batch size 1), so a window's numbers never depend on what it was drawn with."""

    def __init__(self, model, database: LevelDatabase, calib: torch.Tensor):
        self.model, self.database, self.calib = model, database, calib
        self.targets: dict[int, torch.Tensor] = {}
        self.cached_bytes = 0
        self.forward_tokens = 0

    def _logits(self, window: int, length: int) -> torch.Tensor:
        device = self.model.get_input_embeddings().weight.device
        ids = self.calib[window, :length].unsqueeze(0).to(device)
        with torch.no_grad(), computing(compute_dtype_of(self.model), device):
            logits = self.model(input_ids=ids, use_cache=False).logits[0, :-1]
        self.forward_tokens += length
        return logits.float()

    def dense_targets(self, draw: list[tuple[int, int]]) -> list[torch.Tensor]:
        """The dense model's log-probabilities of each drawn window (whole, then cut as the authors cut theirs)."""
        missing = [w for w, _ in draw if w not in self.targets]
        fresh = {}
        if missing:
            self.database.restore()
            for window in missing:
                target = torch.log_softmax(self._logits(window, self.calib.shape[1]), dim=-1).cpu()
                fresh[window] = target
                if self.cached_bytes + target.numel() * 4 <= TARGET_CACHE_BYTES:
                    self.targets[window] = target
                    self.cached_bytes += target.numel() * 4
        return [(self.targets.get(w, fresh.get(w)))[:length - 1] for w, length in draw]

    def __call__(self, levels: list[int], draw: list[tuple[int, int]], targets: list[torch.Tensor]) -> float:
        self.database.load(levels)
        return mean_token_kl(targets, (self._logits(w, length) for w, length in draw))


def mutate(rng: random.Random, parent: list[int], allowed: list[dict]) -> list[int]:
    """A child of `parent`: min(randint(1, 3), randint(1, 3)) swaps, each one block a level down and one (maybe the
    same) a level up, each block drawn again until it has that level (evo_prune_search.py:267-298)."""
    child = list(parent)
    for _ in range(min(rng.randint(1, 3), rng.randint(1, 3))):
        while True:
            down = rng.randint(0, len(child) - 1)
            if child[down] - 1 in allowed[down]:
                break
        while True:
            up = rng.randint(0, len(child) - 1)
            if child[up] + 1 in allowed[up]:
                break
        child[down] -= 1
        child[up] += 1
    return child


def check_budget(generations, offspring, survivors, tokens) -> None:
    for name, value in (("generations", generations), ("offspring", offspring)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"evopress {name} must be an integer >= 1 (got {value!r})")
    for name, values in (("survivors", survivors), ("tokens", tokens)):
        if (not isinstance(values, (list, tuple)) or not values
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values)):
            raise UserError(f"evopress {name} must be a list of integers >= 1 (got {values!r})")
    if len(survivors) != len(tokens):
        raise UserError(f"evopress survivors and tokens name the stages: {len(survivors)} survivors for "
                        f"{len(tokens)} token budgets")
    if list(survivors) != sorted(survivors, reverse=True) or survivors[0] > offspring or survivors[-1] != 1:
        raise UserError(f"evopress survivors must shrink from at most offspring={offspring} to 1 "
                        f"(got {list(survivors)})")


@register_allocation("evopress", label="EvoPress", score_label="level")
class EvoPress(Allocator):
    description, plural = "EvoPress's searched per-block levels", True
    isolates = "a search over per-block levels against the dense model's outputs"
    searches = True  # the run hands it its criterion (dlp.methods.search.Trials); it scores on calibration windows

    def __init__(self, budget: str = "cpu", budgets: dict | None = None, levels: int | None = None,
                 step: float | None = None, generations: int | None = None, offspring: int | None = None,
                 survivors: list | None = None, tokens: list | None = None, seed: int = 0):
        """`budgets`: name -> the sizes a search takes where its own setting is null (the YAML's)."""
        budgets = dict(budgets or {})
        given = dict(zip(SIZES, (levels, generations, offspring, survivors, tokens)))
        if budget not in budgets and (budgets or any(v is None for v in given.values())):
            raise UserError(f"unknown evopress budget '{budget}'; choose one of {', '.join(budgets) or '(none given)'}")
        chosen = dict(budgets.get(budget) or {})
        sizes = {k: chosen.get(k) if given[k] is None else given[k] for k in SIZES}
        missing = [k for k, v in sizes.items() if v is None]
        if missing:
            raise UserError(f"evopress budget '{budget}' does not set {', '.join(missing)}")
        self.budget = budget
        self.levels, self.generations, self.offspring = sizes["levels"], sizes["generations"], sizes["offspring"]
        self.survivors, self.tokens = list(sizes["survivors"]), list(sizes["tokens"])
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 1:
            raise UserError(f"evopress levels must be an integer >= 1 (got {self.levels!r})")
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step < 1):
            raise UserError(f"evopress step must be a sparsity in (0, 1) or null (got {step!r})")
        check_budget(self.generations, self.offspring, self.survivors, self.tokens)
        self.step = None if step is None else float(step)
        self.seed = int(seed)

    def check_calibration(self, nsamples: int, seqlen: int) -> None:
        if max(self.tokens) > nsamples * seqlen:
            raise UserError(f"evopress draws {max(self.tokens)} tokens in a stage, more than the calibration's "
                            f"{nsamples} x {seqlen} = {nsamples * seqlen}: raise data.nsamples or lower "
                            f"allocation.tokens")

    def block_levels(self, model, target: float) -> tuple[int, list[dict]]:
        """Weights per level, and each block's level -> sparsity."""
        numels = [sum(layer.weight.numel() for layer in find_linears(block).values())
                  for block in find_blocks(model).blocks]
        weights_diff = default_weights_diff(target, self.levels, numels, self.step)
        return weights_diff, [level_sparsities(target, weights_diff, numel, self.levels) for numel in numels]

    def allocate(self, model, calib_ids, target, batch_size, progress=True, model_id=None, trials=None):
        if trials is None:
            raise UserError("evopress builds its database with the run's criterion: run it through experiments.run")
        self.check_calibration(*calib_ids.shape)
        weights_diff, allowed = self.block_levels(model, target)
        settings = {"generations": self.generations, "offspring": self.offspring, "survivors": self.survivors,
                    "tokens": self.tokens, "seed": self.seed, "allowed": [sorted(a.items()) for a in allowed]}
        kept = trials.resume("evopress", settings)  # before the search loads any level: the inputs digest is dense
        if kept:
            print(f"evopress: {len(kept['history'])} of {self.generations} generations kept from an earlier attempt "
                  f"({trials.progress_file('evopress')})", file=sys.stderr)
        database = LevelDatabase(model, calib_ids, trials.criterion, trials.pattern, batch_size, trials.refinement,
                                 allowed, progress)
        fitness = Fitness(model, database, calib_ids)

        def keep(state: dict) -> None:
            trials.keep("evopress", settings, state)

        try:
            parent, history, resumed = self.search(fitness, allowed, calib_ids.shape, progress, kept, keep)
        finally:
            database.restore()
        sparsities = [allowed[b][level] for b, level in enumerate(parent)]
        seconds = sum(h["seconds"] for h in history)
        return Allocation(sparsities, [float(level) for level in parent], {
            "levels": parent, "weights_diff": weights_diff, "level_range": [[min(a), max(a)] for a in allowed],
            "search": {"budget": self.budget, "generations": self.generations, "offspring": self.offspring,
                       "survivors": self.survivors, "tokens": self.tokens, "seed": self.seed,
                       "selection": "calibration windows", "forward_tokens": fitness.forward_tokens,
                       "database_seconds": round(database.seconds, 1), "database_bytes": database.bytes,
                       "search_seconds": round(seconds, 1),
                       "seconds_per_generation": round(seconds / len(history), 2),
                       "fitness": [h["fitness"] for h in history],
                       **({"resumed_generations": resumed} if resumed else {})}})

    def search(self, fitness: Fitness, allowed: list[dict], shape, progress: bool, kept: dict | None = None,
               keep=lambda state: None):
        """(the best levels, each generation's fitness and seconds, the generations taken from `kept`): `kept`,
        the state an earlier attempt passed to `keep` after its last finished generation, goes on with the same
        random state, so the search ends where an uninterrupted one would."""
        rng = random.Random(self.seed)
        n_windows, seqlen = shape
        parent = [0] * len(allowed)
        history = []
        if kept:
            version, internal, gauss = kept["random_state"]
            rng.setstate((version, tuple(internal), gauss))
            parent, history = list(kept["parent"]), list(kept["history"])
            fitness.forward_tokens = kept["forward_tokens"]
        resumed = len(history)
        for _ in tqdm(range(resumed, self.generations), desc="evopress: generations", disable=not progress,
                      initial=resumed, total=self.generations):
            t = time.perf_counter()
            offspring, duplicates = [], 0
            while len(offspring) < self.offspring and duplicates < DUPLICATE_DRAWS:
                child = mutate(rng, parent, allowed)
                if child in offspring:
                    duplicates += 1
                    continue
                duplicates = 0
                offspring.append(child)
            for survive, tokens in zip(self.survivors, self.tokens):
                if survive == self.survivors[-1] and parent not in offspring:  # elitism: the parent competes last
                    offspring.append(parent)
                draw = draw_tokens(rng, n_windows, seqlen, tokens)
                targets = fitness.dense_targets(draw)
                scores = [fitness(child, draw, targets) for child in offspring]
                order = sorted(range(len(offspring)), key=scores.__getitem__)[:survive]
                offspring, scores = [offspring[i] for i in order], [scores[i] for i in order]
            parent = offspring[0]
            history.append({"fitness": scores[0] if math.isfinite(scores[0]) else None,
                            "seconds": time.perf_counter() - t})
            keep({"parent": parent, "history": history, "random_state": rng.getstate(),
                  "forward_tokens": fitness.forward_tokens})
        return parent, history, resumed
