"""Runs that survive faults: kill -9 in the middle of a table, a lock whose holder died, two runs of the same
cell at once, truncated records and caches."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent
TABLE = ["--models", "smollm2-135m", "--preset", "cpu", "--sparsity", "0.7", "--criteria", "wanda,magnitude",
         "--allocations", "uniform,dlp", "--seeds", "0,1,2"]
CELLS = 1 + 4 * 3  # the dense row, and 2 criteria x 2 allocations x 3 seeds


def table_command(workspace, results, out, *launcher):
    return [sys.executable, "-m", "experiments.tables", "table1", *TABLE, "--out", str(out), *launcher,
            *tiny_overrides(workspace, results)]


def finished(folder: Path) -> set[str]:
    """Every record on disk must be complete JSON; the names of the finished ones."""
    done = set()
    for path in folder.glob("*.json"):
        record = json.loads(path.read_text())  # raises on a half-written record
        if record["status"] == "ok":
            done.add(path.name)
    return done


def kill_after_first_record(cmd, folder: Path, timeout=300):
    """Start `cmd` in a process group of its own and kill -9 the whole group once one record is finished."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if folder.exists() and finished(folder):
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # let the kernel reap the group's other processes
    return finished(folder)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["--launcher", "joblib", "hydra.launcher.n_jobs=2"]],
                         ids=["in-process", "joblib"])
def test_kill_9_mid_table_then_rerun_computes_only_the_rest(workspace, tmp_path, launcher):
    results = f"killed_{'joblib' if launcher else 'inprocess'}_runs"
    folder = workspace / results
    cmd = table_command(workspace, results, tmp_path, *launcher)
    before = kill_after_first_record(cmd, folder)
    assert 1 <= len(before) < CELLS, "the table finished before it could be killed"
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    after = finished(folder)
    assert len(after) == CELLS and before <= after
    if launcher:
        assert f"{CELLS - len(before)} cells without a finished record" in rerun.stdout
    else:
        assert rerun.stdout.count("(ran in ") == CELLS - len(before)  # every other cell is read from its record


def test_lock_of_a_killed_holder_is_free(tmp_path):
    from filelock import FileLock, Timeout

    from dlp.storage.locks import lock_path

    entry = tmp_path / "profile.json"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom dlp.storage.locks import computing\n"
                               f"with computing({str(entry)!r}, 'a test entry'):\n    print('held', flush=True)\n"
                               "    time.sleep(120)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    lock = FileLock(str(lock_path(entry)))
    with pytest.raises(Timeout):
        lock.acquire(timeout=0.2)  # held while the holder lives
    holder.kill()
    holder.wait()
    lock.acquire(timeout=5)  # and free as soon as it is killed
    lock.release()


def cli(workspace, results, *overrides):
    return subprocess.Popen([sys.executable, "-m", "experiments.run", *tiny_overrides(workspace, results), *overrides],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_of_one_cell_at_once_give_one_record(workspace):
    results = "concurrent_runs"
    procs = [cli(workspace, results, "criterion=sparsegpt", "allocation=dlp", "sparsity=0.6") for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    records = list((workspace / results).glob("*.json"))
    assert len(records) == 1
    assert sum("reused" in out for out, _ in outs) == 1  # one computed it, the other waited and read it
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert paths == {f"record: {records[0]}"}


def test_truncated_record_is_recomputed_with_one_warning(workspace):
    results = "truncated_runs"
    first = cli(workspace, results, "criterion=wanda", "sparsity=0.4")
    first.communicate(timeout=300)
    (path,) = (workspace / results).glob("*.json")
    complete = json.loads(path.read_text())
    path.write_text(path.read_text()[:200])
    again = cli(workspace, results, "criterion=wanda", "sparsity=0.4")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    warnings = [line for line in (out + err).splitlines() if "unreadable record" in line]
    assert len(warnings) == 1 and "recomputing it" in warnings[0]
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["started_unix"] > complete["started_unix"]
    assert record["metrics"]["ppl"] == complete["metrics"]["ppl"]


def test_truncated_profile_cache_is_recomputed_with_one_warning(workspace, tmp_path):
    env = {**os.environ, "DLP_CACHE": str(tmp_path)}
    args = [sys.executable, "-m", "experiments.run", *tiny_overrides(workspace, "truncated_profile_runs"),
            "criterion=wanda", "allocation=dlp"]
    subprocess.run([*args, "sparsity=0.5"], cwd=ROOT, env=env, capture_output=True, timeout=300, check=True)
    (profile,) = (tmp_path / "profiles").glob("*.json")
    blocks = json.loads(profile.read_text())["blocks"]
    profile.write_text(profile.read_text()[:100])
    done = subprocess.run([*args, "sparsity=0.6"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in (done.stdout + done.stderr).splitlines() if "corrupt profile cache" in line]
    assert len(warnings) == 1
    assert json.loads(profile.read_text())["blocks"] == blocks


def test_records_of_the_path_keyed_version_move_to_content_keys_once(workspace, capsys):
    """Records keyed by the data folder's path (before keys took corpora by content) are moved by the migration
    command to the content key when the text they recorded is the text read now (under either spelling of the
    path), then reused by runs; one made from other text is left where it is. Runs never look for old keys."""
    from experiments import migrate_records as migration, pipeline, records
    from experiments.config import compose_config

    cfg = compose_config([*tiny_overrides(workspace, "legacy_runs"), "criterion=magnitude", "sparsity=0.45"])
    path, record, _ = pipeline.run(cfg)
    legacy = records.record_path(cfg, migration.path_key(cfg))
    assert legacy != path
    path.rename(legacy)
    assert pipeline.finished_record(cfg, path) is None  # the hot path does not look for old keys
    assert migration.migrate_folder(path.parent) == 1
    assert not legacy.exists() and f"{legacy.name}: -> {path.name}" in capsys.readouterr().out
    again_path, again, reused = pipeline.run(cfg)
    assert reused and again_path == path and again["metrics"] == record["metrics"]
    assert again["key"] == records.run_key(cfg) and again["legacy_key"] == migration.path_key(cfg)
    assert migration.migrate_folder(path.parent) == 0  # once: a record keyed by content stays
    # Made with the same files written as relative paths (make passes the data folder that way): moved too.
    relative = {**cfg, **{name: {**cfg[name], "path": os.path.relpath(cfg[name]["path"])} for name in ("data", "eval")}}
    assert migration.path_key(relative) != migration.path_key(cfg)
    spelled = records.record_path(cfg, migration.path_key(relative))
    path.rename(spelled)
    assert migration.migrate(spelled)[0] == path and json.loads(path.read_text())["legacy_key"] == migration.path_key(relative)
    path.rename(spelled)
    legacy_record = json.loads(spelled.read_text())
    legacy_record["data"]["evaluation"]["sha256"] = "0" * 64  # made from other text
    spelled.write_text(json.dumps(legacy_record))
    assert migration.migrate(spelled) == (None, "a corpus it names holds other text now: left") and spelled.exists()
    unset = {**cfg, **{name: {**cfg[name], "data_dir": "", "path": None} for name in ("data", "eval")}}  # no paths
    assert migration.path_keys(unset) == [migration.path_key(unset)]
