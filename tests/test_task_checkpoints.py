"""A zero-shot evaluation cut off after some of its tasks resumes with them: kept only when scored on the same
weights with the same settings, and giving the numbers an uninterrupted evaluation gives."""
import pytest
import torch
from conftest import tiny_overrides
from tiny import char_tokenizer, tiny_model

from dlp.evaluation import task_checkpoints
from dlp.evaluation.zeroshot import evaluate_zeroshot

TASKS = ["arc_easy", "rte"]


class Crash(RuntimeError):
    pass


def counting_harness(monkeypatch, crash_on: int | None = None) -> list:
    """Patch the harness's simple_evaluate to count its calls (one per task scored) and to fail on call
    `crash_on`, as a kill would stop it."""
    import lm_eval.evaluator

    real, calls = lm_eval.evaluator.simple_evaluate, []

    def wrapped(*args, **kwargs):
        calls.append([t.config.task for t in kwargs["tasks"]])
        if len(calls) == crash_on:
            raise Crash("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval.evaluator, "simple_evaluate", wrapped)
    return calls


@pytest.fixture
def model():
    m = tiny_model("llama")
    m.config.max_position_embeddings = 4096
    return m


def score(model, checkpoints=None, limit=4):
    return evaluate_zeroshot(model, char_tokenizer(), TASKS, limit=limit, batch_size=16, source="local",
                             checkpoints=checkpoints)


def test_an_interrupted_evaluation_resumes_with_the_tasks_it_finished(model, tmp_path, monkeypatch):
    reference = score(model)
    assert reference["resumed_tasks"] == []
    calls = counting_harness(monkeypatch, crash_on=2)
    with pytest.raises(Crash):
        score(model, tmp_path)
    assert calls == [["arc_easy"], ["rte"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arc_easy.json"]  # the finished task only

    calls = counting_harness(monkeypatch)
    resumed = score(model, tmp_path)
    assert calls == [["rte"]] and resumed["resumed_tasks"] == ["arc_easy"]
    for t in TASKS:  # the same examples and numbers as the evaluation that ran through
        for key in ("acc", "acc_norm", "n", "examples", "selection", "score"):
            assert resumed["tasks"][t][key] == reference["tasks"][t][key], (t, key)
    assert list(resumed["tasks"]) == TASKS and resumed["mean"] == reference["mean"]
    assert resumed["seconds"] == pytest.approx(sum(resumed["tasks"][t]["seconds"] for t in TASKS))

    calls = counting_harness(monkeypatch)
    again = score(model, tmp_path)
    assert calls == [] and again["resumed_tasks"] == TASKS  # every task finished: nothing is scored again


def test_other_weights_other_settings_or_a_torn_file_score_again(model, tmp_path, monkeypatch):
    score(model, tmp_path)
    calls = counting_harness(monkeypatch)
    assert score(model, tmp_path, limit=3)["resumed_tasks"] == []  # other examples
    assert calls == [TASKS[:1], TASKS[1:]]

    score(model, tmp_path)  # the limit-4 results again
    (tmp_path / "rte.json").write_text('{"weights_sha256": ')  # cut off mid-write by another writer
    calls = counting_harness(monkeypatch)
    assert score(model, tmp_path)["resumed_tasks"] == ["arc_easy"] and calls == [["rte"]]

    with torch.no_grad():  # one weight of one block moved by its last bit
        w = model.model.layers[1].mlp.down_proj.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(float("inf")))
    calls = counting_harness(monkeypatch)
    assert score(model, tmp_path)["resumed_tasks"] == [] and len(calls) == 2


def test_a_retry_from_another_copy_of_the_task_files_keeps_the_tasks(model, tmp_path, monkeypatch):
    """The same data read from another folder (another checkout, another cache) is the same data: the tasks stay
    kept, and the record still names the file each was read from and its sha256."""
    import shutil

    from dlp.evaluation.tasks.offline_data import EXPECTED_SHA256, task_dir

    first = score(model, tmp_path / "checkpoints")
    other = tmp_path / "other-cache"
    (other / "tasks").mkdir(parents=True)
    for name in [f"{t}.jsonl" for t in TASKS] + ["manifest.json"]:
        shutil.copy(task_dir() / name, other / "tasks" / name)
    monkeypatch.setenv("DLP_CACHE", str(other))
    calls = counting_harness(monkeypatch)
    again = score(model, tmp_path / "checkpoints")
    assert calls == [] and again["resumed_tasks"] == TASKS
    fresh = score(model)  # scored from the other copy: it names that copy
    for t in TASKS:
        assert fresh["tasks"][t]["data"]["file"] == str(other / "tasks" / f"{t}.jsonl")
        assert fresh["tasks"][t]["data"]["sha256"] == EXPECTED_SHA256[t] == first["tasks"][t]["data"]["sha256"]
        assert fresh["tasks"][t]["acc"] == first["tasks"][t]["acc"]


def test_the_digest_covers_every_block_linear_bit_for_bit(model):
    before = task_checkpoints.weights_digest(model)
    assert task_checkpoints.weights_digest(model) == before
    with torch.no_grad():
        w = model.model.layers[0].self_attn.q_proj.weight
        w[3, 2] = torch.nextafter(w[3, 2], torch.tensor(float("-inf")))
    moved = task_checkpoints.weights_digest(model)
    assert moved != before
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)  # not a block's linear: pruning never changes it
    assert task_checkpoints.weights_digest(model) == moved


def test_a_run_killed_in_its_zero_shot_tasks_resumes_them_and_cleans_up(workspace, monkeypatch):
    """Through the pipeline: the retry prunes again (the same masks), keeps the task the killed attempt finished,
    and once its record is written no checkpoint is left beside it."""
    from experiments import pipeline, records
    from experiments.config import compose_config

    cfg = compose_config(tiny_overrides(workspace, "checkpoint_runs") + [
        "criterion=wanda", "sparsity=0.5", "zeroshot.enabled=true", f"zeroshot.tasks=[{','.join(TASKS)}]",
        "zeroshot.limit=4", "zeroshot.source=local", "zeroshot.batch_size=16"])
    path = records.record_path(cfg)
    folder = records.checkpoint_folder(path)
    calls = counting_harness(monkeypatch, crash_on=2)
    with pytest.raises(Crash):
        pipeline.run(cfg)
    assert records.read_record(path)["status"] == "failed" and (folder / "arc_easy.json").exists()

    calls = counting_harness(monkeypatch)
    _, record, reused = pipeline.run(cfg)
    zs = record["metrics"]["zeroshot"]
    assert not reused and calls == [["rte"]] and zs["resumed_tasks"] == ["arc_easy"]
    assert not folder.exists()
    assert record["timings_s"]["zeroshot"] >= zs["tasks"]["arc_easy"]["seconds"]  # the kept task's cost counted

    forced = counting_harness(monkeypatch)
    _, again, _ = pipeline.run({**cfg, "force": True})
    assert forced == [["arc_easy"], ["rte"]] and again["metrics"]["zeroshot"]["resumed_tasks"] == []
    assert again["metrics"]["zeroshot"]["tasks"] == {
        t: {**zs["tasks"][t], "seconds": again["metrics"]["zeroshot"]["tasks"][t]["seconds"]} for t in TASKS}
