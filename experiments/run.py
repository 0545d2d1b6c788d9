"""`python -m experiments.run model=... criterion=... allocation=... sparsity=... preset=...` (Hydra).

Bad input prints one line (`error: ...`) and exits with status 2; in a sweep (`-m`) a failed cell is
recorded with its error and the sweep goes on.
"""
import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dlp.errors import UserError
from dlp.paths import ROOT

from . import export, methods, pipeline, records, tracking
from .validation import check_choices, validate


def summary(path, record, reused) -> str:
    if record.get("status") != "ok":
        return f"{path}: {record.get('error')}"
    m = record["metrics"]
    how = "reused" if reused else f"{record['wall_s']:.0f}s"
    return (f"ppl {m['ppl']:.3f} on {m['eval_corpus']} ({m['eval']['windows']} x {m['eval']['seqlen']} tokens), "
            f"actual sparsity {record['sparsity']['actual']:.4f} [{how}]\nrecord: {path}")


@hydra.main(config_path=str(ROOT / "conf"), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    plain = OmegaConf.to_container(cfg, resolve=True)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    save = plain.get("save")
    hold = {} if save else None
    try:
        validate(plain)  # bad input is one line before anything is read, the record's path included
        if save:  # refused before any work: an existing folder, a dense model, a format the pattern does not fit
            export.check_request(records.record_path(plain), plain, plain["export"])
        path, record, reused = pipeline.run(plain, hold)
        if save:
            folder = export.export(path, record, plain["export"], hold.get("model"), hold.get("tokenizer"),
                                   None if reused else record)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        return
    except Exception as exc:  # an unexpected failure in one sweep cell must not sink the others
        if not multirun:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return
    print(summary(path, record, reused))
    if save:
        print(export.summary(folder, json.loads((folder / "export.json").read_text())))
    if not reused:
        # A sweep's runs appear together, unless a group is set (a table's cells run through a launcher)
        group = "/".join(Path(HydraConfig.get().sweep.dir).parts[-2:]) if multirun and not plain["wandb"].get("group") else None
        tracking.log_quietly(record, plain["wandb"], group)


def cli() -> None:
    """The command line: choices checked in one line, every registered method known to Hydra, then the run."""
    try:
        check_choices(sys.argv[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    methods.register_configs()
    main()


if __name__ == "__main__":
    cli()
