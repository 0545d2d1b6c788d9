"""How much device memory a run may still take, under a per-process cap when one is set.

`torch.cuda.mem_get_info` reports the card's free memory, which ignores a cap set with
`torch.cuda.set_per_process_memory_fraction` (a shared card, or a test of what a smaller card would do): the
caching allocator raises out-of-memory at the cap however much the card has free. Decisions that size
themselves to the device (where to keep activations, the automatic batch) ask here instead.
"""
import torch

from dlp.errors import UserError


def indexed(device: torch.device) -> torch.device:
    """`cuda` as `cuda:<current>`: torch's per-process memory calls refuse a CUDA device without an index."""
    return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())


def available_bytes(device: torch.device) -> int:
    """Bytes this process can still allocate on a CUDA device: the card's free memory plus what the caching
    allocator holds unused, and no more than the cap minus what is allocated."""
    device = indexed(device)
    free, total = torch.cuda.mem_get_info(device)
    allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    room = free + reserved - allocated
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if fraction is not None:
        room = min(room, int(fraction(device) * total) - allocated)
    return max(room, 0)


def set_memory_cap(device: torch.device, gib: float | None) -> dict | None:
    """Cap this process's allocations on a CUDA device at `gib` GiB (None: no cap). Returns what the record
    keeps; a cap on a device that is not CUDA, or larger than the card, is refused in one line."""
    if gib is None:
        return None
    if device.type != "cuda":
        raise UserError(f"device_memory_gib={gib} caps a CUDA device's memory; this run computes on {device.type}")
    device = indexed(device)
    total = torch.cuda.get_device_properties(device).total_memory
    if not 0 < gib * 2**30 <= total:
        raise UserError(f"device_memory_gib={gib} must be positive and at most the card's {total / 2**30:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(gib * 2**30 / total, device)
    return {"gib": gib, "fraction": gib * 2**30 / total}
