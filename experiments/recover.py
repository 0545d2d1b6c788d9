"""`python -m experiments.recover RECORD.json | OVERRIDES... [recovery.steps=...] [recovery.save=true]`: LoRA
recovery of a pruned run that keeps its sparsity (dlp.methods.masked_lora), recorded in `results/recovery/`; with
`recovery.save=true` the recovered model is exported (experiments.export, `export.*`).

The run's model is pruned again from its record (checked against its per-matrix sparsities, as an export is),
LoRA adapters (PEFT) are trained on windows of the run's calibration corpus (drawn with `recovery.seed`, never
from the evaluation text: the two corpora must differ), merged through the mask, every pruned weight checked
to be exactly zero, and the merged model evaluated as the run was. The record holds perplexity before and
after (and with the unmerged adapters when they were trained unmasked), steps, tokens, learning rate, the
training losses, timings, and zero-shot accuracy after recovery when the run's config asks for it.
"""
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dlp.data.calibration import calibration_windows
from dlp.errors import UserError
from dlp.methods import masked_lora
from dlp.storage import checkpoint
from dlp.storage.io import write_json_atomic

from . import export, pipeline, records
from .commandline import one_line_errors
from .config import compose_config

NOT_IN_KEY = ("results_dir", "progress", "save")


def recovery_key(record: dict, rec: dict) -> str:
    return records.short_hash({"run": record["key"], **{k: v for k, v in rec.items() if k not in NOT_IN_KEY}})


def recovery_path(record_path: Path, record: dict, rec: dict) -> Path:
    return Path(rec["results_dir"]) / f"{Path(record_path).stem}_lora_{recovery_key(record, rec)}.json"


def check_settings(rec: dict) -> None:
    for name in ("rank", "steps", "batch_size", "micro_batch_size", "seqlen"):
        if not isinstance(rec[name], int) or isinstance(rec[name], bool) or rec[name] < 1:
            raise UserError(f"recovery.{name} must be a positive integer (got {rec[name]!r})")
    if rec["batch_size"] % rec["micro_batch_size"]:
        raise UserError(f"recovery.batch_size ({rec['batch_size']}) must be a multiple of recovery.micro_batch_size "
                        f"({rec['micro_batch_size']})")
    if not isinstance(rec["warmup_steps"], int) or rec["warmup_steps"] < 0:
        raise UserError(f"recovery.warmup_steps must be a non-negative integer (got {rec['warmup_steps']!r})")
    if not rec["lr"] > 0:
        raise UserError(f"recovery.lr must be positive (got {rec['lr']})")
    if rec["mask_training"] and rec["dropout"]:
        raise UserError("recovery.mask_training=true trains the masked update itself, which takes no adapter "
                        "dropout: set recovery.dropout=0 (or mask_training=false)")


def training_corpus(cfg: dict):
    """The run's calibration corpus, refused when it is the evaluation text (recovery would train on the test)."""
    corpus = pipeline.calibration_corpus(cfg)
    if corpus.provenance().get("sha256") == pipeline.eval_corpus(cfg).provenance().get("sha256"):
        raise UserError(f"the calibration corpus {corpus.name} is the evaluation text: recovery would train on it")
    return corpus


def training_windows(corpus, cfg: dict, rec: dict, tokenizer) -> tuple[torch.Tensor, dict]:
    ids = calibration_windows(corpus, tokenizer, rec["steps"] * rec["batch_size"], rec["seqlen"], rec["seed"],
                              cfg["data"]["mode"])
    return ids, {**corpus.provenance(), "windows": int(ids.shape[0]), "seqlen": rec["seqlen"], "seed": rec["seed"]}


def learning_rate(step: int, rec: dict) -> float:
    """Linear warm-up, then linear decay to 0 at the last step (the Hugging Face Trainer's default schedule, which
    the reference LoRA scripts use)."""
    warm, total = rec["warmup_steps"], rec["steps"]
    if step < warm:
        return rec["lr"] * (step + 1) / warm
    return rec["lr"] * max(0.0, (total - step) / max(1, total - warm))


def train(peft_model, ids: torch.Tensor, rec: dict, progress: bool) -> list[float]:
    """AdamW over the adapters; each step averages the loss of `batch_size` sequences, `micro_batch_size` at a
    time. Returns the loss of every step."""
    torch.manual_seed(rec["seed"])
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=rec["lr"], weight_decay=0.0)
    device = next(peft_model.parameters()).device
    micro, per_step = rec["micro_batch_size"], rec["batch_size"] // rec["micro_batch_size"]
    peft_model.train()
    losses = []
    for step in tqdm(range(rec["steps"]), desc="LoRA recovery", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, rec)
        total = 0.0
        for i in range(per_step):
            start = (step * per_step + i) * micro
            batch = ids[start:start + micro].to(device)
            loss = peft_model(input_ids=batch, labels=batch).loss / per_step
            loss.backward()
            total += float(loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    peft_model.eval()
    return losses


def lora_targets(names: list[str], targets) -> list[str]:
    """The pruned Linears that get adapters: all of them, or those whose module name ends in one of `targets`."""
    if targets == "all":
        return names
    chosen = [n for n in names if n.rsplit(".", 1)[-1] in set(targets)]
    if not chosen:
        raise UserError(f"recovery.targets {list(targets)} names none of the pruned Linears "
                        f"(e.g. {', '.join(sorted({n.rsplit('.', 1)[-1] for n in names}))})")
    return chosen


def recover(record_path: Path, record: dict, rec: dict, progress: bool = True, hold: dict | None = None) -> dict:
    """The recovery record (settings already checked by `run`); `hold`, a dict, receives the recovered model
    and its tokenizer."""
    from peft import LoraConfig, get_peft_model

    # PEFT still calls a transformers method that warns of its own renaming on every model it wraps
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    cfg = {**record["config"], "progress": progress}
    corpus = training_corpus(cfg)
    started = time.time()
    timings = {}
    t = time.perf_counter()
    measured, model, tokenizer = export.reproduce(record)
    timings["prune"] = time.perf_counter() - t
    ids, data = training_windows(corpus, cfg, rec, tokenizer)
    names = masked_lora.pruned_linear_names(model)
    zeros_before = masked_lora.zero_counts(model, names)

    targets = lora_targets(names, rec["targets"])
    lora = LoraConfig(r=rec["rank"], lora_alpha=rec["alpha"], lora_dropout=rec["dropout"], target_modules=targets,
                      bias="none")
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    if rec["mask_training"]:
        masked_lora.mask_training(peft_model)
    t = time.perf_counter()
    losses = train(peft_model, ids, rec, progress)
    timings["train"] = time.perf_counter() - t

    ppl_adapters = None
    if not rec["mask_training"]:  # the unmasked adapters are another function than the merged model: measure it
        t = time.perf_counter()
        ppl_adapters = pipeline.evaluate(peft_model, tokenizer, cfg)["ppl"]
        timings["evaluation_adapters"] = time.perf_counter() - t
    merged = masked_lora.merge_through_mask(peft_model)
    zeros_after = masked_lora.zero_counts(merged, names)
    changed = [n for n in names if zeros_after[n] < zeros_before[n]]
    if changed:
        raise AssertionError(f"the merge unmasked weights in {len(changed)} matrices, e.g. {changed[0]}")
    t = time.perf_counter()
    ppl_after = pipeline.evaluate(merged, tokenizer, cfg)["ppl"]
    timings["evaluation"] = time.perf_counter() - t
    zeroshot = None
    zs = cfg.get("zeroshot") or {}
    if zs.get("enabled"):
        from dlp.evaluation.zeroshot import evaluate_from_config
        t = time.perf_counter()
        zeroshot = evaluate_from_config(merged, tokenizer, zs)
        timings["zeroshot"] = time.perf_counter() - t
    if hold is not None:
        hold.update(model=merged, tokenizer=tokenizer)
    return {
        "status": "ok", "key": recovery_key(record, rec), "run_record": str(record_path), "run_key": record["key"],
        "recovery": rec, "training_data": data,
        "tokens": int(rec["steps"] * rec["batch_size"] * rec["seqlen"]),
        "trainable_parameters": trainable,
        "lora_layers": len(targets),
        "metrics": {"ppl_before": record["metrics"]["ppl"], "ppl_reproduced": measured["metrics"]["ppl"],
                    "ppl_after": ppl_after, "ppl_with_unmerged_adapters": ppl_adapters,
                    "eval_corpus": record["metrics"]["eval_corpus"],
                    **({"zeroshot_before": record["metrics"].get("zeroshot"), "zeroshot_after": zeroshot}
                       if zeroshot else {})},
        "losses": losses,
        "zeros": {"matrices": len(names), "all_kept": not changed, "before": sum(zeros_before.values()),
                  "after": sum(zeros_after.values())},
        "timings_s": timings, "wall_s": time.time() - started, "started_unix": started,
        "environment": records.environment(), "config": cfg,
    }


def run(record_path: Path, rec: dict, force: bool = False, progress: bool = True,
        export_options: dict | None = None) -> tuple[Path, dict, bool]:
    """Recover (or reuse the recovery record of) one finished pruned run. With `recovery.save` the recovered
    model is exported too (experiments.export, `export_options`), so it is recovered again even when recorded."""
    check_settings(rec)
    save = rec.get("save")
    if save:
        checkpoint.check_format_name((export_options or {}).get("format") or checkpoint.HF)
    record = export.finished_record(record_path)
    path = recovery_path(record_path, record, rec)
    if save:  # refused before any work, as an export is
        export.check_request(path, record["config"], export_options or {})
    elif not force:
        done = records.load_record(path)
        if done is not None:
            return path, done, True
    hold = {} if save else None
    result = recover(record_path, record, rec, progress, hold)
    write_json_atomic(path, result)
    if save:
        result["export"] = str(export.export(path, record, export_options or {}, hold["model"], hold["tokenizer"],
                                             {"metrics": {"ppl": result["metrics"]["ppl_after"]}}, recovered=result))
        write_json_atomic(path, result)
    return path, result, False


def summary(path: Path, result: dict, reused: bool) -> str:
    m = result["metrics"]
    how = "reused" if reused else f"{result['wall_s']:.0f} s"
    adapters = "" if m["ppl_with_unmerged_adapters"] is None else f" (unmerged adapters {m['ppl_with_unmerged_adapters']:.3f})"
    return (f"ppl {m['ppl_before']:.3f} -> {m['ppl_after']:.3f} after LoRA merged through the mask{adapters}; "
            f"{result['recovery']['steps']} steps, {result['tokens']} tokens; zeros kept in all "
            f"{result['zeros']['matrices']} matrices [{how}]\nrecord: {path}")


def command(argv: list[str]) -> None:
    """A record path and recovery.*/export.* settings, or the run's overrides with them; every setting is checked
    (run) before the record is read or anything runs."""
    settings = [a for a in argv if a.startswith(("recovery.", "export."))]
    rest = [a for a in argv if a not in settings]
    if export.is_record_path(rest):
        record_path = Path(rest[0])
        cfg = compose_config(settings)
    else:
        cfg = compose_config(argv)
        record_path = records.record_path(cfg)
    path, result, reused = run(record_path, cfg["recovery"], cfg.get("force", False), cfg.get("progress", True),
                               cfg["export"])
    print(summary(path, result, reused))
    if result.get("export"):
        print(export.summary(Path(result["export"]), json.loads((Path(result["export"]) / "export.json").read_text())))


def main(argv: list[str]) -> None:
    one_line_errors(lambda: command(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
