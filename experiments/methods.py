"""Every registered method known to Hydra.

The registry (dlp.registry) fills itself with every declared method. A registered method without a YAML file
(one from another package, a notebook or a test) gets a Hydra config node holding its constructor's defaults,
so `criterion=<name>` composes and sweeps like the others.
"""
import inspect

from hydra.core.config_store import ConfigStore

from dlp.registry import ALLOCATIONS, CRITERIA, DENSE, REFINEMENTS, parameters
from dlp.storage.paths import ROOT

GROUPS = {"criterion": CRITERIA, "allocation": ALLOCATIONS, "refine": REFINEMENTS}


def register_configs() -> None:
    store = ConfigStore.instance()
    for group, table in GROUPS.items():
        for name, cls in table.items():
            if not (ROOT / "conf" / group / f"{name}.yaml").exists():
                # "???" is OmegaConf's "must be set": a parameter without a default
                defaults = {k: "???" if v is inspect.Parameter.empty else v for k, v in parameters(cls).items()}
                store.store(group=group, name=name, node={"name": name, **defaults})


def choices(group: str) -> list[str]:
    """The names `group=<name>` accepts: registered methods for criterion, allocation and refine (plus `none`,
    the dense model or no refinement, and YAML variants of a method such as conf/allocation/owl_matched.yaml); for every other group the
    YAML files of conf/<group> and any node stored with Hydra's ConfigStore."""
    files = sorted(f.stem for f in (ROOT / "conf" / group).glob("*.yaml"))
    if group in GROUPS:
        registered = [*GROUPS[group], *([DENSE] if group in ("criterion", "refine") else [])]
        return [*registered, *(f for f in files if f not in registered)]
    stored = {name.removesuffix(".yaml") for name in ConfigStore.instance().repo.get(group, {})}
    return sorted(set(files) | stored)


def split_method(spec: str) -> tuple[str, str | None]:
    """A table's criterion entry, `wanda` or `wanda+dsnot` (a criterion and the refinement its masks take)."""
    criterion, _, refinement = spec.partition("+")
    return criterion, refinement or None


def method_overrides(spec: str) -> list[str]:
    criterion, refinement = split_method(spec)
    return [f"criterion={criterion}", *([f"refine={refinement}"] if refinement else [])]


def method_label(spec: str) -> str:
    """How tables print it: the registered labels, `Wanda + DSnoT`."""
    criterion, refinement = split_method(spec)
    return CRITERIA[criterion].label + (f" + {REFINEMENTS[refinement].label}" if refinement else "")
