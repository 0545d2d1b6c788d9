"""`python -m experiments.export RECORD.json [out=DIR] [format=auto] [overwrite=true] [check=false]`, or the run's
config overrides instead of the record (`model=... criterion=wanda sparsity=0.5 ...`), or `save=true` on a run:
the pruned model as a Hugging Face folder in compressed-tensors' sparse layout (dlp.checkpoint).

The folder holds config.json (with the `quantization_config` naming the layout), model.safetensors, the
tokenizer, `run_record.json` (the run's record: config, provenance, per-block sparsities), `export.json` (format,
per-matrix zeros and mask digests, sizes on disk, the load-back check) and a model card (README.md).

Where the weights come from: the run itself (`save=true`), or the record's config pruned again (pruning is
deterministic). Reproduced weights must have the record's per-matrix sparsities, to the last bit, or nothing is
written. Before the folder is moved into place a new process loads it (`dlp.models`, which decompresses every
matrix) and must get the exported model's perplexity and exactly its zeros; every step writes into a staging
folder beside the target, removed on any failure, so a folder at the target is always complete.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dlp import checkpoint
from dlp.errors import UserError
from dlp.io import write_json_atomic
from dlp.paths import ROOT

from . import pipeline, records
from .commandline import one_line_errors
from .config import compose_config

OPTIONS = ("out", "format", "overwrite", "check")
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def target_folder(record_path: Path, options: dict) -> Path:
    """Where a run's model goes: `out` if given, else `<export.dir>/<the record file's name>`."""
    if options.get("out"):
        return Path(options["out"]).expanduser()
    return Path(options.get("dir") or ROOT / "results" / "models") / Path(record_path).stem


def check_target(folder: Path, options: dict) -> None:
    if folder.exists() and not options.get("overwrite"):
        raise UserError(f"{folder} exists; pass overwrite=true to replace it")


def check_request(record_path: Path, cfg: dict, options: dict) -> str:
    """Everything that refuses an export before any work: a target folder already there, a dense model, a
    format the pattern does not fit. Returns the format."""
    if records.is_dense(cfg):
        raise UserError("the dense model has nothing pruned to compress: export a pruned run")
    fmt = checkpoint.choose_format(cfg.get("pattern"), options.get("format") or "auto")
    check_target(target_folder(record_path, options), options)
    return fmt


def finished_record(path: Path) -> dict:
    if not Path(path).exists():
        raise UserError(f"no run record at {path}: run the config first (or add save=true to the run)")
    record = records.load_record(path)
    if record is None:
        try:
            error = json.loads(Path(path).read_text()).get("error", "unreadable")
        except (OSError, json.JSONDecodeError):
            error = "not a readable JSON record"
        raise UserError(f"{path} is not a finished run ({error}): nothing to export")
    return record


def reproduce(record: dict) -> tuple[dict, object, object]:
    """Prune again from the record's config; stop unless every matrix has the record's sparsity exactly."""
    cfg = {**record["config"], "progress": record["config"].get("progress", False)}
    hold = {}
    fresh = pipeline.execute(cfg, hold)
    want, got = record["sparsity"]["per_matrix"], fresh["sparsity"]["per_matrix"]
    differ = [name for name in want if got.get(name) != want[name]] + [name for name in got if name not in want]
    if differ:
        name = differ[0]
        raise UserError(f"the pruned model reproduced from the record differs from it: {len(differ)} matrices, "
                        f"e.g. {name} has sparsity {got.get(name)} against {want.get(name)} in the record "
                        "(another code version, data or machine); nothing written")
    return fresh, hold["model"], hold["tokenizer"]


def export(record_path: Path, record: dict, options: dict, model=None, tokenizer=None, measured: dict | None = None,
           recovered: dict | None = None) -> Path:
    """Write the run's model into its folder (see the module's doc). `model`/`tokenizer`/`measured` come from
    the run that just pruned it; without them the record's config is pruned again. `recovered`, a LoRA recovery
    record (experiments.recover), says that `model` is the recovered one: it is saved beside the run's record."""
    fmt = check_request(record_path, record["config"], options)
    folder = target_folder(record_path, options)
    started = time.time()
    if model is None:
        measured, model, tokenizer = reproduce(record)
    staging = folder.parent / f".{folder.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        matrices = checkpoint.save_sparse(model, staging, fmt)
        tokenizer.save_pretrained(staging)
        dense = staging.parent / f".{folder.name}.dense-{os.getpid()}"
        try:  # the size of the same model as an ordinary safetensors checkpoint, written and measured
            model.save_pretrained(dense)
            dense_bytes = sum(p.stat().st_size for p in dense.glob("*.safetensors"))
        finally:
            shutil.rmtree(dense, ignore_errors=True)
        info = {"format": fmt, "record": str(record_path), "record_key": record["key"],
                "ppl_record": record["metrics"]["ppl"], "ppl_exported": measured["metrics"]["ppl"],
                "sizes": {"weights_bytes": (staging / checkpoint.WEIGHTS).stat().st_size,
                          "dense_weights_bytes": dense_bytes},
                "matrices": matrices, "exported_unix": started}
        write_json_atomic(staging / "run_record.json", record)
        if recovered:
            write_json_atomic(staging / "recovery_record.json", recovered)
        info["sizes"]["ratio_to_dense"] = info["sizes"]["weights_bytes"] / dense_bytes
        write_json_atomic(staging / "export.json", info)
        if options.get("check", True):
            info["load_check"] = load_back_in_new_process(staging)
            write_json_atomic(staging / "export.json", info)
        (staging / "README.md").write_text(model_card(record, info, recovered))
        if folder.exists():  # overwrite=true, checked above
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def load_back_in_new_process(folder: Path) -> dict:
    """Load the folder in a fresh interpreter (nothing shared with this process) and compare: perplexity on the
    run's evaluation data, and each matrix's zero count and mask digest. Raises UserError on any difference."""
    done = subprocess.run([sys.executable, "-m", "experiments.export", "--check", str(folder)], cwd=ROOT,
                          capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise UserError(f"the exported folder did not load back: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    result = json.loads(lines[-1])
    if not result["same_ppl"] or not result["same_zeros"]:
        raise UserError(f"the exported folder loads back different: ppl {result['ppl']} against "
                        f"{result['ppl_exported']}, {len(result['zeros_differ'])} matrices with other zeros")
    return result


def check_folder(folder: Path) -> dict:
    """The load-back check itself, run in the new process."""
    from dlp.models import load_model

    folder = Path(folder)
    record = json.loads((folder / "run_record.json").read_text())
    info = json.loads((folder / "export.json").read_text())
    cfg = record["config"]
    started = time.time()
    model, tokenizer, provenance = load_model(str(folder), cfg["model"].get("dtype", "float32"),
                                              cfg["model"].get("device", "auto"), cfg["model"].get("device_map"),
                                              cfg["model"].get("compute_dtype"))
    state = model.state_dict()
    differ = [key for key, m in info["matrices"].items()
              if key not in state or int((state[key] == 0).sum()) != m["zeros"]
              or checkpoint.mask_digest(state[key]) != m["mask_sha256"]]
    ppl = pipeline.evaluate(model, tokenizer, {**cfg, "progress": False})["ppl"]
    return {"loader": provenance.get("sparse_format") and "dlp.checkpoint.load_sparse (transformers + compressed-tensors)",
            "ppl": ppl, "ppl_exported": info["ppl_exported"], "same_ppl": ppl == info["ppl_exported"],
            "matrices": len(info["matrices"]), "same_zeros": not differ, "zeros_differ": differ[:5],
            "wall_s": time.time() - started}


def model_card(record: dict, info: dict, recovered: dict | None = None) -> str:
    cfg, sp = record["config"], record["sparsity"]
    prov = record.get("model_provenance", {})
    base = prov.get("id") or prov.get("origin") or prov.get("path") or cfg["model"]["path"]
    calib = record["data"].get("calibration", {})
    check = info.get("load_check")
    sizes = info["sizes"]
    targets = ", ".join(f"{t:.3f}" for t in sp["per_block_target"])
    return f"""# {cfg['model']['name']} pruned with {cfg['criterion']['name']} / {cfg['allocation']['name']} at {sp['target']:.0%}

Made by dlp-bench from `{base}` ({cfg['model'].get('dtype', 'float32')}): criterion `{cfg['criterion']['name']}`,
allocation `{cfg['allocation']['name']}`, global sparsity {sp['target']} ({cfg.get('pattern') or 'unstructured'}),
calibration {calib.get('name', '?')} ({calib.get('nsamples', '?')} x {calib.get('seqlen', '?')} tokens, seed {cfg['seed']}),
commit {records.commit_label(record.get('environment', {}))}. Actual sparsity of the pruned matrices:
{sp['actual']:.4f}; per-block targets: {targets}.

Perplexity on {record['metrics']['eval_corpus']} ({record['metrics']['eval']['windows']} windows of
{record['metrics']['eval']['seqlen']} tokens): {record['metrics']['ppl']:.4f} in the run{recovery_text(recovered)}
{'' if check is None else f"and {check['ppl']:.4f} loaded back from this folder in a new process"}.

## Format

compressed-tensors `{info['format']}` (the decoder blocks' pruned matrices; embeddings, norms and the LM head
dense): weights {sizes['weights_bytes'] / 1e6:.1f} MB on disk against {sizes['dense_weights_bytes'] / 1e6:.1f} MB as an
ordinary safetensors checkpoint ({sizes['ratio_to_dense']:.3f}x).

## Loading

```python
from dlp.checkpoint import load_sparse
model = load_sparse("path/to/this/folder")        # or dlp.models.load_model("path/to/this/folder")
```

Plain `AutoModelForCausalLM.from_pretrained` does not decompress this layout (transformers 5 has no sparse
decompression) and would leave the pruned matrices randomly initialised. `run_record.json` is the full run
record; `export.json` lists every matrix's zero count and mask digest.
"""


def recovery_text(recovered: dict | None) -> str:
    if not recovered:
        return ","
    rec, m = recovered["recovery"], recovered["metrics"]
    return (f", {m['ppl_after']:.4f} after LoRA recovery merged through the mask (rank {rec['rank']}, "
            f"{rec['steps']} steps, {recovered['tokens']} tokens, lr {rec['lr']}: recovery_record.json),")


def parse(argv: list[str]) -> tuple[list[str], dict]:
    rest, options = [], {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in OPTIONS:
            if key in ("overwrite", "check"):
                if value.lower() not in TRUE + FALSE:
                    raise UserError(f"{key} must be true or false (got '{value}')")
                value = value.lower() in TRUE
            options[key] = value
        else:
            rest.append(arg)
    return rest, options


def main(argv: list[str]) -> None:
    if argv[:1] == ["--check"]:
        print(json.dumps(one_line_errors(lambda: check_folder(Path(argv[1])))))
        return
    rest, options = one_line_errors(lambda: parse(argv))
    if len(rest) == 1 and rest[0].endswith(".json"):
        record_path = Path(rest[0])
    else:
        cfg = compose_config(rest)
        record_path = records.record_path(cfg)
        options = {"dir": cfg["export"]["dir"], **options}

    folder = one_line_errors(lambda: export(record_path, finished_record(record_path), options))
    info = json.loads((folder / "export.json").read_text())
    print(summary(folder, info))


def summary(folder: Path, info: dict) -> str:
    sizes, check = info["sizes"], info.get("load_check")
    checked = ("not loaded back (check=false)" if check is None else
               f"loaded back in a new process: ppl {check['ppl']:.4f} (same), {check['matrices']} matrices with the same zeros")
    return (f"{info['format']}: weights {sizes['weights_bytes'] / 1e6:.1f} MB against {sizes['dense_weights_bytes'] / 1e6:.1f} MB "
            f"dense ({sizes['ratio_to_dense']:.3f}x); {checked}\nmodel: {folder}")


if __name__ == "__main__":
    main(sys.argv[1:])
