"""The command line: a real run on a tiny saved model, record reuse, and one clear line for bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import TEXT, save_tiny

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    save_tiny(tmp / "model")
    docs = tmp / "docs.txt"
    docs.write_text("\n".join(TEXT * (i + 1) for i in range(6)))
    return tmp


def cli(workspace, *overrides):
    args = [sys.executable, "-m", "experiments.run", f"model.path={workspace / 'model'}", "model.name=tiny",
            "data=file", f"data.path={workspace / 'docs.txt'}", "data.nsamples=4", "data.seqlen=64",
            "eval=file", f"eval.path={workspace / 'docs.txt'}", "eval.seqlen=64", "eval.max_windows=3",
            f"results_dir={workspace / 'runs'}", "progress=false", *overrides]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_run_writes_a_complete_record_and_reuses_it(workspace):
    first = cli(workspace, "criterion=wanda", "sparsity=0.5")
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip().splitlines()[-1].removeprefix("record: "))
    record = json.loads(path.read_text())
    assert record["status"] == "ok"
    assert record["config"]["criterion"]["name"] == "wanda"
    assert abs(record["sparsity"]["actual"] - 0.5) < 0.005 and record["sparsity"]["target_met"]
    assert record["sparsity"]["per_block_target"] == [0.5, 0.5, 0.5]
    assert record["metrics"]["eval"]["windows"] == 3
    assert record["data"]["calibration"]["name"] == "file:docs.txt" and record["data"]["calibration"]["tokens"] == 256
    assert len(record["data"]["evaluation"]["sha256"]) == 64 and record["data"]["evaluation"]["tokens"] > 0
    for key in ("load", "prune", "evaluation"):
        assert record["timings_s"][key] >= 0
    for key in ("python", "torch", "transformers", "commit"):
        assert key in record["environment"]
    assert record["peak_rss_bytes"] > 0
    second = cli(workspace, "criterion=wanda", "sparsity=0.5")
    assert "reused" in second.stdout
    assert json.loads(path.read_text())["started_unix"] == record["started_unix"]


def test_dense_is_one_record_however_asked(workspace):
    a = cli(workspace, "criterion=none")
    b = cli(workspace, "sparsity=0", "criterion=sparsegpt")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout.splitlines()[-1] == b.stdout.splitlines()[-1]
    assert "reused" in b.stdout


@pytest.mark.parametrize("overrides,message", [
    (["criterion.name=foo"], "unknown criterion 'foo'"),
    (["sparsity=1.0"], "sparsity must be in [0, 1)"),
    (["sparsity=-0.1"], "sparsity must be in [0, 1)"),
    (["pattern=2:4", "sparsity=0.7"], "2:4 prunes exactly 0.5"),
    (["model.path=/nonexistent/model"], "model path not found"),
    (["preset=fast"], "preset"),
    (["criterion=bogus"], "criterion"),
])
def test_bad_input_is_one_clear_line(workspace, overrides, message):
    result = cli(workspace, *overrides)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr


def test_failed_run_keeps_earlier_records(workspace):
    ok = cli(workspace, "criterion=magnitude", "sparsity=0.3")
    assert ok.returncode == 0, ok.stderr
    before = {p: p.read_bytes() for p in (workspace / "runs").glob("*.json")
              if json.loads(p.read_text())["status"] == "ok"}
    assert before
    cli(workspace, "model.path=/nonexistent/model")
    for p, data in before.items():
        assert p.read_bytes() == data
