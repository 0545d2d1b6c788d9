"""Load a causal LM by alias, Hugging Face id or local folder, with a dtype and a device."""
import logging
from pathlib import Path

import torch

from . import checkpoint, embedded
from .compute_dtype import check_compute_dtype, set_compute_dtype
from .errors import UserError, first_line
from .experts import expose_experts
from .hub import hub_reachable

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_source(path: str) -> tuple[str, dict]:
    """Map what the user named to something `from_pretrained` takes, plus provenance for the record."""
    if path in embedded.MODELS:
        return str(embedded.converted_folder(alias=path)), embedded.model_provenance(path)
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise UserError(f"model folder {local} has no config.json")
        return str(local), {"source": "local", "path": str(local.resolve())}
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise UserError(f"model path not found: {path}")
    # A hub id such as meta-llama/Llama-2-7b-hf. Offline, only the local Hugging Face cache can serve it: say
    # so now rather than after the hub client's retries.
    if not hub_reachable() and not in_hub_cache(path):
        raise UserError(f"model '{path}' is not a local folder, the Hugging Face hub is unreachable and it is not in "
                        "the local Hugging Face cache: pass a downloaded folder as model.path")
    return path, {"source": "huggingface-hub", "id": path}


def in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


# Where configs keep the longest sequence the model was built for (the first one present counts).
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def model_context(path: str) -> int | None:
    """The model's context length in tokens from its config alone (no weights loaded), or None when the config
    does not say. Refuses in one line a model that cannot be found or whose config cannot be read."""
    from transformers import AutoConfig

    source, _prov = resolve_source(path)
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as exc:
        raise UserError(f"could not read the config of model '{path}': {first_line(exc)}") from exc
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for field in CONTEXT_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_model(path: str, dtype: str = "float32", device: str = "auto", device_map=None,
               compute_dtype: str | None = None):
    """Returns (model, tokenizer, provenance). `device_map` (e.g. "auto") spreads a large model on GPUs;
    `compute_dtype` (float32 weights only) runs its forward passes under autocast (dlp.compute_dtype)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    check_compute_dtype(compute_dtype, dtype)
    source, prov = resolve_source(path)
    kwargs = {"dtype": DTYPES[dtype]}
    if device_map:
        kwargs["device_map"] = device_map
    fmt = checkpoint.sparse_format(source) if prov.get("source") == "local" else None
    try:
        if fmt:  # a pruned model saved by this suite: transformers alone would leave its matrices random
            prov["sparse_format"] = fmt
            model = checkpoint.load_sparse(source, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        if path not in embedded.MODELS:
            raise UserError(f"could not load model '{path}': {first_line(exc)}") from exc
        # A corrupt conversion cache (interrupted copy, disk trouble): rebuild it from the GGUF once.
        logging.getLogger(__name__).warning("embedded model cache unreadable (%s): converting again",
                                            first_line(exc))
        source = str(embedded.converted_folder(rebuild=True, alias=path))
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source)
    if not device_map:
        model.to(resolve_device(device))
    model.eval()
    model.config.use_cache = False
    expose_experts(model)  # fused MoE experts through per-expert Linears, for every run alike (dlp.experts)
    set_compute_dtype(model, compute_dtype)
    return model, tokenizer, prov
