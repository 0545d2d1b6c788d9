"""`python -m experiments.run model=... criterion=... allocation=... sparsity=... preset=...` (Hydra).

Bad input prints one line (`error: ...`) and exits with status 2; in a sweep (`-m`) a failed cell is
recorded with its error and the sweep goes on.
"""
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dlp.errors import UserError
from dlp.paths import ROOT

from . import pipeline, tracking


def summary(path, record, reused) -> str:
    if record.get("status") != "ok":
        return f"{path}: {record.get('error')}"
    m = record["metrics"]
    how = "reused" if reused else f"{record['wall_s']:.0f}s"
    return (f"ppl {m['ppl']:.3f} on {m['eval_corpus']} ({m['eval']['windows']} x {m['eval']['seqlen']} tokens), "
            f"actual sparsity {record['sparsity']['actual']:.4f} [{how}]\nrecord: {path}")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    plain = OmegaConf.to_container(cfg, resolve=True)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        path, record, reused = pipeline.run(plain)
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
    if not reused:
        group = "/".join(Path(HydraConfig.get().sweep.dir).parts[-2:]) if multirun else None
        tracking.log_quietly(record, plain["wandb"], group)


def check_group_choices(argv: list[str]) -> None:
    """Refuse an unknown config-group choice (`criterion=foo`, `preset=fast`) in one line, before Hydra's
    multi-line composition error. Sweeps (`a,b`) are checked choice by choice."""
    groups = {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in (ROOT / "conf").iterdir() if d.is_dir()}
    for arg in argv:
        group, sep, value = arg.partition("=")
        group = group.lstrip("+~")
        if not sep or group not in groups or value in ("", "null"):
            continue
        for choice in value.split(","):
            if choice not in groups[group]:
                raise UserError(f"unknown {group} '{choice}'; choose one of {', '.join(groups[group])}")


if __name__ == "__main__":
    try:
        check_group_choices(sys.argv[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    main()
