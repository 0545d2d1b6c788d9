"""Zero-shot evaluation through lm-evaluation-harness on the local task files, with a tiny random model."""
import pytest
from tiny import char_tokenizer, tiny_model

from dlp.errors import UserError
from dlp.evaluation.zeroshot import (TASKS, check_settings, chosen_examples, evaluate_zeroshot, selection_text,
                                     subset_indices)

CHANCE = {"boolq": 0.5, "rte": 0.5, "hellaswag": 0.25, "winogrande": 0.5, "arc_challenge": 0.25,
          "arc_easy": 0.25, "openbookqa": 0.25}
LIMIT = 40


@pytest.fixture(scope="module")
def tiny_result():
    model = tiny_model("llama")
    model.config.max_position_embeddings = 4096
    return evaluate_zeroshot(model, char_tokenizer(), TASKS, limit=LIMIT, batch_size=16, source="local")


def test_every_task_near_chance(tiny_result):
    for task in TASKS:
        r = tiny_result["tasks"][task]
        assert r["n"] == LIMIT
        # A random model cannot know the answers: within 4 binomial standard errors of chance.
        se = (CHANCE[task] * (1 - CHANCE[task]) / LIMIT) ** 0.5
        assert abs(r["acc"] - CHANCE[task]) < 4 * se + 0.05, (task, r["acc"])
        assert r["data"]["source"] == "local"


def test_record_fields_and_mean(tiny_result):
    accs = [tiny_result["tasks"][t]["acc"] for t in TASKS]
    assert tiny_result["mean_acc"] == pytest.approx(sum(accs) / len(accs))
    assert tiny_result["metrics"] == {t: "acc" for t in TASKS}  # no metrics named: acc everywhere
    assert tiny_result["mean"] == tiny_result["mean_acc"] and tiny_result["limit"] == LIMIT
    assert tiny_result["add_bos_token"] is False and tiny_result["harness_version"] == "0.4.13"
    for task in ("hellaswag", "arc_easy", "arc_challenge", "openbookqa"):
        assert tiny_result["tasks"][task]["acc_norm"] is not None
        assert tiny_result["tasks"][task]["acc_stderr"] > 0
    assert tiny_result["tasks"]["arc_easy"]["data"]["stands_in_for"] == ["allenai/ai2_arc", "ARC-Easy", "test"]
    assert all(tiny_result["tasks"][t]["version"] is not None for t in TASKS)


def test_unknown_task():
    with pytest.raises(UserError, match="unknown zero-shot task"):
        evaluate_zeroshot(tiny_model(), char_tokenizer(), ["mmlu_pro_x"], limit=1, source="local")


def test_compute_dtype_runs_the_harness_under_autocast_with_float32_log_likelihoods(monkeypatch):
    """With model.compute_dtype the harness's forward passes run in bfloat16 (the output layer's logits are
    bfloat16), while its log-softmax, which autocast would leave in bfloat16, is taken in float32."""
    import torch
    import torch.nn.functional as F

    from dlp.walk.compute_dtype import set_compute_dtype
    model = tiny_model("llama")
    model.config.max_position_embeddings = 4096
    set_compute_dtype(model, "bfloat16")
    logits, log_probs = set(), set()
    model.lm_head.register_forward_hook(lambda _m, _i, out: logits.add(out.dtype))
    plain = F.log_softmax

    def spy(*args, **kwargs):
        out = plain(*args, **kwargs)
        log_probs.add(out.dtype)
        return out

    monkeypatch.setattr(F, "log_softmax", spy)
    result = evaluate_zeroshot(model, char_tokenizer(), ["rte"], limit=8, batch_size=8, source="local")
    assert result["tasks"]["rte"]["n"] == 8
    assert logits == {torch.bfloat16} and log_probs == {torch.float32}


def test_subset_draw_is_fixed_sorted_and_limited():
    drawn = subset_indices("hellaswag", 10042, 2000, 0)
    assert len(drawn) == len(set(drawn)) == 2000 and drawn == sorted(drawn) and 0 <= drawn[0] and drawn[-1] < 10042
    assert drawn == subset_indices("hellaswag", 10042, 2000, 0)  # the same examples every time
    assert len(set(drawn) & set(subset_indices("hellaswag", 10042, 2000, 1))) < 600  # another seed, another draw
    assert set(subset_indices("hellaswag", 10042, 500, 0)) <= set(drawn)  # a smaller draw is inside a larger one
    spread = [sum(lo <= i < lo + 1004 for i in drawn) for lo in range(0, 10040, 1004)]
    assert min(spread) > 140 and max(spread) < 260  # about 200 from each tenth of the split, not its head
    assert chosen_examples("rte", 277, None, None, 0) is None  # the whole split
    assert chosen_examples("rte", 277, 300, None, 0) is None
    assert chosen_examples("rte", 277, 5, None, 0) == [0, 1, 2, 3, 4]
    assert chosen_examples("hellaswag", 10042, 7, 2000, 0) == drawn[:7]
    assert selection_text(277, 277, None, None, 0) == "all 277"
    assert selection_text(50, 277, 50, None, 0) == "first 50 of 277"
    assert selection_text(2000, 10042, None, 2000, 0) == "2000 of 10042 (fixed draw, seed 0)"
    assert selection_text(50, 10042, 50, 2000, 0) == "first 50 of 2000 drawn from 10042 (seed 0)"


@pytest.mark.parametrize("metrics, subsets, line", [
    ({"boolq": "acc_norm"}, None,
     "zeroshot.metrics.boolq=acc_norm: boolq is scored by acc only (the harness has no acc_norm for it)"),
    ({"hellaswag": "f1"}, None, "zeroshot.metrics.hellaswag=f1: hellaswag is scored by acc or acc_norm"),
    (None, {"hellaswag": 0}, "zeroshot.subsets.hellaswag must be a number of examples >= 1 (got 0)"),
])
def test_bad_metric_or_subset_is_one_line(metrics, subsets, line):
    with pytest.raises(UserError) as err:
        check_settings(TASKS, metrics, subsets)
    assert str(err.value) == line


def test_a_subset_and_the_metric_each_task_is_scored_by():
    """A task with a subset scores exactly its drawn examples; each task is scored by its metric, the mean is over
    those, and the per-example scores of that metric make up the task's score."""
    model = tiny_model("llama")
    model.config.max_position_embeddings = 4096
    result = evaluate_zeroshot(model, char_tokenizer(), ["hellaswag", "rte"], batch_size=16, source="local",
                               subsets={"hellaswag": 12, "winogrande": 3, "rte": None}, limit=None,
                               metrics={"hellaswag": "acc_norm", "rte": "acc"})
    hs, rte = result["tasks"]["hellaswag"], result["tasks"]["rte"]
    assert (hs["n"], hs["n_split"], hs["metric"]) == (12, 10042, "acc_norm")
    assert hs["selection"] == "12 of 10042 (fixed draw, seed 0)" and result["subsets"] == {"hellaswag": 12}
    assert (rte["n"], rte["selection"], rte["metric"]) == (277, "all 277", "acc")  # no subset: the whole split
    assert hs["score"] == hs["acc_norm"] == pytest.approx(sum(hs["examples"]["acc_norm"]) / 12)
    assert hs["acc"] == pytest.approx(sum(hs["examples"]["acc"]) / 12) and "acc_norm" not in rte["examples"]
    assert result["mean"] == pytest.approx((hs["acc_norm"] + rte["acc"]) / 2)
    first = evaluate_zeroshot(model, char_tokenizer(), ["hellaswag"], batch_size=16, source="local", limit=12)
    drawn = set(hs["examples"]["doc_hash"])
    assert len(drawn) == 12 and drawn != set(first["tasks"]["hellaswag"]["examples"]["doc_hash"])  # not the head


def test_the_reference_rows_cover_exactly_the_scored_examples(tiny_result):
    """The records' example hashes are the harness's: every scored example is found, and BoolQ's most frequent
    answer over the first examples is the count of the file's own labels there."""
    import json

    from dlp.evaluation.answer_priors import references_for
    from dlp.evaluation.tasks.offline_data import ensure_task_files

    refs = references_for({t: tiny_result["tasks"][t]["examples"]["doc_hash"] for t in TASKS})
    assert all(refs[t] is not None for t in TASKS)
    lines = (ensure_task_files(tasks=["boolq"]) / "boolq.jsonl").read_text().splitlines()[:LIMIT]
    yes = sum(json.loads(line)["label"] for line in lines)
    assert refs["boolq"]["most_frequent"] == max(yes, LIMIT - yes) / LIMIT and refs["boolq"]["chance"] == 0.5
