"""Run records: one JSON file per run, keyed by a hash of what determines its numbers.

Options that cannot change the numbers (progress bars, forcing, where results go, the walk's self-check, which
only stops a run, saving or recovering the pruned model) are left out of the key, and so is the CPU thread
count, which can move SparseGPT's last bits as a different CPU can (each record names the count it ran with),
so the same config finds its record again and is not recomputed unless forced.
"""
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
from dlp.io import sha256_file, write_json_atomic
from dlp.paths import ROOT
from dlp.registry import DENSE

log = logging.getLogger(__name__)
NOT_IN_KEY = ("force", "progress", "results_dir", "wandb", "selfcheck", "save", "export", "recovery", "threads")


def is_dense(cfg: dict) -> bool:
    return cfg["criterion"]["name"] == DENSE or float(cfg["sparsity"]) == 0.0


def legacy_key_payload(cfg: dict) -> dict:
    """The key as it was before corpora entered it by content: with the local data folder's path."""
    payload = {k: v for k, v in cfg.items() if k not in NOT_IN_KEY}
    if isinstance(payload.get("model"), dict) and payload["model"].get("compute_dtype") is None:
        # compute_dtype: null is how every run was made before the option existed: their keys stay the same
        payload["model"] = {k: v for k, v in payload["model"].items() if k != "compute_dtype"}
    if not (payload.get("zeroshot") or {}).get("enabled"):
        payload.pop("zeroshot", None)  # perplexity-only runs keep the keys they had before zero-shot existed
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
    payload = legacy_key_payload(cfg)
    for name in ("data", "eval"):
        section = payload.get(name)
        file = corpora.local_file(section) if isinstance(section, dict) else None
        if file is not None:
            payload[name] = {**{k: v for k, v in section.items() if k not in ("path", "data_dir")},
                             "content_sha256": file_digest(file)}
    return payload


def short_hash(payload: dict) -> str:
    """12 hex digits of the sha256 of `payload` as sorted JSON: the key of a record."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_key(cfg: dict) -> str:
    return short_hash(key_payload(cfg))


def legacy_run_key(cfg: dict) -> str:
    return short_hash(legacy_key_payload(cfg))


def legacy_run_keys(cfg: dict) -> list[str]:
    """The path-keyed keys this config may have had: the corpus paths as written, and as the other spelling of
    the same place (absolute for relative and back, from the working directory). `make` passes the data folder
    as ../shared/data, a shell often as /abs/shared/data: the same files, which path keys told apart."""
    keys = [legacy_run_key(cfg)]
    for spell in (os.path.abspath, os.path.relpath):
        other = {**cfg}
        for name in ("data", "eval"):
            section = cfg.get(name)
            if isinstance(section, dict):
                other[name] = {k: spell(v) if k in ("path", "data_dir") and isinstance(v, str) and v else v
                               for k, v in section.items()}  # "" is no folder (DLP_DATA_DIR unset): no spelling
        key = legacy_run_key(other)
        if key not in keys:
            keys.append(key)
    return keys


def record_path(cfg: dict, key: str | None = None) -> Path:
    if is_dense(cfg):
        stem = f"{cfg['model']['name']}_dense"
    else:
        pattern = "" if cfg["pattern"] in (None, "unstructured") else f"_{str(cfg['pattern']).replace(':', 'of')}"
        stem = f"{cfg['model']['name']}_{cfg['criterion']['name']}_{cfg['allocation']['name']}_s{cfg['sparsity']}{pattern}"
    if (cfg.get("zeroshot") or {}).get("enabled"):
        stem += "_zs"
    return Path(cfg["results_dir"]) / f"{stem}_{key or run_key(cfg)}.json"


def load_record(path: Path, warn: bool = True) -> dict | None:
    """The finished record at `path`, or None when absent, failed or unreadable (then it is recomputed; a
    truncated or corrupt file is said in one line when `warn`)."""
    try:
        record = json.loads(Path(path).read_text())
        ok = record.get("status") == "ok"
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as exc:
        if warn:
            log.warning("unreadable record %s (%s): recomputing it", path, first_line(exc))
        return None
    return record if ok else None


def save_record(path: Path, record: dict) -> None:
    write_json_atomic(path, record)


def git_commit() -> dict:
    def git(*args):
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(dirty)}


def environment() -> dict:
    import torch
    import transformers

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    info.update(git_commit())
    return info


def commit_label(env: dict) -> str:
    """A record's code version as reports print it: the short commit, marked when the checkout was modified."""
    return f"{str(env.get('commit'))[:10]}{'+dirty' if env.get('dirty') else ''}"


def machine_line(env: dict) -> str:
    """A record's machine and library versions as reports print them."""
    return (f"{env.get('platform')}, {env.get('cpu_count')} CPUs, GPU {env.get('cuda') or 'none'}, "
            f"torch {env.get('torch')}, transformers {env.get('transformers')}")


def peak_memory() -> dict:
    import torch

    # ru_maxrss is in KiB on Linux.
    peak = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available():
        peak["peak_cuda_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return peak
