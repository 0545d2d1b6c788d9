"""`python -m experiments.export RECORD.json [out=DIR] [format=hf] [overwrite=true] [check=false]`, or the run's
config overrides instead of the record (`model=... criterion=wanda sparsity=0.5 ...`), or `save=true` on a run:
the pruned model as an ordinary Hugging Face folder (`format=hf`, the default: the zeros in place, loadable by
any tool) or as a compact archive (`format=bitmask` / `bitmask-24`): dlp.storage.checkpoint says what each holds.
`python -m experiments.export convert FOLDER to=hf|bitmask|bitmask-24 [out=DIR]` turns one into the other.

The folder holds config.json, the weights, the tokenizer, `run_record.json` (the run's record: config,
provenance, per-block sparsities), `export.json` (format, per-matrix zeros and mask digests, sizes on disk, the
load-back check) and a model card (README.md).

Where the weights come from: the run itself (`save=true`), or the record's config pruned again (pruning is
deterministic). Reproduced weights must have the record's per-matrix sparsities, to the last bit, or nothing is
written. Before the folder is moved into place a new process loads it (`dlp.storage.models`, which decompresses every
matrix of an archive; plain transformers for an ordinary folder) and must get the exported model's perplexity
and exactly its zeros; every step writes into a staging folder beside the target, removed on any failure, so a
folder at the target is always complete.
"""
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from dlp.errors import UserError, first_line, last_line
from dlp.storage import checkpoint
from dlp.storage.io import write_json_atomic
from dlp.storage.models import source_config
from dlp.storage.paths import ROOT

from . import pipeline, records
from .commandline import one_line_errors
from .config import compose_config

OPTIONS = ("out", "format", "overwrite", "check", "to")
SIDE_FILES = ("run_record.json", "export.json", "recovery_record.json", "README.md")
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def target_folder(record_path: Path, options: dict) -> Path:
    """Where a run's model goes: `out` if given, else `<export.dir>/<the record file's name>`."""
    if options.get("out"):
        return Path(options["out"]).expanduser()
    return Path(options.get("dir") or ROOT / "results" / "models") / Path(record_path).stem


def check_target(folder: Path, options: dict) -> None:
    """A folder the export can create (or replace, with overwrite=true): never a file, under a writable folder."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder: choose another out=")
    if folder.exists() and not options.get("overwrite"):
        raise UserError(f"{folder} exists; pass overwrite=true to replace it")
    parent = folder.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {folder}: {parent} is not a writable folder")


def check_request(record_path: Path, cfg: dict, options: dict) -> str:
    """Everything that refuses an export before any work: a target folder already there, a dense model, a
    format the pattern does not fit. Returns the format."""
    if records.is_dense(cfg):
        raise UserError("the dense model has nothing pruned to compress: export a pruned run")
    if cfg.get("offload") == "disk":
        raise UserError("save=true with offload=disk: the pruned blocks are in the offload folder (offload_dir), one "
                        "safetensors file per block; the compressed export needs the model in memory (offload=cpu)")
    fmt = checkpoint.choose_format(cfg.get("pattern"), options.get("format") or checkpoint.HF)
    check_target(target_folder(record_path, options), options)
    return fmt


RECORD_FIELDS = ("key", "config", "metrics", "sparsity")  # what an export or a recovery reads of a record


def finished_record(path: Path) -> dict:
    """The finished run record at `path`; anything else (no file, a folder, unreadable, not JSON, not a run
    record, a failed run) is one line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no run record at {path}: run the config first (or add save=true to the run)")
    if not path.is_file():
        raise UserError(f"{path} is not a file: a run record is one JSON file (results/runs/*.json)")
    try:
        record = json.loads(path.read_bytes())
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:  # not UTF-8, or not JSON
        raise UserError(f"{path} is not a run record (not JSON text)") from None
    if not isinstance(record, dict):
        raise UserError(f"{path} is not a run record (JSON, but not an object)")
    if record.get("status") != "ok":
        raise UserError(f"{path} is not a finished run ({record.get('error', 'status ' + repr(record.get('status')))}): "
                        "nothing to export")
    missing = [k for k in RECORD_FIELDS if not isinstance(record.get(k), (dict, str))]
    if missing or not isinstance(record["config"].get("model"), dict):
        raise UserError(f"{path} is not a run record (no {', '.join(missing) or 'config.model'})")
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
    with staged(folder) as staging:
        matrices = save(model, staging, fmt, source_config(record["config"]["model"]["path"]))
        tokenizer.save_pretrained(staging)
        info = {"format": fmt, "record": str(record_path), "record_key": record["key"],
                "ppl_record": record["metrics"]["ppl"], "ppl_exported": measured["metrics"]["ppl"],
                "sizes": sizes(model, staging, fmt), "matrices": matrices, "exported_unix": started}
        write_json_atomic(staging / "run_record.json", record)
        if recovered:
            write_json_atomic(staging / "recovery_record.json", recovered)
        write_json_atomic(staging / "export.json", info)
        if options.get("check", True):
            info["load_check"] = load_back_in_new_process(staging)
            write_json_atomic(staging / "export.json", info)
        (staging / "README.md").write_text(model_card(record, info, recovered))
    return folder


@contextlib.contextmanager
def staged(target: Path):
    """A staging folder beside `target`, moved into place when the block ends (replacing a folder there, which
    overwrite=true allowed), removed on any failure: a folder at the target is always complete."""
    staging = target.parent / f".{target.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save(model, folder: Path, fmt: str, config: dict) -> dict:
    """The model in `fmt` (dlp.storage.checkpoint); each pruned matrix's zero count and mask digest."""
    if fmt == checkpoint.HF:
        return checkpoint.save_hf(model, folder, config)
    return checkpoint.save_archive(model, folder, fmt, config)


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def sizes(model, folder: Path, fmt: str, dense: int | None = None) -> dict:
    """Bytes of the folder's weights, against the same model as an ordinary checkpoint (`dense` when already
    known; else written and measured when the folder is an archive)."""
    written = weights_bytes(folder)
    if fmt == checkpoint.HF:
        dense = written
    elif dense is None:
        scratch = folder.parent / f".{folder.name}.dense-{os.getpid()}"
        try:
            model.save_pretrained(scratch)
            dense = weights_bytes(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return {"weights_bytes": written, "dense_weights_bytes": dense, "ratio_to_dense": written / dense}


def convert(folder: Path | None, options: dict) -> Path:
    """An exported folder in another format (`to`), written beside it (or at `out`): the same weights, bit for
    bit (checked by loading the result back), the tokenizer and the side files, `export.json` updated."""
    from transformers import AutoTokenizer

    if folder is None:
        raise UserError("usage: python -m experiments.export convert FOLDER to=hf|bitmask|bitmask-24 [out=DIR] "
                        "[overwrite=true]")
    folder = Path(folder)
    if not (folder / "export.json").is_file() or not (folder / "run_record.json").is_file():
        raise UserError(f"{folder} is not a folder this suite exported (no export.json and run_record.json)")
    if "format" in options:
        raise UserError("convert takes to= (the format to convert into), not format=")
    info, record = (json_object(folder / name) for name in ("export.json", "run_record.json"))
    fmt = checkpoint.choose_format(record["config"].get("pattern"), options.get("to") or checkpoint.HF)
    if fmt == info["format"]:
        raise UserError(f"{folder} is already in format {fmt}")
    target = Path(options["out"]).expanduser() if options.get("out") else folder.with_name(f"{folder.name}-{fmt}")
    check_target(target, options)
    config = source_config(str(folder))  # the source model's config (an archive's own type undone)
    model = load_folder(folder, config["dtype"])
    with staged(target) as staging:
        matrices = save(model, staging, fmt, config)
        back = load_folder(staging, config["dtype"]).state_dict()
        if matrices != info["matrices"] or any(not torch.equal(t, back[k]) for k, t in model.state_dict().items()):
            raise UserError(f"{folder}: the converted folder does not load back to the same weights; nothing written")
        AutoTokenizer.from_pretrained(folder).save_pretrained(staging)
        for name in SIDE_FILES:
            if (folder / name).exists():
                shutil.copy(folder / name, staging / name)
        info = {**info, "format": fmt, "converted_from": {"folder": str(folder), "format": info["format"]},
                "sizes": sizes(model, staging, fmt, dense=info["sizes"]["dense_weights_bytes"])}
        write_json_atomic(staging / "export.json", info)
        recovered = staging / "recovery_record.json"
        (staging / "README.md").write_text(model_card(record, info, json.loads(recovered.read_text())
                                                      if recovered.exists() else None))
    return target


def json_object(path: Path) -> dict:
    """A side file of an exported folder, or one line saying it is unreadable."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({first_line(exc)})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a JSON object")
    return value


def load_folder(folder: Path, dtype: str):
    """An exported folder's model: an archive by this suite's loader, an ordinary folder by plain transformers."""
    from transformers import AutoModelForCausalLM

    if checkpoint.archive_format(folder):
        return checkpoint.load_archive(folder, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


def load_back_in_new_process(folder: Path) -> dict:
    """Load the folder in a fresh interpreter (nothing shared with this process) and compare: perplexity on the
    run's evaluation data, and each matrix's zero count and mask digest. Raises UserError on any difference."""
    done = subprocess.run([sys.executable, "-m", "experiments.export", "--check", str(folder)], cwd=ROOT,
                          capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise UserError(f"the exported folder did not load back: {last_line(done.stderr)}")
    result = json.loads(lines[-1])
    if not result["same_ppl"] or not result["same_zeros"]:
        raise UserError(f"the exported folder loads back different: ppl {result['ppl']} against "
                        f"{result['ppl_exported']}, {len(result['zeros_differ'])} matrices with other zeros")
    return result


def check_folder(folder: Path) -> dict:
    """The load-back check itself, run in the new process."""
    from dlp.storage.models import load_model

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
    plain = "transformers AutoModelForCausalLM.from_pretrained"
    loader = checkpoint.LOADER if provenance.get("archive_format") else plain
    return {"loader": loader,
            "ppl": ppl, "ppl_exported": info["ppl_exported"], "same_ppl": ppl == info["ppl_exported"],
            "matrices": len(info["matrices"]), "same_zeros": not differ, "zeros_differ": differ[:5],
            "wall_s": time.time() - started}


def model_card(record: dict, info: dict, recovered: dict | None = None) -> str:
    cfg, sp = record["config"], record["sparsity"]
    prov = record.get("model_provenance", {})
    base = prov.get("id") or prov.get("origin") or prov.get("path") or cfg["model"]["path"]
    calib = record["data"].get("calibration", {})
    check = info.get("load_check")
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

{format_section(info)}
"""


def format_section(info: dict) -> str:
    sizes = info["sizes"]
    if info["format"] == checkpoint.HF:
        return f"""## Format and loading

An ordinary Hugging Face checkpoint: the pruned weights are zeros in place ({sizes['weights_bytes'] / 1e6:.1f} MB
of safetensors), under the source model's tensor names, with its config.json (only `dtype` set). Load it as
the source model: `AutoModelForCausalLM.from_pretrained("path/to/this/folder")`, `lm_eval --model hf
--model_args pretrained=path/to/this/folder`, or a serving engine. Unstructured zeros make it no faster or
smaller there: `python -m experiments.export convert path/to/this/folder to=bitmask` makes a compact archive.
`run_record.json` is the full run record; `export.json` lists every pruned matrix's zero count and mask digest.
"""
    return f"""## Format and loading

A compact archive (`{info['format']}`): each pruned matrix of the decoder blocks as its kept values and a packed
bitmask, everything else dense: {sizes['weights_bytes'] / 1e6:.1f} MB on disk against
{sizes['dense_weights_bytes'] / 1e6:.1f} MB as an ordinary checkpoint ({sizes['ratio_to_dense']:.3f}x). Its config.json has the model type
`{checkpoint.ARCHIVE_TYPE}`, so plain transformers refuses it. Load it with this suite:

```python
from dlp.storage.checkpoint import load_archive
model = load_archive("path/to/this/folder")
```

or make an ordinary checkpoint of it: `python -m experiments.export convert path/to/this/folder to=hf`.
`run_record.json` is the full run record; `export.json` lists every pruned matrix's zero count and mask digest.
"""


def recovery_text(recovered: dict | None) -> str:
    if not recovered:
        return ","
    rec, m = recovered["recovery"], recovered["metrics"]
    return (f", {m['ppl_after']:.4f} after LoRA recovery merged through the mask (rank {rec['rank']}, "
            f"{rec['steps']} steps, {recovered['tokens']} tokens, lr {rec['lr']}: recovery_record.json),")


def parse(argv: list[str]) -> tuple[list[str], dict]:
    """(the record path or the run's overrides, the export's options), each option checked as far as it can be
    without the record: true/false flags, format names."""
    rest, options = [], {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in OPTIONS:
            if key in ("overwrite", "check"):
                if value.lower() not in TRUE + FALSE:
                    raise UserError(f"{key} must be true or false (got '{value}')")
                value = value.lower() in TRUE
            elif key in ("format", "to"):
                checkpoint.check_format_name(value)
            options[key] = value
        else:
            rest.append(arg)
    return rest, options


def is_record_path(rest: list[str]) -> bool:
    """One argument that is no override (key=value): the path of a run record."""
    return len(rest) == 1 and "=" not in rest[0]


def record_to_export(rest: list[str], options: dict) -> tuple[Path, dict, dict]:
    """(record path, record, options) with every option checked against the run before any work: the format
    against its pattern, the target folder, the record itself. Named by the run's overrides, the run's config
    is checked before its record is looked for."""
    if is_record_path(rest):
        record_path = Path(rest[0])
        record = finished_record(record_path)
        check_request(record_path, record["config"], options)
        return record_path, record, options
    cfg = compose_config(rest)
    record_path = records.record_path(cfg)
    options = {"dir": cfg["export"]["dir"], **options}
    check_request(record_path, cfg, options)
    return record_path, finished_record(record_path), options


def command(argv: list[str]) -> None:
    rest, options = parse(argv)
    if rest[:1] == ["convert"]:
        folder = convert(Path(rest[1]) if len(rest) == 2 else None, options)
        sizes = json.loads((folder / "export.json").read_text())["sizes"]
        print(f"{folder}: weights {sizes['weights_bytes'] / 1e6:.1f} MB ({sizes['ratio_to_dense']:.3f}x dense), "
              "loaded back with the same weights")
        return
    if "to" in options:
        raise UserError("to= is convert's option (python -m experiments.export convert FOLDER to=...); an export "
                        "takes format=")
    record_path, record, options = record_to_export(rest, options)
    folder = export(record_path, record, options)
    print(summary(folder, json.loads((folder / "export.json").read_text())))


def main(argv: list[str]) -> None:
    if argv[:1] == ["--check"]:
        print(json.dumps(one_line_errors(lambda: check_folder(Path(argv[1])))))
        return
    one_line_errors(lambda: command(argv))


def summary(folder: Path, info: dict) -> str:
    sizes, check = info["sizes"], info.get("load_check")
    checked = ("not loaded back (check=false)" if check is None else
               f"loaded back in a new process: ppl {check['ppl']:.4f} (same), {check['matrices']} matrices with the same zeros")
    return (f"{info['format']}: weights {sizes['weights_bytes'] / 1e6:.1f} MB against {sizes['dense_weights_bytes'] / 1e6:.1f} MB "
            f"dense ({sizes['ratio_to_dense']:.3f}x); {checked}\nmodel: {folder}")


if __name__ == "__main__":
    main(sys.argv[1:])
