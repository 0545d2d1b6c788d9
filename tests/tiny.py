"""Tiny random models of each family, built from configs (no download), and tiny token batches."""
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4)
ATTN = dict(COMMON, num_key_value_heads=2)
WINDOW = 8  # every sliding window below is shorter than the test sequences (32 tokens)
# Layer schedules that mix attention kinds, so each block gets other arguments (mask, rotary tables).
MIXED = ["sliding_attention", "full_attention", "sliding_attention"]

FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**ATTN, intermediate_size=128)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**ATTN, intermediate_size=128, sliding_window=16)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**ATTN, intermediate_size=128, use_sliding_window=True,
                                                  sliding_window=WINDOW, max_window_layers=1)),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**ATTN, intermediate_size=128, head_dim=16, use_sliding_window=True,
                                                  sliding_window=WINDOW, max_window_layers=1)),
    "opt": lambda: OPTForCausalLM(OPTConfig(**COMMON, ffn_dim=128, word_embed_proj_dim=64,
                                            max_position_embeddings=128)),
    "gemma2": lambda: Gemma2ForCausalLM(Gemma2Config(**ATTN, intermediate_size=128, head_dim=16, sliding_window=WINDOW)),
    "gemma3": lambda: Gemma3ForCausalLM(Gemma3TextConfig(**ATTN, intermediate_size=128, head_dim=16,
                                                         sliding_window=WINDOW, layer_types=MIXED)),
    "phi3": lambda: Phi3ForCausalLM(Phi3Config(**ATTN, intermediate_size=128, pad_token_id=0, bos_token_id=1,
                                               eos_token_id=2)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**COMMON, intermediate_size=128)),
    "mixtral": lambda: MixtralForCausalLM(MixtralConfig(**ATTN, intermediate_size=64, num_local_experts=4,
                                                        num_experts_per_tok=2, sliding_window=WINDOW)),
    "qwen2_moe": lambda: Qwen2MoeForCausalLM(Qwen2MoeConfig(**ATTN, intermediate_size=128, moe_intermediate_size=32,
                                                            shared_expert_intermediate_size=64, num_experts=4,
                                                            num_experts_per_tok=2)),
}
MOE = ("mixtral", "qwen2_moe")
# Families whose every Linear sees every token. A routed expert's input is gathered from the batch, so its sums
# (and SparseGPT's updates) depend on the batch's composition: MoE results are reproducible for a given
# batch size, not equal across batch sizes.
DENSE = tuple(f for f in FAMILIES if f not in MOE)
# Families whose blocks the model passes different arguments (a mask or rotary tables per layer type).
PER_LAYER_ARGUMENTS = ("qwen2", "qwen3", "gemma2", "gemma3")


def gpt2_model():
    """GPT-2 keeps its weights in Conv1D modules, not nn.Linear: the suite refuses it in one line."""
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=128,
                                      bos_token_id=0, eos_token_id=0)).eval()


def tiny_model(family: str = "llama", seed: int = 0):
    torch.manual_seed(seed)
    model = FAMILIES[family]().eval()
    model.config.use_cache = False
    return model


def tiny_ids(n: int = 8, seqlen: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, seqlen), generator=g)


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
