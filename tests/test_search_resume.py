"""A search cut off mid-way goes on where it stopped and ends where an uninterrupted one ends: ATP's finished trials
and EvoPress's finished generations are kept in the run's checkpoint folder, and never taken up with other
settings, on other inputs, or from a torn file."""
import json

import pytest
from conftest import tiny_overrides
from tiny import tiny_ids, tiny_model

from baselines.allocations.evopress import Fitness
from dlp.methods.search import Trials
from dlp.registry import make_allocator, make_criterion

STEP = 0.05  # six trials at 70% over the tiny model's three blocks: beta 0.05 ... 0.3


class Crash(RuntimeError):
    pass


def counting(monkeypatch, cls, name: str) -> dict:
    """Count calls of cls.name; raise Crash on call `crash_on` (as a kill stops a run there), when set."""
    real, state = getattr(cls, name), {"calls": 0, "crash_on": None}

    def wrapped(self, *args, **kwargs):
        state["calls"] += 1
        if state["calls"] == state["crash_on"]:
            raise Crash("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapped)
    return state


def trials(model, folder, calib=None):
    return Trials(model, tiny_ids(4, 32) if calib is None else calib, make_criterion("wanda"), None, 4,
                  tiny_ids(2, 32, seed=2), {"name": "held-out test windows"}, checkpoints=folder)


def atp(model, folder, step=STEP, calib=None):
    return make_allocator("atp", step=step).allocate(model, tiny_ids(4, 32), 0.7, 4, progress=False,
                                                     trials=trials(model, folder, calib))


def test_atp_resumes_the_trials_an_attempt_finished(monkeypatch, tmp_path, capsys):
    model = tiny_model("llama")
    whole = atp(model, None)
    assert whole.info["search"]["trials"] == 6 and "resumed_trials" not in whole.info["search"]
    state = counting(monkeypatch, Trials, "perplexity")
    state["crash_on"] = 3
    with pytest.raises(Crash):
        atp(model, tmp_path)
    kept = json.loads((tmp_path / "atp-search.json").read_text())
    assert kept["state"]["tried"] == whole.info["search"]["tried"][:2]  # the two finished trials, their numbers
    state.update(calls=0, crash_on=None)
    capsys.readouterr()
    again = atp(model, tmp_path)
    assert state["calls"] == 4  # only the trials not finished
    assert capsys.readouterr().err == (f"atp: 2 of 6 trials kept from an earlier attempt "
                                       f"({tmp_path / 'atp-search.json'})\n")
    search = again.info["search"]
    assert search["tried"] == whole.info["search"]["tried"] and again.sparsities == whole.sparsities
    assert search["resumed_trials"] == 2 and search["trials"] == 6
    assert search["seconds"] >= kept["state"]["seconds"]  # the kept trials' time counted


def test_atp_starts_again_on_other_settings_other_inputs_or_a_torn_file(monkeypatch, tmp_path):
    model = tiny_model("llama")
    state = counting(monkeypatch, Trials, "perplexity")
    state["crash_on"] = 3
    with pytest.raises(Crash):
        atp(model, tmp_path)
    state.update(calls=0, crash_on=None)
    other_grid = atp(model, tmp_path, step=0.1)  # 0.1, 0.2, 0.3: another grid, other settings
    assert state["calls"] == 3 and "resumed_trials" not in other_grid.info["search"]
    state.update(calls=0, crash_on=2)
    with pytest.raises(Crash):
        atp(model, tmp_path)  # one trial kept, for the 0.05 grid
    state.update(calls=0, crash_on=None)
    other_calibration = atp(model, tmp_path, calib=tiny_ids(4, 32, seed=3))
    assert state["calls"] == 6 and "resumed_trials" not in other_calibration.info["search"]
    progress = tmp_path / "atp-search.json"
    kept = json.loads(progress.read_text())
    progress.write_text(json.dumps(kept)[:40])  # torn mid-write by something other than write_json_atomic
    state.update(calls=0)
    assert "resumed_trials" not in atp(model, tmp_path, calib=tiny_ids(4, 32, seed=3)).info["search"]
    assert state["calls"] == 6
    progress.write_text(json.dumps(kept))
    state.update(calls=0)
    other_weights = tiny_model("llama", seed=5)
    assert "resumed_trials" not in atp(other_weights, tmp_path, calib=tiny_ids(4, 32, seed=3)).info["search"]
    assert state["calls"] == 6


BUDGET = {"t": {"levels": 2, "generations": 5, "offspring": 4, "survivors": [2, 1], "tokens": [32, 64]}}


def evopress(model, folder, seed=0):
    return make_allocator("evopress", budget="t", budgets=BUDGET, seed=seed).allocate(
        model, tiny_ids(4, 32), 0.6, 4, progress=False, trials=trials(model, folder))


def test_evopress_resumes_after_its_last_finished_generation(monkeypatch, tmp_path, capsys):
    """The same random state goes on: the levels and every generation's fitness equal an uninterrupted search's."""
    model = tiny_model("llama")
    whole = evopress(model, None)
    state = counting(monkeypatch, Fitness, "__call__")
    # A generation scores at most 4 offspring, then at most 3 in its last stage: call 10 comes after the first.
    state["crash_on"] = 10
    with pytest.raises(Crash):
        evopress(model, tmp_path)
    kept = json.loads((tmp_path / "evopress-search.json").read_text())["state"]
    done = len(kept["history"])
    assert 1 <= done < 5
    assert [h["fitness"] for h in kept["history"]] == whole.info["search"]["fitness"][:done]
    state.update(calls=0, crash_on=None)
    capsys.readouterr()
    again = evopress(model, tmp_path)
    assert capsys.readouterr().err == (f"evopress: {done} of 5 generations kept from an earlier attempt "
                                       f"({tmp_path / 'evopress-search.json'})\n")
    calls_per_search = state["calls"]
    search = again.info["search"]
    assert search["resumed_generations"] == done and search["fitness"] == whole.info["search"]["fitness"]
    assert again.info["levels"] == whole.info["levels"] and again.sparsities == whole.sparsities
    assert search["forward_tokens"] >= whole.info["search"]["forward_tokens"]  # every attempt's forwards counted
    state.update(calls=0)
    reseeded = evopress(model, tmp_path, seed=1)  # another seed: other settings, a search from the start
    assert "resumed_generations" not in reseeded.info["search"] and state["calls"] > calls_per_search


def test_a_run_killed_mid_search_resumes_and_cleans_up(workspace, monkeypatch):
    """Through the pipeline: the failed attempt leaves its generations in the run's checkpoint folder; the retry
    takes them up, gives the record an uninterrupted (forced) run gives, and leaves no checkpoint behind."""
    from experiments import pipeline, records
    from experiments.config import compose_config

    cfg = compose_config(tiny_overrides(workspace, "resume_runs") + [
        "criterion=wanda", "sparsity=0.6", "allocation=evopress", "allocation.generations=4",
        "allocation.offspring=6", "allocation.survivors=[2,1]", "allocation.tokens=[64,128]", "allocation.levels=3"])
    path = records.record_path(cfg)
    folder = records.checkpoint_folder(path)
    state = counting(monkeypatch, Fitness, "__call__")
    state["crash_on"] = 14  # a generation scores at most 6 + 3 candidates: after the first
    with pytest.raises(Crash):
        pipeline.run(cfg)
    assert records.read_record(path)["status"] == "failed" and (folder / "evopress-search.json").exists()
    state.update(calls=0, crash_on=None)
    _, record, reused = pipeline.run(cfg)
    assert not reused and record["allocation"]["search"]["resumed_generations"] >= 1 and not folder.exists()
    _, forced, _ = pipeline.run({**cfg, "force": True})
    assert "resumed_generations" not in forced["allocation"]["search"]
    assert forced["allocation"]["levels"] == record["allocation"]["levels"]
    assert forced["allocation"]["search"]["fitness"] == record["allocation"]["search"]["fitness"]
    assert forced["metrics"]["ppl"] == record["metrics"]["ppl"]
