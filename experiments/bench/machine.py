"""What the machine can do and what a phase used: matrix-multiply peak per dtype, peak memory per phase.

The peak is measured in the running process (large square products, best of a few), so a benchmark's
"share of peak" compares against the same threads, clocks and libraries it ran with. Peak resident memory is
reset at the start of each phase through /proc/self/clear_refs (Linux; elsewhere the process-lifetime peak is
reported and said so); on CUDA the allocator's own peak statistics are reset.
"""
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..records import cpu_model


def describe(device: torch.device) -> dict:
    info = {"cpu": cpu_model(), "cpu_threads": torch.get_num_threads(), "logical_cpus": os.cpu_count(),
            "torch": torch.__version__, "device": str(device)}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int | None = None, repeats: int = 5) -> dict:
    """GFLOP/s of n×n by n×n products in `dtype`: the best of `repeats` timed batches after a warm-up."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    inner = 10 if device.type == "cuda" else 2
    for _ in range(2):
        a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t) / inner)
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "gflops": 2 * n ** 3 / best / 1e9}


def _status_bytes(field: str) -> int:
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: peak) in bytes; elsewhere the lifetime peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    return _status_bytes("VmRSS")


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Hand memory the allocator keeps but no tensor uses back to the system (glibc), so that a phase's
    starting RSS is what is alive, not what an earlier phase left cached."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def phase(device: torch.device):
    """Time a phase and its memory peaks. Yields a dict filled in on exit: seconds, rss_start, rss_peak
    (bytes), rss_peak_is_phase (False where the peak could not be reset), cuda_start / cuda_peak (bytes)."""
    out = {}
    _sync(device)
    release_free_memory()
    out["rss_peak_is_phase"] = _reset_rss_peak()
    out["rss_start"] = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        out["cuda_start"] = torch.cuda.memory_allocated(device)
    t = time.perf_counter()
    try:
        yield out
    finally:
        _sync(device)
        out["seconds"] = time.perf_counter() - t
        out["rss_peak"] = _status_bytes("VmHWM")
        if device.type == "cuda":
            out["cuda_peak"] = torch.cuda.max_memory_allocated(device)
