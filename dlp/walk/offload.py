"""Where a model's decoder blocks live between visits: on the compute device (`none`), in host memory (`cpu`),
or in the checkpoint's safetensors files (`disk`).

A model larger than the device is pruned one block at a time: everything outside the blocks (embeddings, final
norm, output layer, rotary tables) and the blocks' buffers stay on the device; a block's parameters come to the
device when the engine visits it and go back after, so the device holds about one block (two while the next one
is copied in ahead, `cpu` on a GPU), its calibration activations and the criterion's statistics.

- `cpu`: every block's parameters sit in host memory (pinned on a CUDA machine, so the copy of block i+1 runs on
  a side stream while block i computes). A block the visit changed is copied back.
- `disk`: parameters are read from the checkpoint's safetensors files (memory-mapped) when a block is visited
  and dropped after (the parameters return to the meta device), so a model larger than host memory can be
  pruned. A block the visit changed is written into the offload folder, one safetensors file per block, and
  later reads (evaluation, measuring) come from there. At most one block's weights are materialised at a time.

The choice travels with the model (`offload_of`), as its compute dtype does, so that every pass over it (the
engine's walks, perplexity, zero-shot, measuring sparsity) finds its blocks the same way. Parameters are
replaced by new Parameter objects on each move (a meta tensor cannot take real data in place); modules, which
hooks and criteria hold, stay the same objects.
"""
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from dlp.errors import UserError
from dlp.walk.structure import find_blocks

MODES = ("none", "cpu", "disk")
_ATTR = "dlp_offload"


def param_slots(block: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(path relative to the block, owning module, local name) of every parameter of a block."""
    return [(f"{path}.{name}" if path else name, module, name)
            for path, module in block.named_modules() for name, p in module._parameters.items() if p is not None]


def _put(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module._parameters[name] = nn.Parameter(tensor, requires_grad=False)


def block_bytes(block: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in block.parameters())


@dataclass
class Visit:
    """Handed to whoever visits a block: set `changed` when the block's weights were changed (pruned)."""
    changed: bool = False


class Offload:
    """`none`: blocks stay where the model is; every method is a no-op."""
    mode = "none"

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.peak_materialized = 0  # largest sum of block parameter bytes off the offload store at once

    @property
    def offloaded(self) -> bool:
        return self.mode != "none"

    def fetch(self, index: int, block: nn.Module) -> None:
        """Make block `index`'s parameters usable on the compute device."""

    def release(self, index: int, block: nn.Module, changed: bool) -> None:
        """Send the block back to its store (keeping its changes when `changed`). Harmless when not fetched."""

    def prefetch(self, index: int, block: nn.Module) -> None:
        """Start bringing block `index` in ahead of its visit, where copies can overlap compute."""

    @contextlib.contextmanager
    def visit(self, index: int, block: nn.Module, on_device: bool = True):
        """The block resident for the body (on the compute device, or only readable when `on_device` is False);
        released after, with its changes when the yielded Visit says `changed`."""
        state = Visit()
        if on_device:
            self.fetch(index, block)
        else:
            self.read(index, block)
        try:
            yield state
        finally:
            self.release(index, block, state.changed)

    def visits(self, blocks: nn.ModuleList, on_device: bool = True):
        """Each (index, block, Visit) of `blocks` in order, the block resident for the loop's body (as `visit`)
        and, on the device, the next one brought in ahead where copies overlap compute."""
        for index, block in enumerate(blocks):
            with self.visit(index, block, on_device) as state:
                if on_device and index + 1 < len(blocks):
                    self.prefetch(index + 1, blocks[index + 1])
                yield index, block, state
        self.settle()

    def read(self, index: int, block: nn.Module) -> None:
        """Make the block's weights readable (host or device), for measuring or saving."""

    def settle(self) -> None:
        """Drop copies brought in ahead that no visit will take (a pass stopped early)."""

    def record(self) -> dict:
        """What a run's record keeps: the mode and, offloaded, the most block bytes off the store at once."""
        return {"mode": self.mode, **({"peak_materialized_bytes": self.peak_materialized} if self.offloaded else {})}


class CpuOffload(Offload):
    """Blocks in host memory; a visit copies one to the device and, when changed, back."""
    mode = "cpu"

    def __init__(self, device: torch.device, blocks: nn.ModuleList):
        super().__init__(device)
        self.pinned = self.device.type == "cuda"
        self.host: list[dict[str, torch.Tensor]] = []
        for block in blocks:
            tensors = {}
            for key, module, name in param_slots(block):
                t = module._parameters[name].detach().to("cpu")
                tensors[key] = t.pin_memory() if self.pinned else t
                _put(module, name, tensors[key])
            self.host.append(tensors)
        self.sizes = [sum(t.numel() * t.element_size() for t in h.values()) for h in self.host]
        self.stream = torch.cuda.Stream(self.device) if self.pinned else None
        self.ahead: dict[int, dict[str, torch.Tensor]] = {}  # prefetched copies, by block
        self.resident: set[int] = set()

    def _copy_in(self, index: int) -> dict[str, torch.Tensor]:
        # copy=True: on a CPU "device" too the visit gets tensors of its own, so placement stays observable.
        return {k: t.to(self.device, non_blocking=self.pinned, copy=True) for k, t in self.host[index].items()}

    def _count(self) -> None:
        on_device = self.resident | set(self.ahead)
        self.peak_materialized = max(self.peak_materialized, sum(self.sizes[i] for i in on_device))

    def prefetch(self, index: int, block: nn.Module) -> None:
        if self.stream is None or index in self.ahead or index in self.resident:
            return
        with torch.cuda.stream(self.stream):
            self.ahead[index] = self._copy_in(index)
        self._count()

    def fetch(self, index: int, block: nn.Module) -> None:
        if index in self.resident:
            return
        copies = self.ahead.pop(index, None)
        if copies is not None:  # copied on the side stream: the compute stream waits for it, then owns it
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            for t in copies.values():
                t.record_stream(torch.cuda.current_stream(self.device))
        else:
            copies = self._copy_in(index)
        for key, module, name in param_slots(block):
            _put(module, name, copies[key])
        self.resident.add(index)
        self._count()

    def release(self, index: int, block: nn.Module, changed: bool) -> None:
        if index not in self.resident:
            return
        for key, module, name in param_slots(block):
            host = self.host[index][key]
            if changed:
                host.copy_(module._parameters[name].detach())
            _put(module, name, host)
        self.resident.discard(index)

    def settle(self) -> None:
        self.ahead.clear()


class DiskOffload(Offload):
    """Blocks in safetensors files, read when visited; a changed block is written to `folder`."""
    mode = "disk"

    def __init__(self, device: torch.device, prefix: str, blocks: nn.ModuleList, files: dict[str, Path],
                 folder: Path, dtype: torch.dtype):
        super().__init__(device)
        self.prefix, self.files, self.folder, self.dtype = prefix, dict(files), Path(folder), dtype
        self.shapes = [{key: module._parameters[name].shape for key, module, name in param_slots(b)} for b in blocks]
        missing = [f"{prefix}.{i}.{key}" for i, shapes in enumerate(self.shapes) for key in shapes
                   if f"{prefix}.{i}.{key}" not in self.files]
        if missing:
            raise UserError(f"offload=disk reads each block's tensors from the checkpoint by name, and {len(missing)} "
                            f"are not there (e.g. {missing[0]}): use offload=cpu for this model")
        self.resident: set[int] = set()
        self.materialized = 0
        self.written: list[int] = []

    def _load(self, index: int, block: nn.Module, device: torch.device) -> None:
        from safetensors import safe_open

        if index in self.resident:
            return
        slots = {f"{self.prefix}.{index}.{key}": (key, module, name) for key, module, name in param_slots(block)}
        # Each file is opened for this block only: an open file stays mapped, and its pages would count in the
        # process's memory for the rest of the run.
        for path in sorted({self.files[full] for full in slots}):
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                for full in [f for f in slots if self.files[f] == path]:
                    key, module, name = slots[full]
                    t = fh.get_tensor(full).to(device=device, dtype=self.dtype)
                    if t.shape != self.shapes[index][key]:
                        raise UserError(f"{full} has shape {tuple(t.shape)} in {path}, the model expects "
                                        f"{tuple(self.shapes[index][key])}")
                    _put(module, name, t)
        self.resident.add(index)
        self.materialized += block_bytes(block)
        self.peak_materialized = max(self.peak_materialized, self.materialized)

    def fetch(self, index: int, block: nn.Module) -> None:
        self._load(index, block, self.device)

    def read(self, index: int, block: nn.Module) -> None:
        self._load(index, block, torch.device("cpu"))

    def release(self, index: int, block: nn.Module, changed: bool) -> None:
        if index not in self.resident:
            return
        if changed:
            self._write(index, block)
        for key, module, name in param_slots(block):
            _put(module, name, torch.empty(self.shapes[index][key], dtype=self.dtype, device="meta"))
        self.materialized -= block_bytes(block)
        self.resident.discard(index)

    def _write(self, index: int, block: nn.Module) -> None:
        """The block's tensors into `folder/block-NNNNN.safetensors`, atomically; later reads come from there."""
        from safetensors.torch import save_file

        path = self.folder / f"block-{index:05d}.safetensors"
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tensors = {f"{self.prefix}.{index}.{key}": module._parameters[name].detach().to("cpu").contiguous()
                   for key, module, name in param_slots(block)}
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
        self.files.update({k: path for k in tensors})
        if index not in self.written:
            self.written.append(index)

    def record(self) -> dict:
        return {**super().record(), "folder": str(self.folder), "blocks_written": len(self.written)}


def offload_of(model: nn.Module) -> Offload:
    """The model's offload; `none` on the device of its input embeddings when none was attached."""
    home = getattr(model, _ATTR, None)
    return home if home is not None else Offload(compute_device(model))


def compute_device(model: nn.Module) -> torch.device:
    """Where the model computes: its input embeddings' device (they never leave it)."""
    return model.get_input_embeddings().weight.device


def place_outside_blocks(model: nn.Module, device: torch.device) -> None:
    """Everything but the blocks' parameters onto `device`: the modules outside the blocks, and the blocks'
    buffers (small; some are rebuilt at construction and are not in the checkpoint). Tied parameters (an output
    layer sharing the embeddings) are one object, moved once."""
    inside = {id(m) for m in find_blocks(model).blocks.modules()}
    moved: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None:
                module._buffers[name] = buf.to(device)
        if id(module) in inside:
            continue
        for name, p in module._parameters.items():
            if p is None:
                continue
            if id(p) not in moved:
                moved[id(p)] = nn.Parameter(p.detach().to(device), requires_grad=False)
            module._parameters[name] = moved[id(p)]


def attach(model: nn.Module, home: Offload) -> Offload:
    setattr(model, _ATTR, home)
    return home


def offload_to_cpu(model: nn.Module, device: torch.device) -> Offload:
    """A model loaded in host memory: its blocks stay there, everything else goes to `device`."""
    layout = find_blocks(model)
    home = CpuOffload(device, layout.blocks)
    place_outside_blocks(model, home.device)
    return attach(model, home)


def resident_blocks(model: nn.Module, on_device: bool = False):
    """Each (index, block) with its weights readable (on the compute device when `on_device`), one at a time."""
    for index, block, _visit in offload_of(model).visits(find_blocks(model).blocks, on_device):
        yield index, block


@contextlib.contextmanager
def streaming(model: nn.Module):
    """Inside the block, every forward pass of the model brings each decoder block to the device just before it
    runs and sends it back right after (the next one copied in ahead where copies overlap compute): how
    passes this suite does not drive block by block (zero-shot through the harness, the self-check's reference
    forward) run on an offloaded model. A no-op without offload."""
    home = offload_of(model)
    if not home.offloaded:
        yield
        return
    blocks = find_blocks(model).blocks
    handles = []
    for index, block in enumerate(blocks):
        def before(module, _args, index=index):
            home.fetch(index, module)
            if index + 1 < len(blocks):
                home.prefetch(index + 1, blocks[index + 1])

        def after(module, _args, _output, index=index):
            home.release(index, module, False)

        handles += [block.register_forward_pre_hook(before), block.register_forward_hook(after)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for index, block in enumerate(blocks):  # a pass stopped early (an exception) leaves blocks fetched
            home.release(index, block, False)
        home.settle()


def check_offload(mode: str) -> None:
    if mode not in MODES:
        raise UserError(f"unknown offload '{mode}'; choose one of {', '.join(MODES)}")


def checkpoint_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of a checkpoint folder (sharded with an index, or one file)."""
    import json

    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        return {k: folder / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    single = folder / "model.safetensors"
    if single.exists():
        with safe_open(str(single), framework="pt") as fh:
            return {k: single for k in fh.keys()}
    raise UserError(f"offload=disk reads the checkpoint's safetensors files, and {folder} has none "
                    "(model.safetensors or model.safetensors.index.json)")


def load_disk_offloaded(folder: Path, dtype: torch.dtype, device: torch.device, offload_dir: Path) -> nn.Module:
    """The model of a checkpoint folder with no block weights in memory: built on the meta device (buffers real,
    as construction makes them), everything outside the blocks read onto `device`, the blocks left to a
    DiskOffload that reads them from the folder's files when visited."""
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    files = checkpoint_files(folder)
    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    layout = find_blocks(model)
    inside = {id(p) for p in layout.blocks.parameters()}
    for name, p in model.named_parameters():
        if id(p) in inside or name not in files:
            continue
        with safe_open(str(files[name]), framework="pt", device="cpu") as fh:
            owner, _, leaf = name.rpartition(".")
            _put(model.get_submodule(owner), leaf, fh.get_tensor(name).to(dtype=dtype))
    model.tie_weights()  # an output layer tied to the embeddings has no tensor of its own in the checkpoint
    unread = [n for n, p in model.named_parameters() if id(p) not in inside and p.device.type == "meta"]
    if unread:
        raise UserError(f"offload=disk: {len(unread)} tensors outside the decoder blocks are not in {folder} "
                        f"(e.g. {unread[0]}): use offload=cpu for this model")
    home = DiskOffload(device, layout.path, layout.blocks, files, offload_dir, dtype)
    place_outside_blocks(model, home.device)
    attach(model, home)
    return model
