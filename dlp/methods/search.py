"""Trials for allocations that search (ATP's step size): prune the model at candidate per-block sparsities with the
run's own criterion, measure perplexity on selection text the evaluation never sees, and put the dense weights
back. A trial is exactly the run's prune, so the winner is chosen for the criterion it will be used with.

A search also keeps its progress in the run's checkpoint folder (its finished trials, EvoPress's generations), so
that a run killed mid-search (a cluster job past its time limit, hours into a paper-budget search) goes on where
it stopped and finds what an uninterrupted run finds; progress saved on other inputs is never taken up."""
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dlp.evaluation.perplexity import window_losses
from dlp.evaluation.task_checkpoints import weights_digest
from dlp.methods.criterion import Criterion
from dlp.methods.pattern import NM
from dlp.methods.refinement import Refinement
from dlp.storage.io import write_json_atomic
from dlp.walk.prune import prune_model
from dlp.walk.structure import find_blocks, find_linears


@dataclass
class Trials:
    model: object
    calib: torch.Tensor
    criterion: Criterion
    pattern: NM | None
    batch_size: int | str
    windows: torch.Tensor | None  # (n, seqlen) token ids of the selection text; None: a search of its own data
    selection: dict  # its provenance, for the record
    eval_batch_size: int = 4
    refinement: Refinement | None = None
    # the run's checkpoint folder (experiments.records.checkpoint_folder); None: nothing kept between attempts
    checkpoints: Path | None = None
    seconds: float = 0.0
    count: int = 0
    _dense: list = field(default_factory=list)
    _inputs_sha256: str | None = None

    def perplexity(self, sparsities: list[float]) -> float:
        """Selection perplexity of the model pruned at `sparsities`; the model is dense again afterwards."""
        t = time.perf_counter()
        linears = [layer for block in find_blocks(self.model).blocks for layer in find_linears(block).values()]
        if not self._dense:
            self._dense = [layer.weight.data.clone() for layer in linears]
        try:
            prune_model(self.model, self.calib, self.criterion, list(sparsities), self.pattern, self.batch_size,
                        progress=False, refinement=self.refinement)
            n, seqlen = self.windows.shape
            losses = window_losses(self.model, self.windows.reshape(-1), seqlen, n, self.eval_batch_size,
                                   progress=False)
        finally:
            for layer, dense in zip(linears, self._dense):
                layer.weight.data.copy_(dense)
        self.seconds += time.perf_counter() - t
        self.count += 1
        return math.exp(losses.double().mean().item())

    def inputs_sha256(self) -> str:
        """sha256 of what a search reads: the calibration and selection tokens and the dense weights (taken the
        first time, while the model is dense), so that progress from other inputs is never resumed."""
        if self._inputs_sha256 is None:
            digest = hashlib.sha256()
            for ids in (self.calib, self.windows):
                if ids is not None:
                    digest.update(f"{tuple(ids.shape)}:".encode())
                    digest.update(ids.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
            digest.update(weights_digest(self.model).encode())
            self._inputs_sha256 = digest.hexdigest()
        return self._inputs_sha256

    def progress_file(self, search: str) -> Path:
        return Path(self.checkpoints) / f"{search}-search.json"

    def resume(self, search: str, settings: dict) -> dict | None:
        """The progress an earlier attempt of this run kept for `search` with these settings on these inputs, or
        None (nothing kept, an unreadable file, other settings or inputs)."""
        if self.checkpoints is None:
            return None
        inputs = self.inputs_sha256()  # now, while the model is dense: the progress kept later is checked by it
        try:
            saved = json.loads(self.progress_file(search).read_text())
        except (OSError, ValueError):
            return None
        if saved.get("settings") != json.loads(json.dumps(settings)) or saved.get("inputs_sha256") != inputs:
            return None
        return saved.get("state")

    def keep(self, search: str, settings: dict, state: dict) -> None:
        """Keep `state` (JSON) for a later attempt; written whole or not at all. A search calls `resume` first."""
        if self.checkpoints is not None:
            write_json_atomic(self.progress_file(search), {"settings": settings, "inputs_sha256": self.inputs_sha256(),
                                                           "state": state})

    def record(self) -> dict:
        return {"selection": self.selection, "trials": self.count, "seconds": round(self.seconds, 1)}
