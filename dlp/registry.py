"""Criteria and allocations by name: the one list every entry point reads.

A method registers itself where it is defined, with a decorator (as lm-evaluation-harness registers models):

    @register_criterion("wanda", label="Wanda")
    class Wanda(Criterion): ...

Validation, sweeps, tables, plots and the bench look methods up here, so a new method is one Python file (plus
its Hydra YAML for its parameters). The tables fill themselves on first lookup by importing the modules that
packages declare under the entry-point group `dlp_bench.methods` (this suite's own in its pyproject.toml: DLP
and the baselines; another installed package adds its methods the same way), so a notebook's first
`make_criterion("wanda")` finds Wanda without importing anything else first.
"""
import importlib.metadata
import inspect
import logging

from dlp.errors import UserError, first_line
from dlp.methods.allocator import Allocator
from dlp.methods.criterion import Criterion
from dlp.methods.refinement import Refinement
from dlp.storage.paths import ROOT

GROUP = "dlp_bench.methods"  # [project.entry-points."dlp_bench.methods"] name = "a.module.that.registers"
DENSE = "none"  # criterion=none: the dense model, nothing pruned
_loaded = False


def declared_entry_points() -> list:
    """Every installed package's entry points of the group, and this checkout's own from its pyproject.toml (a
    checkout run without installing, PYTHONPATH=., or installed before its methods were declared)."""
    found = list(importlib.metadata.entry_points(group=GROUP))
    values = {entry.value for entry in found}
    return found + [entry for entry in source_tree_entry_points() if entry.value not in values]


def source_tree_entry_points() -> list:
    try:
        import tomllib
        declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][GROUP]
    except (ImportError, OSError, KeyError):
        return []
    return [importlib.metadata.EntryPoint(name, value, GROUP) for name, value in declared.items()]


def load_methods() -> None:
    """Import every declared method module once; one that fails to import is a warning line, not a lost suite."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: the modules being imported register through this very registry
    for entry in declared_entry_points():
        try:
            entry.load()
        except Exception as exc:
            logging.getLogger(__name__).warning("methods of %s (%s) not loaded: %s", entry.name, entry.value,
                                                first_line(exc))


def _loading(read):
    def call(self, *args):
        load_methods()
        return read(self, *args)
    return call


class Registry(dict):
    """Methods by name: a dict that loads the declared methods before its first read."""


for _read in ("__getitem__", "__contains__", "__iter__", "__len__", "get", "keys", "values", "items"):
    setattr(Registry, _read, _loading(getattr(dict, _read)))


CRITERIA: dict[str, type] = Registry()
ALLOCATIONS: dict[str, type] = Registry()
REFINEMENTS: dict[str, type] = Registry()


def _register(table: dict, base: type, kind: str, name: str, label: str | None, **attributes):
    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"@register_{kind}('{name}') needs a subclass of {base.__name__}")
        if name == DENSE or not name.isidentifier():
            raise ValueError(f"'{name}' cannot name a {kind}: use a Python identifier other than '{DENSE}'")
        known = dict.get(table, name)  # no loading: this may run while a declared module is being imported
        # Re-importing the same module (a notebook's reload) registers the same class again: allowed.
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"{kind} '{name}' is registered twice: {known.__module__} and {cls.__module__}")
        cls.name, cls.label = name, label or name
        for key, value in attributes.items():
            setattr(cls, key, value)
        dict.__setitem__(table, name, cls)
        return cls
    return decorate


def register_criterion(name: str, label: str | None = None):
    return _register(CRITERIA, Criterion, "criterion", name, label)


def register_allocation(name: str, label: str | None = None, score_label: str = "score", control: bool = False):
    """`score_label` names the per-block statistic the allocation ranks by, for plots. A `control` (a depth ramp,
    another allocation's sparsities reordered) exists to be compared with, in the ablation and the curves; the
    bench and the layer-importance plots leave controls out by default."""
    return _register(ALLOCATIONS, Allocator, "allocation", name, label, score_label=score_label, control=control)


def register_refinement(name: str, label: str | None = None):
    return _register(REFINEMENTS, Refinement, "refinement", name, label)


def reference_allocation() -> str:
    """The registered allocation every other is compared with (its class says `reference = True`)."""
    names = [name for name, cls in ALLOCATIONS.items() if cls.reference]
    if len(names) != 1:
        raise UserError(f"exactly one registered allocation must be the reference; found {names or 'none'}")
    return names[0]


def central_allocation() -> str | None:
    """The registered allocation this suite reproduces (its class says `central = True`), if one is."""
    return next((name for name, cls in ALLOCATIONS.items() if cls.central), None)


def studied_allocations() -> list[str]:
    """Every registered allocation but the controls and the searches (ATP: a prune per trial, asked for by name):
    what the bench and the layer-importance plots default to."""
    return [name for name, cls in ALLOCATIONS.items() if not cls.control and not cls.searches]


def parameters(cls: type) -> dict:
    """A method's parameters and their defaults, from its constructor: what its YAML may set."""
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _make(table: dict, kind: str, name: str, params: dict, extra: tuple = ()):
    if name not in table:
        raise UserError(f"unknown {kind} '{name}'; choose one of {', '.join([*table, *extra])}")
    cls = table[name]
    allowed = parameters(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) or "no parameters"
        raise UserError(f"{kind} {name} has no parameter {', '.join(unknown)}; it takes {takes}")
    return cls(**params)


def make_criterion(name: str, **params) -> Criterion:
    return _make(CRITERIA, "criterion", name, params, extra=(f"{DENSE} for dense",))


def make_allocator(name: str, **params) -> Allocator:
    return _make(ALLOCATIONS, "allocation", name, params)


def make_refinement(name: str, **params) -> Refinement:
    return _make(REFINEMENTS, "refinement", name, params, extra=(f"{DENSE} for the criterion's own mask",))
