"""One run from a resolved config: validate, load, calibrate, allocate, prune, measure, record."""
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from dlp.data import corpora
from dlp.data.calibration import calibration_windows
from dlp.errors import CheckFailed, UserError
from dlp.evaluation.perplexity import perplexity
from dlp.methods.pattern import parse_pattern
from dlp.methods.search import Trials
from dlp.registry import make_allocator, make_criterion, make_refinement
from dlp.storage.locks import computing
from dlp.storage.models import load_model, load_tokenizer
from dlp.storage.paths import cache_dir
from dlp.walk.batching import resolve_batch_size
from dlp.walk.coverage import coverage, decoder_sparsity
from dlp.walk.offload import offload_of
from dlp.walk.prune import prune_model
from dlp.walk.selfcheck import check_walk
from dlp.walk.sparsity import measure_sparsity

from . import records
from .selection import selection_windows
from .validation import params, validate


def eval_corpus(cfg: dict):
    ev = cfg["eval"]
    return corpora.load(ev["corpus"], data_dir_cfg=ev.get("data_dir"),
                        allow_substitute=ev.get("allow_substitute", False), path=ev.get("path"))


def calibration_corpus(cfg: dict):
    d = cfg["data"]
    return corpora.load(d["corpus"], path=d.get("path"), per_line=d.get("mode") == "documents")


def evaluate(model, tokenizer, cfg: dict, corpus=None) -> dict:
    """Perplexity on the run's evaluation corpus, as the run measures it (dlp.evaluation.perplexity's dict)."""
    ev = cfg["eval"]
    return perplexity(model, corpus or eval_corpus(cfg), tokenizer, ev["seqlen"], ev.get("max_windows"),
                      ev["batch_size"], cfg["progress"])


@dataclass
class Inputs:
    """What a run reads before its model: both corpora, the tokenizer and the calibration windows. A problem
    with any (a corpus too short for its windows) costs seconds and is found before anything is written."""
    corpus: object
    calib_corpus: object
    tokenizer: object
    calib: torch.Tensor | None
    timings: dict


def read_inputs(cfg: dict) -> Inputs:
    timings = {}
    t = time.perf_counter()
    corpus = eval_corpus(cfg)
    calib_corpus = None if records.is_dense(cfg) else calibration_corpus(cfg)
    timings["corpora"] = time.perf_counter() - t
    t = time.perf_counter()
    d = cfg["data"]
    tokenizer = load_tokenizer(cfg["model"]["path"])
    calib = None
    if tokenizer is not None and not records.is_dense(cfg):
        calib = calibration_windows(calib_corpus, tokenizer, d["nsamples"], d["seqlen"], cfg["seed"], d["mode"])
    timings["calibration_data"] = time.perf_counter() - t
    return Inputs(corpus, calib_corpus, tokenizer, calib, timings)


def execute(cfg: dict, hold: dict | None = None, checked: bool = False, inputs: Inputs | None = None,
            checkpoints: Path | None = None) -> dict:
    """Do the run; returns the record (status ok). Raises UserError on bad input. `hold`, a dict, receives the
    pruned model and its tokenizer (to save them) instead of letting them go with the run. `checked`: the caller
    has validated `cfg` already; `inputs`: read already (read_inputs); `checkpoints`: where zero-shot tasks
    finished by an earlier attempt of this run are kept (dlp.evaluation.task_checkpoints), and a search's progress
    (dlp.methods.search)."""
    if not checked:
        validate(cfg)
    use_threads(cfg)
    inputs = inputs or read_inputs(cfg)
    corpus, calib_corpus, tokenizer, calib = inputs.corpus, inputs.calib_corpus, inputs.tokenizer, inputs.calib
    timings = dict(inputs.timings)
    torch.manual_seed(cfg["seed"])
    m, d = cfg["model"], cfg["data"]
    t = time.perf_counter()
    model, tokenizer, model_prov = load_model(m["path"], m.get("dtype", "float32"), m.get("device", "auto"),
                                              m.get("device_map"), m.get("compute_dtype"), **offload_options(cfg),
                                              tokenizer=tokenizer)
    timings["load"] = time.perf_counter() - t
    if calib is None and not records.is_dense(cfg):  # the tokenizer came with the rebuilt model
        calib = calibration_windows(calib_corpus, tokenizer, d["nsamples"], d["seqlen"], cfg["seed"], d["mode"])
    record = {"model_provenance": model_prov, "data": {}}

    block_targets = None
    if not records.is_dense(cfg):
        record["data"]["calibration"] = {**calib_corpus.provenance(), "nsamples": d["nsamples"],
                                         "seqlen": d["seqlen"], "tokens": int(calib.numel()), "mode": d["mode"],
                                         "batch_size": resolve_batch_size(d["batch_size"], model, calib)}
        record["coverage"] = coverage(model)  # warns in one line when the pruned set is under 90% of the decoder

        t = time.perf_counter()
        # The walk must reproduce the model's own forward (dlp.walk.selfcheck): checked on one calibration sequence
        # before any walk, unless explicitly switched off (recorded either way).
        record["selfcheck"] = check_walk(model, calib[:1]) if cfg.get("selfcheck", True) else {"skipped": True}
        timings["selfcheck"] = time.perf_counter() - t

        t = time.perf_counter()
        allocator = make_allocator(cfg["allocation"]["name"], **params(cfg["allocation"]))
        criterion = make_criterion(cfg["criterion"]["name"], **params(cfg["criterion"]))
        pattern = parse_pattern(cfg["pattern"], cfg["sparsity"])
        refinement = (make_refinement(cfg["refine"]["name"], **params(cfg["refine"]))
                      if records.refinement(cfg) else None)
        model_id = {**model_prov, "dtype": m.get("dtype", "float32")}
        search = {}
        if allocator.searches:
            windows, selection = selection_windows(cfg, allocator.select_on, allocator.windows, tokenizer,
                                                   calib_corpus)
            search["trials"] = Trials(model, calib, criterion, pattern, d["batch_size"], windows, selection,
                                      cfg["eval"]["batch_size"], refinement, checkpoints)
        allocation = allocator.allocate(model, calib, cfg["sparsity"], d["batch_size"], progress=cfg["progress"],
                                        model_id=model_id, **search)
        timings["allocation"] = time.perf_counter() - t
        block_targets = allocation.sparsities
        record["allocation"] = {"name": allocator.name, "targets": block_targets, "scores": allocation.scores,
                                **allocation.info}

        t = time.perf_counter()
        walk = prune_model(model, calib, criterion, block_targets, pattern, batch_size=d["batch_size"],
                           progress=cfg["progress"], refinement=refinement)
        timings["prune"] = time.perf_counter() - t
        timings["prune_phases"] = walk.timings
        record["coverage"]["no_calibration_input"] = walk.uncalibrated  # pruned by magnitude (dlp.walk.prune)

    actual = measure_sparsity(model)
    t = time.perf_counter()
    ppl = evaluate(model, tokenizer, cfg, corpus)
    record["data"]["evaluation"] = {**corpus.provenance(), "tokens": ppl["corpus_tokens"]}
    timings["evaluation"] = time.perf_counter() - t

    zs = cfg.get("zeroshot") or {}
    zeroshot = None
    if zs.get("enabled"):
        from dlp.evaluation.zeroshot import evaluate_from_config
        t = time.perf_counter()
        zeroshot = evaluate_from_config(model, tokenizer, zs, checkpoints)
        # the cell's whole cost: tasks kept from an earlier attempt count the seconds they took then
        timings["zeroshot"] = time.perf_counter() - t + sum(zeroshot["tasks"][name]["seconds"]
                                                            for name in zeroshot["resumed_tasks"])

    target = 0.0 if records.is_dense(cfg) else float(cfg["sparsity"])
    n_params = actual["pruned_parameters"]
    record["offload"] = offload_of(model).record()
    record.update({
        "status": "ok",
        "metrics": {"ppl": ppl["ppl"], "eval_corpus": corpus.name, "eval": ppl,
                    **({"zeroshot": zeroshot} if zeroshot else {})},
        "sparsity": {"target": target, "actual": actual["overall"], "per_block": actual["per_block"],
                     **({} if records.is_dense(cfg) else {"actual_all_decoder": decoder_sparsity(model)}),
                     "per_block_target": block_targets or [0.0] * len(actual["per_block"]),
                     "per_matrix": actual["per_matrix"], "pruned_parameters": n_params,
                     "target_met": abs(actual["overall"] - target) <= 0.005},
        "timings_s": timings,
    })
    if hold is not None:
        hold.update(model=model, tokenizer=tokenizer)
    return record


def offload_options(cfg: dict) -> dict:
    """Where the run keeps its blocks (dlp.walk.offload) and its device memory cap, as load_model takes them;
    offload=disk writes the pruned blocks to `offload_dir`, by default a folder of the cache named by the run's key."""
    mode = cfg.get("offload") or "none"
    folder = cfg.get("offload_dir") or (cache_dir() / "offload" / records.run_key(cfg) if mode == "disk" else None)
    return {"offload": mode, "offload_dir": folder, "device_memory_gib": cfg.get("device_memory_gib")}


def finished_record(cfg: dict, path: Path, warn: bool = True) -> dict | None:
    """The run's finished record, unless forced to run again (`warn`: say in one line that a record is unreadable)."""
    if cfg.get("force"):
        return None
    return records.load_record(path, warn)


def run(cfg: dict, hold: dict | None = None, checked: bool = False) -> tuple[Path, dict, bool]:
    """Run (or reuse) one config. Returns (record path, record, reused). Bad input is refused (UserError) and
    leaves no record, whether found before any work or once the run has started; any other failure of a started
    run (a crash, a failed self-check) is recorded, then raised. Two processes
    asking for the same run compute it once: the second waits and reuses the first's record. `hold` as for
    `execute` (left empty when the record is reused: nothing was pruned); `checked` as for `execute`."""
    if not checked:
        validate(cfg)
    path = records.record_path(cfg)
    existing = finished_record(cfg, path)
    if existing is not None:
        return path, existing, True
    use_threads(cfg)
    inputs = read_inputs(cfg)  # before the lock and the record: their bad input leaves nothing behind
    with computing(path, "this run"):
        existing = finished_record(cfg, path, warn=False)  # finished by another process while this one waited
        if existing is not None:
            return path, existing, True
        return path, execute_and_record(cfg, path, hold, inputs), False


def use_threads(cfg: dict) -> None:
    """The run's torch CPU thread count, when the config sets one (before the record reads it); and
    progress=false silences transformers' own bars (loading weights) as well as the suite's."""
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    from transformers.utils import logging as hf_logging

    (hf_logging.enable_progress_bar if cfg.get("progress", True) else hf_logging.disable_progress_bar)()


def execute_and_record(cfg: dict, path: Path, hold: dict | None, inputs: Inputs | None = None) -> dict:
    use_threads(cfg)
    started = time.time()
    # Read before the run, the commit once per process (records.loaded_commit): that of the code this process
    # loaded, even if the checkout moves on while it runs (a long cell, a sweep).
    environment = records.environment()
    base = {"key": records.run_key(cfg), "config": cfg, "started_unix": started}
    checkpoints = records.checkpoint_folder(path)
    if cfg.get("force"):  # a forced run computes everything again
        shutil.rmtree(checkpoints, ignore_errors=True)
    try:
        record = execute(cfg, hold, checked=True, inputs=inputs, checkpoints=checkpoints)
    except UserError as exc:
        if not isinstance(exc, CheckFailed):
            raise  # bad input found once the run had started (a corpus too short for its windows): no record
        record_failure(path, base, exc, environment)
        raise
    except Exception as exc:  # the run had started (a model loaded): its failure is a result, recorded
        record_failure(path, base, exc, environment)
        raise
    record = {**base, **record, "environment": environment, **records.peak_memory(),
              "wall_s": time.time() - started}
    records.save_record(path, record)
    shutil.rmtree(checkpoints, ignore_errors=True)  # the record holds all they held
    return record


def record_failure(path: Path, base: dict, exc: Exception, environment: dict) -> None:
    """A started run's failure as its record, unless a finished record is there (a forced rerun that fails
    never replaces one)."""
    if records.load_record(path, warn=False) is None:
        records.save_record(path, {**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                   "traceback": None if isinstance(exc, UserError) else traceback.format_exc(),
                                   "environment": environment})
