"""`python -m experiments.run model=... criterion=... allocation=... sparsity=... preset=...` (Hydra).

Bad input prints one line (`error: ...`) and exits with status 2; in a sweep (`-m`) a failed cell is
recorded with its error and the sweep goes on.
"""
import contextlib
import json
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dlp.errors import UserError
from dlp.storage.io import write_json_atomic
from dlp.storage.paths import ROOT

from . import export, methods, pipeline, records, tracking
from .cells import FAILURE_NOTE
from .commandline import check_hydra_command_line
from .validation import check_choices, validate


def summary(path, record, reused) -> str:
    if record.get("status") != "ok":
        return f"{path}: {record.get('error')}"
    m = record["metrics"]
    how = "reused" if reused else f"{record['wall_s']:.0f}s"
    return (f"ppl {m['ppl']:.3f} on {m['eval_corpus']} ({m['eval']['windows']} x {m['eval']['seqlen']} tokens), "
            f"actual sparsity {record['sparsity']['actual']:.4f} [{how}]\nrecord: {path}")


def check_run(cfg: dict) -> None:
    """Bad input is one line before anything is read, the record's path included; with save=true, an existing
    folder, a dense model or a format the pattern does not fit are refused too."""
    validate(cfg)
    if cfg.get("save"):
        export.check_request(records.record_path(cfg), cfg, cfg["export"])


@hydra.main(config_path=str(ROOT / "conf"), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    plain = OmegaConf.to_container(cfg, resolve=True)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    save = plain.get("save")
    hold = {} if save else None
    try:
        check_run(plain)
        path, record, reused = pipeline.run(plain, hold)
        if save:
            folder = export.export(path, record, plain["export"], hold.get("model"), hold.get("tokenizer"),
                                   None if reused else record)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if not multirun:
            discard_run_folder()
            sys.exit(2)
        leave_failure_note(str(exc))
        return
    except Exception as exc:  # an unexpected failure in one sweep cell must not sink the others
        if not multirun:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        leave_failure_note(f"{type(exc).__name__}: {exc}")
        return
    print(summary(path, record, reused))
    if save:
        print(export.summary(folder, json.loads((folder / "export.json").read_text())))
    if not reused:
        # A sweep's runs appear together, unless a group is set (a table's cells run through a launcher)
        group = "/".join(Path(HydraConfig.get().sweep.dir).parts[-2:]) if multirun and not plain["wandb"].get("group") else None
        tracking.log_quietly(record, plain["wandb"], group)


def discard_run_folder() -> None:
    """A run refused for bad input found once it had started (a corpus too short for its windows, weights that
    do not load) leaves nothing under results/: the folder Hydra made for it holds only its copies of the
    config and its log."""
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    own = {hydra_cfg.output_subdir, f"{hydra_cfg.job.name}.log"}
    if folder.is_dir() and all(p.name in own for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # the day's folder, when this run was its only one


def leave_failure_note(error: str) -> None:
    """A failed sweep job's overrides and error in its folder, where a table that launched it reads why the
    cell failed (experiments.cells; the job's console may be a cluster's log file)."""
    try:
        note = {"overrides": list(HydraConfig.get().overrides.task), "error": error}
        write_json_atomic(Path(HydraConfig.get().runtime.output_dir) / FAILURE_NOTE, note)
    except Exception:  # the note only explains a failure already printed: never a second one
        pass


def cli() -> None:
    """The command line: choices, keys and sweeps checked in one line, every registered method known to Hydra,
    then the run."""
    try:
        check_choices(sys.argv[1:])
        methods.register_configs()
        cfg, multirun = check_hydra_command_line(sys.argv[1:])
        if not multirun:  # refused before Hydra makes the run's folder under results/hydra/
            check_run(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
