"""What every entry point's command line shares: bad input as one line and exit status 2, and the options of
the grids that run cells over calibration seeds (the ablation, the curves)."""
import argparse
import sys

from dlp.errors import UserError
from dlp.pattern import check_sparsity
from dlp.paths import ROOT


def one_line_errors(call):
    """Run `call()`; a UserError (bad input) prints `error: ...` and exits with status 2, not a traceback."""
    try:
        return call()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
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


def grid_parser(description: str, defaults: dict[str, str]) -> argparse.ArgumentParser:
    """--model, --preset, --seeds, --criteria, --allocations, --sparsities, --out and Hydra overrides; `defaults`
    says in the help what each list option falls back to."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--preset", default="cpu")
    for option in ("seeds", "criteria", "allocations", "sparsities"):
        parser.add_argument(f"--{option}", default=None, help=f"comma-separated (default {defaults[option]})")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--launcher", default=None, help=LAUNCHER_HELP)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every cell (hydra.launcher.* for the "
                        "launcher)")
    return parser


def grid_options(args) -> dict:
    """The parsed grid options as the grids' `build` takes them (checked: bad seeds or sparsities are one line)."""
    split = lambda text: text.split(",") if text else None  # noqa: E731
    return {"model": args.model, "preset": args.preset, "seeds": parse_seeds(args.seeds), "extra": args.overrides,
            "out_dir": args.out, "criteria": split(args.criteria), "allocations": split(args.allocations),
            "sparsities": parse_sparsities(args.sparsities), "launcher": args.launcher}
