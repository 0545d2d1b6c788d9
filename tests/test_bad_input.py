"""Bad input through the real command line: one line, exit status 2, no record, and no model loaded when the
check does not need one."""
import json
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
    (["offload=gpu"], "unknown offload 'gpu'; choose one of none, cpu, disk"),
    (["offload=cpu", "model.device_map=auto"], "offload=cpu keeps one block on one device"),
    (["device_memory_gib=-2"], "device_memory_gib must be a positive number of GiB or null (got -2)"),
    (["device_memory_gib=10", "model.device=cpu"], "device_memory_gib=10 caps a CUDA device's memory; this run computes on cpu"),
    (["offload=disk", "model.path={f}/weightless"], "offload=disk reads the checkpoint's safetensors files, and"),
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


# Bad input to every entry point, run as a user types it in a copy of the repository with its default paths:
# one line, exit status 2, and every file under results/ (records, Hydra's and W&B's folders included) as it was.
# (module, arguments, message); {record}: a finished run record, {binary}: random bytes, {array}: a JSON list,
# {short}: a text whose documents are all shorter than the default seqlen, {file}: a plain file, {empty}: an empty
# folder.
ENTRY_POINT_ROWS = [
    ("run", ["foo=bar"], "unknown config key 'foo'"),
    ("run", ["-m", "sparsity=0.5,0.6", "foo=1,2"], "unknown config key 'foo'"),
    ("run", ["model.dtype=int8"], "unknown dtype 'int8'"),
    ("run", ["data=file", "data.path={short}"], "no document of file:short.txt is longer than seqlen=512 tokens"),
    ("run", ["save=true", "export.format=zip"], "unknown format 'zip'"),
    ("tables", ["table1", "--launcher", "nonexistent"], "unknown launcher 'nonexistent'; choose one of basic, joblib"),
    ("tables", ["table1", "--launcher", "joblib", "hydra.launcher.njobs=2"], "the launcher has no option 'njobs'"),
    ("tables", ["table2", "foo=bar"], "unknown config key 'foo'"),
    ("tables", ["table1", "--seeds", "0,a"], "seeds must be comma-separated integers such as 0,1,2 (got '0,a')"),
    ("tables", ["table1", "--seeds", "1,1"], "seeds must differ from each other (got '1,1')"),
    ("ablation", ["--sparsities", "0.6,1.5"], "sparsity must be in [0, 1) (got 1.5)"),
    ("ablation", ["--allocations", "uniform,nosuch"], "unknown allocation 'nosuch'"),
    ("curves", ["--criteria", "wanda,foo"], "unknown criterion 'foo'"),
    ("curves", ["--sparsities", "0.5,x"], "sparsities must be comma-separated numbers such as 0.6,0.7 (got '0.5,x')"),
    ("tables", ["table1", "hydra.launcher.n_jobs=2"], "is a launcher's option: name the launcher too"),
    ("ablation", ["--launcher", "nonexistent"], "unknown launcher 'nonexistent'"),
    ("ablation", ["model.dtype=int8"], "unknown dtype 'int8'"),
    ("curves", ["foo=bar"], "unknown config key 'foo'"),
    ("recovery_table", ["recovery.steps=0"], "recovery.steps must be a positive integer (got 0)"),
    ("plots", ["--launcher", "x"], "unrecognized arguments: --launcher"),
    ("plots", ["foo=bar"], "unknown config key 'foo'"),
    ("tables", ["table3"], "argument table: invalid choice: 'table3'"),
    ("export", ["{binary}"], "is not a run record (not JSON text)"),
    ("export", ["{array}"], "is not a run record (JSON, but not an object)"),
    ("export", ["criterion=wanda", "sparsity=0.5", "format=zip"], "unknown format 'zip'"),
    ("export", ["criterion=wanda", "sparsity=0.5", "format=bitmask-24"], "format bitmask-24 holds 2:4 sparsity only"),
    ("export", ["{record}", "out={file}"], "is a file, not a folder"),
    ("export", ["{record}", "check=maybe"], "check must be true or false (got 'maybe')"),
    ("export", ["criterion=wanda", "nokey=1"], "unknown config key 'nokey'"),
    ("fidelity", ["compare", "{empty}", "--source", "x"], "holds no dump (no run.json)"),
    ("fidelity", ["dump", "{empty}", "allocation=atp"], "dump runs an allocation that reads no trials"),
    ("fidelity", ["schedule", "{binary}", "--source", "x"], "is not a JSON list of cases"),
    ("run", ["eval.data_dir={empty}"], "has no wikitext-2-raw/wiki.test.raw"),
    ("export", ["criterion=wanda", "sparsity=0.5", "eval.data_dir={empty}"], "has no wikitext-2-raw/wiki.test.raw"),
    ("recover", ["{binary}"], "is not a run record (not JSON text)"),
    ("recover", ["{record}", "recovery.steps=0"], "recovery.steps must be a positive integer (got 0)"),
    ("recover", ["{record}", "recovery.save=true", "export.format=zip"], "unknown format 'zip'"),
    ("recover", ["{record}", "recovery.nokey=1"], "unknown config key 'recovery.nokey'"),
]


def tree_digest(folder: Path) -> dict:
    from dlp.storage.io import sha256_file

    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    """The repository's files (tracked, and new ones git does not ignore) and its whole results/ folder, plus an
    ignored record and Hydra and W&B files, in a temporary folder; the embedded model and assets from this
    checkout's cache."""
    from experiments.config import compose_config

    copy = tmp_path_factory.mktemp("repo")
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    shutil.copytree(ROOT / "results", copy / "results", dirs_exist_ok=True)
    cfg = compose_config(["criterion=wanda", "sparsity=0.5"])
    record = copy / "results" / "runs" / "smollm2-135m_wanda_uniform_s0.5_finished.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"status": "ok", "key": "finished", "config": cfg, "metrics": {"ppl": 64.6},
                                  "sparsity": {"per_matrix": {}}}))
    for name in ("hydra/2000-01-01/00-00-00/.hydra/config.yaml", "wandb/run-0/files/config.yaml"):
        (copy / "results" / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / "results" / name).write_text("kept: true\n")
    inputs = copy.parent / f"{copy.name}-inputs"
    inputs.mkdir()
    (inputs / "binary.json").write_bytes(bytes(range(256)) * 8)
    (inputs / "array.json").write_text("[1, 2, 3]")
    (inputs / "short.txt").write_text("a short document\nanother one\n" * 10)
    (inputs / "plain.txt").write_text("a file where a folder should be\n")
    (inputs / "empty").mkdir()
    places = {"record": record, "binary": inputs / "binary.json", "array": inputs / "array.json",
              "short": inputs / "short.txt", "file": inputs / "plain.txt", "empty": inputs / "empty"}
    return copy, places


@pytest.mark.parametrize("module,argv,message", ENTRY_POINT_ROWS,
                         ids=[f"{m} {' '.join(a)}" for m, a, _ in ENTRY_POINT_ROWS])
def test_bad_input_to_every_entry_point_leaves_results_as_they_were(repo_copy, module, argv, message):
    copy, places = repo_copy
    before = tree_digest(copy / "results")
    env = {**os.environ, "DLP_CACHE": str(ROOT / ".cache"), "WANDB_MODE": "disabled"}
    if env.get("DLP_DATA_DIR"):  # a relative folder names another place from the copy
        env["DLP_DATA_DIR"] = str(Path(env["DLP_DATA_DIR"]).resolve())
    done = subprocess.run([sys.executable, "-m", f"experiments.{module}", *(a.format(**places) for a in argv)],
                          cwd=copy, capture_output=True, text=True, timeout=300, env=env)
    said = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(said) == 1 and message in said[0], said
    assert tree_digest(copy / "results") == before


def test_fidelity_compare_refuses_a_dump_without_the_authors_result(tmp_path):
    """Each dumped tensor is paired with the authors' result of the same name; a missing one is one line."""
    import torch

    from dlp.errors import UserError
    from experiments.fidelity_dumps import dumped_pairs
    torch.save({"mask": torch.ones(2, dtype=torch.bool)}, tmp_path / "0.pt")
    torch.save({"mask": torch.zeros(2, dtype=torch.bool)}, tmp_path / "1.pt")
    (tmp_path / "theirs").mkdir()
    torch.save({"mask": torch.zeros(2, dtype=torch.bool)}, tmp_path / "theirs" / "0.pt")
    pairs = dumped_pairs(tmp_path, "[0-9]*.pt", "the authors' function")
    path, ours, theirs = next(pairs)
    assert path.name == "0.pt" and ours["mask"].all() and not theirs["mask"].any()
    with pytest.raises(UserError, match=r"theirs/1.pt is missing: run the authors' function on .*1.pt first"):
        next(pairs)
