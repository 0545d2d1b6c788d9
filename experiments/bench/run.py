"""`make bench`: how far each phase of a run is from the machine's own matrix-multiply limit.

For a model and each dtype: the matmul peak measured in this process, then load, one dense forward pass over
the calibration set (the yardstick), and for Wanda, DLP + Wanda, OWL + Wanda and SparseGPT the allocation
pass, capture, statistics, criterion and replay; then perplexity. Each phase gets seconds, tokens/s, GFLOP/s
counted from the decoder's shapes (experiments.bench.flops), its share of the peak, and its peak memory beside the floor
(weights + one block's calibration activations in and out + one block's statistics); each method runs in a
fresh process, as a user's run would, which measures its own matmul peak and dense yardstick: a forward pass
over the calibration set just before the method and one just after its prune, "x dense forward" dividing by
their mean (`--repeats N`: the median of N such processes). The parent also profiles where one batch's dense
forward spends its time (experiments.bench.profile). A scaling section repeats Wanda at three calibration sizes, three sequence lengths and
several batch sizes. Writes <out>.json, <out>.md and a plot.

  python -m experiments.bench                                   # embedded model on this computer: fp32, bf16, mixed
  python -m experiments.bench --shape llama2-7b --dtypes bfloat16 --nsamples 128 --seqlen 2048 --out results/bench-llama2-7b
"""
import argparse
import contextlib
import gc
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from dlp.errors import UserError
from dlp.evaluation.perplexity import CHUNK_TOKENS, window_losses
from dlp.registry import (
    ALLOCATIONS,
    CRITERIA,
    make_allocator,
    make_criterion,
    reference_allocation,
    studied_allocations,
)
from dlp.storage.io import write_atomic, write_json_atomic
from dlp.storage.models import DTYPES, load_model, resolve_device
from dlp.walk.batching import AUTO, check_batch_size, floor_parts, resolve_batch_size
from dlp.walk.compute_dtype import set_compute_dtype
from dlp.walk.engine import walk, watch_walks
from dlp.walk.prune import prune_model
from dlp.walk.selfcheck import check_walk
from dlp.walk.stats import SQNORM, LinearStats
from dlp.walk.structure import find_blocks

from .flops import forward_flops, shapes, statistics_flops
from .machine import describe, matmul_peak, phase, release_free_memory, rss_bytes
from .precisions import PRECISIONS, products_dtype
from .profile import time_shares
from .report import render
from .shapes import SHAPES


@contextlib.contextmanager
def cache_at(path: str):
    """Caches (the dense profile) go to `path` inside the block, so an allocation's pass is timed in full."""
    before = os.environ.get("DLP_CACHE")
    os.environ["DLP_CACHE"] = path
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DLP_CACHE")
        else:
            os.environ["DLP_CACHE"] = before


def default_methods(under: str = "wanda") -> list[tuple[str, str]]:
    """(criterion, allocation) pairs the bench times, from the registry: every allocation but the controls (they
    cost no more than what they copy) under `under` (Wanda, whose statistic DLP and OWL rank by), the reference
    first; then every other criterion that reads calibration statistics under the reference (one that reads
    none, magnitude, does no walk worth timing)."""
    reference = reference_allocation()
    allocations = sorted(studied_allocations(), key=lambda name: name != reference)
    return ([(under, a) for a in allocations]
            + [(c, reference) for c, cls in CRITERIA.items() if cls.needs and c != under])


class Subject:
    """The model under test: a named model (loaded afresh for each method) or a random one of a given shape."""

    def __init__(self, model: str | None, shape: str | None, dtype: str, device: torch.device, seed: int = 0):
        self.model, self.shape, self.dtype, self.device, self.seed = model, shape, dtype, device, seed
        self.tokenizer = None

    def load(self):
        weights, compute = PRECISIONS[self.dtype]
        if self.shape:
            from transformers import AutoConfig, AutoModelForCausalLM
            cfg = AutoConfig.for_model(**SHAPES[self.shape])
            torch.manual_seed(self.seed)
            with torch.device(self.device):
                model = AutoModelForCausalLM.from_config(cfg, dtype=DTYPES[weights])
            model.eval()
            model.config.use_cache = False
            set_compute_dtype(model, compute)
            return model
        model, self.tokenizer, _ = load_model(self.model, weights, str(self.device), compute_dtype=compute)
        return model

    def describe(self) -> str:
        return f"random weights, {self.shape} shape" if self.shape else self.model


def calibration(subject: Subject, model, nsamples: int, seqlen: int) -> tuple[torch.Tensor, str]:
    """Calibration windows (c4-exllamav2, as the cpu preset), or random ids for a random model."""
    if subject.shape:
        g = torch.Generator().manual_seed(subject.seed)
        return torch.randint(model.config.vocab_size, (nsamples, seqlen), generator=g), "random token ids"
    from dlp.data import corpora
    from dlp.data.calibration import calibration_windows
    calib = calibration_windows(corpora.load("c4-exllamav2"), subject.tokenizer, nsamples, seqlen, subject.seed)
    return calib, "c4-exllamav2"


def evaluation_tokens(subject: Subject, model, eval_windows: int, eval_seqlen: int) -> tuple[torch.Tensor, str]:
    """WikiText-2 test when a local copy is configured, else the wiki-exllamav2 substitute (named so); random
    ids for a random model."""
    if subject.shape:
        g = torch.Generator().manual_seed(subject.seed + 1)
        return torch.randint(model.config.vocab_size, (eval_windows * eval_seqlen,), generator=g), "random token ids"
    from dlp.data import corpora
    from dlp.evaluation.perplexity import tokenize_corpus
    ev = corpora.load("wikitext2", allow_substitute=True)
    return tokenize_corpus(ev, subject.tokenizer), ev.name


def floor_bytes(model, s, nsamples: int, seqlen: int, needs: frozenset) -> dict:
    """The memory floor of a walk, by part: dlp.walk.batching's weights and activations, plus one block's statistics."""
    parts = floor_parts(model, nsamples, seqlen)
    stats = sum(LinearStats.nbytes(c, needs) for c in s.gram_inputs)
    return {**parts, "statistics": stats, "total": sum(parts.values()) + stats}


def _memory(m: dict, base: int, device: torch.device) -> dict:
    out = {"rss_peak_above_base": m["rss_peak"] - base, "rss_peak": m["rss_peak"], "rss_base": base,
           "rss_peak_is_phase": m["rss_peak_is_phase"]}
    if device.type == "cuda":
        out["cuda_peak"] = m["cuda_peak"]
    return out


def _row(name: str, seconds: float, tokens: int | None, flops: float | None, peak: float, memory=None) -> dict:
    row = {"phase": name, "seconds": seconds, "tokens": tokens,
           "tokens_per_s": tokens / seconds if tokens and seconds > 0 else None,
           "gflops": flops / 1e9 if flops else None}
    row["gflop_per_s"] = row["gflops"] / seconds if flops and seconds > 0 else None
    row["share_of_peak"] = row["gflop_per_s"] / peak if row["gflop_per_s"] else None
    if memory:
        row["memory"] = memory
    return row


def dense_forward(args, model, calib, device) -> dict:
    """The yardstick: one dense forward pass over the calibration set, through the engine (nothing changes, so
    no replay). Returns the phase's measurements."""
    with phase(device) as m:
        walk(model, calib, lambda *a: False, frozenset(), batch_size=args.batch_size, desc="dense forward",
             progress=args.progress)
    return m


def perplexity_of(model, eval_ids, eval_seqlen, eval_windows, batch_size, progress) -> float:
    losses = window_losses(model, eval_ids, eval_seqlen, eval_windows, batch_size, progress)
    return math.exp(losses.double().mean().item())


def base_after_warm_up(subject: Subject) -> int:
    """Resident bytes once one load and release have put every library a run uses in place (the parent's and
    each method process's base)."""
    warm_up = subject.load()
    del warm_up
    gc.collect()
    release_free_memory()
    return rss_bytes()


def bench_dtype(args, dtype: str, device: torch.device, checkpoint=lambda partial: None) -> dict:
    """Every phase and method in one dtype. `checkpoint` gets what is measured so far after the dense phases and
    after each method (main writes it to disk, so a run cut short, a time-limited GPU job say, keeps it)."""
    subject = Subject(args.model, args.shape, dtype, device, args.seed)
    peak = matmul_peak(products_dtype(dtype), device)
    # The base is the process with every library the run uses in place (one load and release first: the model
    # code, tokenizer and converters that a load imports stay resident). Memory below is counted
    # above it, so the peak compares with the floor (data only); the JSON keeps the absolute peaks too.
    base = base_after_warm_up(subject)
    with phase(device) as m:
        model = subject.load()
    s = shapes(model)
    calib, calib_name = calibration(subject, model, args.nsamples, args.seqlen)
    eval_ids, eval_name = evaluation_tokens(subject, model, args.eval_windows, args.eval_seqlen)
    data = {"calibration": calib_name, "evaluation": eval_name}
    tokens = calib.numel()
    eval_tokens = min(eval_ids.numel() // args.eval_seqlen, args.eval_windows) * args.eval_seqlen
    batch_size = resolve_batch_size(args.batch_size, model, calib)
    rows = {"load": _row("load", m["seconds"], None, None, peak["gflops"], _memory(m, base, device))}
    floors = {c: floor_bytes(model, s, args.nsamples, args.seqlen, make_criterion(c).needs)
              for c in dict.fromkeys(c for c, _ in args.methods)}

    m = dense_forward(args, model, calib, device)
    dense_s = m["seconds"]
    rows["dense_forward"] = _row("dense forward (calibration)", dense_s, tokens,
                                 forward_flops(s, tokens, args.seqlen), peak["gflops"], _memory(m, base, device))
    shares = time_shares(model, calib[:batch_size].to(device))
    with phase(device) as m:
        dense_ppl = perplexity_of(model, eval_ids, args.eval_seqlen, args.eval_windows, args.eval_batch_size,
                                  args.progress)
    rows["evaluation"] = _row("evaluation (perplexity)", m["seconds"], eval_tokens,
                              forward_flops(s, eval_tokens, args.eval_seqlen, with_head=True), peak["gflops"],
                              _memory(m, base, device))
    del model
    gc.collect()
    methods = {}
    partial = {"dtype": dtype, "peak": peak, "rss_base": base, "data": data, "batch_size": batch_size,
               "tokens": tokens, "eval_tokens": eval_tokens, "phases": rows, "forward_time_shares": shares,
               "dense_ppl": dense_ppl, "methods": methods, "scaling": [], "ablation": []}
    checkpoint(partial)
    for criterion_name, allocation_name in args.methods:
        fresh = Subject(args.model, args.shape, dtype, device, args.seed)  # no tokenizer to send along
        runs = [in_fresh_process(method_from_scratch, args, fresh, calib, eval_ids, criterion_name, allocation_name,
                                 s, device) for _ in range(args.repeats)]
        methods[f"{allocation_name}+{criterion_name}"] = median_repeat(runs)
        methods[f"{allocation_name}+{criterion_name}"]["floor"] = floors[criterion_name]
        checkpoint(partial)
    # The scaling section and the one-change-at-a-time ablation run for one dtype only (--scaling-dtype).
    if args.scaling:
        partial["scaling"] = bench_scaling(args, subject, s, device, base)
        partial["ablation"] = bench_ablation(args, subject, calib, eval_ids, device)
    return partial


# From the reference code's way to ours, one change at a time (Wanda, uniform), and the perplexity loop.
ABLATION = [
    ("reference way: one sequence at a time, statistics per Linear, full sort", dict(batch_size=1, share_stats=False, by_sort=True, stop_early=False)),
    ("+ 8 sequences per batch", dict(batch_size=8, share_stats=False, by_sort=True, stop_early=False)),
    ("+ shared statistics for q/k/v and gate/up", dict(batch_size=8, by_sort=True, stop_early=False)),
    ("+ k-th value selection instead of a full sort", dict(batch_size=8, stop_early=False)),
    ("+ statistics pass ends at the last Linear input", dict(batch_size=8)),
    ("+ batch from the memory budget (--batch-size, auto by default: = this suite)", dict()),
]


def bench_ablation(args, subject: Subject, calib, eval_ids, device) -> list[dict]:
    out = []
    for label, opts in ABLATION:
        model = subject.load()
        with phase(device) as m:
            prune_model(model, calib, make_criterion("wanda", by_sort=opts.get("by_sort", False)),
                        [args.sparsity] * len(find_blocks(model)), batch_size=opts.get("batch_size", args.batch_size),
                        progress=False, share_stats=opts.get("share_stats", True),
                        stop_early=opts.get("stop_early", True))
        out.append({"step": label, "what": "Wanda prune", "seconds": m["seconds"]})
        last = model
    for label, chunk, batch in (("perplexity, reference way: one window at a time, full logits", None, 1),
                                (f"perplexity, this suite: batches of {args.eval_batch_size}, output layer in "
                                 f"{CHUNK_TOKENS}-token chunks", CHUNK_TOKENS,
                                 args.eval_batch_size)):
        with phase(device) as m:
            window_losses(last, eval_ids, args.eval_seqlen, args.eval_windows, batch, False, chunk)
        out.append({"step": label, "what": "evaluation", "seconds": m["seconds"]})
    return out


def in_fresh_process(fn, *args):
    """Run fn(*args) in a new Python process and return its result. Each method is measured the way a user's run
    sees it, one per process: in a long-lived process the allocator keeps the heap that earlier phases left
    fragmented (another method's evaluation, another dtype), and the next method's resident peak would count it."""
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(fn, args)
        # Let the worker exit on its own: leaving the `with` terminates it, and a killed worker leaves its
        # semaphores (tqdm's lock) to the resource tracker, which warned of them at shutdown.
        pool.close()
        pool.join()
    return result


def median_repeat(runs: list[dict]) -> dict:
    """The repeat whose "x dense forward" is the median (the lower middle for an even count), whole, so its
    phases, memory and perplexity stay one run's figures; every repeat's headline figures go beside it. On this
    kind of shared machine one pass can run 20-30% off its neighbours, enough to flip a target either way."""
    ranked = sorted(runs, key=lambda r: r["times_dense_forward"])
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["repeats"] = [{"allocation_plus_prune_s": r["allocation_plus_prune_s"],
                          "dense_forward_s": r["dense_forward_s"], "times_dense_forward": r["times_dense_forward"],
                          "prune_memory": r["phases"]["prune"].get("memory")} for r in runs]
    return chosen


def method_from_scratch(args, subject: Subject, calib, eval_ids, criterion_name, allocation_name, s, device):
    """One method in a process of its own: its own matmul peak (the machine's speed drifts between processes:
    against the parent's peak, one run's passes reached 79% in a fast spell that began after it), the same base
    as the parent's (one load and release first), then a fresh model, its dense yardstick, allocation, prune
    and perplexity."""
    peak = matmul_peak(products_dtype(subject.dtype), device)
    base = base_after_warm_up(subject)
    model = subject.load()
    out = bench_method(args, model, calib, eval_ids, criterion_name, allocation_name, s, peak["gflops"], base,
                       device)
    out["rss_base"] = base
    out["peak"] = peak
    return out


def bench_method(args, model, calib, eval_ids, criterion_name, allocation_name, s, peak, base, device):
    tokens = calib.numel()
    criterion = make_criterion(criterion_name)
    out = {"criterion": criterion_name, "allocation": allocation_name, "sparsity": args.sparsity}
    rows = {}
    # The yardstick again, just before this method and once more just after its prune: on a shared machine the
    # speed drifts over minutes, even within one process, so each "x dense forward" divides by the mean of two
    # passes that bracket the work. The pass after runs on the pruned weights: the
    # same products, as costly.
    dense_before_s = dense_forward(args, model, calib, device)["seconds"]
    # The self-check every run makes before its walks (dlp.walk.selfcheck): one calibration sequence through the
    # model and through the walk. Shown beside the prune; not in "x dense forward", which times the method.
    with phase(device) as m:
        check_walk(model, calib[:1])
    rows["selfcheck"] = _row("self-check (1 sequence)", m["seconds"], calib[0].numel(), None, peak)
    # An empty profile cache, so that the allocation pass is timed in full; its walk recorded, so that its
    # GFLOP/s counts only the products it did (the engine cuts the last block short: dlp.walk.engine).
    with tempfile.TemporaryDirectory() as cache, cache_at(cache), watch_walks() as walks:
        with phase(device) as m:
            allocation = make_allocator(allocation_name).allocate(model, calib, args.sparsity, args.batch_size,
                                                                  progress=args.progress)
    passes = not ALLOCATIONS[allocation_name].reference  # the reference has no pass of its own to time
    allocation_s = m["seconds"] if passes else 0.0
    if passes:
        done = (statistics_flops(s, tokens, args.seqlen, frozenset({SQNORM})) * len(walks)
                - sum(w.skipped_flops for w in walks))
        rows["allocation"] = _row("allocation pass", m["seconds"], tokens, done or None, peak,
                                  _memory(m, base, device))
    with phase(device) as m:
        walked = prune_model(model, calib, criterion, allocation.sparsities, batch_size=args.batch_size,
                             progress=args.progress)
    t = walked.timings
    rows["capture"] = _row("capture", t["capture"], tokens, None, peak)
    # Products done: a prune's statistics passes stop at each batch's last Linear input after the first
    # batch, and the last block is not replayed (dlp.walk.engine); the walk counts what it skipped.
    rows["statistics"] = _row("statistics", t["statistics"], tokens,
                              statistics_flops(s, tokens, args.seqlen, criterion.needs) - walked.skipped_flops, peak)
    rows["criterion"] = _row("criterion", t["visit"], None,
                             criterion_flops(criterion, s), peak)
    rows["replay"] = _row("replay", t["replay"], tokens,
                          forward_flops(s, tokens, args.seqlen) * walked.replayed_blocks / s.blocks, peak)
    rows["prune"] = _row("prune (all blocks)", m["seconds"], tokens, None, peak, _memory(m, base, device))
    dense_after_s = dense_forward(args, model, calib, device)["seconds"]
    dense_s = (dense_before_s + dense_after_s) / 2
    with phase(device) as m:
        ppl = perplexity_of(model, eval_ids, args.eval_seqlen, args.eval_windows, args.eval_batch_size, args.progress)
    rows["evaluation"] = _row("evaluation (perplexity)", m["seconds"], None, None, peak, _memory(m, base, device))
    total = allocation_s + rows["prune"]["seconds"]
    out.update({"phases": rows, "allocation_plus_prune_s": total, "dense_forward_s": dense_s,
                "dense_forward_before_s": dense_before_s, "dense_forward_after_s": dense_after_s,
                "times_dense_forward": total / dense_s,
                "ppl": ppl})
    return out


def criterion_flops(criterion, s) -> float | None:
    """The criterion's own arithmetic over the model, where it has a model of it (dlp.methods.criterion.Criterion.flops)."""
    per_block = criterion.flops(s.matrices)
    return None if per_block is None else s.blocks * per_block


def bench_scaling(args, subject: Subject, s, device, base) -> list[dict]:
    """Wanda (uniform) at three calibration sizes and three sequence lengths, then at other batch sizes (the
    memory a batch's working tensors add against the speed of larger products): time and peak memory."""
    points = sorted({(n, args.seqlen, args.batch_size) for n in args.scale_nsamples}
                    | {(args.nsamples, q, args.batch_size) for q in args.scale_seqlens}
                    | {(args.nsamples, args.seqlen, b) for b in args.scale_batch_sizes}, key=str)
    out = []
    for nsamples, seqlen, batch_size in points:
        model = subject.load()
        calib, _ = calibration(subject, model, nsamples, seqlen)
        floor = floor_bytes(model, s, nsamples, seqlen, make_criterion("wanda").needs)  # shapes: same model
        with phase(device) as m:
            walked = prune_model(model, calib, make_criterion("wanda"), [args.sparsity] * len(find_blocks(model)),
                                 batch_size=batch_size, progress=False)
        out.append({"nsamples": nsamples, "seqlen": seqlen, "batch_setting": batch_size,
                    "batch_size": walked.batch_size, "tokens": nsamples * seqlen,
                    "seconds": m["seconds"], "floor": floor["total"], **_memory(m, base, device)})
        del model
        gc.collect()
    return out


def batch_arg(text: str):
    """--batch-size: a positive int or "auto"."""
    value = text if text == AUTO else int(text) if text.strip().isdigit() else text
    check_batch_size(value)
    return value


def method_name(criterion: str, allocation: str) -> str:
    """How the report names a method: allocation+criterion."""
    return f"{allocation}+{criterion}"


def parse_methods(text: str) -> list[tuple[str, str]]:
    """--methods: allocation+criterion pairs of any registered allocation and criterion, in the order given;
    an unknown one is a one-line error."""
    pairs = []
    for asked in (m.strip() for m in text.split(",") if m.strip()):
        allocation, _, criterion = asked.partition("+")
        if allocation not in ALLOCATIONS or criterion not in CRITERIA:
            raise UserError(f"unknown method '{asked}'; write allocation+criterion from allocations "
                            f"{', '.join(ALLOCATIONS)} and criteria {', '.join(CRITERIA)}")
        pairs.append((criterion, allocation))
    if not pairs:
        raise UserError(f"no method in --methods '{text}'")
    return pairs


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="alias, hub id or folder (default: the embedded model)")
    p.add_argument("--shape", choices=sorted(SHAPES), help="a random-weight model of this shape instead of --model")
    p.add_argument("--dtypes", default="float32,bfloat16,mixed", help="weights' dtypes, and mixed: float32 "
                   "weights with passes under bfloat16 autocast (model.compute_dtype=bfloat16)")
    p.add_argument("--device", default="auto")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--batch-size", type=batch_arg, default="auto", help="sequences per block pass, or auto "
                   "(from a memory budget: dlp/walk/batching.py)")
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--eval-batch-size", type=int, default=4)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--methods", default=",".join(method_name(*m) for m in default_methods()),
                   help="allocation+criterion pairs to run, comma-separated (default: every allocation with Wanda "
                   "and every statistics-reading criterion with uniform)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each method, each in a fresh process; the "
                   "report keeps the one with the median x dense forward and lists the others' figures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale-nsamples", default=None, help="default: half, once and twice --nsamples")
    p.add_argument("--scale-seqlens", default=None, help="default: half, once and twice --seqlen")
    p.add_argument("--scale-batch-sizes", default=None, help="default: 1, 2, 8 and --batch-size")
    p.add_argument("--no-scaling", dest="scaling", action="store_false")
    p.add_argument("--scaling-dtype", default=None, help="dtype of the scaling section (default: the last one)")
    p.add_argument("--out", default="results/bench", help="writes OUT.json, OUT.md and OUT-scaling.png")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in args.dtypes:
        if d not in PRECISIONS:
            raise UserError(f"unknown dtype '{d}'; choose from {', '.join(PRECISIONS)}")
    args.scale_nsamples = ([int(x) for x in args.scale_nsamples.split(",")] if args.scale_nsamples
                           else [max(1, args.nsamples // 2), args.nsamples, 2 * args.nsamples])
    args.scale_seqlens = ([int(x) for x in args.scale_seqlens.split(",")] if args.scale_seqlens
                          else [max(2, args.seqlen // 2), args.seqlen, 2 * args.seqlen])
    args.scale_batch_sizes = ([batch_arg(x) for x in args.scale_batch_sizes.split(",")] if args.scale_batch_sizes
                              else [1, 2, 8] + ([args.batch_size] if args.batch_size not in (1, 2, 8) else []))
    if not 0 <= args.sparsity < 1:
        raise UserError(f"sparsity must be in [0, 1) (got {args.sparsity})")
    args.methods = parse_methods(args.methods)
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1 (got {args.repeats})")
    return args


def main(argv=None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        device = resolve_device(args.device)
        started = time.time()
        results = []
        scaling_dtype = args.scaling_dtype or args.dtypes[-1]
        scaling = args.scaling
        from experiments.records import environment
        out = Path(args.out)
        partial_path = out.with_name(out.name + ".partial.json")
        report = {"machine": describe(device), "environment": environment(),
                  "settings": {k: v for k, v in vars(args).items() if k != "progress"},
                  "subject": Subject(args.model, args.shape, "", device).describe(), "results": results}

        def checkpoint(current: dict) -> None:
            write_json_atomic(partial_path, report | {"results": results + [current],
                                                      "wall_s": time.time() - started, "complete": False})

        for dtype in args.dtypes:
            args.scaling = scaling and dtype == scaling_dtype
            results.append(bench_dtype(args, dtype, device, checkpoint))
        args.scaling = scaling
        report["wall_s"] = time.time() - started
        write_json_atomic(out.with_suffix(".json"), report)
        figure = out.with_name(out.name + "-scaling.png")
        md = render(report, figure if any(r["scaling"] for r in results) else None)
        write_atomic(out.with_suffix(".md"), md.encode())
        print(md)
        partial_path.unlink(missing_ok=True)  # the whole report is written: the checkpoint has done its job
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
