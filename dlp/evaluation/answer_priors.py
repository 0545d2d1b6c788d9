"""What a model that reads nothing scores on a zero-shot task: chance, and always giving the most frequent answer.

Why: a small pruned model's accuracy on a yes/no task moves with its lean towards one answer (BoolQ's validation
split is 62.2% "yes"), so a mean over tasks can rank methods by that lean rather than by what they kept. Two
reference rows say where that lean alone lands, over exactly the examples a record scored:
- chance: the mean of 1 / (number of choices) over the examples (a uniform random pick);
- most frequent answer: always the answer position that is gold most often among those examples ("yes" on BoolQ,
  the first option on WinoGrande...), the best a constant answer can do there.

Each example's gold answer and number of choices come from the harness's own task (its doc_to_target, or its
doc_to_text for tasks whose choices are contexts, as its scoring does), on the local task files; examples are keyed
by the harness's hash of the example, as the records key them (dlp.evaluation.zeroshot.per_example), so the
reference covers exactly the examples scored. The answers are cached per task file (by its sha256).
"""
import hashlib
import json
from collections import Counter
from pathlib import Path

from dlp.storage.io import write_json_atomic


def reference_scores(answers: list[tuple[int, int]]) -> dict:
    """`answers`: (gold index, number of choices) per example. Chance and most-frequent-answer accuracy (0..1), and
    that answer's index (the lowest index among ties)."""
    if not answers:
        raise ValueError("no examples to score")
    counts = Counter(gold for gold, _ in answers)
    top = max(counts.values())
    answer = min(g for g, c in counts.items() if c == top)
    return {"chance": sum(1 / n for _, n in answers) / len(answers), "most_frequent": top / len(answers),
            "answer": answer}


def doc_hash(doc) -> str:
    """The harness's hash of an example (lm_eval.evaluator: sha256 of its JSON), cut as the records cut it."""
    from lm_eval.utils import handle_non_serializable

    text = json.dumps(doc, indent=2, default=handle_non_serializable, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def gold_answer(task, doc) -> tuple[int, int]:
    """(gold index, number of choices) of one example, read as the harness's multiple-choice scoring reads it."""
    choices = task.doc_to_choice(doc)
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold)
    return int(gold), len(choices)


def task_answers(names: list[str], folder: Path | None = None) -> dict:
    """task -> {"answers": {example hash: [gold index, number of choices]} over its whole local split, "labels":
    the choices when every example has the same ones (["no", "yes"] on BoolQ), else None}; cached in `folder`
    (default: the task files' folder, answers/)."""
    from dlp.evaluation.tasks.offline_data import EXPECTED_SHA256, task_dir
    from dlp.evaluation.zeroshot import _load_tasks

    folder = Path(folder) if folder is not None else task_dir() / "answers"
    path = {name: folder / f"{name}-{EXPECTED_SHA256[name][:16]}.json" for name in names}
    out = {name: json.loads(path[name].read_text()) for name in names if path[name].exists()}
    missing = [name for name in names if name not in out]
    if missing:
        tasks, _ = _load_tasks(missing, "local")  # the harness's task index is slow to read: once, for all missing
        for name in missing:
            task = tasks[name]
            choices = {tuple(task.doc_to_choice(d)) for d in task.eval_docs}
            out[name] = {"answers": {doc_hash(d): list(gold_answer(task, d)) for d in task.eval_docs},
                         "labels": list(choices.pop()) if len(choices) == 1 else None}
            write_json_atomic(path[name], out[name])
    return out


def references_for(hashes: dict, answers: dict | None = None) -> dict:
    """task -> reference_scores over the examples `hashes[task]` names (a record's example hashes), with the
    answer's text where the task's choices are fixed labels ("label"), or None for a task some of whose examples
    the local files do not hold (its data came from elsewhere)."""
    answers = answers if answers is not None else task_answers(list(hashes))
    out = {}
    for task, keys in hashes.items():
        known = answers.get(task, {"answers": {}, "labels": None})
        if not keys or not all(h in known["answers"] for h in keys):
            out[task] = None
            continue
        ref = reference_scores([tuple(known["answers"][h]) for h in keys])
        out[task] = {**ref, "label": known["labels"][ref["answer"]] if known["labels"] else None}
    return out
