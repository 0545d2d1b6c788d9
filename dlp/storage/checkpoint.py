"""Pruned checkpoints: an ordinary Hugging Face folder by default, a compact archive on request.

`hf` (the default) is what any tool reads: safetensors with the zeros in place, under the source checkpoint's
tensor names and shapes, and the source model's `config.json` with only `dtype` set to the saved weights' (no
quantization or sparsity config a serving engine could refuse). Plain `AutoModelForCausalLM.from_pretrained`,
the evaluation harness and vLLM load it as they load the source model. The sparsity evidence (each matrix's zero
count and mask digest, the run record, the model card) lives in side files.

`bitmask` and `bitmask-24` are the compact archive: each pruned matrix of the decoder blocks as its kept values
and a packed bitmask (compressed-tensors' `pack_bitmasks`), plus per-row offsets (`bitmask`, any mask), or as
exactly half its values per row (`bitmask-24`, 2:4 only); everything else dense. Its `config.json` has the
model type `dlp-sparse-archive`, which transformers does not know, so a plain load fails instead of silently
leaving the compressed matrices random; the config and the model card name the loader, `load_archive` here.
`experiments.export convert` turns either form into the other.
"""
import json
from pathlib import Path

import torch

from dlp.errors import UserError
from dlp.storage.io import sha256_bytes
from dlp.walk.structure import find_blocks, find_linears

HF, BITMASK, BITMASK_24 = "hf", "bitmask", "bitmask-24"
FORMATS = (HF, BITMASK, BITMASK_24)
ARCHIVES = (BITMASK, BITMASK_24)
RENAMED = {"sparse-bitmask": BITMASK, "sparse-24-bitmask": BITMASK_24, "auto": HF}  # names of earlier versions
ARCHIVE_TYPE = "dlp-sparse-archive"
ARCHIVE_FIELD = "dlp_sparse_archive"
LOADER = "dlp.storage.checkpoint.load_archive"
WEIGHTS = "model.safetensors"


def check_format_name(fmt: str) -> str:
    """A format this suite writes, whatever the model: `hf`, `bitmask` or `bitmask-24`."""
    if fmt in RENAMED:
        raise UserError(f"format '{fmt}' is no longer a format: choose {HF} (an ordinary checkpoint, the default), "
                        f"{BITMASK} or {BITMASK_24} (compact archives; '{fmt}' is now '{RENAMED[fmt]}')")
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    return fmt


def choose_format(pattern: str | None, fmt: str = HF) -> str:
    """The checked format: `hf` (any mask), `bitmask` (any mask) or `bitmask-24` (2:4 only)."""
    check_format_name(fmt)
    if fmt == BITMASK_24 and str(pattern) != "2:4":
        raise UserError(f"format {BITMASK_24} holds 2:4 sparsity only; this model was pruned with pattern "
                        f"'{pattern or 'unstructured'}' (use {HF} or {BITMASK})")
    return fmt


def pruned_weights(model) -> list[str]:
    """State-dict keys of the tensors pruning changed: the decoder blocks' Linear weights and their fused expert
    tensors (dlp.walk.experts: each expert's Linear is a view into one of those, so the fused tensor is saved)."""
    from dlp.walk.experts import FUSED_NAMES, is_fused_experts

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
    if fmt == BITMASK_24:
        if w.shape[-1] % 4:
            raise UserError(f"a matrix with {w.shape[-1]} columns cannot hold 2:4 groups")
        groups = w.reshape(-1, 4)
        if bool(((groups != 0).sum(1) > 2).any()):
            raise UserError(f"format {BITMASK_24}: a matrix has a group of 4 with more than 2 non-zero weights")
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


def matrix_evidence(model) -> dict:
    """Per pruned matrix (state-dict key): zero count, size and mask digest, read from the model's tensors."""
    from dlp.walk.offload import resident_blocks

    state = {}
    layout = find_blocks(model)
    pruned = set(pruned_weights(model))
    for index, block in resident_blocks(model):
        for name, tensor in block.state_dict().items():
            key = f"{layout.path}.{index}.{name}"
            if key in pruned:
                state[key] = {"zeros": int((tensor == 0).sum()), "numel": tensor.numel(),
                              "mask_sha256": mask_digest(tensor)}
    return state


def save_hf(model, folder: Path, source_config: dict) -> dict:
    """`model` as an ordinary checkpoint: transformers' own safetensors, and the source model's config.json with
    only its dtype set to the saved weights'. Returns each pruned matrix's evidence (`matrix_evidence`)."""
    folder = Path(folder)
    model.save_pretrained(folder)
    config = {**source_config, "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    if "torch_dtype" in config:  # written by transformers 4
        config["torch_dtype"] = config["dtype"]
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return matrix_evidence(model)


def save_archive(model, folder: Path, fmt: str, source_config: dict) -> dict:
    """`model` as a compact archive (config + one safetensors file). Returns, per compressed matrix, its zero
    count and mask digest, read from the very tensors written."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    matrices = matrix_evidence(model)
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        if tensor.numel() and tensor.data_ptr() in seen:  # a tied weight (the LM head): transformers re-ties it
            continue
        seen.add(tensor.data_ptr())
        if key in matrices:
            stem = key.removesuffix(".weight")  # the layout names a Linear's parts after the module
            state.update({f"{stem}.{suffix}": part for suffix, part in compress(tensor, fmt).items()})
        else:
            state[key] = tensor.detach().cpu().contiguous()
    save_file(state, folder / WEIGHTS, metadata={"format": "pt"})
    zeros, numel = sum(m["zeros"] for m in matrices.values()), sum(m["numel"] for m in matrices.values())
    config = {**source_config, "model_type": ARCHIVE_TYPE,
              "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
              ARCHIVE_FIELD: {"format": fmt, "base_model_type": source_config["model_type"], "loader": LOADER,
                              "sparsity": zeros / max(numel, 1), "compressed_matrices": len(matrices),
                              "note": f"a compact archive of a pruned model: load it with {LOADER}(folder), or "
                                      f"convert it to an ordinary checkpoint with `python -m experiments.export "
                                      f"convert <folder> to=hf`"}}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return matrices


def archive_format(folder: Path) -> str | None:
    """The archive format a model folder is saved in, or None for an ordinary checkpoint."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if config.get("model_type") != ARCHIVE_TYPE:
        return None
    return (config.get(ARCHIVE_FIELD) or {}).get("format")


def base_config(folder: Path):
    """The transformers config of the model an archive holds (its own model type restored)."""
    from transformers import AutoConfig

    config = json.loads((Path(folder) / "config.json").read_text())
    info = config.pop(ARCHIVE_FIELD)
    config["model_type"] = info["base_model_type"]
    return AutoConfig.for_model(**config)


def load_archive(folder: Path, dtype: torch.dtype | str | None = None, **kwargs):
    """The model saved by `save_archive`, every matrix decompressed, loaded by transformers from that state
    (`kwargs` as for `from_pretrained`, e.g. device_map); every tensor must find its parameter and every parameter
    its tensor (or be tied to one that did)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if archive_format(folder) is None:
        raise UserError(f"{folder} is not a {ARCHIVE_TYPE} folder (an ordinary checkpoint: load it with "
                        "transformers' from_pretrained)")
    config = base_config(folder)
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
