"""The 2:4 speed bench's pure-Python parts on a CPU: arguments, rows (with a fake timer and fake backends), the
report's lines and its closing sentence, and that a failing section leaves the earlier rows written."""
import itertools
import json

import pytest
import torch

from experiments.bench import sparse24 as b


def counting_timer():
    """A timer that runs the call once (so the code path is real) and returns 1, 2, 3, ... seconds in call order."""
    seconds = itertools.count(1)

    def timer(fn, repeats, warmup=3):
        fn()
        return float(next(seconds))
    return timer


def fake_convert(w, backend):
    """Backends on a CPU: `same` keeps the dense weight, `scaled` changes the product, `broken` raises."""
    if backend == "broken":
        raise RuntimeError("no kernel for this shape\nsecond line")
    return w.clone() if backend == "same" else w * 1.5


def mrow(matrix, batch, length, speedup, backend="cutlass", dtype="float16", error=None, timing="eager"):
    """A hand-made per-matrix row: dense at 1000 tokens/s, the sparse side at 1000 * speed-up."""
    return {"matrix": matrix, "shape": [4096, 4096], "batch": batch, "length": length, "dtype": dtype,
            "backend": backend, "timing": timing, "dense_tokens_per_s": 1000.0, "sparse_tokens_per_s": None if error else 1000.0 * speedup,
            "speedup": None if error else speedup, "dense_weight_bytes": 33_554_432,
            "sparse_weight_bytes": None if error else 18_874_368, "error": error}


def test_a_cpu_run_says_why_and_writes_nothing(tmp_path, capsys):
    if b.unavailable() is None:
        pytest.skip("a capable GPU is here")
    assert b.main(["--shape", "tiny", "--whole-model", "--out", str(tmp_path / "s24")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].endswith("speed not measured")
    assert list(tmp_path.iterdir()) == []


def test_arguments_defaults_sizes_and_errors():
    args = b.parse_args([])
    assert (args.shape, args.dtypes, args.backends, args.whole_model) == ("llama2-7b", "float16,bfloat16",
                                                                          "cutlass,cusparselt", False)
    assert b.sizes(args.prefill) == [(1, 2048), (16, 2048)] and args.decode_context == 512
    tiny = b.parse_args(["--shape", "tiny", "--whole-model"])
    assert b.sizes(tiny.prefill) == [(1, 64), (4, 64)] and tiny.decode_context == 32
    mine = b.parse_args(["--shape", "tiny", "--prefill", "2X16", "--decode-context", "8"])
    assert b.sizes(mine.prefill) == [(2, 16)] and mine.decode_context == 8
    assert b.ints("1,4,16") == [1, 4, 16]
    for bad in (["--dtypes", "float32"], ["--backends", "triton"]):
        with pytest.raises(SystemExit):
            b.parse_args(bad)


def test_two_four_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.5, 0.125, -0.25, 0.375]])
    assert b.prune_two_four(w).tolist() == [[0.0, -4.0, 3.0, 0.0, 0.5, 0.0, 0.0, 0.375]]
    w = b.two_four(8, 16, torch.float32, torch.device("cpu"))
    assert ((w.view(-1, 4) == 0).sum(1) >= 2).all()


def test_correctness_check_passes_the_same_product_and_names_a_wrong_or_failing_one():
    w = b.two_four(32, 64, torch.float32, torch.device("cpu"))
    same, scaled, broken = (b.check_product(w, k, fake_convert) for k in ("same", "scaled", "broken"))
    assert same["ok"] and same["max_rel_error"] == 0 and same["error"] is None
    assert not scaled["ok"] and scaled["max_rel_error"] == pytest.approx(0.5, rel=1e-5)
    assert scaled["error"].startswith("product differs from dense by 0.5")
    assert not broken["ok"] and broken["error"] == "RuntimeError: no kernel for this shape"


def test_matrix_rows_share_the_dense_time_and_report_a_failing_backend_in_its_rows():
    rows = b.measure({"proj": (32, 64)}, [1, 2], [4], torch.float32, 3, ("same", "broken", "skipped"),
                     skip={"skipped": "check failed"}, timer=counting_timer(), convert=fake_convert, device="cpu")
    assert [(r["batch"], r["backend"]) for r in rows] == [(1, "same"), (1, "broken"), (1, "skipped"),
                                                          (2, "same"), (2, "broken"), (2, "skipped")]
    # timer calls: dense 1 x 4 (1 s), same (2 s), dense 2 x 4 (3 s), same (4 s); failed backends are not timed
    assert [r["speedup"] for r in rows] == [0.5, None, None, 0.75, None, None]
    assert rows[0]["dense_tokens_per_s"] == rows[1]["dense_tokens_per_s"] == 4.0
    assert rows[3]["sparse_tokens_per_s"] == 2.0
    assert rows[1]["error"] == "RuntimeError: no kernel for this shape" and rows[2]["error"] == "check failed"
    assert rows[0]["dense_weight_bytes"] == rows[0]["sparse_weight_bytes"] == 32 * 64 * 4
    assert {r["timing"] for r in rows} == {"eager"}


def test_matrix_rows_whose_dense_side_fails_say_so():
    def timer(fn, repeats, warmup=3):
        raise RuntimeError("operation not permitted when stream is capturing")
    rows = b.measure({"proj": (32, 64)}, [1], [4], torch.float32, 3, ("same",), timer=timer, convert=fake_convert,
                     device="cpu", timing="graph")
    assert len(rows) == 1 and rows[0]["timing"] == "graph" and rows[0]["speedup"] is None
    assert rows[0]["error"] == "dense: RuntimeError: operation not permitted when stream is capturing"


def test_a_sparse_weight_gets_a_2d_forward_and_a_dense_one_gets_nn_linear_back():
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 4, bias=True)
    dense = linear.weight.data.clone()
    x = torch.randn(6, 3, 8).transpose(0, 1)  # 3 x 6 x 8, not contiguous
    expected = torch.nn.functional.linear(x, dense, linear.bias)
    close = lambda y: torch.allclose(y, expected, atol=1e-5)  # noqa: E731  (2-D and 3-D products sum in other orders)
    assert close(b.flat_linear(linear, x)) and b.flat_linear(linear, x).shape == (3, 6, 4)
    sparse_like = dense.clone()
    sparse_like.packed = sparse_like  # what marks a semi-structured weight
    b.set_weights([linear], [sparse_like])
    assert "forward" in vars(linear) and close(linear(x))
    b.set_weights([linear], [dense])
    assert "forward" not in vars(linear) and close(linear(x))


def test_whole_model_rows_on_a_tiny_model_with_fake_backends():
    model = b.build_model("tiny", torch.float32, torch.device("cpu"), layers=1)
    linears = b.decoder_linears(model)
    assert len(model.model.layers) == 1 and len(linears) == 7
    assert all(((l.weight.view(-1, 4) == 0).sum(1) >= 2).all() for l in linears)
    before = [l.weight for l in linears]
    cases = b.model_cases([(1, 16), (2, 16)], [2], 8)
    assert cases == [("prefill", 1, 16, 0), ("prefill", 2, 16, 0), ("decode", 2, 1, 8)]
    rows = b.model_rows(model, "float32", ["same", "scaled", "broken"], cases, repeats=2, model_repeats=2,
                        timer=counting_timer(), convert=fake_convert)
    assert [(r["phase"], r["backend"]) for r in rows] == [(p, k) for k in ("same", "scaled", "broken")
                                                          for p in ("prefill", "prefill", "decode")]
    # dense takes 1, 2, 3 s; `same` 4, 5, 6 s; `scaled` 7, 8, 9 s
    assert [r["speedup"] for r in rows[:6]] == [1 / 4, 2 / 5, 3 / 6, 1 / 7, 2 / 8, 3 / 9]
    assert rows[2]["dense_tokens_per_s"] == 2 / 3  # decode: one token per sequence per step
    assert rows[0]["logits_rel_diff"] == 0 and rows[3]["logits_rel_diff"] > 0 and rows[2]["logits_rel_diff"] is None
    assert all(r["error"] == "RuntimeError: no kernel for this shape" and r["speedup"] is None for r in rows[6:])
    assert all(l.weight.data_ptr() == w.data_ptr() for l, w in zip(b.decoder_linears(model), before))  # swapped back
    skipped = b.model_rows(model, "float32", ["same"], cases[:1], repeats=1, model_repeats=1, timer=counting_timer(),
                           convert=fake_convert, skip={"same": "RuntimeError: needs compute capability 8.x"})
    assert skipped[0]["error"] == "RuntimeError: needs compute capability 8.x" and skipped[0]["dense_s"] == 1.0


def test_whole_model_variants_past_the_budget_are_reported_not_run():
    model = b.build_model("tiny", torch.float32, torch.device("cpu"), layers=1)
    rows = b.model_rows(model, "float32", ["same"], [("prefill", 1, 8, 0)], repeats=1, model_repeats=1,
                        timer=counting_timer(), convert=fake_convert, deadline=0.0)
    assert rows[0]["dense_s"] == 1.0 and rows[0]["error"] == "not run: the time budget (--budget-s) was spent"


def test_table_lines_from_hand_made_rows():
    assert b.matrix_line(mrow("gate/up_proj", 16, 2048, 1.21)) == (
        "| gate/up_proj | 4096x4096 | 16 x 2048 | float16 | cutlass | eager | 1e+03 | 1.21e+03 | 1.21x | yes | 33.6 / 18.9 |")
    assert b.matrix_line(mrow("q/k/v/o_proj", 1, 1, 0.5, backend="cusparselt", dtype="bfloat16", timing="graph")) == (
        "| q/k/v/o_proj | 4096x4096 | 1 x 1 | bfloat16 | cusparselt | graph | 1e+03 | 500 | 0.50x | no | 33.6 / 18.9 |")
    assert b.matrix_line(mrow("down_proj", 1, 128, None, error="RuntimeError: no kernel")) == (
        "| down_proj | 4096x4096 | 1 x 128 | float16 | cutlass | eager | 1e+03 | — | — | not measured: RuntimeError: no kernel "
        "| 33.6 / — |")
    decode = b.model_row("decode", 16, 1, 512, "bfloat16", "cutlass", 0.02, 0.025, 12_952_010_752, 7_285_506_048)
    assert b.model_line(decode) == ("| decode | 16 x 1 (context 512) | bfloat16 | cutlass | 20.00 | 25.00 | 800 | 640 | "
                                    "0.80x | no | 12952.0 / 7285.5 | — |")
    prefill = b.model_row("prefill", 1, 2048, 0, "float16", "cusparselt", 0.2, 0.1, 1, 1, logits_rel_diff=0.001)
    assert b.model_line(prefill).startswith("| prefill | 1 x 2048 | float16 | cusparselt | 200.00 | 100.00 | ")
    assert b.model_line(prefill).endswith(" | 2.00x | yes | 0.0 / 0.0 | 0.001 |")


def test_summary_names_exactly_the_rows_where_2_4_pays_and_where_it_is_slower():
    rows = [mrow("q/k/v/o_proj", 1, 128, 0.04), mrow("gate/up_proj", 16, 2048, 1.21, timing="graph"),
            mrow("down_proj", 16, 2048, 0.99, backend="cusparselt"), mrow("down_proj", 4, 2048, None, error="x"),
            mrow("down_proj", 1, 1, 1.0), b.model_row("decode", 1, 1, 512, "bfloat16", "cutlass", 0.03, 0.02, 1, 1)]
    assert b.summary(rows) == (
        "2:4 pays (faster than dense) in 2 of 5 measured rows: gate/up_proj 16 x 2048 float16 cutlass graph, "
        "whole-model decode 1 x 1 bfloat16 cutlass eager; it is slower than dense in 2: q/k/v/o_proj 1 x 128 "
        "float16 cutlass eager, down_proj 16 x 2048 float16 cusparselt eager; 1 rows were not measured (see their "
        "Pays? cell).")
    assert b.summary([mrow("proj", 1, 1, 2.0)]) == (
        "2:4 pays (faster than dense) in 1 of 1 measured rows: proj 1 x 1 float16 cutlass eager; it is slower than "
        "dense in 0.")
    assert b.summary([mrow("proj", 1, 1, None, error="x")]).startswith("Nothing was measured")


def test_overview_counts_measured_and_paying_rows_per_backend_and_timing():
    rows = [mrow("q/k/v/o_proj", 1, 1, 0.05), mrow("down_proj", 16, 2048, 1.21), mrow("proj", 1, 1, None, error="x"),
            mrow("down_proj", 16, 2048, 1.47, timing="graph"), mrow("proj", 1, 1, None, backend="cutlass2", error="x"),
            b.model_row("decode", 16, 1, 512, "float16", "cutlass", 0.06, 0.2, 1, 1)]
    assert b.overview(rows) == [
        "| per matrix | float16 | cutlass | eager | 2 of 3 | 1 | 1.21x (down_proj 16 x 2048) | 0.05x (q/k/v/o_proj 1 x 1) |",
        "| per matrix | float16 | cutlass | graph | 1 of 1 | 1 | 1.47x (down_proj 16 x 2048) | 1.47x (down_proj 16 x 2048) |",
        "| per matrix | float16 | cutlass2 | eager | 0 of 1 | 0 | — | — |",
        "| whole model | float16 | cutlass | eager | 1 of 1 | 0 | 0.30x (decode 16 x 1) | 0.30x (decode 16 x 1) |"]


def test_report_states_machine_settings_checks_layers_and_ends_with_the_summary():
    meta = {"device": "NVIDIA H200", "capability": "9.0", "torch": "2.11.0", "cuda": "13.0",
            "settings": {"shape": "llama2-7b", "repeats": 20}, "errors": ["whole model: OutOfMemoryError: x"],
            "checks": [{"dtype": "float16", "backend": "cutlass", "max_rel_error": 0.0004, "tolerance": 0.01,
                        "ok": True, "error": None},
                       {"dtype": "float16", "backend": "cusparselt", "max_rel_error": None, "tolerance": 0.01,
                        "ok": False, "error": "RuntimeError: cuSPARSELt is not available in this torch build"}],
            "model": b.model_title("llama2-7b", 4)}
    rows = [mrow("gate/up_proj", 16, 2048, 1.21)]
    md = b.render(meta, rows, [b.model_row("prefill", 1, 2048, 0, "float16", "cutlass", 0.2, 0.4, 1, 1)])
    lines = md.splitlines()
    assert lines[0] == "# 2:4 semi-structured sparsity: where it pays on NVIDIA H200"
    assert "Machine: NVIDIA H200 (compute capability 9.0). Software: torch 2.11.0, cuda 13.0." in lines
    assert "Settings: shape llama2-7b; repeats 20." in lines
    assert "- float16 cutlass: max error 0.0004 of the largest output (tolerance 0.01): ok" in lines
    assert ("- float16 cusparselt: FAILED, not timed: RuntimeError: cuSPARSELt is not available in this torch build"
            in lines)
    assert any(l.startswith("## Whole model: ") and "4 of its 32 decoder layers only" in l for l in lines)
    assert b.model_title("llama2-7b", None).startswith("LLaMA-2-7B-shaped LlamaForCausalLM, random weights, all 32 ")
    assert b.matrix_line(rows[0]) in lines and "Not completed: whole model: OutOfMemoryError: x" in lines
    every = rows + [b.model_row("prefill", 1, 2048, 0, "float16", "cutlass", 0.2, 0.4, 1, 1)]
    assert lines[-1] == b.summary(every)
    assert lines[-4 - len(b.overview(every)):-2] == b.OVERVIEW_HEADER + b.overview(every)
    assert "| proj | 128x128 | 1 x 64 |" in b.report([dict(mrow("proj", 1, 64, 2.0), shape=[128, 128])], "gpu", "float16")


def test_a_spent_time_budget_skips_the_later_sections_and_is_no_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(b, "unavailable", lambda: None)
    monkeypatch.setattr(b, "machine", lambda args: {"device": "fake", "settings": {}, "checks": [], "errors": []})
    monkeypatch.setattr(b, "run_matrices", lambda args, meta, rows, whole, timing: rows.append(mrow("proj", 1, 1, 2.0)))
    assert b.main(["--whole-model", "--budget-s", "1e-9", "--out", str(tmp_path / "s24")]) == 0
    report = json.loads((tmp_path / "s24.json").read_text())
    assert report["errors"] == ["whole model: not run, the time budget (--budget-s) was spent",
                                "per matrix, CUDA graph: not run, the time budget (--budget-s) was spent"]
    assert len(report["matrix_rows"]) == 1


def test_a_failing_section_leaves_the_earlier_rows_written(tmp_path, monkeypatch, capsys):
    out = tmp_path / "s24"
    monkeypatch.setattr(b, "unavailable", lambda: None)
    monkeypatch.setattr(b, "machine", lambda args: {"device": "fake", "settings": b.settings(args), "checks": [],
                                                     "errors": []})
    writes = []
    real_save = b.save

    def save(*a):
        writes.append(out.with_suffix(".json").exists())
        return real_save(*a)

    def whole_model(*a):
        assert json.loads(out.with_suffix(".json").read_text())["matrix_rows"]  # already on disk
        raise RuntimeError("out of memory")
    monkeypatch.setattr(b, "save", save)
    monkeypatch.setattr(b, "run_matrices", lambda args, meta, rows, whole, timing: rows.append(mrow("proj", 1, 1, 2.0,
                                                                                                   timing=timing)))
    monkeypatch.setattr(b, "run_whole_model", whole_model)
    assert b.main(["--whole-model", "--out", str(out)]) == 1
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["errors"] == ["whole model: RuntimeError: out of memory"]
    assert [r["timing"] for r in report["matrix_rows"]] == ["eager", "graph"]  # the section after it still ran
    assert report["settings"]["prefill"] == "1x2048,16x2048" and "seconds" in report
    assert "Not completed: whole model: RuntimeError: out of memory" in out.with_suffix(".md").read_text()
    assert writes == [False, True, True, True]  # after each of the three sections, and at the end
