"""Weights & Biases logging of one run record.

mode: `auto` is online when an API key is configured (WANDB_API_KEY or a netrc login) and offline otherwise
(sync later with `wandb sync results/wandb/...`); `online`, `offline`, or `disabled` to switch it off.
Runs of one sweep share a group (the sweep's folder name), so they appear together. A run whose allocation
searches (ATP, EvoPress) also carries the search's progress as a line (reports.search_cost.search_progress).
A table (Table 1, the ablation, the curves) is logged as a run of its own in the group of its cells' runs: the
assembled table as a `wandb.Table`, its verdicts, and its figures.
"""
import netrc
import os
import sys
from pathlib import Path

from dlp.storage.paths import ROOT

from .records import is_dense
from .reports.search_cost import search_progress


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if _has_api_key() else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"wandb.mode must be auto, online, offline or disabled (got '{mode}')")
    return mode


def run_name(cfg: dict) -> str:
    if is_dense(cfg):
        return f"{cfg['model']['name']}-dense"
    return f"{cfg['model']['name']}-{cfg['criterion']['name']}-{cfg['allocation']['name']}-s{cfg['sparsity']}"


def _quietly(what: str, log) -> None:
    """W&B logging never loses a run or a table (both are on disk already): a failure only warns."""
    try:
        log()
    except Exception as exc:
        print(f"warning: W&B logging{what} failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def log_quietly(record: dict, wb: dict, group: str | None = None) -> None:
    """Log a freshly finished run (a failure only warns)."""
    _quietly("", lambda: log_record(record, wb, group))


def _init(wb: dict, mode: str, name: str, group: str | None, config: dict, job_type: str | None = None):
    import wandb

    directory = Path(wb.get("dir") or ROOT / "results")
    directory.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=wb.get("project", "dlp-bench"), entity=wb.get("entity"), mode=mode,
                      group=group or wb.get("group"), name=name, config=config, dir=str(directory),
                      job_type=job_type, reinit="finish_previous", settings=wandb.Settings(silent=True, console="off"))


def log_table_quietly(name: str, columns: list[str], data: list[list], wb: dict, group: str | None = None,
                      notes: list[str] = (), figures: dict | None = None, settings: dict | None = None) -> None:
    """Log an assembled table (a failure only warns)."""
    _quietly(f" of {name}", lambda: log_table(name, columns, data, wb, group, notes, figures, settings))


def log_table(name: str, columns: list[str], data: list[list], wb: dict, group: str | None = None,
              notes: list[str] = (), figures: dict | None = None, settings: dict | None = None) -> str | None:
    """Log a table (and its figures, name -> png path) as a run of its own, its grid (`settings`: models,
    preset, seeds, ...) as the run's config; returns its local folder."""
    mode = resolve_mode(wb.get("mode", "auto"))
    if mode == "disabled":
        return None
    import wandb

    run = _init(wb, mode, name, group, {"table": name, **(settings or {})}, job_type="table")
    try:
        run.log({name: wandb.Table(columns=columns, data=data),
                 "verdicts": wandb.Table(columns=["statement"], data=[[n] for n in notes]),
                 **{key: wandb.Image(str(path)) for key, path in (figures or {}).items()}})
        return run.dir
    finally:
        run.finish()


def log_record(record: dict, wb: dict, group: str | None = None) -> str | None:
    """Log one finished record; returns the local run folder (None when disabled)."""
    mode = resolve_mode(wb.get("mode", "auto"))
    if mode == "disabled" or record.get("status") != "ok":
        return None
    import wandb

    cfg = record["config"]
    run = _init(wb, mode, run_name(cfg), group, cfg)
    try:
        s = record["sparsity"]
        scores = (record.get("allocation") or {}).get("scores") or [None] * len(s["per_block"])
        table = wandb.Table(columns=["block", "score", "target_sparsity", "actual_sparsity"],
                            data=[[i, sc, t, a] for i, (sc, t, a) in
                                  enumerate(zip(scores, s["per_block_target"], s["per_block"]))])
        run.log({"ppl": record["metrics"]["ppl"], "actual_sparsity": s["actual"], "target_met": s["target_met"],
                 "per_block": table,
                 "per_block_sparsity": wandb.plot.line(table, "block", "target_sparsity",
                                                       title="target sparsity per block")})
        run.summary.update({"ppl": record["metrics"]["ppl"], "eval_corpus": record["metrics"]["eval_corpus"],
                            "record_key": record["key"]})
        curve = search_progress(record.get("allocation"))
        if curve:  # a search that runs for hours is judged by its curve: did it still improve at the end?
            name, x, y, points = curve
            progress = wandb.Table(columns=[x, y], data=points)
            run.log({name: progress, f"{name}_plot": wandb.plot.line(progress, x, y, title=f"{y} per {x}")})
        zeroshot = record["metrics"].get("zeroshot")
        if zeroshot:
            run.log({"zeroshot/mean_acc": zeroshot["mean_acc"],
                     **({"zeroshot/mean": zeroshot["mean"]} if "mean" in zeroshot else {}),  # each task by its metric
                     **{f"zeroshot/{task}/acc": r["acc"] for task, r in zeroshot["tasks"].items()},
                     **{f"zeroshot/{task}/acc_norm": r["acc_norm"] for task, r in zeroshot["tasks"].items()
                        if r["acc_norm"] is not None}})
        return run.dir
    finally:
        run.finish()
