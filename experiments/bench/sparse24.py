"""`python -m experiments.bench.sparse24` (part of `make bench`): where does 2:4 sparsity buy speed on a GPU?

On a CUDA device of compute capability 8.0 or more, each Linear shape of a model (LLaMA-2-7B's by default) is
pruned 2:4 and run as y = x·Wᵀ for `batch × length` tokens (length 1 is a decode step), dense and through each
of PyTorch's two semi-structured sparse backends, CUTLASS and cuSPARSELt, in float16 and bfloat16, timed twice:
eager (one call, as a user of transformers runs it) and as a CUDA graph (the kernels alone). With
`--whole-model` it also times a LLaMA-2-7B-shaped model (random weights made on the device, every decoder
Linear pruned 2:4 and swapped to the sparse weight) against the same model dense: prefill of `batch × length`
tokens, and decode, one token per step with a KV cache, in eager PyTorch (no CUDA graphs, no torch.compile).
Every time is the median of CUDA-event timings after warm-up. Before timing, each backend's product on the
first weight is checked against the dense product; a backend that is unavailable, fails that check or raises
is reported in its rows with the reason. The report (`<out>.md`, `<out>.json`) is rewritten after each
section, so a run cut short keeps what it measured.

Without such a device it says so and measures nothing: on a CPU this suite claims only size on disk
(experiments.export) and memory, no speed.

The GPU job, about 2 minutes on an H200 (an estimate: one run with torch 2.11 took 114 s, not counting the
machine's start; --budget-s skips, saying so, what would start after 4 minutes should a machine be slower):

  python -m experiments.bench.sparse24 --out $OUT/bench-sparse24 --whole-model --budget-s 240

The same code path at toy size: `--shape tiny --whole-model`.
"""
import argparse
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

import torch

from dlp.storage.io import write_atomic, write_json_atomic

SHAPES = {  # (out, in) of one decoder block's Linears
    "llama2-7b": {"q/k/v/o_proj": (4096, 4096), "gate/up_proj": (11008, 4096), "down_proj": (4096, 11008)},
    "tiny": {"proj": (128, 128)},
}
# Whole models of the same names (LlamaConfig fields). The tiny one keeps every Linear a multiple of the
# backends' tiles (rows of 32, columns of 64), so that it takes the same path as the large one.
MODELS = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, max_position_embeddings=512),
}
# Whole-model prefill sizes (batch x length) and decode context of each shape: the tiny model's stay within its
# positions and take seconds.
MODEL_SIZES = {"llama2-7b": ("1x2048,16x2048", 512), "tiny": ("1x64,4x64", 32)}
BACKENDS = ("cutlass", "cusparselt")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Largest error of the sparse product relative to the dense product's largest entry: both accumulate in float32,
# so they differ by the output's rounding and the summation order (bfloat16 keeps 3 fewer mantissa bits).
TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 3e-2}
MIN_CAPABILITY = (8, 0)


def unavailable() -> str | None:
    """Why 2:4 kernels cannot be measured here, or None when they can."""
    if not torch.cuda.is_available():
        return "no CUDA device: the 2:4 sparse kernels need one of compute capability >= 8.0; speed not measured"
    cap = torch.cuda.get_device_capability()
    if cap < MIN_CAPABILITY:
        return (f"{torch.cuda.get_device_name()} has compute capability {cap[0]}.{cap[1]}; the 2:4 sparse kernels "
                "need 8.0 or more; speed not measured")
    return None


def why(exc: BaseException) -> str:
    """One line for a report cell: the exception's type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def to_sparse(w: torch.Tensor, backend: str = "default") -> torch.Tensor:
    """`w` as a semi-structured sparse tensor of `backend` ("default": whatever PyTorch picks)."""
    warnings.filterwarnings("ignore", message=".*SparseSemiStructuredTensor.*prototype.*")
    if backend == "default":
        from torch.sparse import to_sparse_semi_structured
        return to_sparse_semi_structured(w)
    if backend == "cusparselt" and not torch.backends.cusparselt.is_available():
        raise RuntimeError("cuSPARSELt is not available in this torch build")
    cls = {"cutlass": torch.sparse.SparseSemiStructuredTensorCUTLASS,
           "cusparselt": torch.sparse.SparseSemiStructuredTensorCUSPARSELT}[backend]
    return cls.from_dense(w)


def prune_two_four(w: torch.Tensor) -> torch.Tensor:
    """`w` with the 2 smallest magnitudes of every group of 4 consecutive inputs zeroed."""
    groups = w.reshape(-1, 4)
    drop = groups.abs().topk(2, dim=1, largest=False).indices
    return groups.scatter(1, drop, 0.0).view_as(w)


def two_four(out_features: int, in_features: int, dtype, device) -> torch.Tensor:
    """A random weight pruned 2:4."""
    return prune_two_four(torch.randn(out_features, in_features, dtype=dtype, device=device))


def nbytes(t: torch.Tensor) -> int:
    """Memory a weight keeps: a dense tensor's storage, or every buffer of a sparse one (values, metadata, and
    their transposes when the backend holds them)."""
    if not hasattr(t, "packed"):
        return t.numel() * t.element_size()
    parts = [getattr(t, n, None) for n in ("packed", "meta", "packed_t", "meta_t", "compressed_swizzled_bitmask")]
    return sum(p.numel() * p.element_size() for p in parts if isinstance(p, torch.Tensor))


def timed(fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds of `fn()` over `repeats` CUDA-event timings, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def graph_timed(fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds of one replay of `fn` captured as a CUDA graph: the kernels alone, without the Python and
    dispatch work that eager PyTorch does per call (large for the sparse tensor subclass)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires (lazy handles, workspaces)
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
        return timed(graph.replay, repeats, warmup=1)
    finally:
        graph.reset()  # its private memory pool would otherwise hold every captured output


TIMERS = {"eager": timed, "graph": graph_timed}


# --- per matrix -----------------------------------------------------------------------------------------------

def check_product(w: torch.Tensor, backend: str, convert=to_sparse, rows: int = 64) -> dict:
    """Does the backend's sparse product of `w` equal the dense one (within the dtype's tolerance)?"""
    out = {"dtype": str(w.dtype).removeprefix("torch."), "backend": backend, "shape": list(w.shape),
           "tolerance": TOLERANCE.get(w.dtype, 1e-2), "max_rel_error": None, "ok": False, "error": None}
    try:
        x = torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device)
        dense = torch.nn.functional.linear(x, w).float()
        sparse = torch.nn.functional.linear(x, convert(w, backend)).float()
        out["max_rel_error"] = ((sparse - dense).abs().max() / dense.abs().max()).item()
        out["ok"] = out["max_rel_error"] < out["tolerance"]
        if not out["ok"]:
            out["error"] = f"product differs from dense by {out['max_rel_error']:.2g} (tolerance {out['tolerance']})"
    except Exception as exc:  # an unusable backend is a finding, not a crash
        out["error"] = why(exc)
    return out


def matrix_row(name, shape, batch, length, dtype_name, backend, dense_s, sparse_s, dense_bytes, sparse_bytes,
               error=None, timing="eager") -> dict:
    tokens = batch * length
    ok = error is None
    return {"matrix": name, "shape": list(shape), "batch": batch, "length": length, "dtype": dtype_name,
            "backend": backend, "timing": timing, "dense_tokens_per_s": tokens / dense_s if dense_s else None,
            "sparse_tokens_per_s": tokens / sparse_s if ok else None,
            "speedup": dense_s / sparse_s if ok else None, "dense_weight_bytes": dense_bytes,
            "sparse_weight_bytes": sparse_bytes if ok else None, "error": error}


def measure(shapes: dict, batches: list[int], lengths: list[int], dtype, repeats: int, backends=("default",), *,
            skip: dict | None = None, timer=timed, convert=to_sparse, device=None, timing="eager") -> list[dict]:
    """One row per shape × batch × length × backend. The dense time is measured once per shape × batch × length
    and shared by the backends, so every backend is compared with the same baseline. `skip` maps a backend to
    why it is not measured (e.g. a failed correctness check); `timing` names what `timer` measures. A dense
    side that fails (a graph that cannot be captured) leaves its rows unmeasured, saying why."""
    device = torch.device(device or "cuda")
    dtype_name = str(dtype).removeprefix("torch.")
    skip = dict(skip or {})
    rows = []
    for name, (out_f, in_f) in shapes.items():
        w = two_four(out_f, in_f, dtype, device)
        sparse, failed = {}, dict(skip)
        for b in backends:
            if b not in failed:
                try:
                    sparse[b] = convert(w, b)
                except Exception as exc:
                    failed[b] = why(exc)
        for batch in batches:
            for length in lengths:
                x = torch.randn(batch * length, in_f, dtype=dtype, device=device)
                dense_s, dense_error = None, None
                try:
                    dense_s = timer(lambda: torch.nn.functional.linear(x, w), repeats)
                except Exception as exc:
                    dense_error = f"dense: {why(exc)}"
                for b in backends:
                    error, sparse_s = dense_error or failed.get(b), None
                    if error is None:
                        try:
                            sparse_s = timer(lambda: torch.nn.functional.linear(x, sparse[b]), repeats)
                        except Exception as exc:
                            error = why(exc)
                    rows.append(matrix_row(name, (out_f, in_f), batch, length, dtype_name, b, dense_s, sparse_s,
                                           nbytes(w), nbytes(sparse[b]) if b in sparse else None, error, timing))
    return rows


# --- whole model ----------------------------------------------------------------------------------------------

def build_model(shape: str, dtype, device, layers: int | None = None):
    """A LLaMA model of `shape` with random weights made directly on `device` in `dtype`, every decoder Linear
    pruned 2:4 in place (the dense baseline is the pruned model, so both sides compute the same function)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    fields = dict(MODELS[shape], **({"num_hidden_layers": layers} if layers else {}))
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # made in dtype: a float32 LLaMA-2-7B would need 27 GB first
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**fields, attn_implementation="sdpa"))
    finally:
        torch.set_default_dtype(previous)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        for linear in decoder_linears(model):
            linear.weight.copy_(prune_two_four(linear.weight))
    return model


def decoder_linears(model) -> list[torch.nn.Linear]:
    """The Linears of the decoder blocks: what pruning removes weights from (embeddings and the head are kept)."""
    return [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]


def set_weights(linears, weights) -> None:
    """Put `weights` into the Linears; a sparse weight also gets the 2-D forward below, a dense one nn.Linear's own."""
    for linear, w in zip(linears, weights):
        linear.weight = torch.nn.Parameter(w, requires_grad=False)
        if hasattr(w, "packed"):
            linear.forward = types.MethodType(flat_linear, linear)
        else:
            linear.__dict__.pop("forward", None)


def flat_linear(self, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear's product with the input flattened to 2-D. The sparse weight supports mm, not the batched matmul
    that F.linear falls back to for a 3-D input it cannot fold into one mm (a non-contiguous one, as the sparse
    kernels' transposed outputs make downstream: a decode step at batch > 1 raises on `expand` without this)."""
    out = torch.nn.functional.linear(x.reshape(-1, x.shape[-1]), self.weight, self.bias)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def prefill_fn(model, batch: int, length: int):
    """One prefill: the blocks over `batch × length` tokens, the head on the last one (what generation does)."""
    ids = torch.randint(model.config.vocab_size, (batch, length), device=model.device)

    def run():
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        return model.lm_head(hidden[:, -1])
    return run


def decode_fn(model, batch: int, context: int):
    """One decode step per call: the next token of each sequence, with a KV cache filled by a `context`-token
    prefill (the cache grows by one token per call; over a few dozen steps that changes little)."""
    ids = torch.randint(model.config.vocab_size, (batch, context), device=model.device)
    key = cache_argument(model)
    out = model(input_ids=ids, use_cache=True)
    state = {"cache": out.get(key), "token": out.logits[:, -1:].argmax(-1)}

    def step():
        out = model(input_ids=state["token"], use_cache=True, **{key: state["cache"]})
        state["token"] = out.logits[:, -1:].argmax(-1)
    return step


def cache_argument(model) -> str:
    """The KV cache's name in forward's arguments and outputs: `cache` in newer transformers, `past_key_values`
    before (still accepted for a while, with a warning on every call)."""
    import inspect
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def model_row(phase, batch, tokens, context, dtype_name, backend, dense_s, sparse_s, dense_bytes, sparse_bytes,
              logits_rel_diff=None, error=None) -> dict:
    ok = error is None
    n = batch * tokens
    return {"phase": phase, "batch": batch, "tokens": tokens, "context": context, "dtype": dtype_name,
            "backend": backend, "dense_s": dense_s, "sparse_s": sparse_s if ok else None,
            "dense_tokens_per_s": n / dense_s if dense_s else None, "sparse_tokens_per_s": n / sparse_s if ok else None,
            "speedup": dense_s / sparse_s if ok else None, "dense_weight_bytes": dense_bytes,
            "sparse_weight_bytes": sparse_bytes if ok else None, "logits_rel_diff": logits_rel_diff, "error": error}


def model_cases(prefill: list[tuple[int, int]], decode_batches: list[int], context: int) -> list[tuple]:
    """(phase, batch, tokens per sequence, context) of each whole-model row."""
    return ([("prefill", b, n, 0) for b, n in prefill] + [("decode", b, 1, context) for b in decode_batches])


def time_cases(model, cases, repeats: int, model_repeats: int, timer) -> dict:
    """Seconds per case (or the reason it failed), and the first prefill's last-token logits for comparison."""
    out, logits = {}, None
    for case in cases:
        phase, batch, tokens, context = case
        try:
            with torch.no_grad():
                if phase == "prefill":
                    run = prefill_fn(model, batch, tokens)
                    if logits is None:
                        torch.manual_seed(1)  # the same ids for every variant: the logits are compared
                        logits = prefill_fn(model, batch, tokens)().float()
                    out[case] = timer(run, model_repeats, warmup=1)  # a prefill is long: one warm-up is enough
                else:
                    out[case] = timer(decode_fn(model, batch, context), repeats)
        except Exception as exc:
            out[case] = why(exc)
    return {"seconds": out, "logits": logits}


def model_rows(model, dtype_name: str, backends, cases, *, repeats: int, model_repeats: int, timer=timed,
               convert=to_sparse, deadline: float | None = None, skip: dict | None = None) -> list[dict]:
    """Each case dense, then with every decoder Linear swapped to each backend's sparse weight (and back).
    `skip` maps a backend to why it is not run (its correctness check failed)."""
    linears = decoder_linears(model)
    dense_w = [l.weight.data for l in linears]
    dense_bytes = sum(nbytes(w) for w in dense_w)
    dense = time_cases(model, cases, repeats, model_repeats, timer)
    rows = []
    for b in backends:
        error, sparse_bytes, timing = None, None, {"seconds": {}, "logits": None}
        if (skip or {}).get(b):
            error = skip[b]
        elif deadline is not None and time.monotonic() > deadline:
            error = "not run: the time budget (--budget-s) was spent"
        else:
            try:
                sparse_w = [convert(w, b) for w in dense_w]
                sparse_bytes = sum(nbytes(w) for w in sparse_w)
                set_weights(linears, sparse_w)
                del sparse_w
                timing = time_cases(model, cases, repeats, model_repeats, timer)
            except Exception as exc:
                error = why(exc)
            finally:
                set_weights(linears, dense_w)
        diff = None
        if timing["logits"] is not None and dense["logits"] is not None:
            diff = ((timing["logits"] - dense["logits"]).abs().max() / dense["logits"].abs().max()).item()
        for case in cases:
            d, s = dense["seconds"][case], timing["seconds"].get(case)
            err = error or (f"dense: {d}" if isinstance(d, str) else None) or (s if isinstance(s, str) else None)
            rows.append(model_row(*case, dtype_name, b, d if not isinstance(d, str) else None,
                                  s if err is None else None, dense_bytes, sparse_bytes,
                                  diff if case[0] == "prefill" else None, err))
    return rows


# --- report ---------------------------------------------------------------------------------------------------

def verdict(row: dict) -> str:
    if row.get("error"):
        return f"not measured: {row['error']}"
    s = row["speedup"]
    return "yes" if s > 1 else "no" if s < 1 else "even"


def label(row: dict) -> str:
    """A row's name in the summary sentence."""
    if "matrix" in row:
        size = f"{row['matrix']} {row['batch']} x {row['length']}"
    else:
        size = f"whole-model {row['phase']} {row['batch']} x {row['tokens']}"
    return f"{size} {row['dtype']} {row['backend']} {row.get('timing', 'eager')}"


def _num(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _mb(v) -> str:
    return "—" if v is None else f"{v / 1e6:.1f}"


def matrix_line(r: dict) -> str:
    speedup = "—" if r["speedup"] is None else f"{r['speedup']:.2f}x"
    return (f"| {r['matrix']} | {r['shape'][0]}x{r['shape'][1]} | {r['batch']} x {r['length']} | {r['dtype']} | "
            f"{r['backend']} | {r.get('timing', 'eager')} | {_num(r['dense_tokens_per_s'], '.3g')} | {_num(r['sparse_tokens_per_s'], '.3g')} | "
            f"{speedup} | {verdict(r)} | {_mb(r['dense_weight_bytes'])} / {_mb(r['sparse_weight_bytes'])} |")


def model_line(r: dict) -> str:
    size = f"{r['batch']} x {r['tokens']}" + (f" (context {r['context']})" if r["phase"] == "decode" else "")
    ms = lambda s: "—" if s is None else f"{s * 1e3:.2f}"  # noqa: E731
    speedup = "—" if r["speedup"] is None else f"{r['speedup']:.2f}x"
    return (f"| {r['phase']} | {size} | {r['dtype']} | {r['backend']} | {ms(r['dense_s'])} | {ms(r['sparse_s'])} | "
            f"{_num(r['dense_tokens_per_s'], '.3g')} | {_num(r['sparse_tokens_per_s'], '.3g')} | {speedup} | "
            f"{verdict(r)} | {_mb(r['dense_weight_bytes'])} / {_mb(r['sparse_weight_bytes'])} | "
            f"{_num(r.get('logits_rel_diff'), '.2g')} |")


MATRIX_HEADER = ["| Matrix | Shape | Batch x length | Dtype | Backend | Timing | Dense tokens/s | 2:4 tokens/s | "
                 "Speed-up | Pays? | Weight MB dense / 2:4 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
MODEL_HEADER = ["| Phase | Batch x tokens | Dtype | Backend | Dense ms | 2:4 ms | Dense tokens/s | 2:4 tokens/s | "
                "Speed-up | Pays? | Decoder weights MB dense / 2:4 | Logits vs dense |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
MODEL_NOTE = ("Logits vs dense: the largest difference of the first prefill's last-token logits from the dense "
              "model's, relative to their largest magnitude. Eager decode runs hundreds of small kernels per token, "
              "each launched from Python: its times include that work, which the per-matrix `graph` rows leave out.")
OVERVIEW_HEADER = ["| Rows | Dtype | Backend | Timing | Measured | 2:4 pays in | Best speed-up | Worst speed-up |",
                   "|---|---|---|---|---|---|---|---|"]


def summary(rows: list[dict]) -> str:
    """The closing sentence: the rows where 2:4 is faster than dense, those where it is slower, and how many were
    not measured."""
    measured = [r for r in rows if not r.get("error")]
    faster = [label(r) for r in measured if r["speedup"] > 1]
    slower = [label(r) for r in measured if r["speedup"] < 1]
    if not measured:
        return "Nothing was measured, so this report cannot say where 2:4 pays."
    text = (f"2:4 pays (faster than dense) in {len(faster)} of {len(measured)} measured rows"
            + (f": {', '.join(faster)}" if faster else ""))
    text += f"; it is slower than dense in {len(slower)}" + (f": {', '.join(slower)}" if slower else "")
    if len(measured) < len(rows):
        text += f"; {len(rows) - len(measured)} rows were not measured (see their Pays? cell)"
    return text + "."


def overview(rows: list[dict]) -> list[str]:
    """One line per section × dtype × backend × timing: how many rows were measured, in how many 2:4 pays, and
    the best and worst speed-up with where they were."""
    groups = {}
    for r in rows:
        kind = "per matrix" if "matrix" in r else "whole model"
        groups.setdefault((kind, r["dtype"], r["backend"], r.get("timing", "eager")), []).append(r)
    lines = []
    for (kind, dtype, backend, timing), group in groups.items():
        done = [r for r in group if not r.get("error")]
        at = lambda r: f"{r['speedup']:.2f}x ({label(r).split(f' {dtype} ')[0].removeprefix('whole-model ')})"  # noqa: E731
        best = at(max(done, key=lambda r: r["speedup"])) if done else "—"
        worst = at(min(done, key=lambda r: r["speedup"])) if done else "—"
        lines.append(f"| {kind} | {dtype} | {backend} | {timing} | {len(done)} of {len(group)} | "
                     f"{sum(r['speedup'] > 1 for r in done)} | {best} | {worst} |")
    return lines


def header_lines(meta: dict) -> list[str]:
    machine = meta.get("device", "?")
    if meta.get("capability"):
        machine += f" (compute capability {meta['capability']})"
    versions = ", ".join(f"{k} {meta[k]}" for k in ("torch", "cuda", "cusparselt", "transformers") if meta.get(k))
    settings = "; ".join(f"{k} {v}" for k, v in meta.get("settings", {}).items())
    lines = [f"# 2:4 semi-structured sparsity: where it pays on {meta.get('device', '?')}", "",
             f"Machine: {machine}." + (f" Software: {versions}." if versions else "")]
    if settings:
        lines.append(f"Settings: {settings}.")
    lines += ["Times are medians of CUDA-event timings after warm-up. Timing `eager`: one call of eager PyTorch "
              "(what a transformers user gets, Python and dispatch work included); `graph`: one replay of the call "
              "captured as a CUDA graph (the kernels alone, padding and transposes included). The whole model is "
              "timed eager only (no CUDA graphs, no torch.compile). Speed-up = dense time / 2:4 time; 2:4 pays "
              "where it is above 1."]
    return lines


def check_lines(checks: list[dict]) -> list[str]:
    if not checks:
        return []
    lines = ["", "## Correctness (first weight: sparse product against dense)", ""]
    for c in checks:
        state = (f"max error {c['max_rel_error']:.2g} of the largest output (tolerance {c['tolerance']}): "
                 + ("ok" if c["ok"] else "FAILED, not timed")) if c["max_rel_error"] is not None else \
            f"FAILED, not timed: {c['error']}"
        lines.append(f"- {c['dtype']} {c['backend']}: {state}")
    return lines


def render(meta: dict, matrix_rows: list[dict], model_rows_: list[dict] = ()) -> str:
    """The markdown report: header, correctness checks, per-matrix and whole-model tables, summary."""
    lines = header_lines(meta) + check_lines(meta.get("checks", []))
    if matrix_rows:
        lines += ["", "## Per matrix: y = x·Wᵀ for batch × length tokens (length 1: a decode step)", ""]
        lines += MATRIX_HEADER + [matrix_line(r) for r in matrix_rows]
    if model_rows_:
        lines += ["", f"## Whole model: {meta.get('model', 'LLaMA-2-7B-shaped')}", ""]
        lines += MODEL_HEADER + [model_line(r) for r in model_rows_] + ["", MODEL_NOTE]
    for e in meta.get("errors", []):
        lines += ["", f"Not completed: {e}"]
    rows = list(matrix_rows) + list(model_rows_)
    lines += ["", "## Where 2:4 pays", ""] + OVERVIEW_HEADER + overview(rows) + ["", summary(rows)]
    return "\n".join(lines) + "\n"


def report(rows: list[dict], device_name: str, dtype: str) -> str:
    """The per-matrix report alone (kept for callers of the single-dtype API)."""
    return render({"device": device_name, "settings": {"dtypes": dtype}}, rows)


# --- command line ---------------------------------------------------------------------------------------------

def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def sizes(text: str) -> list[tuple[int, int]]:
    """"1x2048,16x2048" -> [(1, 2048), (16, 2048)]."""
    return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama2-7b", choices=sorted(SHAPES))
    parser.add_argument("--dtypes", default="float16,bfloat16")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--lengths", default="1,128,512,2048")
    parser.add_argument("--repeats", type=int, default=20, help="timings per matrix row and per decode row")
    parser.add_argument("--whole-model", action="store_true", help="also time the whole model, dense and 2:4")
    parser.add_argument("--no-graph", action="store_true", help="skip the per-matrix rows timed as CUDA graphs")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers of the whole model (default: all)")
    parser.add_argument("--prefill", default=None, help="batch x length of each whole-model prefill "
                        "(default: 1x2048,16x2048; tiny: 1x64,4x64)")
    parser.add_argument("--decode-batches", default="1,16")
    parser.add_argument("--decode-context", type=int, default=None,
                        help="tokens in the KV cache before decoding (default: 512; tiny: 32)")
    parser.add_argument("--model-repeats", type=int, default=5, help="timings per whole-model prefill row")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip (and say so) whole-model variants and sections that would start after this "
                        "many seconds")
    parser.add_argument("--out", default=None, help="write <out>.md and <out>.json (default: print only)")
    args = parser.parse_args(argv)
    for d in args.dtypes.split(","):
        if d not in DTYPES:
            parser.error(f"--dtypes: {d!r} is not one of {', '.join(DTYPES)}")
    for b in args.backends.split(","):
        if b not in BACKENDS + ("default",):
            parser.error(f"--backends: {b!r} is not one of {', '.join(BACKENDS)}, default")
    prefill, context = MODEL_SIZES[args.shape]
    args.prefill = args.prefill or prefill
    args.decode_context = args.decode_context or context
    return args


def settings(args) -> dict:
    s = {"shape": args.shape, "dtypes": args.dtypes, "backends": args.backends, "batches": args.batches,
         "lengths": args.lengths, "repeats": args.repeats, "timings": "eager" + ("" if args.no_graph else ", graph")}
    if args.whole_model:
        s.update({"prefill": args.prefill, "decode batches": args.decode_batches,
                  "decode context": args.decode_context, "prefill repeats": args.model_repeats})
    return s


def machine(args) -> dict:
    meta = {"device": torch.cuda.get_device_name(), "capability": "%d.%d" % torch.cuda.get_device_capability(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cusparselt": torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None,
            "settings": settings(args), "checks": [], "errors": []}
    if args.whole_model:
        import transformers
        meta["transformers"] = transformers.__version__
    return meta


def model_title(shape: str, layers: int | None) -> str:
    full = MODELS[shape]["num_hidden_layers"]
    n = layers or full
    name = "LLaMA-2-7B-shaped" if shape == "llama2-7b" else f"{shape}-shaped"
    part = f"all {full} decoder layers" if n == full else f"{n} of its {full} decoder layers only"
    return (f"{name} LlamaForCausalLM, random weights, {part}, every decoder Linear pruned 2:4 "
            "(dense = the same pruned weights, dense kernels); prefill times the blocks and the head on the last "
            "token, decode one token per step with a KV cache")


def save(out: str | None, meta: dict, matrix_rows: list, whole_rows: list) -> str:
    """Render and (with --out) write both files; called after every section so a cut-short run keeps its rows."""
    md = render(meta, matrix_rows, whole_rows)
    if out:
        write_atomic(Path(out).with_suffix(".md"), md.encode())
        write_json_atomic(Path(out).with_suffix(".json"), {**meta, "matrix_rows": matrix_rows, "model_rows": whole_rows})
    return md


def checked(meta: dict, dtype_name: str, backends, shapes: dict) -> dict:
    """Each backend's correctness check on the first weight of `dtype_name` (made once, kept in the report), as
    {backend: why it is not timed} for those that failed."""
    done = {c["backend"]: c for c in meta["checks"] if c["dtype"] == dtype_name}
    missing = [b for b in backends if b not in done]
    if missing:
        w = two_four(*next(iter(shapes.values())), DTYPES[dtype_name], torch.device("cuda"))
        for b in missing:
            done[b] = check_product(w, b)
            meta["checks"].append(done[b])
    return {b: done[b]["error"] for b in backends if not done[b]["ok"]}


def run_matrices(args, meta, matrix_rows, whole_rows, timing: str = "eager") -> None:
    shapes, backends = SHAPES[args.shape], args.backends.split(",")
    for name in args.dtypes.split(","):
        skip = checked(meta, name, backends, shapes)
        matrix_rows += measure(shapes, ints(args.batches), ints(args.lengths), DTYPES[name], args.repeats, backends,
                               skip=skip, timer=TIMERS[timing], timing=timing)
        save(args.out, meta, matrix_rows, whole_rows)


def run_whole_model(args, meta, matrix_rows, whole_rows, deadline) -> None:
    meta["model"] = model_title(args.shape, args.layers)
    cases = model_cases(sizes(args.prefill), ints(args.decode_batches), args.decode_context)
    backends = args.backends.split(",")
    for name in args.dtypes.split(","):
        if deadline is not None and time.monotonic() > deadline:
            meta["errors"].append(f"whole model {name}: not run, the time budget (--budget-s) was spent")
            continue
        skip = checked(meta, name, backends, SHAPES[args.shape])
        model = build_model(args.shape, DTYPES[name], torch.device("cuda"), args.layers)
        whole_rows += model_rows(model, name, backends, cases, repeats=args.repeats,
                                 model_repeats=args.model_repeats, deadline=deadline, skip=skip)
        del model
        torch.cuda.empty_cache()
        save(args.out, meta, matrix_rows, whole_rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    reason = unavailable()
    if reason:
        print(reason)
        return 0
    start = time.monotonic()
    deadline = start + args.budget_s if args.budget_s else None
    meta, matrix_rows, whole_rows = machine(args), [], []
    # Graph capture goes last: a capture that fails can leave the device unusable for what follows.
    sections = [("per matrix, eager", lambda: run_matrices(args, meta, matrix_rows, whole_rows, "eager"))]
    if args.whole_model:
        sections.append(("whole model", lambda: run_whole_model(args, meta, matrix_rows, whole_rows, deadline)))
    if not args.no_graph:
        sections.append(("per matrix, CUDA graph",
                         lambda: run_matrices(args, meta, matrix_rows, whole_rows, "graph")))
    for i, (title, section) in enumerate(sections):
        if i and deadline is not None and time.monotonic() > deadline:
            meta["errors"].append(f"{title}: not run, the time budget (--budget-s) was spent")
            continue
        try:
            section()
        except Exception as exc:  # a section that fails leaves the others' rows, and says why
            meta["errors"].append(f"{title}: {why(exc)}")
        save(args.out, meta, matrix_rows, whole_rows)
    meta["seconds"] = round(time.monotonic() - start, 1)
    print(save(args.out, meta, matrix_rows, whole_rows))
    return 1 if [e for e in meta["errors"] if "time budget" not in e] else 0  # running out of time is no fault


if __name__ == "__main__":
    sys.exit(main())
