"""Criteria and allocations by name: the one list every entry point reads.

A method registers itself where it is defined, with a decorator (as lm-evaluation-harness registers models):

    @register_criterion("wanda", label="Wanda")
    class Wanda(Criterion): ...

Validation, sweeps, tables, plots and the bench look methods up here, so a new method is one Python file (plus
its Hydra YAML for its parameters). The core registers DLP; `baselines/` registers the others when imported.
"""
import inspect

from .allocator import Allocator
from .criterion import Criterion
from .errors import UserError

CRITERIA: dict[str, type] = {}
ALLOCATIONS: dict[str, type] = {}
DENSE = "none"  # criterion=none: the dense model, nothing pruned


def _register(table: dict, base: type, kind: str, name: str, label: str | None, **attributes):
    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"@register_{kind}('{name}') needs a subclass of {base.__name__}")
        if name == DENSE or not name.isidentifier():
            raise ValueError(f"'{name}' cannot name a {kind}: use a Python identifier other than '{DENSE}'")
        known = table.get(name)
        # Re-importing the same module (a notebook's reload) registers the same class again: allowed.
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"{kind} '{name}' is registered twice: {known.__module__} and {cls.__module__}")
        cls.name, cls.label = name, label or name
        for key, value in attributes.items():
            setattr(cls, key, value)
        table[name] = cls
        return cls
    return decorate


def register_criterion(name: str, label: str | None = None):
    return _register(CRITERIA, Criterion, "criterion", name, label)


def register_allocation(name: str, label: str | None = None, score_label: str = "score", control: bool = False):
    """`score_label` names the per-block statistic the allocation ranks by, for plots. A `control` (a depth ramp,
    another allocation's sparsities reordered) exists to be compared with, in the ablation and the curves; the
    bench and the layer-importance plots leave controls out by default."""
    return _register(ALLOCATIONS, Allocator, "allocation", name, label, score_label=score_label, control=control)


def studied_allocations() -> list[str]:
    """Every registered allocation but the controls: what the bench and the layer-importance plots default to."""
    return [name for name, cls in ALLOCATIONS.items() if not cls.control]


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
