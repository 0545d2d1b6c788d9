"""Zero-shot evaluation through lm-evaluation-harness on the local task files, with a tiny random model."""
import pytest
from tiny import char_tokenizer, tiny_model

from dlp.evaluation.zeroshot import TASKS, evaluate_zeroshot

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
    assert tiny_result["mean_metric"] == "acc" and tiny_result["limit"] == LIMIT
    assert tiny_result["add_bos_token"] is False and tiny_result["harness_version"] == "0.4.13"
    for task in ("hellaswag", "arc_easy", "arc_challenge", "openbookqa"):
        assert tiny_result["tasks"][task]["acc_norm"] is not None
        assert tiny_result["tasks"][task]["acc_stderr"] > 0
    assert tiny_result["tasks"]["arc_easy"]["data"]["stands_in_for"] == ["allenai/ai2_arc", "ARC-Easy", "test"]
    assert all(tiny_result["tasks"][t]["version"] is not None for t in TASKS)


def test_unknown_task():
    from dlp.errors import UserError
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
