"""Compose the Hydra config without the CLI (tests, tables and notebooks use this), and say in one line why
Hydra refused a command line: its own messages run to seven lines and a stack-trace hint."""
import re

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dlp.errors import UserError, first_line
from dlp.storage.paths import ROOT

from . import methods


def compose_config(overrides: list[str] | None = None) -> dict:
    """The resolved config; an override Hydra cannot apply (an unknown key, group or choice, a value it cannot
    parse or resolve) is a UserError of one line."""
    methods.register_configs()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides or []))
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(hydra_message(exc)) from None


def hydra_message(exc: BaseException) -> str:
    """One line for what Hydra or OmegaConf refused."""
    text = str(exc)
    if isinstance(exc, MissingConfigException) and getattr(exc, "missing_cfg_file", None):
        group, _, choice = exc.missing_cfg_file.rpartition("/")
        group = group.removeprefix("hydra/")  # hydra/launcher: the user typed a launcher's name
        options = getattr(exc, "options", None)
        return (f"unknown {group} '{choice}'" + (f"; choose one of {', '.join(options)}" if options else "")
                + ("" if options else " (no such config)"))
    if isinstance(exc, OverrideParseException):
        return f"cannot read '{exc.override}' as an override (key=value, +key=value or ~key)"
    if text.startswith("Ambiguous value for argument"):
        return first_line(exc) + " (a sweep over values needs -m; a list is written [a,b])"
    key = re.match(r"Could not override '([^']+)'", text)
    if key and key.group(1).startswith("hydra.launcher.") and "not in" in str(exc.__cause__):
        return f"the launcher has no option '{key.group(1).removeprefix('hydra.launcher.')}'"
    if key and re.search(r"Key '[^']+' (is )?not in", str(exc.__cause__)):
        return f"unknown config key '{key.group(1)}' (a key the config does not have is added as +{key.group(1)}=...)"
    if key and exc.__cause__ is not None:
        return f"cannot set '{key.group(1)}': {first_line(exc.__cause__)}"
    full_key = re.search(r"full_key: (\S+)", text)
    return first_line(exc) + (f" (in {full_key.group(1)})" if full_key else "")
