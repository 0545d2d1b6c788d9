"""LoRA recovery under the mask: the masked merge keeps every zero where PEFT's plain merge fills them in, masked
training is the merged model's own function, and the command line records a recovery (and refuses bad input)."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from tiny import tiny_ids, tiny_model

from dlp.methods import masked_lora
from dlp.methods.masks import lowest_per_row, zero_where
from dlp.walk.structure import find_blocks, find_linears
from experiments.recover import learning_rate, lora_targets

ROOT = Path(__file__).resolve().parent.parent


def pruned_llama():
    model = tiny_model("llama")
    for block in find_blocks(model).blocks:
        for layer in find_linears(block).values():
            w = layer.weight.data
            w.copy_(zero_where(w, lowest_per_row(w.abs(), 0.5)))
    return model


def with_adapters(model, masked: bool, dropout: float = 0.0, steps: int = 3):
    """LoRA on every pruned Linear, trained a few steps (B starts at zero: untrained adapters change nothing)."""
    from peft import LoraConfig, get_peft_model
    names = masked_lora.pruned_linear_names(model)
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=names))
    if masked:
        masked_lora.mask_training(peft_model)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    ids = tiny_ids(4, 16)
    for _ in range(steps):
        peft_model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return peft_model.eval(), names


def test_masked_merge_keeps_every_zero_where_a_plain_merge_fills_them():
    model = pruned_llama()
    names = masked_lora.pruned_linear_names(model)
    assert len(names) == 3 * 7
    before = masked_lora.zero_counts(model, names)
    weights = {n: dict(model.named_modules())[n].weight.detach().clone() for n in names}
    peft_model, _ = with_adapters(model, masked=False)
    layers = masked_lora.lora_layers(peft_model)
    deltas = {n: (l.lora_B["default"].weight @ l.lora_A["default"].weight * l.scaling["default"]).detach()
              for n, l in layers.items()}

    plain = copy.deepcopy(peft_model).merge_and_unload()
    plain_zeros = masked_lora.zero_counts(plain, names)
    assert all(plain_zeros[n] < before[n] for n in names)  # PEFT's merge fills the pruned weights back in

    merged = masked_lora.merge_through_mask(peft_model)
    assert masked_lora.zero_counts(merged, names) == before
    modules = dict(merged.named_modules())
    for n in names:  # kept weights get exactly W + s·B·A, pruned ones stay +0.0
        w, keep = weights[n], weights[n] != 0
        want = torch.where(keep, w + deltas[n], w)
        assert torch.equal(modules[n].weight.view(torch.int32), want.view(torch.int32)), n
        assert not torch.equal(modules[n].weight, w)
    assert not any("lora" in name for name, _ in merged.named_modules())


def test_masked_training_trains_the_function_the_merge_gives():
    peft_model, names = with_adapters(pruned_llama(), masked=True)
    ids = tiny_ids(2, 16, seed=5)
    with torch.no_grad():
        trained = peft_model(input_ids=ids).logits
    merged = masked_lora.merge_through_mask(peft_model)
    with torch.no_grad():
        assert torch.equal(merged(input_ids=ids).logits, trained)


def test_masked_training_refuses_adapter_dropout():
    with pytest.raises(ValueError, match="lora_dropout = 0"):
        with_adapters(pruned_llama(), masked=True, dropout=0.1, steps=0)


def test_learning_rate_schedule_by_hand():
    rec = {"lr": 1.0, "warmup_steps": 2, "steps": 6}
    assert [learning_rate(s, rec) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert [learning_rate(s, {**rec, "warmup_steps": 0}) for s in range(3)] == [1.0, 5 / 6, 4 / 6]


def test_lora_targets():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.up_proj"]
    assert lora_targets(names, "all") == names
    assert lora_targets(names, ["q_proj", "v_proj"]) == names[:2]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.recover", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def apart(workspace):
    """Calibration text other than the evaluation text (recovery trains on the calibration corpus)."""
    train = workspace / "train.txt"
    train.write_text((workspace / "docs.txt").read_text()[::-1])
    return [*tiny_overrides(workspace, "recovery-runs"), f"data.path={train}", "criterion=wanda", "sparsity=0.5",
            f"recovery.results_dir={workspace / 'recovery'}", "recovery.seqlen=32", "recovery.steps=6",
            "recovery.batch_size=4", "recovery.micro_batch_size=2", "recovery.lr=1e-2"]


def test_recovery_records_before_and_after_with_every_zero_kept(apart):
    run = subprocess.run([sys.executable, "-m", "experiments.run", *apart[:-6]], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    done = cli(*apart)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.split("record: ")[1].strip())
    result = json.loads(path.read_text())
    run_record = json.loads(Path(result["run_record"]).read_text())
    m = result["metrics"]
    assert m["ppl_before"] == m["ppl_reproduced"] == run_record["metrics"]["ppl"]
    assert m["ppl_after"] < m["ppl_before"] and m["ppl_with_unmerged_adapters"] is None
    assert result["zeros"] == {"matrices": 21, "all_kept": True, "before": result["zeros"]["before"],
                               "after": result["zeros"]["before"]}
    assert result["tokens"] == 6 * 4 * 32 and len(result["losses"]) == 6 and result["lora_layers"] == 21
    assert result["training_data"]["name"] == "file:train.txt" and result["training_data"]["windows"] == 24
    # rank 8 on q 64→64, k 64→32, v 64→32, o 64→64, gate/up 64→128, down 128→64: 8·(in + out) each, 3 blocks
    assert result["trainable_parameters"] == 3 * 8 * (128 + 96 + 96 + 128 + 192 + 192 + 192)
    again = cli(*apart)
    assert "reused" in again.stdout and json.loads(path.read_text())["started_unix"] == result["started_unix"]
    unmasked = cli(*apart, "recovery.mask_training=false")
    assert unmasked.returncode == 0, unmasked.stderr
    assert "unmerged adapters" in unmasked.stdout and "zeros kept in all 21 matrices" in unmasked.stdout


@pytest.mark.parametrize("extra,message", [
    (["recovery.steps=0"], "recovery.steps must be a positive integer"),
    (["recovery.micro_batch_size=3"], "must be a multiple of recovery.micro_batch_size"),
    (["recovery.dropout=0.05"], "takes no adapter dropout"),
    (["recovery.targets=[nothing]"], "names none of the pruned Linears"),
    (["sparsity=0.6"], "no run record at"),
])
def test_bad_recovery_input_is_one_line(apart, extra, message):
    done = cli(*apart, *extra)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_training_on_the_evaluation_text_is_refused(workspace):
    args = [*tiny_overrides(workspace, "recovery-runs"), "criterion=magnitude", "sparsity=0.5",
            f"recovery.results_dir={workspace / 'recovery'}"]
    assert subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=ROOT, capture_output=True).returncode == 0
    done = cli(*args)
    assert done.returncode == 2 and "is the evaluation text" in done.stderr, done.stderr


def test_recovery_table_rows(apart, tmp_path):
    from experiments import recovery_table
    extra = [a for a in apart if not a.startswith(("criterion=", "sparsity="))]
    md, rows = recovery_table.build("smollm2-135m", "cpu", [0], extra, tmp_path, criteria=["wanda"],
                                    allocations=["uniform", "dlp"], sparsities=[0.5])
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0] == "| Criterion | Sparsity | Allocation | Seed | Before | After LoRA | Change | Zeros kept |"
    assert [line.split(" | ")[2] for line in lines[1:]] == ["Uniform", "DLP"]
    assert all(line.endswith("all 21 matrices |") for line in lines[1:])
    for row, line in zip(rows, lines[1:]):
        m = row["result"]["metrics"]
        assert f"| {m['ppl_before']:.2f} | {m['ppl_after']:.2f} |" in line
    assert "6 steps of 4 x 32 tokens (768 tokens)" in md
    assert len((tmp_path / "recovery.csv").read_text().splitlines()) == 3


def test_recovery_table_of_finished_records_runs_nothing(apart, tmp_path):
    """--finished-only: each row is what is recorded (waiting for its pruning, then for its recovery, then its
    numbers), nothing runs, and the table goes under its .partial names while a row waits."""
    from experiments import recovery_table
    own = [f"results_dir={tmp_path / 'runs'}", f"recovery.results_dir={tmp_path / 'recovery'}"]
    extra = [a for a in apart if not a.startswith(("criterion=", "sparsity=", "results_dir=", "recovery.results_dir="))]
    extra += own

    def peek():
        md, rows = recovery_table.build("smollm2-135m", "cpu", [0], extra, tmp_path / "out", criteria=["wanda"],
                                        allocations=["uniform", "dlp"], sparsities=[0.5], finished_only=True)
        return md, [r.get("waiting") for r in rows]

    assert peek()[1] == ["pruned run", "pruned run"] and not (tmp_path / "runs").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["recovery.partial.csv", "recovery.partial.md"]
    cell = [*extra, "criterion=wanda", "sparsity=0.5", "allocation=uniform"]
    assert subprocess.run([sys.executable, "-m", "experiments.run", *cell], cwd=ROOT).returncode == 0
    assert peek()[1] == ["recovery", "pruned run"] and not (tmp_path / "recovery").exists()
    done = cli(*cell)
    assert done.returncode == 0, done.stderr
    result = json.loads(Path(done.stdout.split("record: ")[1].strip()).read_text())
    md, waiting = peek()
    assert waiting == [None, "pruned run"]
    m = result["metrics"]
    rows = [line for line in md.splitlines() if line.startswith("| Wanda")]
    assert rows == [f"| Wanda | 50% | Uniform | 0 | {m['ppl_before']:.2f} | {m['ppl_after']:.2f} | "
                    f"{m['ppl_after'] / m['ppl_before'] - 1:+.1%} | all 21 matrices |",
                    "| Wanda | 50% | DLP | 0 | not run |  |  | waits for its pruned run |"]
    assert '1 row without a recovery record yet read "not run"' in md
    assert not (tmp_path / "out" / "recovery.md").exists()


def test_recovered_model_is_exported_with_its_zeros(apart, tmp_path):
    done = cli(*apart, "recovery.save=true", f"export.dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.split("model: ")[1].strip())
    result = json.loads((folder / "recovery_record.json").read_text())
    info = json.loads((folder / "export.json").read_text())
    assert info["ppl_exported"] == result["metrics"]["ppl_after"] == info["load_check"]["ppl"]
    assert info["load_check"]["same_zeros"] and result["zeros"]["all_kept"]
    assert sum(m["zeros"] for m in info["matrices"].values()) == result["zeros"]["after"]
    assert "after LoRA recovery merged through the mask" in (folder / "README.md").read_text()
    again = cli(*apart, "recovery.save=true", f"export.dir={tmp_path}")
    assert again.returncode == 2 and "exists; pass overwrite=true" in again.stderr
