"""One process computes a shared file (a dense profile, a converted model, a run record) while the others wait
for it and then reuse it.

The lock is an advisory lock (flock) on a small file beside the entry: the kernel releases it when its holder
exits, however it exits, so a job killed while computing never blocks the next run. The lock files stay on disk
(removing one while another process waits on it would let two holders in at once).
"""
import contextlib
import logging
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


def lock_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def computing(path: Path, what: str):
    """Hold the lock of the cache entry `path` (a file or folder that may not exist yet). Says once, in one
    line, when another process holds it and this one waits."""
    lock_file = lock_path(path)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("waiting for another process computing %s (%s)", what, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
