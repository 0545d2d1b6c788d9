"""Fidelity against a method's released code, on the very tensors a run prunes.

    python -m experiments.fidelity dump DIR criterion=ria sparsity=0.7              # or refine=dsnot, any run config
    <the authors' function, outside this project: DIR/<n>.pt -> DIR/theirs/<n>.pt holding {"mask": bool}>
    python -m experiments.fidelity compare DIR --source "<repository>@<commit>, <file:lines>"
    python -m experiments.fidelity schedule CASES.json --source ...   # an allocation's schedule (ATP)
    python -m experiments.fidelity levels DIR ... / compare-levels DIR  # EvoPress's database and fitness
                                                                        # (experiments.fidelity_evopress)

`dump` prunes the run's model (its calibration, allocation and criterion) and saves, for every matrix as the
walk reaches it, what a criterion reads (the dense weight; Wanda's `scaler_row` = ‖X_j‖₂²/N, DSnoT's
`sum_metric_row` = Σ_tokens x_j / N and `var`, as the authors accumulate them), the sparsity, the pattern, and
this suite's mask (True = pruned; with a refinement, the criterion's mask before it too). `compare` reads the
authors' masks and writes results/fidelity-<method>.md: the share of weights on which the masks agree, overall
and for the worst matrix, with the run's settings and the source named.
"""
import json
import sys
from pathlib import Path

import torch

from dlp.errors import UserError
from dlp.methods.pattern import parse_pattern
from dlp.methods.refinement import Refinement
from dlp.registry import make_allocator, make_criterion, make_refinement
from dlp.storage.io import write_atomic
from dlp.storage.models import load_model
from dlp.storage.paths import ROOT
from dlp.walk.prune import prune_model
from dlp.walk.stats import MEAN, SQNORM, VARIANCE

from . import fidelity_evopress, pipeline, records
from .commandline import OneLineParser, one_line_errors
from .config import compose_config
from .fidelity_dumps import dumped_pairs
from .validation import params, validate


class Recorder(Refinement):
    """A refinement that saves each matrix's inputs and masks (and applies the run's own refinement, if any)."""
    needs = frozenset({SQNORM, MEAN, VARIANCE})

    def __init__(self, folder: Path, inner: Refinement | None):
        self.folder, self.inner, self.count = folder, inner, 0

    def refine(self, dense, pruned, stats, sparsity, pattern, name):
        new = self.inner.refine(dense, pruned, stats, sparsity, pattern, name) if self.inner else pruned
        entry = {"name": name, "weight": dense.cpu(), "sparsity": sparsity,
                 "prune_n": pattern.n if pattern else 0, "prune_m": pattern.m if pattern else 0,
                 "scaler_row": stats.column_norm().square().cpu(), "sum_metric_row": stats.mean_sum().cpu(),
                 "var": stats.variance().cpu(), "mask": (new == 0).cpu()}
        if self.inner is not None:
            entry["initial_mask"] = (pruned == 0).cpu()
        torch.save(entry, self.folder / f"{self.count:04d}.pt")
        self.count += 1
        return new


def dump(folder: Path, overrides: list[str]) -> int:
    commit = records.loaded_commit()  # now: the code this process runs (the checkout may move on while it runs)
    cfg = compose_config(overrides)
    validate(cfg)
    inner = (make_refinement(cfg["refine"]["name"], **params(cfg["refine"])) if records.refinement(cfg) else None)
    recorder = Recorder(folder, inner)
    allocator = make_allocator(cfg["allocation"]["name"], **params(cfg["allocation"]))
    if allocator.searches:
        raise UserError("dump runs an allocation that reads no trials: give a searching allocation its step")
    folder.mkdir(parents=True, exist_ok=True)
    inputs = pipeline.read_inputs(cfg)
    m, d = cfg["model"], cfg["data"]
    model, _, _ = load_model(m["path"], m.get("dtype", "float32"), m.get("device", "auto"), m.get("device_map"),
                             m.get("compute_dtype"), tokenizer=inputs.tokenizer)
    targets = allocator.allocate(model, inputs.calib, cfg["sparsity"], d["batch_size"], cfg["progress"]).sparsities
    prune_model(model, inputs.calib, make_criterion(cfg["criterion"]["name"], **params(cfg["criterion"])), targets,
                parse_pattern(cfg["pattern"], cfg["sparsity"]), d["batch_size"], cfg["progress"], refinement=recorder)
    (folder / "run.json").write_text(json.dumps({"overrides": overrides, "config": cfg, "matrices": recorder.count,
                                                 **commit}, indent=1, default=str))
    return recorder.count


def compare(folder: Path, source: str, note: str = "", results: Path = ROOT / "results") -> Path:
    if not (folder / "run.json").is_file():
        raise UserError(f"{folder} holds no dump (no run.json): run `python -m experiments.fidelity dump` first")
    run = json.loads((folder / "run.json").read_text())
    cfg = run["config"]
    method = records.refinement(cfg) or cfg["criterion"]["name"]
    rows, agree, total, worst, extra, refined = [], 0, 0, (1.0, "none"), (0, 0), 0
    for path, ours, theirs in dumped_pairs(folder, "[0-9]*.pt", "the authors' function"):
        theirs = theirs["mask"]
        same = int((ours["mask"] == theirs).sum())
        only_theirs, only_ours = int((theirs & ~ours["mask"]).sum()), int((ours["mask"] & ~theirs).sum())
        if "initial_mask" in ours:
            refined += int((ours["mask"] != ours["initial_mask"]).sum())
        agree, total = agree + same, total + theirs.numel()
        extra = (extra[0] + only_theirs, extra[1] + only_ours)
        share = same / theirs.numel()
        if share < worst[0]:
            worst = (share, f"{path.stem} {ours['name']}")
        rows.append((path.stem, ours["name"], ours["sparsity"], only_theirs, only_ours, share))
    if not rows:
        raise UserError(f"{folder} holds no dumped matrices: run `dump` first")
    out = results / f"fidelity-{method}.md"
    changed = [r for r in rows if r[3] or r[4]]
    lines = [f"# Fidelity of {method} against the authors' code", "",
             f"Written by `python -m experiments.fidelity compare` on the matrices `dump` saved from the run "
             f"`{' '.join(run['overrides'])}` (model {cfg['model']['name']}, preset {cfg['preset']}, "
             f"calibration {cfg['data']['corpus']} {cfg['data']['nsamples']} x {cfg['data']['seqlen']}, seed "
             f"{cfg['seed']}) at commit {run.get('commit')}{' with changes' if run.get('dirty') else ''}; "
             f"authors' code: {source}.", "",
             f"- matrices: {len(rows)}; weights: {total}",
             f"- masks agree on {agree} of {total} weights ({100 * agree / total:.5f}%)",
             f"- worst matrix: {worst[1]} ({100 * worst[0]:.5f}%)",
             *([f"- weights whose state the refinement changed from the criterion's mask: {refined}"]
               if refined else []),
             f"- matrices with any difference: {len(changed)}; weights pruned by the authors' code only: "
             f"{extra[0]}, by this suite's only: {extra[1]}", "", *([note, ""] if note else [])]
    if changed:
        lines += ["| matrix | Linear | sparsity | pruned by theirs only | by ours only | agreement |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {n} | {name} | {s:.4f} | {t} | {o} | {100 * a:.5f}% |" for n, name, s, t, o, a in changed[:40]]
        if len(changed) > 40:
            lines.append(f"| ... | {len(changed) - 40} more matrices | | | | |")
    write_atomic(out, ("\n".join(lines) + "\n").encode())
    return out


def schedule(authors: Path, source: str, results: Path = ROOT / "results") -> Path:
    """ATP's per-block sparsities against the authors' for each (blocks, target, beta) in `authors`, a JSON list of
    {"blocks", "target", "beta", "sparsities"} their code printed; and their search grid for each (blocks, target)."""
    from baselines.allocations.atp import atp_sparsities, beta_grid

    try:
        cases = json.loads(authors.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{authors} is not a JSON list of cases: {exc}") from None
    lines = ["# Fidelity of atp against the authors' code", "",
             f"Written by `python -m experiments.fidelity schedule`; authors' code: {source}. Per-block sparsities "
             "for each case, and the search grid (their search.sh: 0.002 steps up to the largest legal beta). The search "
             "differs on purpose in what scores a trial: theirs the WikiText-2 test perplexity the paper reports, "
             "this suite's text the evaluation never sees (`select_on`, named in each record).", "",
             "| blocks | target | beta | largest difference | equal to the last bit |", "|---|---|---|---|---|"]
    for case in cases:
        if "grid" in case:
            continue
        ours = atp_sparsities(case["blocks"], case["target"], case["beta"])
        worst = max(abs(a - b) for a, b in zip(ours, case["sparsities"]))
        lines.append(f"| {case['blocks']} | {case['target']} | {case['beta']} | {worst:.3g} | "
                     f"{'yes' if ours == case['sparsities'] else 'no'} |")
    lines += ["", "| blocks | target | their grid | ours equal |", "|---|---|---|---|"]
    for case in cases:
        if "grid" in case:
            ours = beta_grid(case["blocks"], case["target"], 0.002)
            lines.append(f"| {case['blocks']} | {case['target']} | {', '.join(map(str, case['grid']))} | "
                         f"{'yes' if ours == case['grid'] else 'no'} |")
    out = results / "fidelity-atp.md"
    write_atomic(out, ("\n".join(lines) + "\n").encode())
    return out


def main(argv: list[str]) -> None:
    parser = OneLineParser(prog="python -m experiments.fidelity")
    parser.add_argument("action", choices=["dump", "compare", "schedule", "levels", "compare-levels"])
    parser.add_argument("folder", type=Path, help="dump's folder, or (schedule) the authors' JSON cases")
    parser.add_argument("--source", default="", help="the authors' repository, commit and lines (compare)")
    parser.add_argument("--note", default="", help="where a remaining difference comes from (compare)")
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="where the results file goes")
    parser.add_argument("--blocks", default="0", help="levels: the blocks whose matrices are saved (0,15,29)")
    args, overrides = parser.parse_known_args(argv)
    if args.action == "dump":
        print(f"{dump(args.folder, overrides)} matrices saved in {args.folder}")
        return
    if args.action == "levels":
        try:
            blocks = [int(b) for b in args.blocks.split(",")]
        except ValueError:
            raise UserError(f"--blocks takes block numbers such as 0,15,29 (got {args.blocks!r})") from None
        print(f"{fidelity_evopress.levels(args.folder, overrides, blocks)} matrices saved in {args.folder}")
        return
    if not args.source:
        raise UserError(f"{args.action} needs --source: the authors' repository, commit and the lines run")
    if args.action == "compare-levels":
        written = fidelity_evopress.compare_levels(args.folder, args.source, args.note, args.results)
    else:
        written = (compare(args.folder, args.source, args.note, args.results) if args.action == "compare"
                   else schedule(args.folder, args.source, args.results))
    print(f"written {written}")


if __name__ == "__main__":
    one_line_errors(lambda: main(sys.argv[1:]))
