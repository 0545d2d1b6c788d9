"""EvoPress's level database and fitness against the authors' code, on a run's own tensors.

    python -m experiments.fidelity levels DIR criterion=sparsegpt allocation=evopress sparsity=0.7 --blocks 0,29
    <outside this project: the authors' FastOBC on each DIR/<block>-<linear>.pt's weight and Hessian at its levels'
     sparsities -> DIR/theirs/<same name> {"levels": {level: weight}}; their compute_kl_div on the model holding each
     candidate of DIR/fitness.json (`rebuild` puts it there) -> DIR/theirs/fitness.json {"kl": [...]}>
    python -m experiments.fidelity compare-levels DIR --source "<repository>@<commit>, <files:lines>"

`levels` builds the database as the search does (the run's criterion on the dense weights with the dense model's
inputs), saves for the chosen blocks each Linear's dense weight, the Hessian it was pruned with and this suite's
weight at every level, and this suite's fitness (mean per-token KL to the dense model) of fixed candidates on the
first calibration windows. `compare-levels` writes results/fidelity-evopress.md.
"""
import json
import random
from pathlib import Path

import torch

from baselines.allocations.evopress import (
    EvoPress,
    Fitness,
    LevelDatabase,
    PackedMask,
    mutate,
)
from dlp.errors import UserError
from dlp.methods.pattern import parse_pattern
from dlp.registry import make_allocator, make_criterion
from dlp.storage.io import write_atomic
from dlp.storage.models import load_model
from dlp.storage.paths import ROOT
from dlp.walk.stats import HESSIAN

from . import pipeline, records
from .config import compose_config
from .fidelity_dumps import dumped_pairs
from .validation import params, validate

CANDIDATES, WINDOWS, STEPS = 4, 4, 12  # uniform and three random walks of STEPS swaps, on the first WINDOWS windows


def rebuild(folder: Path | None = None, overrides: list[str] | None = None, observe=None):
    """The run's model, its level database and calibration, from `overrides` or a `levels` folder's run.json."""
    if overrides is None:
        overrides = json.loads((folder / "run.json").read_text())["overrides"]
    cfg = compose_config(overrides)
    validate(cfg)
    allocator = make_allocator(cfg["allocation"]["name"], **params(cfg["allocation"]))
    if not isinstance(allocator, EvoPress) or HESSIAN not in make_criterion(cfg["criterion"]["name"]).needs:
        raise UserError("levels checks EvoPress's database, which the authors build with SparseGPT: give "
                        "allocation=evopress criterion=sparsegpt")
    inputs = pipeline.read_inputs(cfg)
    m, d = cfg["model"], cfg["data"]
    model, _, _ = load_model(m["path"], m.get("dtype", "float32"), m.get("device", "auto"), m.get("device_map"),
                             m.get("compute_dtype"), tokenizer=inputs.tokenizer)
    _, allowed = allocator.block_levels(model, cfg["sparsity"])
    database = LevelDatabase(model, inputs.calib, make_criterion(cfg["criterion"]["name"], **params(cfg["criterion"])),
                             parse_pattern(cfg["pattern"], cfg["sparsity"]), d["batch_size"], None, allowed,
                             cfg["progress"], observe)
    return cfg, model, database, inputs.calib, allowed


def candidates(n_blocks: int, allowed: list[dict], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    found = [[0] * n_blocks]
    for _ in range(CANDIDATES - 1):
        child = [0] * n_blocks
        for _ in range(STEPS):
            child = mutate(rng, child, allowed)
        found.append(child)
    return found


def levels(folder: Path, overrides: list[str], blocks: list[int]) -> int:
    commit = records.loaded_commit()
    folder.mkdir(parents=True, exist_ok=True)
    saved = []

    def observe(index, linears, stats):
        if index not in blocks:
            return
        for name, layer in linears.items():
            path = folder / f"{index:02d}-{name}.pt"
            torch.save({"block": index, "name": name, "weight": layer.weight.data.float().cpu(),
                        "hessian": stats[name].hessian().cpu(), "nsamples": stats[name].nsamples}, path)
            saved.append(path)

    cfg, model, database, calib, allowed = rebuild(overrides=overrides, observe=observe)
    for path in saved:
        entry = torch.load(path)
        index, name = entry["block"], entry["name"]
        entry["levels"] = allowed[index]
        entry["ours"] = {}
        for level in allowed[index]:
            stored = database.entries[index][level][name]
            dense = database.dense[index][name]
            entry["ours"][level] = (dense if stored is None else dense * stored.unpack(dense.device)
                                    if isinstance(stored, PackedMask) else stored).float().cpu()
        torch.save(entry, path)
    fitness = Fitness(model, database, calib)
    draw = [(w, calib.shape[1]) for w in range(min(WINDOWS, calib.shape[0]))]
    targets = fitness.dense_targets(draw)
    chosen = candidates(len(allowed), allowed, cfg["seed"])
    kl = [fitness(candidate, draw, targets) for candidate in chosen]
    database.restore()
    (folder / "fitness.json").write_text(json.dumps({"windows": [w for w, _ in draw], "candidates": chosen,
                                                     "kl": kl}))
    (folder / "run.json").write_text(json.dumps({"overrides": overrides, "config": cfg, "blocks": blocks, **commit},
                                                indent=1, default=str))
    return len(saved)


def compare_levels(folder: Path, source: str, note: str = "", results: Path = ROOT / "results") -> Path:
    if not (folder / "run.json").is_file() or not (folder / "fitness.json").is_file():
        raise UserError(f"{folder} holds no levels dump: run `python -m experiments.fidelity levels` first")
    run = json.loads((folder / "run.json").read_text())
    cfg = run["config"]
    rows, agree, total, only = [], 0, 0, [0, 0]
    worst_weight = 0.0
    for path, ours, theirs in dumped_pairs(folder, "[0-9]*-*.pt", "the authors' FastOBC"):
        theirs = theirs["levels"]
        for level, sparsity in ours["levels"].items():
            mine, their = ours["ours"][level], theirs[level]
            same_mask = (mine == 0) == (their == 0)
            agree, total = agree + int(same_mask.sum()), total + mine.numel()
            only[0] += int(((their == 0) & (mine != 0)).sum())
            only[1] += int(((mine == 0) & (their != 0)).sum())
            both_kept = (mine != 0) & (their != 0)
            if bool(same_mask.all()):
                worst_weight = max(worst_weight, float((mine - their).abs().max()))
            rows.append((ours["block"], ours["name"], level, sparsity, int((~same_mask).sum()),
                         float((mine - their)[both_kept].abs().max()) if both_kept.any() else 0.0))
    if not rows:
        raise UserError(f"{folder} holds no dumped matrices: run `levels` first")
    fit = json.loads((folder / "fitness.json").read_text())
    their_fit = json.loads((folder / "theirs" / "fitness.json").read_text())["kl"]
    identical = sum(1 for r in rows if r[4] == 0)
    lines = ["# Fidelity of EvoPress's level database and fitness against the authors' code", "",
             f"Written by `python -m experiments.fidelity compare-levels` on what `levels` saved from "
             f"`{' '.join(run['overrides'])}` (model {cfg['model']['name']}, preset {cfg['preset']}, calibration "
             f"{cfg['data']['corpus']} {cfg['data']['nsamples']} x {cfg['data']['seqlen']}, seed {cfg['seed']}, "
             f"blocks {', '.join(map(str, run['blocks']))}) at commit {run.get('commit')}"
             f"{' with changes' if run.get('dirty') else ''}; authors' code: {source}.", "",
             "## Level database", "",
             "Each Linear of the blocks above at every level of its block, this suite's criterion against the "
             "authors' FastOBC given the same dense weight and Hessian.", "",
             f"- matrices x levels: {len(rows)}, of which {identical} with identical masks",
             f"- masks agree on {agree} of {total} weights ({100 * agree / total:.5f}%); pruned by the authors' code "
             f"only: {only[0]}, by this suite's only: {only[1]}",
             f"- largest difference of a weight where the masks are identical: {worst_weight:.3g}", "",
             "## Fitness of fixed candidates", "",
             f"Mean per-token KL(dense || candidate) on the first {len(fit['windows'])} calibration windows: this "
             "suite's `Fitness` against the authors' `compute_kl_div` (their dense targets: `model(x).logits` of "
             "the dense model), the candidate's weights loaded from the database above.", "",
             "| candidate | sum of abs levels | this suite | authors' | relative difference |", "|---|---|---|---|---|"]
    for n, (candidate, mine, their) in enumerate(zip(fit["candidates"], fit["kl"], their_fit)):
        lines.append(f"| {'uniform' if not any(candidate) else f'random walk {n}'} | "
                     f"{sum(map(abs, candidate))} | {mine:.8g} | {their:.8g} | {abs(mine - their) / their:.2e} |")
    lines += ["", *([note, ""] if note else [])]
    different = [r for r in rows if r[4]]
    if different:
        lines += ["| block | Linear | level | sparsity | weights whose mask differs |", "|---|---|---|---|---|"]
        lines += [f"| {b} | {name} | {lv} | {s:.6f} | {d} |" for b, name, lv, s, d, _ in different[:40]]
    write_atomic(results / "fidelity-evopress.md", ("\n".join(lines) + "\n").encode())
    return results / "fidelity-evopress.md"
