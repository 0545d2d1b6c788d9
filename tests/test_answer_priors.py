"""Reference rows of the zero-shot table: chance and the most frequent answer, over the examples a record scored."""
import json
from collections import Counter

import pytest

from dlp.evaluation.answer_priors import reference_scores, references_for, task_answers
from dlp.evaluation.tasks.offline_data import ensure_task_files
from dlp.evaluation.zeroshot import TASKS


def test_reference_scores_by_hand():
    # gold 1 twice of four; chance (1/2 + 1/2 + 1/2 + 1/4) / 4
    assert reference_scores([(1, 2), (1, 2), (0, 2), (2, 4)]) == {"chance": 0.4375, "most_frequent": 0.5,
                                                                   "answer": 1}
    assert reference_scores([(3, 4), (0, 4)])["answer"] == 0  # a tie goes to the lowest index
    with pytest.raises(ValueError):
        reference_scores([])


def test_a_reference_needs_every_scored_example():
    answers = {"rte": {"answers": {"a": [0, 2], "b": [1, 2], "c": [1, 2]}, "labels": ["True", "False"]}}
    refs = references_for({"rte": ["a", "b", "c", "c"]}, answers)  # an example scored twice counts twice
    assert refs["rte"] == {"chance": 0.5, "most_frequent": 0.75, "answer": 1, "label": "False"}
    assert references_for({"rte": ["a", "zz"]}, answers) == {"rte": None}  # data from elsewhere: no reference


def file_answers(name: str, rows: list[dict]) -> list[tuple[int, int]]:
    """(gold, choices) read straight from a local task file's fields, as the hub datasets define them."""
    out = []
    for d in rows:
        if name in ("boolq", "rte"):  # boolq: 1 = yes of (no, yes); rte: 0 = entailment of (True, False)
            out.append((int(d["label"]), 2))
        elif name == "hellaswag":
            out.append((int(d["label"]), len(d["endings"])))
        elif name == "winogrande":
            out.append((int(d["answer"]) - 1, 2))
        else:
            out.append((d["choices"]["label"].index(d["answerKey"]), len(d["choices"]["text"])))
    return out


def test_gold_answers_agree_with_the_task_files(tmp_path):
    """The harness's reading of each example's answer (its doc_to_target, or doc_to_text for WinoGrande) agrees
    with the task files' own fields on every example of every split; the cache reads back the same."""
    folder = ensure_task_files(tasks=TASKS)
    built = task_answers(TASKS, tmp_path)
    for name in TASKS:
        rows = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
        assert sum(Counter(map(tuple, built[name]["answers"].values())).values()) <= len(rows)
        # hashes key distinct examples: compare the distinct examples' answers as multisets
        distinct = {json.dumps(r, sort_keys=True): a for r, a in zip(rows, file_answers(name, rows))}
        assert Counter(map(tuple, built[name]["answers"].values())) == Counter(distinct.values()), name
    assert built["boolq"]["labels"] == ["no", "yes"] and built["rte"]["labels"] == ["True", "False"]
    assert built["arc_easy"]["labels"] is None
    assert Counter(g for g, _ in built["boolq"]["answers"].values()) == {1: 2033, 0: 1237}
    assert task_answers(TASKS, tmp_path) == built
