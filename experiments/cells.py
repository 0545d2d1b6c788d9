"""Run a grid of configs, reusing finished records; a failed cell is reported and skipped.

By default the cells run in this process, one after another. With a launcher (`joblib`, `slurm`, any config in
conf/hydra/launcher/ or installed with Hydra) the cells without a finished record run as one Hydra multirun
through it (hydra_plugins/dlp_bench/cells_sweeper.py), each job writing its record as `experiments.run` does; the grid
then reads every record back. Either way the numbers come from the same `pipeline.run`.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

from dlp.errors import UserError
from dlp.io import write_atomic
from dlp.paths import ROOT

from . import pipeline, records, tracking
from .config import compose_config
from .validation import validate


class Pace:
    """How far a grid's fresh cells have got, and the time left at the pace so far: a long grid (hours on a CPU)
    says where it stands after every cell, with or without progress bars."""

    def __init__(self, cells: list[list[str]]):
        self.waiting = {tuple(o) for o in cells}
        self.todo, self.done, self.started = len(self.waiting), 0, time.time()

    def claims(self, overrides: list[str]) -> bool:
        """Whether this cell is one to run and not yet counted (a cell shared by two rows counts once)."""
        if tuple(overrides) not in self.waiting:
            return False
        self.waiting.discard(tuple(overrides))
        return True

    def step(self) -> str:
        self.done += 1
        left = self.todo - self.done
        if left <= 0:
            return f"{self.done}/{self.todo}"
        return f"{self.done}/{self.todo}, ≈ {duration((time.time() - self.started) / self.done * left)} left"


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def run_cell(overrides: list[str], group: str = "tables", cfg: dict | None = None, pace: Pace | None = None) -> dict:
    """The record of one cell (status ok or failed); never raises for a failure inside the run. A fresh run is
    logged to W&B in `group`, beside the table that gathers it. `cfg`: the overrides already composed and
    validated (by `prepare`); `pace` counts the cells that had no record."""
    try:
        if cfg is None:
            cfg, checked = compose_config(overrides), False
        else:
            checked = True  # a grid's cells come from prepare(), validated
        path, record, reused = pipeline.run(cfg, checked=checked)
    except Exception as exc:  # the grid goes on
        if pace is not None:
            pace.step()
        return failed(overrides, exc)
    how = "reused" if reused else f"ran in {record['wall_s']:.0f} s"
    if pace is not None:  # reused too: another process may have finished it meanwhile
        how += f"; cell {pace.step()}"
    report(overrides, record, how, path)
    if not reused:
        tracking.log_quietly(record, cfg["wandb"], group=group)
    return record


def report(overrides: list[str], record: dict, how: str, path) -> None:
    print(f"{' '.join(overrides)}: ppl {record['metrics']['ppl']:.3f} ({how}) -> {path}", flush=True)


def failed(overrides: list[str], exc: Exception) -> dict:
    kind = "" if isinstance(exc, UserError) else f"{type(exc).__name__}: "
    print(f"error in cell {' '.join(overrides)}: {kind}{exc}", file=sys.stderr)
    return {"status": "failed", "error": f"{kind}{exc}", "overrides": overrides}


def prepare(overrides: list[str]) -> tuple[dict | None, Exception | None]:
    """(the cell's composed config, None), or (None, why it is bad input): composed and validated, nothing
    loaded. Composing is most of a warm cell's cost, so each cell is composed once."""
    try:
        cfg = compose_config(overrides)
        validate(cfg)
    except Exception as exc:  # UserError, or an override Hydra cannot compose
        return None, exc
    return cfg, None


def read_cell(cfg: dict) -> tuple[Path, dict | None]:
    """The cell's record path, and its finished record or None."""
    path = records.record_path(cfg)
    return path, pipeline.finished_record(cfg, path)


def launcher_overrides(launcher: str | None, extra: list[str] = ()) -> list[str] | None:
    """The Hydra overrides that pick a launcher (`hydra/launcher=joblib`) and set its options (`hydra.launcher.*`
    from `extra`); None for the default, this process."""
    if not launcher:
        return None
    return [f"hydra/launcher={launcher}", *(o for o in extra if o.startswith("hydra."))]


def cell_overrides(extra: list[str]) -> list[str]:
    """The overrides meant for every cell, leaving out the launcher's own (`hydra.*`)."""
    return [o for o in extra if not o.startswith("hydra.")]


def run_cells(grid: dict, group: str, launcher: list[str] | None = None) -> dict:
    """{key: [overrides per seed]} -> {key: [record per seed]} (failed cells as {"status": "failed", ...}).
    Every cell is checked first: when all are bad input (a bad override, a missing file) that is one line and no
    work; when only some are, those are failed cells and the others run."""
    unique = list({tuple(o): o for cells in grid.values() for o in cells}.values())
    prepared = {tuple(o): prepare(o) for o in unique}
    errors = [error for _, error in prepared.values()]
    if unique and all(errors) and isinstance(errors[0], UserError):
        raise errors[0]
    # Each record is read once: the cells found here are reported from this scan, only the others run.
    found = {key: read_cell(cfg) for key, (cfg, _) in prepared.items() if cfg is not None}
    todo = [o for o in unique if tuple(o) in found and found[tuple(o)][1] is None]
    pace = None
    if todo and launcher is not None:
        launch(todo, group, launcher)
    elif todo:
        print(f"{len(todo)} of {len(unique)} cells without a finished record: running them here, one after another",
              flush=True)
        pace = Pace(todo)
    out = {}
    for key, cells in grid.items():
        out[key] = []
        for overrides in cells:
            cfg, error = prepared[tuple(overrides)]
            if error is not None:
                out[key].append(failed(overrides, error))
                continue
            path, record = found[tuple(overrides)]
            if record is not None:
                out[key].append(record)
                report(overrides, record, "reused", path)
            elif launcher is None:
                out[key].append(run_cell(overrides, group, cfg, pace if pace and pace.claims(overrides) else None))
            else:
                # The launcher's jobs have written their records since the scan: read them at the scanned path.
                record = pipeline.finished_record(cfg, path)
                out[key].append(record or failed(overrides, RuntimeError("no finished record after the launcher ran")))
    return out


# Launchers whose jobs run on this machine. Their jobs compute with this process's torch thread count (unless
# the cells set `threads`): joblib would give each job cores / jobs threads, and SparseGPT's last bits depend on
# the count, so a table's local jobs would not reproduce its in-process cells. Cluster jobs use their own CPUs.
LOCAL_LAUNCHERS = ("basic", "joblib", "slurm_local", "submitit_local")


def launch(missing: list[list[str]], group: str, launcher: list[str]) -> None:
    """One multirun of `experiments.run` over exactly these cells, through the launcher; its jobs' output goes
    to this console. A job that fails leaves its cell without a record; the others go on."""
    import torch

    local = launcher[0].removeprefix("hydra/launcher=") in LOCAL_LAUNCHERS
    threads = [f"threads={torch.get_num_threads()}"] if local and not any(
        o.startswith("threads=") for cell in missing for o in cell) else []
    stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
    sweep_dir = ROOT / "results" / "hydra" / "cells" / group / stamp
    cells_file = sweep_dir / "cells.json"
    write_atomic(cells_file, json.dumps(missing, indent=1).encode())
    print(f"{len(missing)} cells without a finished record: running them through {launcher[0]} "
          f"({sweep_dir})", flush=True)
    cmd = [sys.executable, "-m", "experiments.run", "-m", "hydra/sweeper=cells", f"hydra.sweeper.cells={cells_file}",
           f"hydra.sweep.dir={sweep_dir}", f"wandb.group={group}", *threads, *launcher]
    done = subprocess.run(cmd, cwd=ROOT)
    if done.returncode != 0:
        print(f"the launcher exited with status {done.returncode}; cells without a record are reported failed",
              file=sys.stderr)
