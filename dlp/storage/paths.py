"""Where the suite keeps its caches. Project-local by default so a fresh clone starts from nothing."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # dlp/storage/paths.py -> the repository


def cache_dir() -> Path:
    path = Path(os.environ.get("DLP_CACHE", ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path
