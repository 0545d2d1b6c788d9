"""Bad input through the real command line: one line, exit status 2, no record, and no model loaded when the
check does not need one."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def files(workspace, tmp_path_factory):
    """Bad corpora, and a model folder with a config but no weights: loading it fails, so a run that reports the
    input's problem instead has refused before loading the model."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "blank.txt").write_text("   \n\n \t\n")
    (tmp / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (tmp / "latin1.txt").write_bytes("café au lait, crème brûlée\n".encode("latin-1") * 20)
    (tmp / "nul.txt").write_bytes(b"text\x00more text\n" * 20)
    weightless = tmp / "weightless"
    weightless.mkdir()
    for name in os.listdir(workspace / "model"):
        if not name.endswith(".safetensors"):
            shutil.copy(workspace / "model" / name, weightless / name)
    return tmp


def cli(workspace, *overrides, env=None):
    args = [sys.executable, "-m", "experiments.run", *tiny_overrides(workspace, results="bad-runs"), *overrides]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


ROWS = [  # (overrides, message); {f} is the folder of bad files
    (["criterion.name=foo"], "unknown criterion 'foo'"),
    (["criterion=bogus"], "criterion"),
    (["preset=fast"], "preset"),
    (["sparsity=1.0"], "sparsity must be in [0, 1) (got 1.0)"),
    (["sparsity=-0.1"], "sparsity must be in [0, 1) (got -0.1)"),
    (["sparsity=true"], "sparsity must be a number in [0, 1) (got True)"),
    (["pattern=2:4", "sparsity=0.7"], "2:4 prunes exactly 0.5"),
    (["model.path=/nonexistent/model"], "model path not found"),
    (["data.batch_size=0"], "batch_size must be a positive integer or 'auto', got 0"),
    (["data.batch_size=lots"], "batch_size must be a positive integer or 'auto', got 'lots'"),
    (["model.compute_dtype=int8"], "unknown compute_dtype 'int8'"),
    (["model.dtype=bfloat16", "model.compute_dtype=bfloat16"], "compute_dtype=bfloat16 needs dtype=float32"),
    (["sparsity=abc"], "sparsity must be a number in [0, 1) (got 'abc')"),
    (["data.path={f}/empty.txt"], "has no text (empty or only whitespace)"),
    (["data.path={f}/blank.txt"], "has no text (empty or only whitespace)"),
    (["data.path={f}/binary.bin"], "is not UTF-8 text (byte 0x80 at offset 128)"),
    (["eval.path={f}/binary.bin"], "is not UTF-8 text (byte 0x80 at offset 128)"),
    (["eval.path={f}/latin1.txt"], "is not UTF-8 text (byte 0xe9 at offset 3)"),
    (["eval.path={f}/nul.txt"], "is not a text file (it holds NUL bytes)"),
    (["eval.path={f}/missing.txt"], "text file not found"),
    (["eval.seqlen=4096"], "eval.seqlen=4096 is longer than the model's context of 2048 tokens"),
    (["data.seqlen=4096"], "data.seqlen=4096 is longer than the model's context of 2048 tokens"),
    (["eval.max_windows=0"], "eval.max_windows must be an integer >= 1 or null (got 0)"),
    (["pattern=4:4", "sparsity=1.0"], "pattern 4:4: need 0 < N < M"),
    (["pattern=5:4"], "pattern 5:4: need 0 < N < M"),
    (["data.batch_size=-1"], "batch_size must be a positive integer or 'auto', got -1"),
    (["data.batch_size=1.5"], "batch_size must be a positive integer or 'auto', got 1.5"),
    (["eval.batch_size=0"], "eval.batch_size must be an integer >= 1 (got 0)"),
    (["eval.batch_size=2.5"], "eval.batch_size must be an integer >= 1 (got 2.5)"),
    (["data.nsamples=-3"], "data.nsamples must be an integer >= 1 (got -3)"),
    (["seed=-1"], "seed must be an integer >= 0 (got -1)"),
]


@pytest.mark.parametrize("overrides,message", ROWS, ids=[" ".join(r[0]) for r in ROWS])
def test_bad_input_is_one_line_before_the_model_loads(workspace, files, overrides, message):
    runs = workspace / "bad-runs"
    shutil.rmtree(runs, ignore_errors=True)
    model = [] if any(o.startswith("model.path=") for o in overrides) else [f"model.path={files / 'weightless'}"]
    result = cli(workspace, *model, *(o.format(f=files) for o in overrides))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert not runs.exists() or not list(runs.glob("*.json"))  # refused: no record


def test_weightless_folder_fails_to_load(workspace, files):
    """The control for the test above: the same folder with valid input does get as far as loading, and fails."""
    result = cli(workspace, f"model.path={files / 'weightless'}")
    assert result.returncode == 2
    assert "could not load model" in result.stderr


def test_unreachable_hub_id_fails_at_once(workspace):
    """Offline (as HF_HUB_OFFLINE says, or as a failed connection finds), a hub id not in the local cache is one
    line, with no retries."""
    result = cli(workspace, "model.path=nobody/no-such-model",
                 env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(workspace / "empty-hf-home")})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "'nobody/no-such-model' is not a local folder, the Hugging Face hub is unreachable" in lines[0]


def test_the_same_text_elsewhere_finds_the_same_record(workspace, tmp_path):
    """A corpus enters the key by its content: copied to another folder and named by a relative path, it
    finds the record made from the original."""
    from experiments import records
    from experiments.config import compose_config

    base = [o for o in tiny_overrides(workspace) if not o.startswith(("data.path", "eval.path"))]
    original = compose_config(base + [f"data.path={workspace / 'docs.txt'}", f"eval.path={workspace / 'docs.txt'}"])
    shutil.copy(workspace / "docs.txt", tmp_path / "copy.txt")
    relative = os.path.relpath(tmp_path / "copy.txt")
    moved = compose_config(base + [f"data.path={relative}", f"eval.path={relative}"])
    assert records.run_key(moved) == records.run_key(original)
    (tmp_path / "copy.txt").write_text((workspace / "docs.txt").read_text() + "one more line\n")
    assert records.run_key(moved) != records.run_key(original)  # other text, another record
