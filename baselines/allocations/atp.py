"""ATP (Huang et al., ICML 2025): per-block sparsity as an arithmetic progression over depth with mean s,
s_i = s − β(L−1)/2 + iβ (the first block densest, the last sparsest), and one step β chosen by a search.

The schedule is the authors' own arithmetic, in their order of operations, so that per-block sparsities equal
theirs to the last bit (results/fidelity.md). Their search (search.sh) tries β = 0.002, 0.004, ... up to the
largest β that keeps every block in [0, 1], and keeps the one with the lowest WikiText-2 *test* perplexity, the
very text the paper then reports. Here the trials are scored on text the evaluation never sees: by default
documents of the calibration corpus the calibration draw did not pick (`select_on: heldout`), or a packaged
corpus named by `select_on` (wiki-exllamav2); the record names it. Each trial is the run's own prune (its
criterion, its calibration), so β is chosen for the criterion it is used with. A fixed `beta` reads no data
beyond the run's prune.
"""
import sys
from decimal import Decimal

from tqdm.auto import tqdm

from dlp.errors import UserError
from dlp.methods.allocator import Allocation, Allocator
from dlp.registry import register_allocation
from dlp.walk.structure import find_blocks


def atp_sparsities(n_blocks: int, target: float, beta: float) -> list[float]:
    first_term = target - (beta * (n_blocks - 1)) / 2
    return [first_term + i * beta for i in range(n_blocks)]


def largest_beta(n_blocks: int, target: float) -> float:
    """The largest step that keeps every block in [0, 1] (the authors' legality test, inclusive)."""
    return min(2 * target / (n_blocks - 1), 2 * (1 - target) / (n_blocks - 1))


def beta_grid(n_blocks: int, target: float, step: float) -> list[float]:
    """step, 2·step, ... up to the largest legal β, counted in decimal as the authors' `bc` loop counts."""
    grid, beta = [], Decimal(str(step))
    while float(beta) <= largest_beta(n_blocks, target):
        grid.append(float(beta))
        beta += Decimal(str(step))
    return grid


@register_allocation("atp", label="ATP", score_label="depth")
class ATP(Allocator):
    description = "ATP's searched ramp over depth"
    isolates = "a ramp over depth whose slope is searched"
    searches = True

    def __init__(self, beta: float | None = None, step: float = 0.002, select_on: str = "heldout",
                 windows: int = 16):
        for name, value in (("beta", beta), ("step", step)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise UserError(f"atp {name} must be a positive number{' or null' if name == 'beta' else ''} "
                                f"(got {value!r})")
        if isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
            raise UserError(f"atp windows must be an integer >= 1 (got {windows!r})")
        self.beta = None if beta is None else float(beta)
        self.step = float(step)
        self.select_on = select_on
        self.windows = windows
        self.searches = beta is None  # a fixed step needs no trials

    def check(self, n_blocks: int, target: float) -> None:
        if self.beta is not None and self.beta > largest_beta(n_blocks, target):
            raise UserError(f"atp beta={self.beta} takes a block outside [0, 1] at sparsity {target} over "
                            f"{n_blocks} blocks (largest: {largest_beta(n_blocks, target):.6g})")
        if self.beta is None and not beta_grid(n_blocks, target, self.step):
            raise UserError(f"atp step={self.step} is larger than the largest legal beta "
                            f"{largest_beta(n_blocks, target):.6g} at sparsity {target} over {n_blocks} blocks")

    def allocate(self, model, calib_ids, target, batch_size, progress=True, model_id=None, trials=None):
        n_blocks = len(find_blocks(model))
        self.check(n_blocks, target)
        depth = [float(i) for i in range(n_blocks)]
        if self.beta is not None:
            return Allocation(atp_sparsities(n_blocks, target, self.beta), depth, {"beta": self.beta})
        if trials is None:
            raise UserError("atp's search of beta prunes with the run's criterion: run it through experiments.run, "
                            "or give allocation.beta")
        grid = beta_grid(n_blocks, target, self.step)
        settings = {"grid": grid, "target": target, "selection": trials.selection}
        # Trials an earlier attempt of this run finished (the same grid, in order) are not run again.
        kept = trials.resume("atp", settings) or {}
        tried = [t for t, beta in zip(kept.get("tried", []), grid) if t["beta"] == beta]
        trials.seconds, trials.count = kept.get("seconds", 0.0), len(tried)
        resumed = len(tried)
        if resumed:
            print(f"atp: {resumed} of {len(grid)} trials kept from an earlier attempt ({trials.progress_file('atp')})",
                  file=sys.stderr)
        # A trial is a whole prune and a selection perplexity: minutes each on a CPU, so each one is shown.
        bar = tqdm(grid, desc="atp: beta trials", disable=not progress, initial=resumed)
        for beta in grid[resumed:]:
            tried.append({"beta": beta, "ppl": trials.perplexity(atp_sparsities(n_blocks, target, beta))})
            trials.keep("atp", settings, {"tried": tried, "seconds": trials.seconds})
            best = min(tried, key=lambda t: t["ppl"])  # the first (smallest β) of equal perplexities, as search.sh
            bar.update()
            bar.set_postfix(beta=beta, best=f"{best['beta']:g} ({best['ppl']:.2f})")
        bar.close()
        best = min(tried, key=lambda t: t["ppl"])
        search = {"tried": tried, **trials.record(), **({"resumed_trials": resumed} if resumed else {})}
        return Allocation(atp_sparsities(n_blocks, target, best["beta"]), depth,
                          {"beta": best["beta"], "search": search})
