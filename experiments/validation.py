"""Every check of a run's configuration, in one place, all before anything is loaded: bad input is one line
(`UserError`) and exit status 2, not minutes of loading and a traceback."""
from dlp.batching import check_batch_size
from dlp.compute_dtype import check_compute_dtype
from dlp.errors import UserError
from dlp.paths import ROOT
from dlp.pattern import check_sparsity, parse_pattern
from dlp.registry import DENSE, make_allocator, make_criterion

from . import methods
from .records import is_dense

PRESETS = ("cpu", "paper")


def params(section: dict) -> dict:
    """A config group's parameters: everything but its `name`."""
    return {k: v for k, v in section.items() if k != "name"}


def check_choices(argv: list[str]) -> None:
    """Refuse an unknown config-group choice on the command line (`criterion=foo`, `preset=fast`) before Hydra's
    multi-line composition error. Sweeps (`a,b`) are checked choice by choice."""
    groups = [d.name for d in (ROOT / "conf").iterdir() if d.is_dir()]
    for arg in argv:
        group, sep, value = arg.partition("=")
        group = group.lstrip("+~")
        if not sep or group not in groups or value in ("", "null"):
            continue
        known = methods.choices(group)
        for choice in value.split(","):
            if choice not in known:
                raise UserError(f"unknown {group} '{choice}'; choose one of {', '.join(known)}")


def validate(cfg: dict) -> None:
    """A composed config: the values, and that each method exists and takes the parameters its YAML sets."""
    check_sparsity(cfg["sparsity"])
    check_compute_dtype(cfg["model"].get("compute_dtype"), cfg["model"].get("dtype", "float32"))
    if cfg.get("preset") not in PRESETS:
        raise UserError(f"unknown preset '{cfg.get('preset')}'; choose one of {', '.join(PRESETS)}")
    if cfg["criterion"]["name"] != DENSE:
        make_criterion(cfg["criterion"]["name"], **params(cfg["criterion"]))
    if not is_dense(cfg):
        check_batch_size(cfg["data"]["batch_size"])
        make_allocator(cfg["allocation"]["name"], **params(cfg["allocation"]))
        parse_pattern(cfg["pattern"], cfg["sparsity"])
        if cfg["pattern"] not in (None, "unstructured") and cfg["allocation"]["name"] != "uniform":
            raise UserError("an N:M pattern fixes every matrix at N/M: use allocation=uniform with it")
