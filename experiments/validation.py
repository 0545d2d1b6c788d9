"""Every check of a run's configuration, in one place, all before anything is loaded: bad input is one line
(`UserError`) and exit status 2, not minutes of loading and a traceback."""
from dlp.data import corpora
from dlp.errors import UserError
from dlp.methods.pattern import check_sparsity, parse_form, parse_pattern
from dlp.registry import ALLOCATIONS, DENSE, make_allocator, make_criterion, make_refinement
from dlp.storage.models import check_dtype, check_offload_request, model_context, resolve_device
from dlp.storage.paths import ROOT
from dlp.walk.batching import check_batch_size
from dlp.walk.compute_dtype import check_compute_dtype

from . import methods
from .records import is_dense, refinement
from .selection import check_selection

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
        for choice in value.split(","):
            # a table's `wanda+dsnot` names a criterion and a refinement
            parts = zip((group, "refine"), methods.split_method(choice)) if group == "criterion" else [(group, choice)]
            for part_group, part in parts:
                known = methods.choices(part_group)
                if part is not None and part not in known:
                    raise UserError(f"unknown {part_group} '{part}'; choose one of {', '.join(known)}")


def check_count(name: str, value, minimum: int = 1, optional: bool = False) -> None:
    """An integer setting (a count, a length, a batch size) of at least `minimum`; null too when `optional`."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}{' or null' if optional else ''} (got {value!r})")


def check_values(cfg: dict) -> None:
    """The numbers of a run, each named as on the command line."""
    parse_form(cfg["pattern"])  # first: N >= M would otherwise surface as an impossible sparsity
    check_sparsity(cfg["sparsity"])
    check_count("seed", cfg["seed"], minimum=0)
    check_count("threads", cfg.get("threads"), optional=True)
    ev = cfg["eval"]
    check_count("eval.seqlen", ev["seqlen"], minimum=2)
    check_count("eval.max_windows", ev.get("max_windows"), optional=True)
    check_count("eval.batch_size", ev["batch_size"])
    if not is_dense(cfg):
        check_count("data.nsamples", cfg["data"]["nsamples"])
        check_count("data.seqlen", cfg["data"]["seqlen"], minimum=2)
    zs = cfg.get("zeroshot") or {}
    if zs.get("enabled"):
        check_count("zeroshot.batch_size", zs.get("batch_size", 8))
        check_count("zeroshot.limit", zs.get("limit"), optional=True)
        from dlp.evaluation.zeroshot import check_settings
        check_settings(list(zs.get("tasks") or []), zs.get("metrics"), zs.get("subsets"))


def check_sources(cfg: dict) -> None:
    """The files and the model a run will read, before it reads them: each local corpus file as it will be
    read, the model as a local folder or a hub id the hub can serve, and that no window exceeds its context."""
    corpora.check_source(cfg["eval"])
    if not is_dense(cfg):
        corpora.check_source(cfg["data"])
    context = model_context(cfg["model"]["path"])
    for name, seqlen in (("eval.seqlen", cfg["eval"]["seqlen"]),
                         *((("data.seqlen", cfg["data"]["seqlen"]),) if not is_dense(cfg) else ())):
        if context is not None and seqlen > context:
            raise UserError(f"{name}={seqlen} is longer than the model's context of {context} tokens")


def validate(cfg: dict) -> None:
    """A composed config: the values, that each method exists and takes the parameters its YAML sets, and the
    data and model it names (read, but not loaded)."""
    check_values(cfg)
    check_dtype(cfg["model"].get("dtype", "float32"))
    resolve_device(cfg["model"].get("device", "auto"))
    check_compute_dtype(cfg["model"].get("compute_dtype"), cfg["model"].get("dtype", "float32"))
    gib = cfg.get("device_memory_gib")
    if gib is not None and (isinstance(gib, bool) or not isinstance(gib, (int, float)) or gib <= 0):
        raise UserError(f"device_memory_gib must be a positive number of GiB or null (got {gib!r})")
    check_offload_request(cfg.get("offload") or "none", cfg["model"].get("device_map"), cfg["model"]["path"],
                          cfg["model"].get("device", "auto"), gib)
    if cfg.get("preset") not in PRESETS:
        raise UserError(f"unknown preset '{cfg.get('preset')}'; choose one of {', '.join(PRESETS)}")
    if cfg["criterion"]["name"] != DENSE:
        make_criterion(cfg["criterion"]["name"], **params(cfg["criterion"]))
    if not is_dense(cfg):
        check_batch_size(cfg["data"]["batch_size"])
        allocator = make_allocator(cfg["allocation"]["name"], **params(cfg["allocation"]))
        if refinement(cfg):
            make_refinement(cfg["refine"]["name"], **params(cfg["refine"]))
        if allocator.searches:
            check_selection(cfg, allocator.select_on, cfg.get("offload") or "none")
        allocator.check_calibration(cfg["data"]["nsamples"], cfg["data"]["seqlen"])
        parse_pattern(cfg["pattern"], cfg["sparsity"])
        if cfg["pattern"] not in (None, "unstructured") and not ALLOCATIONS[cfg["allocation"]["name"]].supports_nm:
            able = [name for name, cls in ALLOCATIONS.items() if cls.supports_nm]
            raise UserError(f"an N:M pattern fixes every matrix at N/M: use allocation={' or '.join(able)} with it")
    check_sources(cfg)
