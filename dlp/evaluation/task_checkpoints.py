"""Zero-shot tasks already scored on the same weights, kept between attempts of one run.

A whole-split zero-shot cell takes about an hour on a 2-core CPU; a run killed in its sixth task would otherwise
score the first five again. Each finished task is written to the run's checkpoint folder with a digest of the
weights it was scored on and the settings it was scored with; a later attempt keeps a task only when both are
equal. The digest is exact (sha256 of the bytes of every block's linear weights, the only weights pruning or
recovery change), so a task is never kept across models that differ in one bit: a SparseGPT cell rerun with
another thread count, whose last bits move, scores every task again.
"""
import hashlib
import json
from pathlib import Path

import torch

from dlp.storage.io import write_json_atomic
from dlp.walk.offload import resident_blocks
from dlp.walk.structure import find_linears


def weights_digest(model) -> str:
    """sha256 over the bytes of every block's linear weights, in block and module order."""
    digest = hashlib.sha256()
    for index, block in resident_blocks(model):
        for name, layer in find_linears(block).items():
            weight = layer.weight.detach().to("cpu").contiguous()
            digest.update(f"{index}.{name}:{weight.dtype}:{tuple(weight.shape)}".encode())
            digest.update(weight.view(-1).view(dtype=torch.uint8).numpy())  # its bytes in place, no copy
    return digest.hexdigest()


def task_file(folder: Path, task: str) -> Path:
    return Path(folder) / f"{task}.json"


def load_finished(folder: Path | None, digest: str, settings: dict) -> dict:
    """{task: its result} for the tasks in `folder` scored on weights with this digest and with these settings
    (`settings`: {task: the settings it is scored with}). An unreadable or foreign file is scored again."""
    if folder is None or not Path(folder).is_dir():
        return {}
    kept = {}
    for task, wanted in settings.items():
        path = task_file(folder, task)
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if saved.get("weights_sha256") == digest and saved.get("settings") == wanted:
            kept[task] = saved["result"]
    return kept


def save_finished(folder: Path | None, task: str, result: dict, digest: str, settings: dict) -> None:
    if folder is not None:
        write_json_atomic(task_file(folder, task), {"weights_sha256": digest, "settings": settings,
                                                    "result": result})
