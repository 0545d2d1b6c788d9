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


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int | None = None, repeats: int = 5,
                seconds: float = 1.0) -> dict:
    """GFLOP/s of n×n by n×n products in `dtype`: the best of `repeats` timed batches after a warm-up. n: 8192 on a
    GPU; on a CPU 2048, and for a half-precision dtype less where one product would take over `seconds`
    (`affordable_size`). float32, which every CPU multiplies natively, always keeps 2048: timed on a busy machine
    its probe could pass for slow and its peak figures would move with the load."""
    if n is None and device.type == "cuda":
        n = 8192
    elif n is None:
        n = 2048 if dtype == torch.float32 else affordable_size(dtype, device, 2048, seconds)
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


PROBE = 512  # large enough to run at the dtype's full speed on a CPU, small enough to cost ~0.3 s a product where slow
PROBES = 5  # the best of several: on a busy machine one 512 product's speed varied by 3x from one to the next


def affordable_size(dtype: torch.dtype, device: torch.device, largest: int, seconds: float) -> int:
    """The largest n up to `largest` (a multiple of 128, at least 256) whose product takes at most `seconds` at the
    speed of the fastest of PROBES PROBE-sized products. A dtype a CPU has no instructions for runs ~50x slower
    (bfloat16 without AVX512-BF16: ~1 GFLOP/s a thread): at 2048 its peak took minutes, once per benchmarked
    process."""
    a = torch.randn(PROBE, PROBE, device=device).to(dtype)
    a @ a
    fastest = float("inf")
    for _ in range(PROBES):
        t = time.perf_counter()
        a @ a
        fastest = min(fastest, time.perf_counter() - t)
    return size_for(2 * PROBE ** 3 / max(fastest, 1e-9), seconds, largest)


def size_for(flops_per_s: float, seconds: float, largest: int) -> int:
    """n with 2·n³ flops in `seconds` at `flops_per_s`, down to a multiple of 128, between 256 and `largest`."""
    return max(256, min(largest, int((seconds * flops_per_s / 2) ** (1 / 3)) // 128 * 128))


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
