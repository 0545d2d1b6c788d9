"""Render a benchmark report (experiments.bench) as Markdown, with the project's speed and memory targets checked
plainly."""
from pathlib import Path

from .precisions import PRECISIONS

MIB = 2 ** 20
# Speed targets. Against the reference implementations: their seconds on a 2-core CPU, embedded model,
# 32 x 512 calibration, float32, and the share of those seconds ours may take.
REFERENCE_S = {"uniform+wanda": 70.0, "owl+wanda": 140.0, "uniform+sparsegpt": 120.0, "evaluation": 85.0}
REFERENCE_FACTOR = 0.4
TIMES_DENSE = {"uniform+wanda": 2.5, "dlp+wanda": 3.5, "uniform+sparsegpt": 4.0}
SHARE_OF_PEAK = 0.6
MEMORY_SLACK = 1.2
PPL_TOLERANCE = 0.01
# GPU (one H200), LLaMA-2-7B shape, bfloat16, 128 x 2048 calibration: allocation + prune, model load
# excluded, and the peak allocated GPU memory over the weights.
GPU_SECONDS = {"uniform+wanda": 20.0, "dlp+wanda": 30.0, "uniform+sparsegpt": 90.0}
GPU_MEMORY_OVER_WEIGHTS = 6 * 2 ** 30


def _f(x, digits=1, unit=""):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}{unit}"


def _pct(x, digits=0):
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _mib(x):
    return "-" if x is None else f"{x / MIB:,.0f}"


def _peak_mem(row: dict | None, cuda: bool):
    mem = (row or {}).get("memory") or {}
    return mem.get("cuda_peak") if cuda else mem.get("rss_peak_above_base")


def _mark(ok: bool | None) -> str:
    return "not checked" if ok is None else "met" if ok else "**missed**"


def phase_table(result: dict, cuda: bool) -> list[str]:
    lines = ["| phase | seconds | tokens/s | GFLOP | GFLOP/s | share of peak | peak memory (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for key in ("load", "dense_forward", "evaluation"):
        r = result["phases"][key]
        lines.append(f"| {r['phase']} | {_f(r['seconds'], 2)} | {_f(r['tokens_per_s'], 0)} | {_f(r['gflops'], 0)} | "
                     f"{_f(r['gflop_per_s'], 0)} | {_pct(r['share_of_peak'])} | {_mib(_peak_mem(r, cuda))} |")
    return lines


def time_share_line(result: dict) -> list[str]:
    """Why a pass can sit well below the peak: how much of a dense forward the products take at all."""
    t = result.get("forward_time_shares")
    if not t:
        return []
    return [f"Where one batch's dense forward pass spends its time ({result.get('batch_size')} sequences, "
            f"torch.profiler, self CPU time; experiments/bench/profile.py): matrix products {_pct(t['products'])}, "
            f"attention kernel {_pct(t['attention'])}, element-wise and other {_pct(t['other'])}. A pass's share of "
            "peak cannot exceed the products' share of its time times their own rate.", ""]


def method_tables(result: dict, cuda: bool) -> list[str]:
    lines = ["| method | phase | seconds | tokens/s | GFLOP/s | share of peak |", "|---|---|---|---|---|---|"]
    own = {name: m["peak"]["gflops"] for name, m in result["methods"].items() if m.get("peak")}
    for name, m in result["methods"].items():
        for key in ("selfcheck", "allocation", "capture", "statistics", "criterion", "replay", "prune", "evaluation"):
            r = m["phases"].get(key)
            if r is None:
                continue
            lines.append(f"| {name} | {r['phase']} | {_f(r['seconds'], 2)} | {_f(r['tokens_per_s'], 0)} | "
                         f"{_f(r['gflop_per_s'], 0)} | {_pct(r['share_of_peak'])} |")
    if own:
        lines += ["", "Each method's shares are of the matmul peak measured in its own process: " +
                  ", ".join(f"{name} {gflops:,.0f}" for name, gflops in own.items()) + " GFLOP/s."]
    repeated = any(len(m.get("repeats", [])) > 1 for m in result["methods"].values())
    lines += ["", "| method | allocation + prune (s) | dense forward before / after (s) | × dense forward | "
                  + ("× dense forward, every repeat | " if repeated else "") + "perplexity | "
                  "peak memory, prune (MiB) | floor (MiB) | peak / floor |",
              "|---|---|---|---|" + ("---|" if repeated else "") + "---|---|---|---|"]
    for name, m in result["methods"].items():
        peak = _peak_mem(m["phases"]["prune"], cuda)
        floor = m["floor"]["total"]
        every = " / ".join(_f(r["times_dense_forward"], 2) for r in m.get("repeats", [])) or "-"
        lines.append(f"| {name} | {_f(m['allocation_plus_prune_s'], 1)} | {_bracket(m)} | "
                     f"{_f(m['times_dense_forward'], 2)} | " + (f"{every} | " if repeated else "") +
                     f"{_f(m['ppl'], 2)} | {_mib(peak)} | {_mib(floor)} | {_f(peak / floor if peak else None, 2)} |")
    return lines


def _bracket(m: dict) -> str:
    """The yardstick's two passes around the prune ("x dense forward" divides by their mean); one figure for
    reports written before the pass after was added."""
    if m.get("dense_forward_after_s") is None:
        return _f(m.get("dense_forward_s"), 1)
    return f"{_f(m['dense_forward_before_s'], 1)} / {_f(m['dense_forward_after_s'], 1)}"


def ppl_across_dtypes(results: list[dict]) -> tuple[list[str], dict]:
    """Perplexity per method in each dtype, relative to float32: which dtypes keep it within 1%."""
    by = {r["dtype"]: r for r in results}
    if "float32" not in by or len(by) < 2:
        return [], {}
    names = ["dense"] + list(by["float32"]["methods"])
    dtypes = list(by)
    lines = ["| method | " + " | ".join(dtypes) + " | largest change vs float32 |",
             "|---|" + "---|" * (len(dtypes) + 1)]
    worst = {d: 0.0 for d in dtypes}
    for name in names:
        vals = {d: (by[d]["dense_ppl"] if name == "dense" else by[d]["methods"].get(name, {}).get("ppl")) for d in dtypes}
        ref = vals["float32"]
        changes = [abs(v / ref - 1) for d, v in vals.items() if d != "float32" and v and ref]
        for d, v in vals.items():
            if v and ref:
                worst[d] = max(worst[d], abs(v / ref - 1))
        lines.append(f"| {name} | " + " | ".join(_f(vals[d], 2) for d in dtypes) +
                     f" | {_pct(max(changes), 2) if changes else '-'} |")
    return lines, worst


def targets(report: dict, worst: dict) -> list[str]:
    s = report["settings"]
    cuda = report["machine"]["device"].startswith("cuda")
    lines = []
    for r in report["results"]:
        d = r["dtype"]
        w = r["methods"].get("uniform+wanda")
        checks = []
        if w:
            for key in ("statistics", "replay"):
                share = w["phases"][key]["share_of_peak"] or 0
                checks.append((f"Wanda's {key} pass at >= {SHARE_OF_PEAK:.0%} of the {d} peak",
                               f"{share:.1%}", share >= SHARE_OF_PEAK))
        share = r["phases"]["evaluation"]["share_of_peak"] or 0
        checks.append((f"perplexity evaluation at >= {SHARE_OF_PEAK:.0%} of peak", f"{share:.1%}",
                       share >= SHARE_OF_PEAK))
        for name, limit in TIMES_DENSE.items():
            m = r["methods"].get(name)
            if m:
                checks.append((f"{name} (allocation included) <= {limit} x dense forward",
                                f"{m['times_dense_forward']:.2f} x", m["times_dense_forward"] <= limit))
        for name, m in r["methods"].items():
            peak = _peak_mem(m["phases"]["prune"], cuda)
            if peak:
                ratio = peak / m["floor"]["total"]
                checks.append((f"{name}: peak memory within {MEMORY_SLACK - 1:.0%} of the floor",
                               f"{ratio:.2f} x floor", ratio <= MEMORY_SLACK))
        paper_inputs = (s.get("model") == "smollm2-135m" and not s.get("shape") and s["nsamples"] == 32
                        and s["seqlen"] == 512 and s["eval_windows"] == 64 and s["eval_seqlen"] == 512)
        if paper_inputs and not cuda:
            # No float32 run to compare with (--dtypes bfloat16): no verdict either way.
            keeps = None if d not in worst else worst[d] <= PPL_TOLERANCE
            for name, ref in REFERENCE_S.items():
                got = (r["phases"]["evaluation"]["seconds"] if name == "evaluation"
                       else r["methods"].get(name, {}).get("allocation_plus_prune_s"))
                if got is not None:
                    checks.append((f"{name} <= {REFERENCE_FACTOR} x the reference's {ref:.0f} s",
                                   f"{got:.1f} s ({got / ref:.2f} x)", got <= REFERENCE_FACTOR * ref))
            if d != "float32":
                checks.append((f"{d} keeps every perplexity within {PPL_TOLERANCE:.0%} of float32",
                               _pct(worst.get(d), 2) if d in worst else "not compared", keeps))
        if cuda and d == "bfloat16" and s.get("shape") == "llama2-7b" and (s["nsamples"], s["seqlen"]) == (128, 2048):
            checks += gpu_checks(r["methods"])
        lines += [f"**{d}**", "", "| target | measured | |", "|---|---|---|"]
        lines += [f"| {t} | {v} | {_mark(ok)} |" for t, v, ok in checks] + [""]
    return lines


def gpu_checks(methods: dict) -> list[tuple]:
    """The GPU targets: seconds of allocation + prune, and the peak allocated GPU memory of the allocation pass
    and the prune (the weights are on the GPU all along, so that peak counts them) against weights + 6 GiB."""
    checks = []
    for name, limit in GPU_SECONDS.items():
        m = methods.get(name)
        if m:
            got = m["allocation_plus_prune_s"]
            checks.append((f"{name} (allocation included, load excluded) <= {limit:.0f} s", f"{got:.1f} s",
                           got <= limit))
    for name, m in methods.items():
        peaks = [_peak_mem(m["phases"].get(k), True) for k in ("allocation", "prune")]
        peaks = [p for p in peaks if p]
        if peaks:
            over = max(peaks) - m["floor"]["weights"]
            checks.append((f"{name}: peak GPU memory <= weights + {GPU_MEMORY_OVER_WEIGHTS / 2 ** 30:.0f} GiB",
                           f"weights + {over / 2 ** 30:.2f} GiB", over <= GPU_MEMORY_OVER_WEIGHTS))
    return checks


def ablation_section(report: dict) -> list[str]:
    rows = [(r["dtype"], a) for r in report["results"] for a in r.get("ablation", [])]
    if not rows:
        return []
    lines = ["## One change at a time (Wanda, uniform; then perplexity)", "", "| dtype | step | seconds |",
             "|---|---|---|"]
    lines += [f"| {d} | {a['step']} | {a['seconds']:.1f} |" for d, a in rows]
    return lines + [""]


def scaling_section(report: dict, figure: Path | None) -> list[str]:
    rows = [(r["dtype"], p) for r in report["results"] for p in r["scaling"]]
    if not rows:
        return []
    cuda = report["machine"]["device"].startswith("cuda")
    key = "cuda_peak" if cuda else "rss_peak_above_base"
    lines = ["## Scaling (Wanda, uniform)", "", "| dtype | nsamples | seqlen | batch | tokens | seconds | tokens/s | "
             "peak memory (MiB) | floor (MiB) | peak / floor |", "|---|---|---|---|---|---|---|---|---|---|"]
    for d, p in rows:
        ratio = p[key] / p["floor"] if p.get(key) and p.get("floor") else None
        lines.append(f"| {d} | {p['nsamples']} | {p['seqlen']} | {_batch_label(p)} | {p['tokens']:,} | "
                     f"{p['seconds']:.1f} | {p['tokens'] / p['seconds']:,.0f} | {_mib(p.get(key))} | "
                     f"{_mib(p.get('floor'))} | {_f(ratio, 2)} |")
    if figure is not None:
        draw_scaling(rows, key, figure, report["settings"])
        lines += ["", f"![scaling]({figure.name})"]
    return lines + [""]


def _setting(point: dict, default):
    """The batch a scaling point was asked for (an int or "auto"; older reports recorded only the int)."""
    return point.get("batch_setting", point.get("batch_size", default))


def _batch_label(point: dict) -> str:
    return f"{point['batch_size']} (auto)" if point.get("batch_setting") == "auto" else str(point.get("batch_size", "-"))


def draw_scaling(rows, key, figure: Path, settings: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.5))
    batch = settings["batch_size"]
    at_batch = [p for _d, p in rows if _setting(p, batch) == batch]
    seqlen, nsamples = settings["seqlen"], settings["nsamples"]
    for label, pick in ((f"nsamples varies (seqlen {seqlen})", lambda p: p["seqlen"] == seqlen),
                        (f"seqlen varies (nsamples {nsamples})", lambda p: p["nsamples"] == nsamples)):
        pts = sorted((p for p in at_batch if pick(p)), key=lambda p: p["tokens"])
        a.plot([p["tokens"] for p in pts], [p["seconds"] for p in pts], "o-", label=label)
        b.plot([p["tokens"] for p in pts], [p[key] / MIB for p in pts], "o-", label=label)
    a.set_xlabel("calibration tokens"), a.set_ylabel("Wanda prune, seconds"), a.legend(fontsize=7)
    b.set_xlabel("calibration tokens"), b.set_ylabel("peak memory above base, MiB")
    pts = sorted({p.get("batch_size", batch): p for _d, p in rows  # an "auto" point equal to a fixed one: once
                  if p["nsamples"] == nsamples and p["seqlen"] == seqlen}.values(), key=lambda p: p.get("batch_size", batch))
    c.plot([p.get("batch_size", batch) for p in pts], [p[key] / MIB for p in pts], "o-", label="peak memory")
    if pts and pts[0].get("floor"):
        c.axhline(pts[0]["floor"] / MIB, color="grey", ls="--", label="floor")
    for p in pts:
        c.annotate(f"{p['seconds']:.1f} s", (p.get("batch_size", batch), p[key] / MIB), fontsize=7,
                   textcoords="offset points", xytext=(3, 4))
    c.set_xscale("log", base=2)
    c.set_xlabel(f"batch size ({nsamples} x {seqlen})"), c.set_ylabel("MiB"), c.legend(fontsize=7)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    plt.close(fig)


def precision_of(name: str) -> tuple[str, str | None]:
    """(weights' dtype, compute dtype or None) of a bench precision (experiments.bench.precisions)."""
    return PRECISIONS.get(name, (name, None))


def render(report: dict, figure: Path | None) -> str:
    mach, s = report["machine"], report["settings"]
    cuda = mach["device"].startswith("cuda")
    where = (f"{mach.get('gpu')} ({mach.get('gpu_memory_gib')} GiB)" if cuda else
             f"{mach['cpu']}, {mach['cpu_threads']} threads, {mach.get('memory_gib', '?')} GiB")
    data = report["results"][0]["data"]
    lines = [f"# Benchmark: {report['subject']}", "",
             f"Machine: {where}; torch {mach['torch']}. Written by `python -m experiments.bench` "
             f"(`make bench`) in {report['wall_s'] / 60:.1f} min; the JSON beside this file holds every figure.", "",
             *(["**Partial**: the run stopped before its end (a time limit or an error); what follows is what it "
                 "had measured by then, methods not listed did not finish.", ""] if report.get("complete") is False
               else []),
             f"Calibration {s['nsamples']} x {s['seqlen']} tokens ({data['calibration']}), batch {s['batch_size']}"
             + (" (" + ", ".join(f"{r['batch_size']} in {r['dtype']}" for r in report["results"] if "batch_size" in r)
                + "; dlp/walk/batching.py)" if s["batch_size"] == "auto" else "") + "; "
             f"perplexity on {s['eval_windows']} x {s['eval_seqlen']} tokens ({data['evaluation']}), batch "
             f"{s['eval_batch_size']}; pruning at {s['sparsity']:.0%} unstructured. GFLOP counted from the decoder's "
             "matrix shapes (experiments/bench/flops.py: Linears and causal attention, element-wise work not counted); share of "
             "peak = GFLOP/s over the n x n matmul rate measured in the same process just before (each method's "
             "process measures its own). Memory: "
             + ("peak allocated on the GPU." if cuda else
                "peak resident set, reset per phase, above a base taken after one load and release of the model "
                "(Python, torch, transformers, the tokenizer and the model code in place: "
                + _mib(report["results"][0].get("rss_base")) + " MiB), so that it compares with the floor, which "
                "counts data only. Each method runs in a process of its own, as a user's run does (dense "
                "yardstick, allocation, prune, perplexity), so that no earlier phase's heap is counted in it."),
             ""]
    for r in report["results"]:
        weights, compute = precision_of(r["dtype"])
        lines += [f"## {r['dtype']}: matmul peak {r['peak']['gflops']:,.0f} GFLOP/s "
                  f"({r['peak']['n']} x {r['peak']['n']}{f', {compute}' if compute else ''})", ""]
        if compute:
            lines += [f"{r['dtype'].capitalize()}: {weights} weights whose forward passes (allocation, "
                      f"statistics, replay, perplexity) run under {compute} autocast (`model.compute_dtype={compute}`, "
                      f"dlp/walk/compute_dtype.py); the residual stream, statistics, criteria and the pruned weights stay "
                      f"{weights}.", ""]
        lines += phase_table(r, cuda) + [""] + time_share_line(r) + method_tables(r, cuda) + [""]
        if not r["methods"]:
            continue
        f = next(iter(r["methods"].values()))["floor"]
        lines += [f"Floor = weights {_mib(f['weights'])} MiB + one block's calibration activations in and out "
                  f"{_mib(f['activations'])} MiB + one block's statistics (Wanda {_mib(r['methods'].get('uniform+wanda', {}).get('floor', {}).get('statistics'))} MiB, "
                  f"SparseGPT {_mib(r['methods'].get('uniform+sparsegpt', {}).get('floor', {}).get('statistics'))} MiB).", ""]
    ppl_lines, worst = ppl_across_dtypes(report["results"])
    if ppl_lines:
        lines += ["## Perplexity in each dtype", ""] + ppl_lines + [""]
    lines += ["## Targets", ""] + targets(report, worst)
    lines += ablation_section(report) + scaling_section(report, figure)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """`python -m experiments.bench.report RUN.json [OUT.md]`: render a report again, a partial one (the
    `.partial.json` a run cut short leaves) too."""
    import json
    import sys
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m experiments.bench.report RUN.json [OUT.md]", file=sys.stderr)
        return 2
    try:
        md = render(json.loads(Path(args[0]).read_text()), None)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # missing, truncated or not a bench report
        print(f"error: cannot render {args[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if len(args) == 2:
        from dlp.storage.io import write_atomic
        write_atomic(Path(args[1]), md.encode())
    else:
        print(md, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
