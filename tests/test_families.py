"""Every supported family is pruned on its own forward pass: the walk's block outputs equal the model's, the
self-check passes (and fails when a block's arguments are corrupted), criteria give their exact counts, and
perplexity matches a plain loop. Routed experts, routers and coverage are checked on the MoE families."""
import copy
import math

import pytest
import torch
from tiny import FAMILIES, MOE, PER_LAYER_ARGUMENTS, TEXT, WINDOW, char_tokenizer, gpt2_model, tiny_ids, tiny_model

from dlp.data.corpora import Corpus
from dlp.errors import UserError
from dlp.evaluation.perplexity import perplexity
from dlp.registry import make_criterion
from dlp.walk import selfcheck
from dlp.walk.coverage import coverage, decoder_sparsity
from dlp.walk.experts import expose_experts
from dlp.walk.prune import prune_model
from dlp.walk.selfcheck import check_walk, model_block_outputs, walk_block_outputs
from dlp.walk.structure import find_blocks, find_linears

SEQLEN = 32  # longer than every sliding window in tiny.FAMILIES
REAL_CAPTURE = selfcheck.capture_inputs


@pytest.mark.parametrize("family", FAMILIES)
def test_walk_gives_every_blocks_output_of_the_models_own_forward(family):
    model, ids = tiny_model(family), tiny_ids(n=2, seqlen=SEQLEN)
    assert SEQLEN > WINDOW
    walked, reference = walk_block_outputs(model, ids), model_block_outputs(model, ids)
    assert len(walked) == len(reference) == 3
    for a, b in zip(walked, reference):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    report = check_walk(model, ids[:1])
    assert report["passed"] and report["max_difference"] <= report["tolerance"] == 1e-4


def first_blocks_arguments(*args, **kwargs):
    """The capture as a first-block capture would have it: block 0's arguments replayed to every block."""
    cap = REAL_CAPTURE(*args, **kwargs)
    cap.calls = [[calls[0]] * len(calls) for calls in cap.calls]
    return cap


@pytest.mark.parametrize("family", PER_LAYER_ARGUMENTS)
def test_blocks_get_arguments_of_their_own(family, monkeypatch):
    """The families whose mask (or rotary tables) depend on the layer type: replaying block 0's arguments to
    every block (what a first-block capture does) gives other outputs, and the self-check says so."""
    model, ids = tiny_model(family), tiny_ids(n=1, seqlen=SEQLEN)
    monkeypatch.setattr(selfcheck, "capture_inputs", first_blocks_arguments)
    with pytest.raises(UserError, match=rf"self-check failed: block [12] of {type(model).__name__} differs"):
        check_walk(model, ids)


def all_attending(mask, x):
    """A mask that lets every position see every other (what a broken capture could hand a block)."""
    if mask is None:
        return torch.zeros(x.shape[0], 1, x.shape[1], x.shape[1], dtype=x.dtype)
    return torch.ones_like(mask) if mask.dtype == torch.bool else torch.zeros_like(mask)


@pytest.mark.parametrize("family", FAMILIES)
def test_self_check_fails_when_a_blocks_arguments_are_corrupted(family, monkeypatch):
    model, ids = tiny_model(family), tiny_ids(n=1, seqlen=SEQLEN)
    def corrupted(*args, **kwargs):
        cap = REAL_CAPTURE(*args, **kwargs)
        call = cap.calls[0][1]
        call.kwargs = {**call.kwargs, "attention_mask": all_attending(call.kwargs.get("attention_mask"), cap.inputs)}
        return cap

    monkeypatch.setattr(selfcheck, "capture_inputs", corrupted)
    with pytest.raises(UserError, match=rf"^self-check failed: block 1 of {type(model).__name__} differs from the "
                                        r"model's own forward by [0-9.e-]+ of its largest value \(tolerance 0.0001\)"):
        check_walk(model, ids)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_criteria_give_their_exact_counts(family, criterion):
    """Wanda: floor(C_in·s) in every row. SparseGPT: floor(rows·cols·s) per 128-column block (the tiny inputs
    are narrower than 128, so per matrix), every weight finite after its updates."""
    model, targets = tiny_model(family), [0.5, 0.25, 0.75]
    prune_model(model, tiny_ids(n=4, seqlen=SEQLEN), make_criterion(criterion), targets, batch_size=2,
                progress=False)
    for block, s in zip(find_blocks(model).blocks, targets):
        for name, layer in find_linears(block).items():
            zeros = layer.weight == 0
            if criterion == "wanda":
                assert (zeros.sum(1) == int(layer.in_features * s)).all(), name
            else:
                assert torch.isfinite(layer.weight).all() and int(zeros.sum()) == int(zeros.numel() * s), name


def hand_ppl(model, ids, seqlen, n):
    total = 0.0
    for w in range(n):
        window = ids[w * seqlen:(w + 1) * seqlen].unsqueeze(0)
        with torch.no_grad():
            logits = model(input_ids=window, use_cache=False).logits[0].double()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        total += -logp.gather(1, window[0, 1:].unsqueeze(1)).mean().item()
    return math.exp(total / n)


@pytest.mark.parametrize("family", FAMILIES)
def test_perplexity_matches_a_plain_loop(family, caplog):
    model, tok = tiny_model(family), char_tokenizer()
    with torch.no_grad():  # logits large enough that Gemma's final soft cap changes them
        model.get_output_embeddings().weight.mul_(30)
    corpus = Corpus("t", [TEXT, TEXT])
    ids = tok(corpus.text(), return_tensors="pt").input_ids[0]
    got = perplexity(model, corpus, tok, SEQLEN, max_windows=5, batch_size=2, progress=False)
    assert got["ppl"] == pytest.approx(hand_ppl(model, ids, SEQLEN, 5), rel=1e-5)
    assert "does not reproduce" not in caplog.text  # the chunked output layer itself was right


def test_a_logit_transform_the_chunked_path_does_not_know_falls_back_to_the_models_logits(caplog):
    """A family that rescales its logits after the output layer: the first window's check catches it, one
    warning line says so, and perplexity is the model's own."""
    model, tok = tiny_model("llama"), char_tokenizer()
    forward = model.forward

    def scaled(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = out.logits * 7.0
        return out

    model.forward = scaled
    corpus = Corpus("t", [TEXT, TEXT])
    ids = tok(corpus.text(), return_tensors="pt").input_ids[0]
    got = perplexity(model, corpus, tok, SEQLEN, max_windows=4, batch_size=2, progress=False)
    assert got["ppl"] == pytest.approx(hand_ppl(model, ids, SEQLEN, 4), rel=1e-5)
    assert "does not reproduce LlamaForCausalLM's logits" in caplog.text


@pytest.mark.parametrize("family", MOE)
def test_exposing_experts_leaves_the_models_outputs_unchanged(family):
    """In float32 transformers' default experts kernel and the eager routing loop agree to the bit."""
    model, ids = tiny_model(family), tiny_ids(n=2, seqlen=SEQLEN)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        expose_experts(model)
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    assert not any("_dlp" in k for k in model.state_dict())  # the checkpoint layout is the model's own


@pytest.mark.parametrize("family", MOE)
def test_pruning_writes_into_the_fused_expert_tensors(family):
    model = tiny_model(family)
    prune_model(model, tiny_ids(n=4, seqlen=SEQLEN), make_criterion("wanda"), [0.5] * 3, progress=False)
    for block in find_blocks(model).blocks:
        experts = block.mlp.experts
        for fused in (experts.gate_up_proj, experts.down_proj):
            # Wanda per row: every row of every expert loses exactly half its inputs.
            assert ((fused == 0).sum(-1) == fused.shape[-1] // 2).all()


def test_an_expert_no_calibration_token_reached_is_pruned_by_magnitude():
    model = tiny_model("mixtral")
    dense = copy.deepcopy(model)

    def never_expert_3(_module, _args, out):
        logits, scores, indices = out
        return logits, scores, indices.clamp(max=2)

    for block in find_blocks(model).blocks:
        block.mlp.gate.register_forward_hook(never_expert_3)
    result = prune_model(model, tiny_ids(n=4, seqlen=SEQLEN), make_criterion("wanda"), [0.5] * 3, progress=False)
    assert result.uncalibrated == [f"{i}.mlp.experts.{t}.3" for i in range(3) for t in ("gate_up_proj", "down_proj")]
    magnitude = make_criterion("magnitude")
    for block, before in zip(find_blocks(model).blocks, find_blocks(dense).blocks):
        for t in ("gate_up_proj", "down_proj"):
            w = getattr(before.mlp.experts, t)[3].detach().clone()
            assert torch.equal(getattr(block.mlp.experts, t)[3], magnitude.prune(w, None, 0.5, None))
            routed = getattr(block.mlp.experts, t)[0]
            assert ((routed == 0).sum(-1) == routed.shape[-1] // 2).all()  # the others by Wanda, per row


@pytest.mark.parametrize("family", FAMILIES)
def test_coverage_names_what_is_pruned_and_what_is_not(family):
    model = tiny_model(family)
    cov = coverage(model)
    block = find_blocks(model).blocks[0]
    cover = cov["per_block"][0]
    assert set(cover["pruned"]) | set(cover["not_pruned"]) == {n for n, _ in block.named_parameters()}
    assert not set(cover["pruned"]) & set(cover["not_pruned"])
    total = sum(p.numel() for p in find_blocks(model).blocks.parameters())
    assert cov["decoder_parameters"] == total and 0.9 < cov["pruned_share"] < 1 and "warning" not in cov
    assert all(kind in ("norm", "bias", "router") for kind in cover["not_pruned"].values())
    if family in MOE:
        assert cover["not_pruned"]["mlp.gate.weight"] == "router"
        assert {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"} <= set(cover["pruned"])


def test_coverage_warns_when_the_pruned_set_is_small(caplog):
    """A model whose Linears hold under 90% of the decoder: one warning line, kept in the record."""
    import torch.nn as nn

    model = tiny_model("llama")
    for block in find_blocks(model).blocks:
        block.extra = nn.Parameter(torch.zeros(64, 2000))  # a matrix outside any Linear
    cov = coverage(model)
    assert cov["pruned_share"] < 0.9
    assert "hold" in cov["warning"] and "Parameter" not in cov["warning"]
    assert cov["per_block"][0]["not_pruned"]["extra"] == "LlamaDecoderLayer (2-D, not nn.Linear)"
    assert caplog.text.count("under 90%") == 1


def test_decoder_sparsity_counts_every_decoder_parameter():
    model = tiny_model("opt")
    prune_model(model, None, make_criterion("magnitude"), [0.5] * 3, progress=False)
    blocks = find_blocks(model).blocks
    zeros = sum(int((p == 0).sum()) for p in blocks.parameters())
    assert decoder_sparsity(model) == zeros / sum(p.numel() for p in blocks.parameters())


def test_gpt2_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"^GPT2LMHeadModel is not supported: its decoder blocks keep their weights "
                                        r"in Conv1D modules, not nn.Linear"):
        find_blocks(gpt2_model())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny Gemma-3 (mixed layer types) and Mixtral checkpoints saved as Hugging Face folders, plus text."""
    from tiny import save_tiny
    tmp = tmp_path_factory.mktemp("families")
    for family in ("gemma3", "mixtral"):
        save_tiny(tmp / family, family)
    (tmp / "docs.txt").write_text("\n".join(TEXT * (i + 1) for i in range(6)))
    return tmp


def run_overrides(saved, family, *extra):
    return [f"model.path={saved / family}", f"model.name=tiny-{family}", "data=file", f"data.path={saved / 'docs.txt'}",
            "data.nsamples=4", f"data.seqlen={SEQLEN}", "data.batch_size=2", "eval=file",
            f"eval.path={saved / 'docs.txt'}", f"eval.seqlen={SEQLEN}", "eval.max_windows=3",
            f"results_dir={saved / 'runs'}", "progress=false", "wandb.mode=disabled", "criterion=wanda",
            "sparsity=0.5", *extra]


def test_a_run_records_its_self_check_and_coverage(saved):
    from experiments import pipeline
    from experiments.config import compose_config
    _, record, _ = pipeline.run(compose_config(run_overrides(saved, "mixtral", "allocation=dlp")))
    check = record["selfcheck"]
    assert check["passed"] and check["sequences"] == 1 and check["tokens"] == SEQLEN
    assert check["max_difference"] <= check["tolerance"] == 1e-4
    cov = record["coverage"]
    assert 0.9 < cov["pruned_share"] < 1 and cov["no_calibration_input"] == []
    assert cov["per_block"][0]["not_pruned"]["mlp.gate.weight"] == "router"
    s = record["sparsity"]
    assert abs(s["actual"] - 0.5) < 0.02  # 64-wide tiny rows round each block's count down
    assert s["actual_all_decoder"] == pytest.approx(s["actual"] * cov["pruned_share"], abs=0.01)
    assert record["timings_s"]["selfcheck"] >= 0 and record["selfcheck"]["seconds"] >= 0


def test_a_failed_self_check_fails_the_run_in_one_line(saved, monkeypatch):
    """The walk disagrees with the model (here: block 0's arguments replayed to every Gemma-3 block): the run
    stops before pruning, and its record is `failed` with the self-check's line."""
    import json

    from experiments import pipeline, records
    from experiments.config import compose_config
    monkeypatch.setattr(selfcheck, "capture_inputs", first_blocks_arguments)
    cfg = compose_config(run_overrides(saved, "gemma3"))
    with pytest.raises(UserError, match="self-check failed: block 1 of Gemma3ForCausalLM differs"):
        pipeline.run(cfg)
    failed = json.loads(records.record_path(cfg).read_text())
    assert failed["status"] == "failed" and failed["error"].startswith("CheckFailed: self-check failed: block 1")
    # Switched off explicitly, the same (broken) run goes through and says it was not checked.
    off = compose_config(run_overrides(saved, "gemma3", "selfcheck=false"))
    assert records.run_key(off) == records.run_key(cfg)  # the check stops runs, never changes their numbers
    _, record, _ = pipeline.run(off)
    assert record["status"] == "ok" and record["selfcheck"] == {"skipped": True}
    assert record["config"]["selfcheck"] is False


def test_expert_views_follow_the_model_when_it_moves():
    """`model.to(dtype)` after the experts were exposed gives the fused tensors new storage: the views follow,
    so the model's outputs stay its own and pruning still writes into the model's parameters."""
    model, ids = tiny_model("mixtral"), tiny_ids(n=2, seqlen=SEQLEN)
    expose_experts(model)
    model.to(torch.bfloat16)
    reference = copy.deepcopy(model)
    for block in find_blocks(reference).blocks:  # the copy's views are built afresh on the moved tensors
        block.mlp.experts.__dict__.pop("_dlp_expert_linears", None)
        find_linears(block)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)
    prune_model(model, None, make_criterion("magnitude"), [0.5] * 3, progress=False)
    assert int((find_blocks(model).blocks[0].mlp.experts.down_proj == 0).sum()) == \
        find_blocks(model).blocks[0].mlp.experts.down_proj.numel() // 2
