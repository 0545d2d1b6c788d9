"""`python -m experiments.bench.rounding`: how far a cell's perplexity moves when nothing changes but float
rounding, beside how far it moves between calibration seeds.

Each cell runs twice in processes of their own (`python -m experiments.run ... force=true`), with 1 and with 2
torch CPU threads: the same data, seed and code, only the order of the threads' partial sums differs, which is
also what another CPU model or library build changes. At high sparsity a last-bit difference can flip which
weight of a near tie goes, and the flip grows through the later blocks; the spread it leaves is noise under any
table that mixes machines or thread counts. The seeds' spread comes from the finished records of the same cell
at seeds 0, 1, 2 in `results/runs/` (a table run with SEEDS=0,1,2), where there are any.

  python -m experiments.bench.rounding                       # Wanda and SparseGPT, uniform, 70%, the embedded model
  python -m experiments.bench.rounding --cells sparsegpt/dlp --sparsity 0.6 --out results/rounding-sparsegpt-dlp
"""
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dlp.errors import UserError, last_line
from dlp.storage.io import write_atomic, write_json_atomic
from dlp.storage.paths import ROOT

from ..commandline import OneLineParser, one_line_errors
from ..config import compose_config
from ..grids import setting
from ..records import commit_label, load_record, machine_line, record_path
from ..validation import check_choices

THREADS = (2, 1)


def run_once(cell: list[str], threads: int, results: Path) -> dict:
    """One run of `cell` at seed 0 with `threads` torch threads, forced, in its own process writing into the
    empty folder `results`; its record."""
    argv = [sys.executable, "-m", "experiments.run", *cell, "seed=0", f"threads={threads}", f"results_dir={results}",
            "force=true", "progress=false", "wandb.mode=disabled"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{' '.join(cell)} threads={threads} failed: {last_line(done.stderr)}")
    return json.loads(next(results.glob("*.json")).read_text())


def seed_records(cell: list[str], records_dir: Path) -> list[dict]:
    """The finished records of `cell` at seeds 0, 1, 2 in `records_dir` (the table runs' records), if any."""
    found = []
    for seed in (0, 1, 2):
        cfg = compose_config([*cell, f"seed={seed}", f"results_dir={records_dir}"])
        record = load_record(record_path(cfg), warn=False)
        if record is not None:
            found.append(record)
    return found


def row(label: str, runs: dict[int, dict], seeds: list[dict]) -> dict:
    """Perplexity per thread count, their relative difference, and the seeds' spread for comparison."""
    ppl = {t: r["metrics"]["ppl"] for t, r in runs.items()}
    by_seed = [r["metrics"]["ppl"] for r in seeds]
    return {"cell": label, "ppl": ppl,
            "relative_difference": abs(ppl[THREADS[0]] - ppl[THREADS[1]]) / min(ppl.values()),
            "same_ppl": len(set(ppl.values())) == 1,
            "seeds_ppl": by_seed,
            "seeds_cv": statistics.stdev(by_seed) / statistics.fmean(by_seed) if len(by_seed) > 1 else None,
            "wall_s": {t: r["wall_s"] for t, r in runs.items()}}


def render(rows: list[dict], settings: list[str], env: dict, seconds: float) -> str:
    lines = ["# Rounding against seeds: one cell with 2 and with 1 CPU thread", "",
             f"Written by `python -m experiments.bench.rounding` with `{' '.join(settings)}` in "
             f"{seconds / 60:.0f} min; {machine_line(env)}; commit {commit_label(env)}. Each run is its own process "
             "(`force=true`); only the thread count differs, so only the order of partial sums does.", "",
             "| cell | perplexity, 2 threads | perplexity, 1 thread | difference | seeds 0, 1, 2 (records) | seeds' "
             "std / mean |", "|---|---|---|---|---|---|"]
    for r in rows:
        seeds = ", ".join(f"{p:.2f}" for p in r["seeds_ppl"]) or "none found"
        cv = f"{r['seeds_cv']:.1%}" if r["seeds_cv"] is not None else "-"
        diff = "none (same bits)" if r["same_ppl"] else f"{r['relative_difference']:.2%}"
        lines.append(f"| {r['cell']} | {r['ppl'][2]:.4f} | {r['ppl'][1]:.4f} | {diff} | {seeds} | {cv} |")
    lines += ["", "Difference: |a - b| / min(a, b). Where it is of the order of the seeds' spread, a cell's value "
              "on another machine or thread count is another draw of the same noise: compare methods over seeds "
              "run on one machine (a table names every machine its cells ran on)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="wanda/uniform,sparsegpt/uniform",
                        help="comma-separated criterion/allocation pairs")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--records", default=str(ROOT / "results" / "runs"), help="where the seeds' records are")
    parser.add_argument("--out", default=None, help="default: results/rounding-<model>")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run (model.path=..., data=...)")
    args = parser.parse_args(argv)
    pairs = [p.split("/") for p in args.cells.split(",")]
    if any(len(p) != 2 for p in pairs):
        raise UserError(f"--cells takes criterion/allocation pairs, got {args.cells!r}")
    check_choices([f"model={args.model}", f"preset={args.preset}", f"criterion={','.join(p[0] for p in pairs)}",
                   f"allocation={','.join(p[1] for p in pairs)}"])
    if not 0 < args.sparsity < 1:
        raise UserError(f"--sparsity must be in (0, 1), got {args.sparsity}")
    own = ("results_dir=", "force=", "threads=", "seed=")  # set here for each run
    settings = [f"model={args.model}", f"preset={args.preset}", f"sparsity={args.sparsity}",
                *(o for o in args.overrides if not o.startswith(own))]
    started, rows, env = time.time(), [], None
    with tempfile.TemporaryDirectory(prefix="dlp-rounding-") as tmp:
        for criterion, allocation in pairs:
            cell = [*settings, *setting("criterion", criterion), f"allocation={allocation}"]
            runs = {t: run_once(cell, t, Path(tmp) / f"{len(rows)}_t{t}") for t in THREADS}
            env = env or runs[THREADS[0]]["environment"]
            rows.append(row(f"{criterion} / {allocation}", runs, seed_records(cell, Path(args.records))))
    out = Path(args.out or ROOT / "results" / f"rounding-{args.model}")
    md = render(rows, [*settings, "seed=0"], env, time.time() - started)
    write_atomic(out.with_suffix(".md"), md.encode())
    write_json_atomic(out.with_suffix(".json"), {"settings": [*settings, "seed=0"], "environment": env,
                                                 "rows": rows})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main))
