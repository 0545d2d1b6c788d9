"""Load a causal LM by alias, Hugging Face id or local folder, with a dtype and a device."""
import logging
from pathlib import Path

import torch

from . import checkpoint, embedded
from .compute_dtype import check_compute_dtype, set_compute_dtype
from .errors import UserError
from .experts import expose_experts

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
    return path, {"source": "huggingface-hub", "id": path}  # a hub id such as meta-llama/Llama-2-7b-hf


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
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise UserError(f"could not load model '{path}': {first}") from exc
        # A corrupt conversion cache (interrupted copy, disk trouble): rebuild it from the GGUF once.
        logging.getLogger(__name__).warning("embedded model cache unreadable (%s): converting again", exc)
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
