"""Zero-shot evaluation speed against the harness's batch size: what a Table 2 cell costs, and which batch to run.

`python -m experiments.bench.zeroshot --model smollm2-135m --tasks hellaswag,arc_easy --limit 60 --batches 1,8,16`
evaluates the dense model on the first `limit` examples of each task once per batch size and writes
<out>.{md,json}: seconds, examples and scored tokens per second, the share of computed positions that were
padding, and whether every example's result equals batch 1's. Scored tokens are the positions of batch 1, which
pads nothing; the other batch sizes compute those plus padding (the harness sorts requests by length, so little).
On a CPU the harness's `auto` batch size (found by running into CUDA out-of-memory errors) does not apply: a
run takes `zeroshot.batch_size`, a fixed number, and this is how to pick it.
"""
import argparse
import json
import time
from pathlib import Path

from dlp.storage.io import write_atomic
from dlp.storage.paths import ROOT

from ..commandline import one_line_errors
from ..config import compose_config
from ..records import commit_label, environment, machine_line


def count_positions(model) -> tuple[dict, object]:
    """A counter of the positions the model computes (batch x padded length) and the hook that counts them."""
    seen = {"positions": 0, "forwards": 0}

    def hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            seen["positions"] += ids.numel()
            seen["forwards"] += 1
    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def measure(model, tokenizer, tasks, limit, batch, source) -> dict:
    from dlp.evaluation.zeroshot import evaluate_zeroshot

    seen, handle = count_positions(model)
    start = time.perf_counter()
    try:
        result = evaluate_zeroshot(model, tokenizer, tasks, limit=limit, batch_size=batch, source=source)
    finally:
        handle.remove()
    seconds = time.perf_counter() - start
    examples = sum(r["n"] for r in result["tasks"].values())
    return {"batch": batch, "seconds": seconds, "examples": examples, "positions": seen["positions"],
            "forwards": seen["forwards"],
            "per_example": {t: r["examples"]["acc"] for t, r in result["tasks"].items()},
            "acc": {t: r["acc"] for t, r in result["tasks"].items()}}


def render(model_name, tasks, limit, rows, env, cfg) -> str:
    base = next((r for r in rows if r["batch"] == 1), None)
    scored = base["positions"] if base else None
    lines = [f"# Zero-shot speed against batch size: {model_name}", "",
             f"Dense model, first {limit} examples of {', '.join(tasks)} (0-shot, lm-evaluation-harness), "
             f"dtype {cfg['model']['dtype']}; machine: {machine_line(env)}, "
             f"commit {commit_label(env)}.", "",
             "| Batch | Seconds | Examples/s | Scored tokens/s | Padding share | Same results as batch 1 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        same = "-" if base is None or r is base else ("yes" if r["per_example"] == base["per_example"] else "NO")
        tok = f"{scored / r['seconds']:.0f}" if scored else "-"
        pad = f"{1 - scored / r['positions']:.1%}" if scored and r["positions"] else "-"
        lines.append(f"| {r['batch']} | {r['seconds']:.1f} | {r['examples'] / r['seconds']:.2f} | {tok} | {pad} | {same} |")
    lines += ["", "Scored tokens: the positions batch 1 computes (it pads nothing); a larger batch computes those "
              "plus its padding. Written by `python -m experiments.bench.zeroshot`."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a model config (conf/model)")
    parser.add_argument("--tasks", default="hellaswag,arc_easy")
    parser.add_argument("--limit", type=int, default=60, help="first N examples of each task")
    parser.add_argument("--batches", default="1,8,16")
    parser.add_argument("--source", default="auto", help="task data: auto, hub or local")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench-zeroshot"))
    parser.add_argument("overrides", nargs="*", help="config overrides for the model (model.dtype=bfloat16, ...)")
    args = parser.parse_args(argv)

    def run():
        from dlp.storage.models import load_model

        cfg = compose_config([f"model={args.model}", *args.overrides])
        tasks, batches = args.tasks.split(","), [int(b) for b in args.batches.split(",")]
        model, tokenizer, _ = load_model(cfg["model"]["path"], cfg["model"]["dtype"])
        measure(model, tokenizer, tasks, 1, 1, args.source)  # unmeasured: the harness indexes its tasks once
        rows = [measure(model, tokenizer, tasks, args.limit, b, args.source) for b in batches]
        env = environment()
        md = render(cfg["model"]["name"], tasks, args.limit, rows, env, cfg)
        out = Path(args.out)
        write_atomic(out.with_suffix(".md"), md.encode())
        write_atomic(out.with_suffix(".json"), json.dumps({"rows": rows, "environment": env, "tasks": tasks,
                                                            "limit": args.limit}, indent=1).encode())
        return md
    print(one_line_errors(run))


if __name__ == "__main__":
    main()
