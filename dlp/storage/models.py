"""Load a causal LM by alias, Hugging Face id or local folder, with a dtype and a device."""
import logging
from pathlib import Path

import torch

from dlp.errors import UserError, first_line
from dlp.storage import checkpoint, embedded
from dlp.storage.hub import hub_reachable
from dlp.walk.compute_dtype import check_compute_dtype, set_compute_dtype
from dlp.walk.devmem import set_memory_cap
from dlp.walk.experts import expose_experts, has_routed_experts
from dlp.walk.offload import check_offload, checkpoint_files, load_disk_offloaded, offload_to_cpu
from dlp.walk.structure import find_blocks

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when there is one; a name torch cannot read is a UserError (whether the device exists is
    found where the run computes: a cluster job may have the GPU the submitting machine lacks)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device '{name}'; e.g. auto, cpu, cuda, cuda:1, mps") from None


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


def source_config(path: str) -> dict:
    """The config.json, as written, of the model `path` names (an alias, a local folder or a hub id)."""
    import json

    source, prov = resolve_source(path)
    if prov.get("source") == "huggingface-hub":
        from huggingface_hub import hf_hub_download
        try:
            source = str(Path(hf_hub_download(source, "config.json", local_files_only=not hub_reachable())).parent)
        except Exception as exc:
            raise UserError(f"could not read the config of model '{path}': {first_line(exc)}") from exc
    config = json.loads((Path(source) / "config.json").read_text())
    archive = config.pop(checkpoint.ARCHIVE_FIELD, None)
    if archive:  # a compact archive: the config of the model it holds
        config["model_type"] = archive["base_model_type"]
    return config


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


def check_offload_request(offload: str, device_map, path: str | None = None, device: str = "auto",
                          device_memory_gib: float | None = None) -> None:
    """What offload and a memory cap need, before a model is loaded (with `path`: the files offload=disk reads)."""
    check_offload(offload)
    if offload != "none" and device_map:
        raise UserError(f"offload={offload} keeps one block on one device: it does not combine with model.device_map")
    computes_on = resolve_device(device).type
    if device_memory_gib is not None and computes_on != "cuda":
        raise UserError(f"device_memory_gib={device_memory_gib} caps a CUDA device's memory; this run computes on "
                        f"{computes_on}")
    if offload == "disk" and path is not None:
        source, prov = resolve_source(path)
        if prov.get("source") != "huggingface-hub":
            _check_disk_source(path, source)


def _check_disk_source(path: str, source: str) -> None:
    if checkpoint.archive_format(source):
        raise UserError(f"offload=disk reads dense safetensors; {path} is a compact archive (load it with "
                        "offload=cpu, or convert it: python -m experiments.export convert <folder> to=hf)")
    checkpoint_files(Path(source))


def load_tokenizer(path: str):
    """The tokenizer of the model `path` names, without its weights: a run draws its calibration windows (and
    finds a corpus too short for them) before the model loads. None for an embedded model whose cache is
    unreadable (load_model rebuilds it)."""
    from transformers import AutoTokenizer

    source, _ = resolve_source(path)
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        if path in embedded.MODELS:
            return None  # a corrupt conversion cache: load_model converts it again, tokenizer included
        raise UserError(f"could not load the tokenizer of model '{path}': {first_line(exc)}") from exc


def load_model(path: str, dtype: str = "float32", device: str = "auto", device_map=None,
               compute_dtype: str | None = None, offload: str = "none", offload_dir: Path | None = None,
               device_memory_gib: float | None = None, tokenizer=None):
    """Returns (model, tokenizer, provenance). `device_map` (e.g. "auto") spreads a large model on GPUs;
    `compute_dtype` (float32 weights only) runs its forward passes under autocast (dlp.walk.compute_dtype);
    `offload` keeps the decoder blocks in host memory or in the checkpoint's files between visits (dlp.walk.offload;
    `offload_dir`: where `disk` writes changed blocks); `device_memory_gib` caps this process on a CUDA device;
    `tokenizer`: the model's, already loaded (load_tokenizer), else loaded here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_dtype(dtype)
    check_compute_dtype(compute_dtype, dtype)
    check_offload_request(offload, device_map)
    target = resolve_device(device)
    cap = set_memory_cap(target, device_memory_gib)
    source, prov = resolve_source(path)
    if offload != "none":
        prov["offload"] = offload
    if cap:
        prov["device_memory_cap"] = cap
    if offload == "disk":
        return _load_disk_offloaded(path, source, prov, DTYPES[dtype], target, offload_dir, compute_dtype, tokenizer)
    kwargs = {"dtype": DTYPES[dtype]}
    if device_map:
        kwargs["device_map"] = device_map
    fmt = checkpoint.archive_format(source) if prov.get("source") == "local" else None
    try:
        if fmt:  # a compact archive of a pruned model (dlp.storage.checkpoint): transformers alone refuses it
            prov["archive_format"] = fmt
            model = checkpoint.load_archive(source, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        if path not in embedded.MODELS:
            raise UserError(f"could not load model '{path}': {first_line(exc)}") from exc
        # A corrupt conversion cache (interrupted copy, disk trouble): rebuild it from the GGUF once.
        logging.getLogger(__name__).warning("embedded model cache unreadable (%s): converting again",
                                            first_line(exc))
        source = str(embedded.converted_folder(rebuild=True, alias=path))
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(source)
    if offload == "cpu":
        refuse_experts(model, offload)
        offload_to_cpu(model, target)
    elif not device_map:
        model.to(target)
    return _ready(model, compute_dtype), tokenizer, prov


def _ready(model, compute_dtype):
    model.eval()
    model.config.use_cache = False
    expose_experts(model)  # fused MoE experts through per-expert Linears, for every run alike (dlp.walk.experts)
    set_compute_dtype(model, compute_dtype)
    return model


def refuse_experts(model, offload: str) -> None:
    """Routed experts are pruned through views of their fused tensors (dlp.walk.experts), which a block moved as
    whole tensors would leave behind: offloading them is refused in one line."""
    if any(has_routed_experts(block) for block in find_blocks(model).blocks):
        raise UserError(f"offload={offload} does not support models with routed experts "
                        f"({type(model).__name__}): use offload=none")


def _load_disk_offloaded(path, source, prov, dtype, device, offload_dir, compute_dtype, tokenizer=None):
    """A model whose block weights stay in its checkpoint's safetensors files (dlp.walk.offload)."""
    from transformers import AutoTokenizer

    if prov.get("source") == "huggingface-hub":
        source = local_snapshot(source)
    _check_disk_source(path, source)
    if offload_dir is None:
        raise UserError("offload=disk needs a folder to write the pruned blocks into (offload_dir)")
    try:
        model = load_disk_offloaded(Path(source), dtype, device, Path(offload_dir))
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(source)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"could not load model '{path}' with offload=disk: {first_line(exc)}") from exc
    refuse_experts(model, "disk")
    return _ready(model, compute_dtype), tokenizer, prov


def local_snapshot(repo_id: str) -> str:
    """The folder of a hub model's files (downloaded when the hub is reachable, else from the local cache)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"],
                                 local_files_only=not hub_reachable())
    except Exception as exc:
        raise UserError(f"could not get the files of '{repo_id}' for offload=disk: {first_line(exc)}") from exc
