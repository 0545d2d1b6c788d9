"""Sparse checkpoints: a pruned model saved as a Hugging Face folder in compressed-tensors' sparse layouts.

Each pruned Linear is stored as its kept values, a bitmask packed by `compressed_tensors.utils.pack_bitmasks`
and its shape (`sparse-bitmask`, any pattern, plus per-row offsets), or as exactly half its values per row
(`sparse-24-bitmask`, 2:4 only); `config.json` carries the `quantization_config` that names the layout, as
llm-compressor wrote it. Everything else (embeddings, norms, the LM head, fused expert tensors) stays dense.

Why this module writes and reads the layout itself: compressed-tensors 0.20 no longer registers the sparse
compressors (only their config classes), and transformers 5 has no sparse decompression: `from_pretrained` on
such a folder random-initialises every compressed Linear without raising. `load_sparse` (and `dlp.models`,
which uses it for any folder in this layout) builds the model from its config and decompresses every matrix.
"""
import json
from pathlib import Path

import torch

from .errors import UserError
from .io import sha256_bytes
from .structure import find_blocks, find_linears

SPARSE_BITMASK = "sparse-bitmask"
SPARSE_24 = "sparse-24-bitmask"
FORMATS = (SPARSE_BITMASK, SPARSE_24)
WEIGHTS = "model.safetensors"


def choose_format(pattern: str | None, fmt: str = "auto") -> str:
    """The layout for a pruning pattern: 2:4 → sparse-24-bitmask, anything else → sparse-bitmask (which holds
    any mask). An explicit choice is checked against the pattern."""
    two_four = str(pattern) == "2:4"
    if fmt == "auto":
        return SPARSE_24 if two_four else SPARSE_BITMASK
    if fmt not in FORMATS:
        raise UserError(f"unknown sparse format '{fmt}'; choose one of auto, {', '.join(FORMATS)}")
    if fmt == SPARSE_24 and not two_four:
        raise UserError(f"format {SPARSE_24} holds 2:4 sparsity only; this model was pruned with pattern "
                        f"'{pattern or 'unstructured'}' (use format=auto or {SPARSE_BITMASK})")
    return fmt


def pruned_weights(model) -> list[str]:
    """State-dict keys of the tensors pruning changed: the decoder blocks' Linear weights and their fused expert
    tensors (dlp.experts: each expert's Linear is a view into one of those, so the fused tensor is saved)."""
    from .experts import FUSED_NAMES, is_fused_experts

    layout = find_blocks(model)
    keys = []
    for i, block in enumerate(layout.blocks):
        prefix = f"{layout.path}.{i}."
        own = dict(block.named_parameters())
        keys += [f"{prefix}{name}.weight" for name in find_linears(block) if f"{name}.weight" in own]
        for path, module in block.named_modules():
            if is_fused_experts(module):
                keys += [f"{prefix}{path}.{name}" for name in FUSED_NAMES
                         if isinstance(getattr(module, name, None), torch.nn.Parameter)]
    return keys


def compress(weight: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """One pruned tensor in the layout: suffix → tensor (`compressed`, `bitmask`, `shape`, and `row_offsets`).
    Rows are the last dimension; a fused expert tensor (3-D) is stored the same way."""
    from compressed_tensors.utils import pack_bitmasks

    w = weight.detach().cpu()
    if fmt == SPARSE_24:
        if w.shape[-1] % 4:
            raise UserError(f"a matrix with {w.shape[-1]} columns cannot hold 2:4 groups")
        groups = w.reshape(-1, 4)
        if bool(((groups != 0).sum(1) > 2).any()):
            raise UserError(f"format {SPARSE_24}: a matrix has a group of 4 with more than 2 non-zero weights")
        # The two largest magnitudes of each group: every non-zero weight, padded with zeros where fewer remain.
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.abs().topk(2, dim=1).indices, True)
        keep = keep.view_as(w)
        return {"compressed": w[keep].reshape(*w.shape[:-1], w.shape[-1] // 2).contiguous(),
                "bitmask": pack_bitmasks(keep), "shape": torch.tensor(list(w.shape)).reshape(-1, 1)}
    keep = w != 0
    counts = keep.sum(dim=-1)
    return {"compressed": w[keep].contiguous(), "bitmask": pack_bitmasks(keep),
            "shape": torch.tensor(list(w.shape)), "row_offsets": torch.cumsum(counts, 0) - counts}


def decompress(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    from compressed_tensors.utils import unpack_bitmasks

    shape = parts["shape"].flatten().tolist()
    keep = unpack_bitmasks(parts["bitmask"], shape)
    dense = torch.zeros(shape, dtype=parts["compressed"].dtype)
    dense[keep] = parts["compressed"].flatten()
    return dense


def mask_digest(weight: torch.Tensor) -> str:
    """A hash of where a matrix is zero: two matrices with the same digest have exactly the same zeros."""
    return sha256_bytes((weight.detach().cpu() == 0).numpy().tobytes())


def save_sparse(model, folder: Path, fmt: str) -> dict:
    """Write `model` into `folder` (config + one safetensors file). Returns, per compressed matrix, its zero count
    and mask digest, read from the very tensors written."""
    from compressed_tensors import __version__ as ct_version
    from compressed_tensors.config import SparsityCompressionConfig
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pruned = set(pruned_weights(model))
    state, seen, matrices = {}, set(), {}
    for key, tensor in model.state_dict().items():
        if tensor.numel() and tensor.data_ptr() in seen:  # a tied weight (the LM head): transformers re-ties it
            continue
        seen.add(tensor.data_ptr())
        if key in pruned:
            stem = key.removesuffix(".weight")  # the layout names a Linear's parts after the module
            state.update({f"{stem}.{suffix}": part for suffix, part in compress(tensor, fmt).items()})
            matrices[key] = {"zeros": int((tensor == 0).sum()), "numel": tensor.numel(),
                             "mask_sha256": mask_digest(tensor)}
        else:
            state[key] = tensor.detach().cpu().contiguous()
    save_file(state, folder / WEIGHTS, metadata={"format": "pt"})
    model.config.save_pretrained(folder)
    zeros, numel = sum(m["zeros"] for m in matrices.values()), sum(m["numel"] for m in matrices.values())
    others = sorted(name for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and f"{name}.weight" not in pruned)
    sparsity = SparsityCompressionConfig.load_from_registry(
        fmt, targets=["Linear"], ignore=others, global_sparsity=zeros / max(numel, 1),
        sparsity_structure="2:4" if fmt == SPARSE_24 else "unstructured")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": fmt, "version": ct_version,
                                     "sparsity_config": sparsity.model_dump(exclude={"registry_requires_subclass"})}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return matrices


def sparse_format(folder: Path) -> str | None:
    """The sparse layout a model folder is saved in, or None for an ordinary checkpoint."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    fmt = ((config.get("quantization_config") or {}).get("sparsity_config") or {}).get("format")
    return fmt if fmt in FORMATS else None


def load_sparse(folder: Path, dtype: torch.dtype | str | None = None, **kwargs):
    """The model saved by `save_sparse`, every matrix decompressed, loaded by transformers from that state
    (`kwargs` as for `from_pretrained`, e.g. device_map); every tensor must find its parameter and every parameter
    its tensor (or be tied to one that did)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    # Without the quantization_config transformers builds a plain model instead of routing to a quantizer.
    del config.quantization_config
    stored = load_file(folder / WEIGHTS)
    state = dict(stored)
    for key in [k for k in stored if k.endswith(".bitmask")]:
        stem = key.removesuffix(".bitmask")
        parts = {s: state.pop(f"{stem}.{s}") for s in ("compressed", "bitmask", "shape", "row_offsets")
                 if f"{stem}.{s}" in state}
        state[stem] = decompress(parts)
    # A Linear's parts are named after the module, a fused expert tensor's after the tensor itself.
    with torch.device("meta"):
        expected = AutoModelForCausalLM.from_config(config).state_dict().keys()
    state = {f"{k}.weight" if k not in expected and f"{k}.weight" in expected else k: v for k, v in state.items()}
    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    model, info = model_class.from_pretrained(None, config=config, state_dict=state, dtype=dtype or config.dtype,
                                              output_loading_info=True, **kwargs)
    if info["missing_keys"] or info["unexpected_keys"] or info.get("mismatched_keys"):
        raise UserError(f"{folder} does not match its config: missing {sorted(info['missing_keys'])[:3]}, "
                        f"unexpected {sorted(info['unexpected_keys'])[:3]}")
    return model.eval()
