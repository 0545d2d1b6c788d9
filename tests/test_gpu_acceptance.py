"""The GPU acceptance job at toy size on the CPU: every stage of the real script runs and reports, so the job a
GPU machine gets cannot rot between its runs."""
import json
import os
import subprocess
import sys

import pytest

from dlp.storage.embedded import converted_folder
from dlp.storage.paths import ROOT

SCRIPT = ROOT / "experiments" / "gpu_acceptance.sh"


def acceptance(tmp_path, *args):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), "--size", "toy", "--tokenizer", str(converted_folder()),
                           "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_every_stage_runs_at_toy_size_and_reports(tmp_path):
    done = acceptance(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    summary = json.loads((out / "acceptance.json").read_text())
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [
        ("tests", "ok"), ("cli", "ok"), ("offload", "ok"), ("bench", "ok")]
    assert "skipped" in summary["stages"][0]["result"]  # no CUDA here: every device test skips, none fails
    cli = json.loads((out / "record-cli.json").read_text())
    assert (cli["status"], cli["allocation"]["name"], cli["config"]["criterion"]["name"]) == ("ok", "dlp", "wanda")
    assert cli["config"]["sparsity"] == 0.7 and cli["data"]["calibration"]["name"] == "c4-exllamav2"
    assert {t: v["n"] for t, v in cli["metrics"]["zeroshot"]["tasks"].items()} == {"boolq": 2, "arc_easy": 2}
    check = summary["stages"][1]["export"]["load_check"]
    assert check["same_ppl"] and check["same_zeros"]
    offload = json.loads((out / "record-offload.json").read_text())
    assert offload["offload"]["mode"] == "cpu" and offload["status"] == "ok"
    assert summary["stages"][2]["offload"]["mode"] == "cpu"
    assert {"bench-llama2-7b-gpu.md", "bench-llama2-7b-gpu.json"} <= {p.name for p in out.iterdir()}
    assert len(list(out.iterdir())) <= 8  # what a batch system that returns eight files brings back
    table = (out / "acceptance.md").read_text()
    assert "| cli | ok |" in table and "load-back same ppl True" in table


def test_a_job_out_of_time_skips_stages_and_says_so(tmp_path):
    done = acceptance(tmp_path, "--limit-s", "1")
    assert done.returncode == 1
    summary = json.loads((tmp_path / "out" / "acceptance.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["skipped: no time left"] * 4


def test_unknown_stage_is_one_line(tmp_path):
    done = acceptance(tmp_path, "--stages", "tests,nope")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown stage nope; choose from tests, cli, offload, bench"
