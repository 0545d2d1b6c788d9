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
from dlp.storage.io import write_atomic
from dlp.storage.paths import ROOT

from . import grids, pipeline, records, tracking
from .config import compose_config
from .validation import check_choices, validate


class Pace:
    """How far a grid's fresh cells have got, and the time left: a long grid (hours on a CPU) says where it stands
    after every cell, with or without progress bars. A cell is timed like the cells of its method (the same
    overrides but the seed) that this grid or an earlier one finished, else like its method at another sparsity,
    else at this grid's pace so far: a searched allocation's cells take several times a plain cell's, seeds 1 and
    2 take what seed 0 took, and a search at 60% about what it took at 70%."""

    def __init__(self, cells: list[list[str]], timed: list[tuple[list[str], float]] = ()):
        """`timed`: (overrides, seconds) of the finished cells, from the records found."""
        self.waiting = {tuple(o) for o in cells}
        self.todo, self.done, self.started = len(self.waiting), 0, time.time()
        self.last = self.started
        self.seconds: dict[tuple, list[float]] = {}
        for overrides, seconds in timed:
            self.add_timing(overrides, seconds)

    def add_timing(self, overrides, seconds: float) -> None:
        for key in dict.fromkeys(kinds(overrides)):  # a cell with no sparsity has one key, timed once
            self.seconds.setdefault(key, []).append(seconds)

    def expected(self, overrides, pace: float) -> float:
        return next((mean(self.seconds[k]) for k in kinds(overrides) if self.seconds.get(k)), pace)

    def claims(self, overrides: list[str]) -> bool:
        """Whether this cell is one to run and not yet counted (a cell shared by two rows counts once)."""
        if tuple(overrides) not in self.waiting:
            return False
        self.waiting.discard(tuple(overrides))
        return True

    def step(self, overrides: list[str] | None = None) -> str:
        """Count the cell just finished; `overrides`: the cell, when it ran here to the end (its time then
        times its method; a failure or a record another process wrote says nothing of it)."""
        now = time.time()
        if overrides is not None:
            self.add_timing(overrides, now - self.last)
        self.done, self.last = self.done + 1, now
        if self.done >= self.todo:
            return f"{self.done}/{self.todo}"
        pace = (now - self.started) / self.done
        left = sum(self.expected(o, pace) for o in self.waiting)
        return f"{self.done}/{self.todo}, ≈ {duration(left)} left"


def kinds(overrides) -> tuple[tuple, tuple]:
    """A cell's method (its overrides but the seed), then that method at any sparsity (but the sparsity too)."""
    method = tuple(o for o in overrides if not o.startswith("seed="))
    return method, tuple(o for o in method if not o.startswith("sparsity="))


def mean(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def run_cell(overrides: list[str], group: str = "tables", cfg: dict | None = None, pace: Pace | None = None,
             label: str | None = None) -> dict:
    """The record of one cell (status ok or failed); never raises for a failure inside the run. A fresh run is
    logged to W&B in `group`, beside the table that gathers it. `cfg`: the overrides already composed and
    validated (by `prepare`); `pace` counts the cells that had no record; `label`: the cell as its lines name
    it (default: all its overrides)."""
    label = label or " ".join(overrides)
    try:
        if cfg is None:
            cfg, checked = compose_config(overrides), False
        else:
            checked = True  # a grid's cells come from prepare(), validated
        path, record, reused = pipeline.run(cfg, checked=checked)
    except Exception as exc:  # the grid goes on
        if pace is not None:
            pace.step()
        return failed(overrides, exc, label=label)
    how = "reused" if reused else f"ran in {record['wall_s']:.0f} s"
    if pace is not None:  # reused too: another process may have finished it meanwhile
        how += f"; cell {pace.step(None if reused else overrides)}"
    report(label, record, how, path)
    if not reused:
        tracking.log_quietly(record, cfg["wandb"], group=group)
    return record


def report(label: str, record: dict, how: str, path) -> None:
    print(f"{label}: ppl {record['metrics']['ppl']:.3f} ({how}) -> {path}", flush=True)


def failed(overrides: list[str], why: Exception | str | None, quiet: bool = False, label: str | None = None) -> dict:
    """A failed cell's stand-in record; said at once in one line unless `quiet` (a launcher's cells, said
    together when the table is written)."""
    label = label or " ".join(overrides)
    if why is None:
        why = "no finished record after the launcher ran"
    elif isinstance(why, Exception):
        why = f"{'' if isinstance(why, UserError) else f'{type(why).__name__}: '}{why}"
    if not quiet:
        print(f"error in cell {label}: {why}", file=sys.stderr)
    return {"status": "failed", "error": why, "overrides": overrides, "cell": label}


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
        if any(o.startswith("hydra.") for o in extra):
            raise UserError(f"{next(o for o in extra if o.startswith('hydra.'))} is a launcher's option: name the "
                            "launcher too (--launcher, or LAUNCHER= for make)")
        return None
    chosen = [f"hydra/launcher={launcher}", *(o for o in extra if o.startswith("hydra."))]
    # Composed now, as Hydra will for the jobs: a launcher name Hydra cannot resolve (its plugins, conf/hydra/
    # launcher/) or an option the launcher does not have is one line before any work.
    compose_config(chosen)
    return chosen


def cell_overrides(extra: list[str]) -> list[str]:
    """The overrides meant for every cell, leaving out the launcher's own (`hydra.*`)."""
    return [o for o in extra if not o.startswith("hydra.")]


def run_cells(grid: dict, group: str, launcher: list[str] | None = None, run: bool = True) -> dict:
    """{key: [overrides per seed]} -> {key: [record per seed]} (failed cells as {"status": "failed", ...}).
    Every cell is checked first: one that is bad input (a bad override, a missing file) refuses the whole grid in
    one line (UserError) before any work. `run` False: the finished records alone, a cell without one left out
    of its list (a peek at a grid that runs elsewhere), a cell whose record says it failed given as failed."""
    unique = list({tuple(o): o for cells in grid.values() for o in cells}.values())
    prepared = {tuple(o): prepare(o) for o in unique}
    bad = [(o, error) for o in unique for error in [prepared[tuple(o)][1]] if isinstance(error, UserError)]
    if bad:
        more = f" ({len(bad) - 1} more cells refused too)" if len(bad) > 1 else ""
        raise UserError(f"{bad[0][1]}{more}" if len(bad) == len(unique) else
                        f"cell {cell_text(bad[0][0], unique)}: {bad[0][1]}{more}")
    # Each record is read once: the cells found here are reported from this scan, only the others run.
    found = {key: read_cell(cfg) for key, (cfg, _) in prepared.items() if cfg is not None}
    todo = [o for o in unique if tuple(o) in found and found[tuple(o)][1] is None]
    labels = {tuple(o): cell_text(o, unique) for o in unique}
    pace, reasons = None, {}
    if todo and not run:
        print(f"{len(todo)} of {len(unique)} cells without a finished record: not run (finished records only)",
              flush=True)
    elif todo and launcher is not None:
        reasons = launch(todo, group, launcher)
    elif todo:
        print(f"{len(todo)} of {len(unique)} cells without a finished record: running them here, one after another",
              flush=True)
        records_found = ((o, found.get(tuple(o), (None, None))[1]) for o in unique)
        pace = Pace(todo, [(o, r["wall_s"]) for o, r in records_found if r is not None and "wall_s" in r])
    out = {}
    for key, cells in grid.items():
        out[key] = []
        for overrides in cells:
            cfg, error = prepared[tuple(overrides)]
            if error is not None:
                out[key].append(failed(overrides, error, label=labels[tuple(overrides)]))
                continue
            path, record = found[tuple(overrides)]
            if record is not None:
                out[key].append(record)
                report(labels[tuple(overrides)], record, "reused", path)
            elif not run:  # a cell that failed elsewhere is named as failed, not passed off as still to run
                why = records.recorded_failure(path)
                if why is not None:
                    out[key].append(failed(overrides, why, label=labels[tuple(overrides)]))
                continue
            elif launcher is None:
                out[key].append(run_cell(overrides, group, cfg, pace if pace and pace.claims(overrides) else None,
                                         labels[tuple(overrides)]))
            else:
                # The launcher's jobs have written their records since the scan: read them at the scanned path.
                record = pipeline.finished_record(cfg, path)
                out[key].append(record or failed(overrides, reasons.get(tuple(overrides), reasons.get(None)), quiet=True,
                                                 label=labels[tuple(overrides)]))
    return out


def cell_text(overrides: list[str], cells: list[list[str]]) -> str:
    """A cell as a person tells it from its grid's others: the overrides not shared by every cell."""
    shared = set.intersection(*(set(c) for c in cells)) if len(cells) > 1 else set()
    return " ".join(o for o in overrides if o not in shared) or " ".join(overrides)


def failures(out: dict) -> list[tuple[str, str]]:
    """(cell, why) for each failed cell of run_cells' result, each cell once (a cell can sit in two rows)."""
    found = {}
    for cell_records in out.values():
        for r in cell_records:
            if r.get("status") == "failed":
                found.setdefault(tuple(r["overrides"]), (r["cell"], r["error"]))
    return list(found.values())


# Launchers whose jobs run on this machine. Their jobs compute with this process's torch thread count (unless
# the cells set `threads`): joblib would give each job cores / jobs threads, and SparseGPT's last bits depend on
# the count, so a table's local jobs would not reproduce its in-process cells. Cluster jobs use their own CPUs.
LOCAL_LAUNCHERS = ("basic", "joblib", "slurm_local", "submitit_local")


def launch(missing: list[list[str]], group: str, launcher: list[str]) -> dict:
    """One multirun of `experiments.run` over exactly these cells, through the launcher; its jobs' output goes
    to this console. A job that fails leaves its cell without a record; the others go on. Returns why cells
    failed: {cell's overrides: the job's error} from the failure notes jobs leave in their folders
    (experiments.run), and {None: the launcher's last line} when the launcher itself failed."""
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
    # Its errors are shown as they come and the last one kept: a launcher that fails (a refused submission, a
    # cluster down) names the reason in each of its cells' failure lines.
    last = ""
    with subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        for line in proc.stderr:
            sys.stderr.write(line)
            last = line.strip() or last
    reasons = job_failures(sweep_dir, missing)
    if proc.returncode != 0:
        reasons[None] = f"the launcher exited with status {proc.returncode}: {last or 'no message'}"
    return reasons


FAILURE_NOTE = "failure.json"  # what a multirun job that failed leaves in its folder: its overrides and error


def job_failures(sweep_dir: Path, missing: list[list[str]]) -> dict:
    """{cell's overrides: error} from the failure notes under `sweep_dir`. A job's overrides are the command
    line's (wandb.group, threads) followed by its cell's."""
    notes = []
    for path in sweep_dir.rglob(FAILURE_NOTE):
        try:
            notes.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    reasons = {}
    for cell in missing:
        for note in notes:
            if note.get("overrides", [])[-len(cell):] == cell:
                reasons[tuple(cell)] = note.get("error", "?")
    return reasons


def sweep_setup(name: str, model: str, preset: str, launcher: str | None, extra, more_allocations=(), **given):
    """A seeded report's start (ablation, curves, recovery): the launcher's overrides, the cells' own, the
    experiment's axes (criterion, allocation, sparsity, seed) with those given replacing the config's, and the
    model, preset and methods checked, one line for a bad name, before any cell runs."""
    launch, extra = launcher_overrides(launcher, list(extra)), cell_overrides(list(extra))
    sweep = grids.axes(name, **given)
    check_choices([f"model={model}", f"preset={preset}", f"criterion={','.join(sweep['criterion'])}",
                   f"allocation={','.join([*sweep['allocation'], *more_allocations])}"])
    return launch, extra, [sweep[k] for k in ("criterion", "allocation", "sparsity", "seed")]
