"""Run a grid of configs in-process, reusing finished records; a failed cell is recorded and skipped."""
import sys

from dlp.errors import UserError

from . import pipeline, tracking
from .config import compose_config


def run_cell(overrides: list[str], group: str = "tables") -> dict:
    """The record of one cell (status ok or failed); never raises for a failure inside the run. A fresh run is
    logged to W&B in `group`, beside the table that gathers it."""
    try:
        cfg = compose_config(overrides)
        path, record, reused = pipeline.run(cfg)
    except Exception as exc:  # recorded by pipeline.run; the grid goes on
        kind = "" if isinstance(exc, UserError) else f"{type(exc).__name__}: "
        print(f"error in cell {' '.join(overrides)}: {kind}{exc}", file=sys.stderr)
        return {"status": "failed", "error": f"{kind}{exc}", "overrides": overrides}
    how = "reused" if reused else f"ran in {record['wall_s']:.0f} s"
    print(f"{' '.join(overrides)}: ppl {record['metrics']['ppl']:.3f} ({how}) -> {path}", flush=True)
    if not reused:
        tracking.log_quietly(record, cfg["wandb"], group=group)
    return record
