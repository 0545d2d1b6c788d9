"""`python -m experiments.migrate_records [FOLDER]` (default results/runs): renames, once, the run records made
when a local corpus entered a record's key by its path, to the key that takes the corpus by its content.

A record is moved only when every local corpus it names still holds the text it recorded (sha256); one keyed
by the path as written or by the other spelling of the same place (absolute for relative and back, as `make`
and a shell may name one folder) is found either way. The moved record keeps its old key as `legacy_key`.
Runs never look for old keys themselves: this command is how records of that version are reused.
"""
import os
import sys
from pathlib import Path

from dlp.data import corpora
from dlp.errors import UserError
from dlp.storage.paths import ROOT

from . import pipeline, records
from .commandline import OneLineParser, one_line_errors


def path_key(cfg: dict) -> str:
    return records.short_hash(records.base_payload(cfg))


def path_keys(cfg: dict) -> list[str]:
    """The path-keyed keys this config may have had: the corpus paths as written, and as the other spelling."""
    keys = [path_key(cfg)]
    for spell in (os.path.abspath, os.path.relpath):
        other = {**cfg}
        for name in ("data", "eval"):
            section = cfg.get(name)
            if isinstance(section, dict):
                other[name] = {k: spell(v) if k in ("path", "data_dir") and isinstance(v, str) and v else v
                               for k, v in section.items()}  # "" is no folder (DLP_DATA_DIR unset): no spelling
        key = path_key(other)
        if key not in keys:
            keys.append(key)
    return keys


def same_corpora(record: dict, cfg: dict) -> bool:
    """Whether the local corpora the record names read today the text (sha256) it recorded."""
    for section, loader, recorded in (("eval", pipeline.eval_corpus, "evaluation"),
                                      ("data", pipeline.calibration_corpus, "calibration")):
        prov = record.get("data", {}).get(recorded)
        if prov is not None and corpora.local_file(cfg[section]) is not None:
            if prov.get("sha256") != loader(cfg).provenance()["sha256"]:
                return False
    return True


def migrate(path: Path) -> tuple[Path | None, str]:
    """(the record's new path or None, what was done) for one record file."""
    record = records.load_record(path, warn=False)
    if record is None:
        return None, "not a finished record: left"
    cfg, old = record["config"], path.stem.rsplit("_", 1)[-1]  # the key a file is found by ends its name
    try:
        key = records.run_key(cfg)
        if old == key:
            return None, "keyed by content already"
        if old not in path_keys(cfg):
            return None, "its key is not a path key of its config (another code version): left"
        if not same_corpora(record, cfg):
            return None, "a corpus it names holds other text now: left"
    except (OSError, UserError) as exc:
        return None, f"its corpora cannot be read ({exc}): left"
    target = path.with_name(records.record_path(cfg, key).name)
    if target.exists():
        return None, f"{target.name} holds that run already: left"
    records.save_record(target, {**record, "key": key, "legacy_key": old})
    path.unlink()
    return target, f"-> {target.name}"


def migrate_folder(folder: Path) -> int:
    """Migrate every record in `folder`, one line each; returns how many moved."""
    if not folder.is_dir():
        raise UserError(f"no folder of run records at {folder}")
    moved = 0
    for path in sorted(folder.glob("*.json")):
        target, said = migrate(path)
        moved += target is not None
        print(f"{path.name}: {said}")
    return moved


def main(argv=None) -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(ROOT / "results" / "runs"))
    moved = one_line_errors(lambda: migrate_folder(Path(parser.parse_args(argv).folder)))
    print(f"{moved} records moved to their content keys", file=sys.stderr)


if __name__ == "__main__":
    main()
