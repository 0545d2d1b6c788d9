"""What every entry point's command line shares: bad input as one line and exit status 2, and the options of
the grids that run cells over calibration seeds (the ablation, the curves)."""
import argparse
import sys

from dlp.errors import UserError
from dlp.methods.pattern import check_sparsity
from dlp.storage.paths import ROOT

from .publish import CellsFailed


def one_line_errors(call):
    """Run `call()`; a UserError (bad input) prints `error: ...` and exits with status 2, not a traceback; a grid
    with failed cells (its result files left as they were) exits with status 1 the same way."""
    try:
        return call()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except CellsFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as every entry point's bad input: one line and exit status 2, not the usage."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_seeds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise UserError(f"seeds must be comma-separated integers such as 0,1,2 (got '{text}')") from None
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must differ from each other (got '{text}')")
    return seeds


def parse_sparsities(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        values = [float(s) for s in text.split(",")]
    except ValueError:
        raise UserError(f"sparsities must be comma-separated numbers such as 0.6,0.7 (got '{text}')") from None
    for s in values:
        check_sparsity(s)
    return values


LAUNCHER_HELP = ("run the missing cells as one Hydra multirun through this launcher (joblib, slurm, submitit_local, "
                 "...); default: one after another in this process")


FINISHED_ONLY_HELP = ("run nothing: render the finished records (cells without one read 'not run'; an incomplete "
                      "result goes under its .partial name)")


def grid_parser(description: str, defaults: dict[str, str], peek: bool = False) -> argparse.ArgumentParser:
    """--model, --preset, --seeds, --criteria, --allocations, --sparsities, --out and Hydra overrides; `defaults`
    says in the help what each list option falls back to; `peek`: --finished-only too (a grid whose every cell is
    a record)."""
    parser = OneLineParser(description=description)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--preset", default="cpu")
    for option in ("seeds", "criteria", "allocations", "sparsities"):
        parser.add_argument(f"--{option}", default=None, help=f"comma-separated (default {defaults[option]})")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--launcher", default=None, help=LAUNCHER_HELP)
    if peek:
        parser.add_argument("--finished-only", action="store_true", help=FINISHED_ONLY_HELP)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every cell (hydra.launcher.* for the "
                        "launcher)")
    return parser


def grid_options(args) -> dict:
    """The parsed grid options as the grids' `build` takes them (checked: bad seeds or sparsities are one line)."""
    split = lambda text: text.split(",") if text else None  # noqa: E731
    return {"model": args.model, "preset": args.preset, "seeds": parse_seeds(args.seeds), "extra": args.overrides,
            "out_dir": args.out, "criteria": split(args.criteria), "allocations": split(args.allocations),
            "sparsities": parse_sparsities(args.sparsities), "launcher": args.launcher,
            **({"finished_only": args.finished_only} if hasattr(args, "finished_only") else {})}


def check_hydra_command_line(argv: list[str]) -> tuple[dict, bool]:
    """Compose what a Hydra entry point is given, as Hydra will (each sweep at its first value, so `-m` sweeps
    are checked too), and refuse an unknown key, group, choice or launcher option in one line (UserError).
    Returns the composed config (a sweep's first cell) and whether the command line is a multirun."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from .config import compose_config, hydra_message

    args = get_args_parser().parse_known_args(argv)[0]
    overrides = args.overrides
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise UserError(hydra_message(exc)) from None
    probe = []
    for override in parsed:
        if not override.is_sweep_override():
            probe.append(override.input_line)
            continue
        try:
            first = next(iter(override.sweep_string_iterator()))
        except (HydraException, StopIteration):  # glob() and interval(): the sweeper resolves them, not a probe
            continue
        probe.append(f"{override.get_key_element()}={first}")
    return compose_config(probe), bool(args.multirun)
