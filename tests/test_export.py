"""Pruned checkpoints: the archive layouts by hand, bit-exact round trips for every family in every format, the
ordinary folder as the source model's, and the export command line (save=true on a run, a record reproduced,
conversion both ways, refused inputs that leave nothing behind)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from tiny import FAMILIES, tiny_ids, tiny_model

from dlp.errors import UserError
from dlp.methods.masks import lowest_nm, lowest_per_row, zero_where
from dlp.methods.pattern import NM
from dlp.storage import checkpoint
from dlp.walk.experts import expose_experts
from dlp.walk.structure import find_blocks, find_linears

ROOT = Path(__file__).resolve().parent.parent


def test_sparse_bitmask_layout_by_hand():
    w = torch.tensor([[0.0, 1.5, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0, 4.0],
                      [3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    parts = checkpoint.compress(w, checkpoint.BITMASK)
    assert parts["compressed"].tolist() == [1.5, -2.0, 4.0, 3.0]
    assert parts["row_offsets"].tolist() == [0, 3]
    assert parts["shape"].tolist() == [2, 9]
    # bits little-endian within a byte: row 0 keeps columns 1, 3 (0b1010 = 10) and 8 (next byte, bit 0)
    assert parts["bitmask"].tolist() == [[10, 1], [1, 0]]
    assert torch.equal(checkpoint.decompress(parts), w)


def test_sparse_24_layout_by_hand_and_its_refusals():
    w = torch.tensor([[0.0, 2.0, 0.0, -1.0, 5.0, 0.0, 0.0, 0.0]])
    parts = checkpoint.compress(w, checkpoint.BITMASK_24)
    # exactly two values per group of 4, in order; a zero pads the group that kept one weight
    assert parts["compressed"].tolist() == [[2.0, -1.0, 5.0, 0.0]]
    assert parts["shape"].flatten().tolist() == [1, 8] and "row_offsets" not in parts
    assert torch.equal(checkpoint.decompress(parts), w)
    with pytest.raises(UserError, match="more than 2 non-zero"):
        checkpoint.compress(torch.tensor([[1.0, 2.0, 3.0, 0.0]]), checkpoint.BITMASK_24)
    with pytest.raises(UserError, match="2:4 sparsity only"):
        checkpoint.choose_format("unstructured", checkpoint.BITMASK_24)
    with pytest.raises(UserError, match="unknown format 'sparse-csr'; choose one of hf, bitmask, bitmask-24"):
        checkpoint.choose_format("2:4", "sparse-csr")
    for old, new in (("sparse-bitmask", "bitmask"), ("sparse-24-bitmask", "bitmask-24"), ("auto", "hf")):
        with pytest.raises(UserError, match=f"format '{old}' is no longer a format.*'{old}' is now '{new}'"):
            checkpoint.choose_format("2:4", old)
    assert checkpoint.choose_format("2:4") == checkpoint.choose_format(None) == checkpoint.HF
    assert checkpoint.choose_format("4:8", "bitmask") == checkpoint.BITMASK


def pruned(family: str, fmt: str):
    model = tiny_model(family)
    expose_experts(model)  # as dlp.storage.models loads every model: routed experts pruned through their views
    for block in find_blocks(model).blocks:
        for layer in find_linears(block).values():
            w = layer.weight.data
            mask = lowest_nm(w.abs(), NM(2, 4)) if fmt == checkpoint.BITMASK_24 else lowest_per_row(w.abs(), 0.5)
            w.copy_(zero_where(w, mask))
    return model


def save(model, folder, fmt):
    """`model` saved in `fmt`, with its config as the source's, as an export writes it; loaded back as a user
    would: plain transformers for an ordinary folder, the suite's loader for an archive."""
    from transformers import AutoModelForCausalLM

    config = model.config.to_dict()
    if fmt == checkpoint.HF:
        matrices = checkpoint.save_hf(model, folder, config)
        return matrices, AutoModelForCausalLM.from_pretrained(folder).eval()
    matrices = checkpoint.save_archive(model, folder, fmt, config)
    return matrices, checkpoint.load_archive(folder)


@pytest.mark.parametrize("fmt", checkpoint.FORMATS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_round_trip_is_bit_exact_for_every_family(tmp_path, family, fmt):
    model = pruned(family, fmt)
    ids = tiny_ids(2, 16)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    matrices, loaded = save(model, tmp_path, fmt)
    assert checkpoint.archive_format(tmp_path) == (None if fmt == checkpoint.HF else fmt)
    expose_experts(loaded)
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for key in want:  # the very bits, +0.0 included (a -0.0 would come back as +0.0)
        assert torch.equal(want[key].view(torch.int32), got[key].view(torch.int32)), key
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, logits)
    assert set(matrices) == set(checkpoint.pruned_weights(model))
    for key, m in matrices.items():
        assert m["zeros"] == int((want[key] == 0).sum()) and m["mask_sha256"] == checkpoint.mask_digest(got[key])
    if fmt != checkpoint.HF:
        model.save_pretrained(tmp_path / "dense")
        dense = (tmp_path / "dense" / checkpoint.WEIGHTS).stat().st_size
        assert (tmp_path / checkpoint.WEIGHTS).stat().st_size < 0.75 * dense


@pytest.mark.parametrize("fmt", checkpoint.FORMATS)
def test_bfloat16_round_trip_keeps_its_dtype_and_bits(tmp_path, fmt):
    model = pruned("llama", fmt).to(torch.bfloat16)
    _, loaded = save(model, tmp_path, fmt)
    for key, value in model.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == torch.bfloat16 and torch.equal(got.view(torch.int16), value.view(torch.int16)), key


def test_every_pruned_tensor_is_compressed_and_nothing_else(tmp_path):
    from safetensors import safe_open
    model = pruned("mixtral", checkpoint.BITMASK)
    checkpoint.save_archive(model, tmp_path, checkpoint.BITMASK, model.config.to_dict())
    with safe_open(tmp_path / checkpoint.WEIGHTS, "pt") as f:
        keys = set(f.keys())
    compressed = {k.removesuffix(".bitmask") for k in keys if k.endswith(".bitmask")}
    # 3 blocks x (4 attention Linears + 2 fused expert tensors); the router and the LM head stay dense
    assert len(compressed) == 3 * 6
    assert "model.layers.0.mlp.experts.gate_up_proj" in compressed and "lm_head.weight" in keys
    assert not any(k.startswith("model.layers.0.mlp.gate.") and k.endswith(".bitmask") for k in keys)


def cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def saved(workspace, tmp_path_factory):
    """A Wanda 50% run on the tiny model with save=true."""
    models = tmp_path_factory.mktemp("models")
    args = [*tiny_overrides(workspace, "export-runs"), "criterion=wanda", "sparsity=0.5", "save=true",
            f"export.dir={models}"]
    done = cli("experiments.run", *args)
    assert done.returncode == 0, done.stderr
    record_path = Path(done.stdout.split("record: ")[1].splitlines()[0])
    folder = Path(done.stdout.split("model: ")[1].splitlines()[0])
    return args, record_path, folder, done.stdout


def test_save_on_a_run_writes_a_checked_folder(saved):
    args, record_path, folder, stdout = saved
    assert folder.parent.name.startswith("models") and folder.name == record_path.stem
    assert {"config.json", "model.safetensors", "tokenizer.json", "run_record.json", "export.json",
            "README.md"} <= {p.name for p in folder.iterdir()}
    record = json.loads(record_path.read_text())
    info = json.loads((folder / "export.json").read_text())
    check = info["load_check"]
    assert check["same_ppl"] and check["ppl"] == record["metrics"]["ppl"] == info["ppl_exported"]
    assert check["same_zeros"] and check["matrices"] == len(record["sparsity"]["per_matrix"]) == 21
    assert check["loader"] == "transformers AutoModelForCausalLM.from_pretrained"
    assert json.loads((folder / "run_record.json").read_text()) == record
    zeros = {k.removesuffix(".weight"): m["zeros"] / m["numel"] for k, m in info["matrices"].items()}
    assert zeros == record["sparsity"]["per_matrix"]
    assert info["format"] == "hf" and info["sizes"]["weights_bytes"] == info["sizes"]["dense_weights_bytes"]
    assert "An ordinary Hugging Face checkpoint" in (folder / "README.md").read_text() and "same zeros" in stdout
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_an_existing_folder_is_refused_before_any_work(saved):
    args, record_path, folder, _ = saved
    before = (folder / "export.json").read_text()
    for done in (cli("experiments.run", *args, "force=true"), cli("experiments.export", str(record_path), f"out={folder}")):
        assert done.returncode == 2 and f"{folder} exists; pass overwrite=true" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert (folder / "export.json").read_text() == before
    assert json.loads(record_path.read_text())["key"] in before


def test_a_record_is_pruned_again_into_the_same_model(saved, tmp_path):
    _, record_path, folder, _ = saved
    done = cli("experiments.export", str(record_path), f"out={tmp_path / 'again'}")
    assert done.returncode == 0, done.stderr
    first = json.loads((folder / "export.json").read_text())
    second = json.loads((tmp_path / "again" / "export.json").read_text())
    assert second["matrices"] == first["matrices"] and second["load_check"]["ppl"] == first["load_check"]["ppl"]
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_a_reproduction_that_differs_from_the_record_writes_nothing(saved, tmp_path):
    _, record_path, _, _ = saved
    record = json.loads(record_path.read_text())
    name = next(iter(record["sparsity"]["per_matrix"]))
    record["sparsity"]["per_matrix"][name] = 0.25
    altered = tmp_path / record_path.name
    altered.write_text(json.dumps(record))
    done = cli("experiments.export", str(altered), f"out={tmp_path / 'out'}")
    assert done.returncode == 2 and "differs from it: 1 matrices" in done.stderr and name in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [altered.name]


def test_refused_exports_are_one_line(saved, workspace, tmp_path):
    args, record_path, _, _ = saved
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps({"status": "failed", "error": "UserError: bad data", "config": {}}))
    dense = cli("experiments.run", *tiny_overrides(workspace, "export-runs"), "criterion=none")
    dense_record = dense.stdout.split("record: ")[1].splitlines()[0]
    cases = [([str(failed)], "is not a finished run (UserError: bad data)"),
             ([str(tmp_path / "none.json")], "no run record at"),
             ([*args[:-2], "sparsity=0.6"], "no run record at"),
             ([dense_record], "the dense model has nothing pruned"),
             ([str(record_path), "format=bitmask-24"], "holds 2:4 sparsity only"),
             ([str(record_path), "format=sparse-24-bitmask"], "'sparse-24-bitmask' is now 'bitmask-24'"),
             ([str(record_path), "overwrite=maybe"], "overwrite must be true or false")]
    for argv, message in cases:
        done = cli("experiments.export", *argv, f"out={tmp_path / 'x'}")
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, (argv, done.stderr)
    assert not (tmp_path / "x").exists()


def test_two_four_run_exports_as_a_24_archive_that_plain_transformers_refuses(workspace, tmp_path):
    args = [*tiny_overrides(workspace, "export-runs"), "criterion=sparsegpt", "sparsity=0.5", "pattern=2:4",
            "save=true", f"export.dir={tmp_path}", "export.format=bitmask-24"]
    done = cli("experiments.run", *args)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.split("model: ")[1].splitlines()[0])
    info = json.loads((folder / "export.json").read_text())
    check = info["load_check"]
    assert info["format"] == checkpoint.BITMASK_24 and check["same_ppl"] and check["same_zeros"]
    assert info["load_check"]["loader"] == "dlp.storage.checkpoint.load_archive"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "dlp-sparse-archive" and "quantization_config" not in config
    archive = config["dlp_sparse_archive"]
    assert (archive["format"], archive["base_model_type"], archive["loader"]) == (
        "bitmask-24", "llama", "dlp.storage.checkpoint.load_archive")
    assert archive["sparsity"] == 0.5 and archive["compressed_matrices"] == 21
    assert "load_archive" in (folder / "README.md").read_text()
    plain = subprocess.run([sys.executable, "-c", "import sys; from transformers import AutoModelForCausalLM; "
                            "AutoModelForCausalLM.from_pretrained(sys.argv[1])", str(folder)],
                           capture_output=True, text=True)
    assert plain.returncode != 0 and "dlp-sparse-archive" in plain.stderr
    shutil.rmtree(folder)


def test_an_export_converts_to_an_archive_and_back_to_the_same_weights(saved, tmp_path):
    from safetensors.torch import load_file
    _, _, folder, _ = saved
    done = cli("experiments.export", "convert", str(folder), "to=bitmask", f"out={tmp_path / 'archive'}")
    assert done.returncode == 0 and "loaded back with the same weights" in done.stdout, done.stderr
    archive = json.loads((tmp_path / "archive" / "export.json").read_text())
    original = json.loads((folder / "export.json").read_text())
    assert archive["format"] == "bitmask" and archive["converted_from"]["format"] == "hf"
    assert archive["matrices"] == original["matrices"] and archive["sizes"]["ratio_to_dense"] < 0.9
    assert (tmp_path / "archive" / "run_record.json").read_text() == (folder / "run_record.json").read_text()
    done = cli("experiments.export", "convert", str(tmp_path / "archive"), "to=hf", f"out={tmp_path / 'hf'}")
    assert done.returncode == 0, done.stderr
    back, first = load_file(tmp_path / "hf" / "model.safetensors"), load_file(folder / "model.safetensors")
    assert back.keys() == first.keys() and all(torch.equal(back[k], first[k]) for k in first)
    assert (tmp_path / "hf" / "config.json").read_text() == (folder / "config.json").read_text()
    for argv, message in ((["convert", str(folder), "to=hf"], "is already in format hf"),
                          (["convert", str(folder), "to=bitmask-24"], "holds 2:4 sparsity only"),
                          (["convert", str(tmp_path)], "is not a folder this suite exported"),
                          (["convert"], "usage: python -m experiments.export convert FOLDER")):
        done = cli("experiments.export", *argv)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, (argv, done.stderr)


def test_two_four_speed_is_not_claimed_without_a_capable_gpu(tmp_path):
    """Without a CUDA device of compute capability 8.0 the 2:4 speed bench says why and measures nothing."""
    from experiments.bench import sparse24 as bench_sparse24
    if bench_sparse24.unavailable() is None:
        pytest.skip("a capable GPU is here: tests/test_gpu.py measures")
    done = cli("experiments.bench.sparse24", "--out", str(tmp_path / "sparse24"))
    assert done.returncode == 0 and "speed not measured" in done.stdout and len(done.stdout.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
