"""`python -m experiments.bench_sparse24` (part of `make bench`): does 2:4 sparsity buy speed?

On a CUDA device of compute capability 8.0 or more, each Linear shape of a model (LLaMA-2-7B's by default) is
pruned 2:4 and run as prefill, y = x·Wᵀ for `batch × length` tokens, twice: dense and through PyTorch's
semi-structured sparse kernels (`torch.sparse.to_sparse_semi_structured`). It reports tokens/s of both, the
speed-up, and the weight's memory, and says plainly where the sparse kernel is slower (small batches: the
kernel pays for its metadata and its fixed tiling). Elsewhere it says so and measures nothing: on a CPU this
suite claims only size on disk (experiments.export) and memory, no speed.
"""
import argparse
import sys
from pathlib import Path

import torch

from dlp.io import write_atomic, write_json_atomic

SHAPES = {  # (out, in) of one decoder block's Linears
    "llama2-7b": {"q/k/v/o_proj": (4096, 4096), "gate/up_proj": (11008, 4096), "down_proj": (4096, 11008)},
    "tiny": {"proj": (128, 128)},
}
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


def two_four(out_features: int, in_features: int, dtype, device) -> torch.Tensor:
    """A random weight with the 2 smallest magnitudes of every group of 4 inputs zeroed."""
    w = torch.randn(out_features, in_features, dtype=dtype, device=device)
    groups = w.view(-1, 4)
    drop = groups.abs().topk(2, dim=1, largest=False).indices
    return groups.scatter(1, drop, 0.0).view_as(w)


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` CUDA-event timings, after warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def measure(shapes: dict, batches: list[int], lengths: list[int], dtype, repeats: int) -> list[dict]:
    from torch.sparse import to_sparse_semi_structured

    device = torch.device("cuda")
    rows = []
    for name, (out_f, in_f) in shapes.items():
        w = two_four(out_f, in_f, dtype, device)
        sparse = to_sparse_semi_structured(w)
        # every buffer the sparse weight keeps (values, metadata, and their transposes when the backend holds them)
        parts = [getattr(sparse, n, None) for n in ("packed", "meta", "packed_t", "meta_t", "compressed_swizzled_bitmask")]
        sparse_bytes = sum(t.numel() * t.element_size() for t in parts if isinstance(t, torch.Tensor))
        for batch in batches:
            for length in lengths:
                x = torch.randn(batch * length, in_f, dtype=dtype, device=device)
                dense_s = timed(lambda: torch.nn.functional.linear(x, w), repeats)
                sparse_s = timed(lambda: torch.nn.functional.linear(x, sparse), repeats)
                tokens = batch * length
                rows.append({"matrix": name, "shape": [out_f, in_f], "batch": batch, "length": length,
                             "dense_tokens_per_s": tokens / dense_s, "sparse_tokens_per_s": tokens / sparse_s,
                             "speedup": dense_s / sparse_s, "dense_weight_bytes": w.numel() * w.element_size(),
                             "sparse_weight_bytes": sparse_bytes})
    return rows


def report(rows: list[dict], device_name: str, dtype: str) -> str:
    lines = [f"# 2:4 semi-structured sparsity: prefill speed of pruned Linears on {device_name} ({dtype})", "",
             "| Matrix | Shape | Batch x length | Dense tokens/s | 2:4 tokens/s | Speed-up | Weight MB dense / 2:4 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['matrix']} | {r['shape'][0]}x{r['shape'][1]} | {r['batch']} x {r['length']} | "
                     f"{r['dense_tokens_per_s']:.3g} | {r['sparse_tokens_per_s']:.3g} | {r['speedup']:.2f}x | "
                     f"{r['dense_weight_bytes'] / 1e6:.1f} / {r['sparse_weight_bytes'] / 1e6:.1f} |")
    slower = [r for r in rows if r["speedup"] < 1]
    lines += ["", ("Slower than dense in " + ", ".join(f"{r['matrix']} at {r['batch']} x {r['length']}" for r in slower)
                   + ".") if slower else "Faster than dense in every case measured."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama2-7b", choices=sorted(SHAPES))
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--lengths", default="128,512,2048")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=None, help="write <out>.md and <out>.json (default: print only)")
    args = parser.parse_args(argv)
    why = unavailable()
    if why:
        print(why)
        return 0
    dtype = getattr(torch, args.dtype)
    rows = measure(SHAPES[args.shape], [int(b) for b in args.batches.split(",")],
                   [int(n) for n in args.lengths.split(",")], dtype, args.repeats)
    md = report(rows, torch.cuda.get_device_name(), args.dtype)
    print(md)
    if args.out:
        write_atomic(Path(args.out).with_suffix(".md"), md.encode())
        write_json_atomic(Path(args.out).with_suffix(".json"), {"device": torch.cuda.get_device_name(),
                                                                 "dtype": args.dtype, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
