"""`bash experiments/gpu_acceptance.sh` (this module): what a user's GPU job does, inside one batch job's limit.

Stages, in order of priority, each a process of its own under what is left of the time limit; each stage's
outcome is written (acceptance.{md,json}) as soon as it ends, so a job cut short keeps what it reached:

1. `tests`: tests/test_gpu.py (device-only checks; skipped on a CPU).
2. `cli`: the command a user types, `python -m experiments.run`, on a checkpoint folder of LLaMA-2-7B's decoder
   shape with random weights written here (experiments.random_checkpoint) and a real tokenizer: the paper
   preset's calibration (128 x 2048 tokens from the packaged C4 sample, c4-exllamav2), perplexity on a
   WikiText-2 test file, DLP + Wanda at 70%, zero-shot on two tasks (boolq, arc_easy) at a small limit, W&B off,
   a run record, and `save=true` with its load-back check in a new process.
3. `offload`: a LLaMA-2-13B-shaped folder (`--offload-shape`) pruned by the same command with `offload=cpu` under
   a device memory cap (`--offload-criterion`, default Wanda, uniform 50%, perplexity on the first windows); the
   record keeps the peak device memory. A shape equal to the `cli` stage's reuses its folder.
4. `bench`: the benchmark (experiments.bench) of DLP + Wanda, SparseGPT and Wanda on the 7B shape, as far as the
   time allows (it writes its partial JSON after each method).

`--size toy` runs the same stages at toy size on a CPU (the tests run it, so it cannot rot). A short job can
leave out the export (`--no-export`: the run is then not `save=true`) and choose its stages (`--stages`).

Output (at most eight files, for batch systems that return few): acceptance.md, acceptance.json,
acceptance.log (every stage's output, the tail of each), record-cli.json, record-offload.json,
bench-llama2-7b-gpu.{md,json} (or the partial JSON).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dlp.errors import last_line
from dlp.storage.io import write_atomic, write_json_atomic
from dlp.storage.paths import ROOT

from .bench.shapes import SHAPES

LOG_TAIL = 20_000  # characters of each stage's output kept in acceptance.log
RESERVE_S = 15  # left at the end of the limit for writing the summary and copying files back

SIZES = {
    "full": {
        "device": "cuda", "shape": "llama2-7b", "offload_shape": "llama2-13b", "dtype": "bfloat16",
        "run": ["preset=paper", "data=c4-exllamav2"], "zeroshot_limit": 20, "cap_gib": 10, "offload_windows": 8,
        "bench": ["--shape", "llama2-7b", "--dtypes", "bfloat16", "--device", "cuda", "--nsamples", "128",
                  "--seqlen", "2048", "--eval-windows", "32", "--eval-seqlen", "2048"],
    },
    "toy": {
        "device": "cpu", "shape": "tiny", "offload_shape": "tiny", "dtype": "float32",
        "run": ["preset=cpu", "data=c4-exllamav2", "data.nsamples=4", "data.seqlen=64", "eval.seqlen=64",
                "eval.max_windows=2", "selfcheck=true"],
        "zeroshot_limit": 2, "cap_gib": None, "offload_windows": 2,
        "bench": ["--shape", "tiny", "--dtypes", "float32", "--device", "cpu", "--nsamples", "4", "--seqlen", "32",
                  "--eval-windows", "2", "--eval-seqlen", "32"],
    },
}
BENCH_METHODS = "dlp+wanda,uniform+sparsegpt,uniform+wanda"  # the two with speed targets first


class Job:
    """The stages' shared clock, paths and summary."""

    def __init__(self, args):
        self.args, self.size = args, SIZES[args.size]
        self.out, self.work = Path(args.out), Path(args.work)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.limit_s
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "DLP_CACHE": str(self.work / "cache"),
                    "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.offload_shape = args.offload_shape or self.size["offload_shape"]
        self.summary = {"machine": machine(), "size": args.size, "limit_s": args.limit_s, "stages": []}
        (self.out / "acceptance.log").write_text("")

    def left(self) -> float:
        return self.deadline - time.monotonic() - RESERVE_S

    def call(self, stage: str, argv: list[str]) -> tuple[str, str]:
        """Run one command of a stage under the time left: ("ok" | "failed (rc N)" | "timed out", output)."""
        left = self.left()
        if left < 5:
            return "skipped: no time left", ""
        try:
            done = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=left)
            output = done.stdout + done.stderr
            status = "ok" if done.returncode == 0 else f"failed (rc {done.returncode})"
        except subprocess.TimeoutExpired as exc:
            output, status = _text(exc.stdout) + _text(exc.stderr), "timed out"
        with open(self.out / "acceptance.log", "a") as log:
            log.write(f"\n===== {stage}: {' '.join(argv)}\n===== {status}\n{output[-LOG_TAIL:]}\n")
        return status, output

    def report(self, stage: str, status: str, seconds: float, figures: dict) -> None:
        self.summary["stages"].append({"stage": stage, "status": status, "seconds": round(seconds, 1), **figures})
        write_json_atomic(self.out / "acceptance.json", self.summary)
        write_atomic(self.out / "acceptance.md", render(self.summary).encode())


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def machine() -> dict:
    import torch
    import transformers

    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu only",
            "commit": os.environ.get("DLP_COMMIT")}


def stage_tests(job: Job) -> None:
    t = time.monotonic()
    status, output = job.call("tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                        "tests/test_gpu.py"])
    last = last_line(output, "")
    job.report("tests", status, time.monotonic() - t, {"result": last})


def checkpoint(job: Job, shape: str, name: str) -> tuple[str, Path]:
    folder = job.work / name
    if (folder / "config.json").exists():  # written by an earlier stage of this job
        return "ok", folder
    status, _ = job.call(f"checkpoint {shape}", [
        sys.executable, "-m", "experiments.random_checkpoint", "--shape", shape, "--tokenizer", str(job.args.tokenizer),
        "--out", str(folder), "--dtype", job.size["dtype"], "--device", job.size["device"]])
    return status, folder


def run_command(job: Job, folder: Path, name: str, extra: list[str]) -> list[str]:
    wikitext = ([f"eval.data_dir={job.args.wikitext_dir}"] if job.args.wikitext_dir else [])
    return [sys.executable, "-m", "experiments.run", f"model.path={folder}", f"model.name={name}",
            f"model.dtype={job.size['dtype']}", f"model.device={job.size['device']}", *job.size["run"], *wikitext,
            "wandb.mode=disabled", f"results_dir={job.work / 'runs' / name}", "progress=false", *extra]


def the_record(job: Job, name: str, copy_to: str) -> dict | None:
    found = sorted((job.work / "runs" / name).glob("*.json"))
    if not found:
        return None
    shutil.copy(found[-1], job.out / copy_to)
    return json.loads(found[-1].read_text())


def run_figures(record: dict | None) -> dict:
    if record is None:
        return {}
    timings = record.get("timings_s", {})
    figures = {"ppl": record.get("metrics", {}).get("ppl"), "actual_sparsity": record.get("sparsity", {}).get("actual"),
               "timings_s": {k: v for k, v in timings.items() if not isinstance(v, dict)},
               "prune_phases_s": timings.get("prune_phases"),
               "allocation_plus_prune_s": timings.get("allocation", 0) + timings.get("prune", 0),
               "batch_size": record.get("data", {}).get("calibration", {}).get("batch_size"),
               "peak_cuda_allocated_bytes": record.get("peak_cuda_allocated_bytes"),
               "peak_rss_bytes": record.get("peak_rss_bytes"), "offload": record.get("offload"),
               "wall_s": record.get("wall_s"), "status": record.get("status"), "error": record.get("error")}
    zs = record.get("metrics", {}).get("zeroshot")
    if zs:
        figures["zeroshot"] = {t: {"acc": v["acc"], "n": v["n"]} for t, v in zs["tasks"].items()}
    return figures


def shape_folder(shape: str) -> str:
    return f"{shape}-random"


def stage_cli(job: Job) -> None:
    t = time.monotonic()
    name = shape_folder(job.size["shape"])
    status, folder = checkpoint(job, job.size["shape"], name)
    figures = {"export": "left out (--no-export)"} if job.args.no_export else {}
    if status == "ok":
        models = job.work / "models"
        save = [] if job.args.no_export else ["save=true", f"export.dir={models}"]
        status, _ = job.call("cli", run_command(job, folder, name, [
            "criterion=wanda", "allocation=dlp", "sparsity=0.7", "zeroshot.enabled=true",
            "zeroshot.tasks=[boolq,arc_easy]", f"zeroshot.limit={job.size['zeroshot_limit']}", "zeroshot.source=local",
            *save]))
        figures.update(run_figures(the_record(job, name, "record-cli.json")))
        exported = sorted(models.glob("*/export.json"))
        if exported:
            info = json.loads(exported[-1].read_text())
            figures["export"] = {"sizes": info["sizes"], "load_check": info.get("load_check")}
        shutil.rmtree(models, ignore_errors=True)  # the next stage's checkpoint needs the disk
    if job.offload_shape != job.size["shape"]:
        shutil.rmtree(folder, ignore_errors=True)
    job.report("cli", status, time.monotonic() - t, figures)


def stage_offload(job: Job) -> None:
    t = time.monotonic()
    name = shape_folder(job.offload_shape)
    status, folder = checkpoint(job, job.offload_shape, name)
    figures = {"shape": job.offload_shape, "criterion": job.args.offload_criterion}
    if status == "ok":
        cap = [f"device_memory_gib={job.size['cap_gib']}"] if job.size["cap_gib"] else []
        status, _ = job.call("offload", run_command(job, folder, f"{name}-offload", [
            f"criterion={job.args.offload_criterion}", "allocation=uniform", "sparsity=0.5", "offload=cpu", *cap,
            f"eval.max_windows={job.size['offload_windows']}"]))
        figures.update(run_figures(the_record(job, f"{name}-offload", "record-offload.json")))
        figures["device_memory_cap_gib"] = job.size["cap_gib"]
    shutil.rmtree(folder, ignore_errors=True)
    job.report("offload", status, time.monotonic() - t, figures)


def stage_bench(job: Job) -> None:
    t = time.monotonic()
    stem = job.work / "bench-llama2-7b-gpu"
    status, _ = job.call("bench", [sys.executable, "-m", "experiments.bench", *job.size["bench"], "--no-scaling",
                                   "--no-progress", "--methods", BENCH_METHODS, "--out", str(stem)])
    kept = [p for p in (stem.with_suffix(".md"), stem.with_suffix(".json")) if p.exists()]
    if not stem.with_suffix(".json").exists() and stem.with_suffix(".partial.json").exists():
        kept.append(stem.with_suffix(".partial.json"))
    for path in kept:
        shutil.copy(path, job.out / path.name)
    job.report("bench", status, time.monotonic() - t, {"files": [p.name for p in kept]})


def render(summary: dict) -> str:
    m = summary["machine"]
    lines = [f"# GPU acceptance ({summary['size']} size)", "",
             f"Machine: {m['device']}; Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}; "
             f"commit {m.get('commit') or 'unknown'}; limit {summary['limit_s']} s. Written by "
             "`bash experiments/gpu_acceptance.sh` after each stage.", "",
             "| stage | status | seconds | figures |", "|---|---|---|---|"]
    for s in summary["stages"]:
        figures = {k: v for k, v in s.items() if k not in ("stage", "status", "seconds") and v is not None}
        lines.append(f"| {s['stage']} | {s['status']} | {s['seconds']} | {_short(figures)} |")
    return "\n".join(lines) + "\n"


def _short(figures: dict) -> str:
    parts = []
    for key in ("result", "shape", "criterion", "ppl", "allocation_plus_prune_s", "batch_size",
                "peak_cuda_allocated_bytes", "zeroshot", "export", "offload", "files", "error"):
        if key in figures:
            value = figures[key]
            if key == "peak_cuda_allocated_bytes":
                value = f"{value / 2**30:.2f} GiB"
            elif key == "export" and isinstance(value, dict):
                check = value.get("load_check") or {}
                value = f"{value['sizes']['ratio_to_dense']:.3f}x dense, load-back same ppl {check.get('same_ppl')}"
            elif isinstance(value, float):
                value = f"{value:.4g}"
            parts.append(f"{key}: {value}")
    return "; ".join(str(p).replace("|", "/") for p in parts)


STAGES = {"tests": stage_tests, "cli": stage_cli, "offload": stage_offload, "bench": stage_bench}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="full", choices=sorted(SIZES))
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "results" / "gpu"))
    parser.add_argument("--work", default="/tmp/dlp-acceptance", help="checkpoints, records and caches")
    parser.add_argument("--limit-s", type=float, default=540.0, help="the whole job's time limit")
    parser.add_argument("--tokenizer", type=Path, required=True, help="a folder holding the tokenizer to use")
    parser.add_argument("--wikitext-dir", type=Path, default=None,
                        help="a folder holding wikitext-2-raw/wiki.test.raw (else the preset's fallback)")
    parser.add_argument("--cache-from", type=Path, default=None,
                        help="a cache folder (assets/, tasks/) to start from, for a machine that cannot fetch them")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--no-export", action="store_true", help="the cli stage's run without save=true")
    parser.add_argument("--offload-shape", choices=sorted(SHAPES), default=None,
                        help="the offload stage's model shape (default: llama2-13b; tiny at toy size)")
    parser.add_argument("--offload-criterion", default="wanda", choices=["wanda", "sparsegpt", "magnitude"])
    args = parser.parse_args(argv)
    stages = args.stages.split(",")
    if unknown := [s for s in stages if s not in STAGES]:
        print(f"error: unknown stage {unknown[0]}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    if args.size == "full" and args.wikitext_dir is None:
        print("error: --size full evaluates on WikiText-2 test: pass --wikitext-dir", file=sys.stderr)
        return 2
    job = Job(args)
    if args.cache_from:
        shutil.copytree(args.cache_from, job.work / "cache", dirs_exist_ok=True)
    for stage in stages:
        STAGES[stage](job)
    return 0 if all(s["status"] == "ok" for s in job.summary["stages"]) else 1


if __name__ == "__main__":
    sys.exit(main())
