import pytest
import torch
import torch.nn as nn
from tiny import FAMILIES, tiny_ids, tiny_model

from dlp.errors import UserError
from dlp.registry import make_criterion
from dlp.walk.prune import prune_model
from dlp.walk.structure import find_blocks, find_linears

LLAMA_LIKE = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
              "mlp.up_proj", "mlp.down_proj"}
ATTENTION = {n for n in LLAMA_LIKE if n.startswith("self_attn")}


def experts(n, inner="gate_up_proj"):
    return {f"mlp.experts.{t}.{e}" for t in (inner, "down_proj") for e in range(n)}


# The prunable matrices of one block, by family (routers left out: dlp.walk.structure.router_linears).
EXPECTED = {
    "llama": ("model.layers", LLAMA_LIKE), "mistral": ("model.layers", LLAMA_LIKE),
    "qwen2": ("model.layers", LLAMA_LIKE), "qwen3": ("model.layers", LLAMA_LIKE),
    "gemma2": ("model.layers", LLAMA_LIKE), "gemma3": ("model.layers", LLAMA_LIKE),
    "opt": ("model.decoder.layers", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                     "self_attn.out_proj", "fc1", "fc2"}),
    "phi3": ("model.layers", {"self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"}),
    "gpt_neox": ("gpt_neox.layers", {"attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h",
                                     "mlp.dense_4h_to_h"}),
    "mixtral": ("model.layers", ATTENTION | experts(4)),
    "qwen2_moe": ("model.layers", ATTENTION | experts(4) | {"mlp.shared_expert.gate_proj",
                                                           "mlp.shared_expert.up_proj",
                                                           "mlp.shared_expert.down_proj"}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_found_by_structure(family):
    model = tiny_model(family)
    layout = find_blocks(model)
    path, names = EXPECTED[family]
    assert layout.path == path
    assert len(layout) == model.config.num_hidden_layers
    assert set(find_linears(layout.blocks[0])) == names
    head = model.get_output_embeddings()
    assert all(layer is not head for block in layout.blocks for layer in find_linears(block).values())


def test_gemma_shape_found():
    from transformers import Gemma2Config, Gemma2ForCausalLM
    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    assert find_blocks(model).path == "model.layers"


def test_model_without_blocks_is_refused():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten())
    with pytest.raises(UserError, match="no decoder blocks"):
        find_blocks(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_and_head_untouched(family):
    model = tiny_model(family)
    emb = model.get_input_embeddings().weight.clone()
    head = model.get_output_embeddings().weight.clone()
    prune_model(model, tiny_ids(), make_criterion("wanda"), [0.5] * 3, progress=False)
    assert torch.equal(model.get_input_embeddings().weight, emb)
    assert torch.equal(model.get_output_embeddings().weight, head)
