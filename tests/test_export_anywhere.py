"""The default export of the embedded model loads in the tools people load models with, each in a fresh process:
plain transformers (the run's perplexity to the last digit, the same zeros), the evaluation harness's own
command line (the suite's per-example zero-shot answers), PEFT LoRA merged through the mask (every zero kept),
and what vLLM reads (the source model's config and tensor names); a compact archive refuses plain loading."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlp.storage.embedded import converted_folder
from dlp.storage.paths import ROOT

pytestmark = pytest.mark.e2e
TASKS = ["boolq", "arc_easy"]


def python(code: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Wanda 50% of the embedded model (cpu preset, 16 evaluation windows), zero-shot on boolq and arc_easy at limit
    20, exported in the default format by the run itself."""
    tmp = tmp_path_factory.mktemp("anywhere")
    done = subprocess.run([sys.executable, "-m", "experiments.run", "model=smollm2-135m", "preset=cpu",
                           "criterion=wanda", "sparsity=0.5", "eval.max_windows=16", "zeroshot.enabled=true",
                           f"zeroshot.tasks=[{','.join(TASKS)}]", "zeroshot.limit=20", "zeroshot.source=local",
                           "save=true", f"export.dir={tmp / 'models'}", f"results_dir={tmp / 'runs'}",
                           "progress=false", "wandb.mode=disabled"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(Path(done.stdout.split("record: ")[1].splitlines()[0]).read_text())
    folder = Path(done.stdout.split("model: ")[1].splitlines()[0])
    return tmp, record, folder


PLAIN = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, record = sys.argv[1], json.load(open(sys.argv[2]))
model = AutoModelForCausalLM.from_pretrained(folder).eval()  # nothing from this suite loads it
from dlp.evaluation.perplexity import perplexity
from experiments.pipeline import eval_corpus
ev = record["config"]["eval"]
ppl = perplexity(model, eval_corpus(record["config"]), AutoTokenizer.from_pretrained(folder), ev["seqlen"],
                 ev["max_windows"], ev["batch_size"], progress=False)["ppl"]
zeros = {k: int((t == 0).sum()) for k, t in model.state_dict().items()}
print(json.dumps({"ppl": ppl, "zeros": zeros, "class": type(model).__name__}))
"""


def test_plain_transformers_gives_the_runs_perplexity_and_zeros(exported, tmp_path):
    _, record, folder = exported
    (tmp_path / "record.json").write_text(json.dumps(record))
    done = python(PLAIN, folder, tmp_path / "record.json")
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["class"] == "LlamaForCausalLM"
    assert out["ppl"] == record["metrics"]["ppl"]  # to the last digit
    info = json.loads((folder / "export.json").read_text())
    assert len(info["matrices"]) == 210
    assert {k: out["zeros"][k] for k in info["matrices"]} == {k: m["zeros"] for k, m in info["matrices"].items()}


def test_the_harness_command_line_gives_the_suites_per_example_answers(exported, tmp_path):
    _, record, folder = exported
    from dlp.evaluation.zeroshot import write_harness_yamls
    names = write_harness_yamls(TASKS, tmp_path / "yamls")
    done = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                           f"pretrained={folder},dtype=float32,add_bos_token=False", "--tasks", ",".join(names),
                           "--include_path", str(tmp_path / "yamls"), "--limit", "20", "--batch_size", "8",
                           "--device", "cpu", "--log_samples", "--output_path", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    for task, name in zip(TASKS, names):
        (samples,) = (tmp_path / "out").rglob(f"samples_{name}_*.jsonl")
        rows = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda r: r["doc_id"])
        theirs = {"doc_hash": [r["doc_hash"][:16] for r in rows], "acc": [float(r["acc"]) for r in rows]}
        if all("acc_norm" in r for r in rows):  # the tasks that score it: both metrics kept, both equal
            theirs["acc_norm"] = [float(r["acc_norm"]) for r in rows]
        ours = record["metrics"]["zeroshot"]["tasks"][task]["examples"]
        assert len(ours["acc"]) == 20 and theirs == ours, task


LORA = """
import json, sys
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from dlp.methods.masked_lora import merge_through_mask, pruned_linear_names
folder = sys.argv[1]
torch.manual_seed(0)  # LoRA's random init: the same adapter every run
model = AutoModelForCausalLM.from_pretrained(folder)
names = pruned_linear_names(model)
peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=names, init_lora_weights=False))
optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
ids = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
for _ in range(2):
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
merged = merge_through_mask(peft_model)
before = AutoModelForCausalLM.from_pretrained(folder).state_dict()
after = merged.state_dict()
moved = sum(not torch.equal(after[f"{n}.weight"], before[f"{n}.weight"]) for n in names)
# A kept weight plus its update may round to exactly zero; what must hold is that every pruned zero stays one.
kept = {f"{n}.weight": int(((before[f"{n}.weight"] == 0) & (after[f"{n}.weight"] == 0)).sum()) for n in names}
print(json.dumps({"zeros": kept, "moved": moved, "adapted": len(names)}))
"""


def test_peft_lora_on_the_folder_merged_through_the_mask_keeps_every_zero(exported):
    _, _, folder = exported
    done = python(LORA, folder)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    info = json.loads((folder / "export.json").read_text())
    assert out["adapted"] == 210 and out["moved"] == 210  # every matrix trained and changed
    assert out["zeros"] == {k: m["zeros"] for k, m in info["matrices"].items()}


def test_what_vllm_reads_is_the_source_models(exported):
    """vLLM cannot run here: it reads config.json and the tensors' names and shapes, which must be the source
    checkpoint's (the config's dtype aside), with no quantization or sparsity config to refuse."""
    from safetensors import safe_open
    _, record, folder = exported
    source = converted_folder()
    ours, theirs = (json.loads((f / "config.json").read_text()) for f in (folder, source))
    assert {k: v for k, v in ours.items() if k != "dtype"} == {k: v for k, v in theirs.items() if k != "dtype"}
    assert ours["dtype"] == "float32" and not {"quantization_config", "sparsity_config"} & ours.keys()

    def tensors(f):
        with safe_open(f / "model.safetensors", "pt") as fh:
            return {k: fh.get_slice(k).get_shape() for k in fh.keys()}
    assert tensors(folder) == tensors(source)


def test_a_compact_archive_refuses_plain_loading_in_one_line(exported, tmp_path):
    _, _, folder = exported
    done = subprocess.run([sys.executable, "-m", "experiments.export", "convert", str(folder), "to=bitmask",
                           f"out={tmp_path / 'archive'}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    plain = python("import sys\nfrom transformers import AutoModelForCausalLM\n"
                   "try:\n    AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
                   "except Exception as exc:\n    print(str(exc).strip().splitlines()[0]); sys.exit(3)",
                   tmp_path / "archive")
    assert plain.returncode == 3 and "dlp-sparse-archive" in plain.stdout
    sizes = json.loads((tmp_path / "archive" / "export.json").read_text())["sizes"]
    assert sizes["ratio_to_dense"] < 0.65
