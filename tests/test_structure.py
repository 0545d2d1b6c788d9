import pytest
import torch
import torch.nn as nn

from baselines.criteria import make_criterion
from dlp.errors import UserError
from dlp.prune import prune_model
from dlp.structure import find_blocks, find_linears
from tiny import FAMILIES, tiny_ids, tiny_model

EXPECTED_PATHS = {"llama": "model.layers", "mistral": "model.layers", "qwen2": "model.layers",
                  "opt": "model.decoder.layers"}


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_found_by_structure(family):
    model = tiny_model(family)
    layout = find_blocks(model)
    assert layout.path == EXPECTED_PATHS[family]
    assert len(layout) == model.config.num_hidden_layers
    names = set(find_linears(layout.blocks[0]))
    assert len(names) in (6, 7)  # q,k,v,o + 3 MLP (LLaMA-like) or 2 MLP (OPT)
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
