"""Run records: one JSON file per run, keyed by a hash of what determines its numbers.

Options that cannot change the numbers (progress bars, forcing, where results go, the walk's self-check, which
only stops a run, saving or recovering the pruned model, where the blocks wait between visits: dlp.walk.offload) are
left out of the key, and so are the CPU thread count, which can move SparseGPT's last bits as a different CPU
can, and a device memory cap, which can pick a smaller automatic batch and so move a GPU run's last bits (each
record names the count, the cap and the batch it ran with),
so the same config finds its record again and is not recomputed unless forced.
"""
import collections
import functools
import hashlib
import json
import logging
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

from dlp.data import corpora
from dlp.errors import first_line
from dlp.registry import DENSE
from dlp.storage.io import sha256_file, write_json_atomic
from dlp.storage.paths import ROOT

log = logging.getLogger(__name__)
# Settings that do not change what a run computes. The last four are a report's layout, which the experiment
# configs (conf/experiment) carry beside their run settings: a cell is the same record in every report.
NOT_IN_KEY = ("force", "progress", "results_dir", "wandb", "selfcheck", "save", "export", "recovery", "threads",
              "offload", "offload_dir", "device_memory_gib", "table_rows", "partial_rows", "model_rows",
              "table_without_tasks")


def is_dense(cfg: dict) -> bool:
    return cfg["criterion"]["name"] == DENSE or float(cfg["sparsity"]) == 0.0


def refinement(cfg: dict) -> str | None:
    """The refinement a config names (refine=dsnot), or None for the criterion's own masks."""
    name = (cfg.get("refine") or {}).get("name", DENSE)
    return None if name == DENSE else name


def base_payload(cfg: dict) -> dict:
    """The key's options as written (a local corpus by its path): key_payload puts corpora in by content."""
    payload = {k: v for k, v in cfg.items() if k not in NOT_IN_KEY}
    if isinstance(payload.get("model"), dict) and payload["model"].get("compute_dtype") is None:
        # compute_dtype: null is how every run was made before the option existed: their keys stay the same
        payload["model"] = {k: v for k, v in payload["model"].items() if k != "compute_dtype"}
    if not (payload.get("zeroshot") or {}).get("enabled"):
        payload.pop("zeroshot", None)  # perplexity-only runs keep the keys they had before zero-shot existed
    if refinement(payload) is None:
        payload.pop("refine", None)  # so do runs without a refinement, made before refinements existed
    if is_dense(payload):  # every way of asking for the dense model shares one record
        payload = {"dense": True, "model": payload["model"], "eval": payload["eval"],
                   **({"zeroshot": payload["zeroshot"]} if "zeroshot" in payload else {})}
    return payload


def file_digest(path: Path) -> str:
    """sha256 of a file, computed once per process for each version of it (path, size, modification time)."""
    path = Path(path).resolve()
    stat = path.stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def key_payload(cfg: dict) -> dict:
    """What determines a run's numbers. A corpus read from a local file enters by its content, not by the path
    it was reached by: the same text in another folder (or through a relative path) finds the same record."""
    payload = base_payload(cfg)
    for name in ("data", "eval"):
        section = payload.get(name)
        file = corpora.local_file(section) if isinstance(section, dict) else None
        if file is not None:
            if not file.is_file():
                corpora.check_source(section)  # the same one line a run gives for it
            payload[name] = {**{k: v for k, v in section.items() if k not in ("path", "data_dir")},
                             "content_sha256": file_digest(file)}
    return payload


def short_hash(payload: dict) -> str:
    """12 hex digits of the sha256 of `payload` as sorted JSON: the key of a record."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_key(cfg: dict) -> str:
    return short_hash(key_payload(cfg))


def record_path(cfg: dict, key: str | None = None) -> Path:
    if is_dense(cfg):
        stem = f"{cfg['model']['name']}_dense"
    else:
        pattern = "" if cfg["pattern"] in (None, "unstructured") else f"_{str(cfg['pattern']).replace(':', 'of')}"
        criterion = "-".join(filter(None, (cfg["criterion"]["name"], refinement(cfg))))
        stem = f"{cfg['model']['name']}_{criterion}_{cfg['allocation']['name']}_s{cfg['sparsity']}{pattern}"
    if (cfg.get("zeroshot") or {}).get("enabled"):
        stem += "_zs"
    return Path(cfg["results_dir"]) / f"{stem}_{key or run_key(cfg)}.json"


def checkpoint_folder(path: Path) -> Path:
    """Where a run keeps work an interrupted attempt can resume from (zero-shot tasks already scored), beside its
    record and hidden like its lock; removed once the record is written."""
    return path.with_name(f".{path.stem}.checkpoints")


def read_record(path: Path, warn: bool = True) -> dict | None:
    """The record at `path`, finished or failed, or None when absent or unreadable (a truncated or corrupt file,
    or JSON that is not an object, is said in one line when `warn`: it will be recomputed)."""
    try:
        record = json.loads(Path(path).read_text())
        record.get("status")  # JSON, but not an object: unreadable as a record
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as exc:
        if warn:
            log.warning("unreadable record %s (%s): recomputing it", path, first_line(exc))
        return None
    return record


def load_record(path: Path, warn: bool = True) -> dict | None:
    """The finished record at `path`, or None when absent, failed or unreadable (then it is recomputed)."""
    record = read_record(path, warn)
    return record if record is not None and record.get("status") == "ok" else None


def recorded_failure(path: Path) -> str | None:
    """Why the run at `path` failed, when its record says it did; None when there is no record or it did not."""
    record = read_record(path, warn=False)
    if record is not None and record.get("status") == "failed":
        return str(record.get("error") or "failed, no reason recorded")
    return None


def save_record(path: Path, record: dict) -> None:
    write_json_atomic(path, record)


def git_commit() -> dict:
    def git(*args):
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""
    if os.environ.get("DLP_COMMIT"):  # a copy of the checkout sent to a batch machine: its git, if any, may be stale
        return {"commit": os.environ["DLP_COMMIT"], "dirty": os.environ.get("DLP_DIRTY") == "1"}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(dirty)}


@functools.lru_cache(maxsize=1)
def loaded_commit() -> dict:
    """The commit of the code this process runs: read once, at its first record, so that a sweep's later cells
    are not relabelled when the checkout moves on while the process runs (its modules were loaded already)."""
    return git_commit()


def cpu_model() -> str:
    """The CPU's model name: torch's CPU kernels, and so the last bits of every figure, differ between CPU models
    (an Intel and an AMD x86_64 give the same cell perplexities a few parts in 1e7 apart)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    import torch
    import transformers

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": platform.platform(), "processor": platform.machine(), "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    info.update(loaded_commit())
    return info


def commit_label(env: dict) -> str:
    """A record's code version as reports print it: the short commit, marked when the checkout was modified."""
    return f"{str(env.get('commit'))[:10]}{'+dirty' if env.get('dirty') else ''}"


def machine_line(env: dict) -> str:
    """A record's machine and library versions as reports print them (the CPU model where the record has it, and
    the torch thread count on a CPU run: SparseGPT's last bits depend on it, so a table run at two counts says so)."""
    cpu = f"{env['cpu_model']}, " if env.get("cpu_model") else ""
    threads = env.get("torch_threads")
    threads = f"{threads} torch thread{'s' if threads > 1 else ''}, " if threads and not env.get("cuda") else ""
    return (f"{env.get('platform')}, {cpu}{env.get('cpu_count')} CPUs, {threads}GPU {env.get('cuda') or 'none'}, "
            f"torch {env.get('torch')}, transformers {env.get('transformers')}")


def machines_text(records: list[dict]) -> str:
    """The machines a set of records ran on, each with how many of them when they are several, so that a table
    whose cells ran on different machines says so."""
    counts = collections.Counter(machine_line(r["environment"]) for r in records)
    if len(counts) == 1:
        return f"machine: {next(iter(counts))}"
    return "machines: " + "; ".join(f"{line} ({n} record{'s' if n > 1 else ''})" for line, n in sorted(counts.items()))


def peak_memory() -> dict:
    import torch

    # ru_maxrss is in KiB on Linux.
    peak = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available():
        peak["peak_cuda_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return peak
