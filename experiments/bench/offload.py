"""`python -m experiments.bench.offload`: one run three ways, with its decoder blocks on the device, in host
memory (`offload=cpu`) and in the checkpoint's files (`offload=disk`): the same numbers, and what each costs.

Each way is the real command line (`python -m experiments.run ... force=true`) in a process of its own, so its
peak memory is its own; the records give perplexity, every matrix's sparsity, phase times and peak memory. The
report says whether the three agree exactly and writes `<out>.md` and `<out>.json`.

  python -m experiments.bench.offload                                  # the embedded model, cpu preset, Wanda 50%
  python -m experiments.bench.offload model.path=/my/model preset=paper --out results/offload-mine
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dlp.errors import last_line
from dlp.storage.io import write_atomic, write_json_atomic
from dlp.storage.paths import ROOT

MODES = ("none", "cpu", "disk")
DEFAULT = ["model=smollm2-135m", "preset=cpu", "criterion=wanda", "allocation=uniform", "sparsity=0.5"]


def run_mode(mode: str, overrides: list[str], work: Path) -> dict:
    """One run with `offload=mode`; its record."""
    results = work / mode
    argv = [sys.executable, "-m", "experiments.run", *overrides, f"offload={mode}", f"offload_dir={work / 'blocks'}",
            f"results_dir={results}", "force=true", "progress=false", "wandb.mode=disabled"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"offload={mode} failed: {last_line(done.stderr)}")
    return json.loads(next(results.glob("*.json")).read_text())


def compare(records: dict[str, dict]) -> dict:
    """Per mode: perplexity, whether it and every matrix's sparsity equal offload=none's, time, peak memory."""
    base = records["none"]
    rows = {}
    for mode, r in records.items():
        rows[mode] = {"ppl": r["metrics"]["ppl"], "same_ppl": r["metrics"]["ppl"] == base["metrics"]["ppl"],
                      "same_per_matrix_sparsity": r["sparsity"]["per_matrix"] == base["sparsity"]["per_matrix"],
                      "prune_s": r["timings_s"].get("prune"), "evaluation_s": r["timings_s"]["evaluation"],
                      "wall_s": r["wall_s"], "peak_rss_bytes": r["peak_rss_bytes"],
                      "peak_cuda_allocated_bytes": r.get("peak_cuda_allocated_bytes"), "offload": r.get("offload")}
    return rows


def render(rows: dict, overrides: list[str], env: dict) -> str:
    lines = ["# Offload: the same run with its blocks on the device, in host memory and on disk", "",
             f"Written by `python -m experiments.bench.offload` with `{' '.join(overrides)}`; commit "
             f"{str(env.get('commit'))[:10]}{'+dirty' if env.get('dirty') else ''}; {env.get('cuda') or 'CPU only'}, "
             f"{env.get('cpu_count')} CPUs, torch {env.get('torch')}. Each mode is its own process (`force=true`).", "",
             "| offload | perplexity | same as none | same sparsity, every matrix | prune (s) | perplexity (s) | "
             "run (s) | peak RSS (MiB) | peak block bytes off the store (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
    for mode, r in rows.items():
        off = (r["offload"] or {}).get("peak_materialized_bytes")
        lines.append(f"| {mode} | {r['ppl']:.4f} | {'yes' if r['same_ppl'] else 'NO'} | "
                     f"{'yes' if r['same_per_matrix_sparsity'] else 'NO'} | {r['prune_s']:.1f} | {r['evaluation_s']:.1f} | "
                     f"{r['wall_s']:.1f} | {r['peak_rss_bytes'] / 2**20:,.0f} | "
                     f"{'-' if off is None else f'{off / 2**20:,.1f}'} |")
    agree = all(r["same_ppl"] and r["same_per_matrix_sparsity"] for r in rows.values())
    lines += ["", "All three agree exactly." if agree else "**The modes disagree**: see the rows marked NO.", "",
              "Peak RSS is the process's largest resident memory (imports, data and activations included). Peak "
              "block bytes off the store: the most decoder-block weights held outside their offload store at once "
              "(on a GPU, the next block is copied in while one computes)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "results" / "offload-smollm2-135m"))
    parser.add_argument("overrides", nargs="*", help="config overrides for the run (default: " + " ".join(DEFAULT) + ")")
    args = parser.parse_args(argv)
    overrides = args.overrides or DEFAULT
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="dlp-offload-") as tmp:
        records = {mode: run_mode(mode, overrides, Path(tmp)) for mode in MODES}
    rows = compare(records)
    env = records["none"]["environment"]
    md = render(rows, overrides, env)
    write_atomic(Path(args.out).with_suffix(".md"), md.encode())
    write_json_atomic(Path(args.out).with_suffix(".json"), {"overrides": overrides, "environment": env, "rows": rows,
                                                            "wall_s": time.time() - started})
    print(md)
    return 0 if all(r["same_ppl"] and r["same_per_matrix_sparsity"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
