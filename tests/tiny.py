"""Tiny random models of each family, built from configs (no download), and tiny token batches."""
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, OPTConfig,
                          OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM)

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4)

FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**COMMON, intermediate_size=128, num_key_value_heads=2)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**COMMON, intermediate_size=128, num_key_value_heads=2,
                                                        sliding_window=16)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**COMMON, intermediate_size=128, num_key_value_heads=2)),
    "opt": lambda: OPTForCausalLM(OPTConfig(**COMMON, ffn_dim=128, word_embed_proj_dim=64,
                                            max_position_embeddings=128)),
}


def tiny_model(family: str = "llama", seed: int = 0):
    torch.manual_seed(seed)
    model = FAMILIES[family]().eval()
    model.config.use_cache = False
    return model


def tiny_ids(n: int = 8, seqlen: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, seqlen), generator=g)


def last_block_output(model, ids, compute_dtype=None) -> torch.Tensor:
    """The last decoder block's output (as float32) in the model's own forward pass, under autocast to
    `compute_dtype` when given (dlp.compute_dtype)."""
    from dlp.compute_dtype import computing
    from dlp.structure import find_blocks
    seen = {}
    block = find_blocks(model).blocks[-1]
    handle = block.register_forward_hook(lambda _m, _i, out: seen.setdefault("y", out[0] if isinstance(out, tuple) else out))
    with torch.no_grad(), computing(compute_dtype, next(model.parameters()).device):
        model(input_ids=ids, use_cache=False)
    handle.remove()
    return seen["y"].float()


def char_tokenizer():
    """A character-level fast tokenizer with VOCAB entries, so tiny models can read real text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["<unk>"] + [chr(c) for c in range(32, 32 + VOCAB - 3)] + ["\n", "<eos>"]
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def save_tiny(folder, family: str = "llama"):
    """A tiny model + tokenizer saved like any Hugging Face checkpoint folder."""
    tiny_model(family).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


TEXT = ("The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun. "
        "Pruning removes weights that matter least; calibration data tells which ones those are. ")
