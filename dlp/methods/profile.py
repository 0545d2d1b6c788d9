"""The dense profile of a model: statistics of every block's Wanda scores |W_ij|·‖X_j‖₂.

Computed in one dense pass of the engine (no pruning, so no replay) and shared by the allocations that rank
blocks by it (DLP, OWL). Cached on disk by model, calibration tokens and parameters, so the three criteria
of a table row, and every sparsity of a sweep, reuse one pass.
"""
import json
import logging
from pathlib import Path

import torch

from dlp.methods.scores import wanda_scores
from dlp.methods.select import RadixSelect
from dlp.storage.io import sha256_bytes, write_json_atomic
from dlp.storage.locks import computing
from dlp.storage.paths import cache_dir
from dlp.walk.compute_dtype import compute_dtype_of
from dlp.walk.engine import walk
from dlp.walk.stats import SQNORM

log = logging.getLogger(__name__)
FORMAT_VERSION = 3  # 2: column norms from float64 sums; 3: summed one sequence at a time (dlp.walk.stats)


def block_profile(linears, stats, outlier_m: float) -> dict:
    """Mean, exact median and OWL outlier ratio (share above M × mean) of one block's scores.

    Two passes over the scores, one matrix at a time (a 7B block has about 200M): count, sum and the median's
    first radix pass; then the outlier count (it needs the mean) and the median's second pass. A pass per
    figure would take four, computing every score twice as often. Sums and counts stay on the scores' device
    until the block is done (reading each back would wait for the device once per matrix); the float64 sum is
    the same sequence of additions either way."""
    def stream():
        for name, layer in linears.items():
            yield wanda_scores(layer.weight.data.to(torch.float32), stats[name])

    count, total, select = 0, 0.0, RadixSelect()
    for chunk in stream():
        count += chunk.numel()
        total = total + chunk.double().sum()
        select.first(chunk)
    mean = float(total) / count
    select.choose((count - 1) // 2)  # the lower median, as torch.median
    above = 0
    for chunk in stream():
        above = above + (chunk > outlier_m * mean).sum()
        select.second(chunk)
    return {"count": count, "mean": mean, "median": select.value(), "outlier_ratio": int(above) / count}


def compute_profile(model, calib_ids, outlier_m: float, batch_size: int | str, progress: bool = True) -> list[dict]:
    blocks = []

    def visit(index, block, linears, stats):
        blocks.append(block_profile(linears, stats, outlier_m))
        return False  # nothing changed: the engine reuses the dense outputs, no replay

    walk(model, calib_ids, visit, frozenset({SQNORM}), batch_size=batch_size, desc="dense profile", progress=progress)
    return blocks


def profile_key(model_id: dict, calib_ids: torch.Tensor, outlier_m: float) -> str:
    ids = calib_ids.to(torch.int64).contiguous().numpy().tobytes()
    blob = json.dumps({"model": model_id, "calibration": sha256_bytes(ids), "M": outlier_m,
                       "version": FORMAT_VERSION}, sort_keys=True, default=str)
    return sha256_bytes(blob.encode())[:16]


def cached_profile(model, calib_ids, model_id: dict, outlier_m: float, batch_size: int | str,
                   progress: bool = True) -> tuple[list[dict], bool]:
    """(profile, from_cache). A corrupt cache file is reported in one line and recomputed."""
    compute = compute_dtype_of(model)
    if compute is not None:  # passes under autocast give other scores; named only when set, so that the
        model_id = {**model_id, "compute_dtype": str(compute).removeprefix("torch.")}  # old keys stay valid
    path = Path(cache_dir()) / "profiles" / f"{profile_key(model_id, calib_ids, outlier_m)}.json"
    blocks = read_profile(path, warn=True)
    if blocks is not None:
        return blocks, True
    # Jobs of a sweep that need the same profile compute it once: the others wait, then read it.
    with computing(path, "a dense profile"):
        blocks = read_profile(path, warn=False)
        if blocks is not None:
            return blocks, True
        blocks = compute_profile(model, calib_ids, outlier_m, batch_size, progress)
        write_json_atomic(path, {"version": FORMAT_VERSION, "model": model_id, "M": outlier_m, "blocks": blocks})
    return blocks, False


def read_profile(path: Path, warn: bool) -> list[dict] | None:
    """The cached profile at `path`, or None when absent or unreadable (a truncated or corrupt file is said in
    one line when `warn`, and recomputed)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("version") == FORMAT_VERSION and all("median" in b for b in data["blocks"]):
            return data["blocks"]
        raise ValueError("missing fields")
    except (ValueError, KeyError, TypeError) as exc:
        if warn:
            log.warning("corrupt profile cache %s (%s): recomputing it", path, exc)
        return None
