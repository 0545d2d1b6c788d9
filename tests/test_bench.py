"""The benchmark's arithmetic and its report, on a tiny random model (no timing is asserted)."""
import json

import pytest
import torch
from conftest import tiny_overrides
from tiny import tiny_model

from dlp.registry import make_criterion
from dlp.walk.batching import auto_batch_size
from dlp.walk.stats import HESSIAN, SQNORM
from experiments.bench import run as bench
from experiments.bench.flops import forward_flops, shapes, statistics_flops
from experiments.bench.machine import phase


def test_flops_counted_from_shapes_by_hand():
    model = tiny_model("llama")  # hidden 64, MLP 128 (tiny.py), 4 heads, 2 KV heads of 16, 3 blocks, vocab 128
    cfg = model.config
    s = shapes(model)
    h, i, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * (h_d := cfg.hidden_size // cfg.num_attention_heads)
    assert s.linear_macs == h * h + 2 * h * kv + h * h + 2 * h * i + i * h
    assert sorted(s.gram_inputs) == sorted([h, h, h, i])  # q/k/v share one input, gate/up one, o and down their own
    assert sorted(s.matrices) == sorted([(h + 2 * kv, h), (h, h), (2 * i, h), (h, i)])
    tokens, seqlen = 10, 5
    per_token = 3 * (2 * s.linear_macs + 2 * seqlen * 4 * h_d)
    assert forward_flops(s, tokens, seqlen) == tokens * per_token
    assert forward_flops(s, tokens, seqlen, with_head=True) == tokens * (per_token + 2 * h * cfg.vocab_size)
    assert statistics_flops(s, tokens, seqlen, frozenset({SQNORM})) == tokens * per_token
    assert statistics_flops(s, tokens, seqlen, frozenset({HESSIAN})) == tokens * per_token + 3 * tokens * 2 * (3 * h * h + i * i)
    assert bench.criterion_flops(make_criterion("sparsegpt"), s) == pytest.approx(
        3 * sum(4 / 3 * c ** 3 + r * c * c for r, c in s.matrices))
    assert bench.criterion_flops(make_criterion("wanda"), s) is None  # no model of its arithmetic: not counted


def test_phase_reports_seconds_and_a_memory_peak_above_its_start():
    with phase(torch.device("cpu")) as m:
        block = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB, touched
        del block
    assert m["seconds"] > 0
    if m["rss_peak_is_phase"]:
        assert m["rss_peak"] - m["rss_start"] >= 60 * 2 ** 20


def test_peak_size_shrinks_where_a_product_would_be_slow():
    from experiments.bench.machine import matmul_peak, size_for
    # 2·n³ flops in 1 s: 2.6 GFLOP/s (bfloat16 without native instructions) gives n = 1091 -> 1024; 140 GFLOP/s
    # (float32 on two AVX2 cores) gives 4121, capped at 2048; a crawl is held at 256.
    assert size_for(2.6e9, 1.0, 2048) == 1024
    assert size_for(140e9, 1.0, 2048) == 2048
    assert size_for(1e6, 1.0, 2048) == 256
    assert matmul_peak(torch.bfloat16, torch.device("cpu"), repeats=1, seconds=1e-6)["n"] == 256
    assert matmul_peak(torch.float32, torch.device("cpu"), repeats=1, seconds=1e-6)["n"] == 2048  # never shrunk
    assert matmul_peak(torch.float32, torch.device("cpu"), n=300, repeats=1)["n"] == 300


@pytest.mark.slow
def test_bench_end_to_end_on_a_tiny_random_model(tmp_path, monkeypatch):
    monkeypatch.setenv("DLP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    code = bench.main(["--shape", "tiny", "--nsamples", "4", "--seqlen", "32", "--eval-windows", "2",
                       "--eval-seqlen", "32", "--scale-nsamples", "2,4", "--scale-seqlens", "16,32",
                       "--dtypes", "float32,mixed", "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [r["dtype"] for r in report["results"]] == ["float32", "mixed"]
    mixed = report["results"][1]
    # Mixed runs float32 weights under bfloat16 autocast: float32's batch (same activations), bfloat16's products.
    assert mixed["batch_size"] == report["results"][0]["batch_size"]
    assert all(mixed["methods"][n]["ppl"] != m["ppl"] for n, m in report["results"][0]["methods"].items())
    fp32 = report["results"][0]
    assert set(fp32["methods"]) == {"uniform+wanda", "alphapruning+wanda", "dlp+wanda", "owl+wanda", "uniform+ria",
                                    "uniform+sparsegpt"}
    for m in fp32["methods"].values():
        assert m["allocation_plus_prune_s"] > 0 and m["ppl"] > 1
        assert m["times_dense_forward"] == pytest.approx(m["allocation_plus_prune_s"] / m["dense_forward_s"])
        # The yardstick brackets the prune: the mean of a pass before and one after, both timed.
        assert m["dense_forward_before_s"] > 0 and m["dense_forward_after_s"] > 0
        assert m["dense_forward_s"] == pytest.approx((m["dense_forward_before_s"] + m["dense_forward_after_s"]) / 2)
        assert m["floor"]["total"] == m["floor"]["weights"] + m["floor"]["activations"] + m["floor"]["statistics"]
    assert fp32["methods"]["dlp+wanda"]["phases"]["allocation"]["seconds"] > 0  # a cold profile cache, timed
    # The products an allocation did come from the walks the engine reported (dlp.walk.engine.watch_walks): DLP's
    # profile walk has them; AlphaPruning reads weights only, so no walk and no GFLOP count.
    assert fp32["methods"]["dlp+wanda"]["phases"]["allocation"]["gflops"] > 0
    assert fp32["methods"]["alphapruning+wanda"]["phases"]["allocation"]["gflops"] is None
    for name, m in fp32["methods"].items():  # each method's run makes the walk's self-check: timed beside it
        check = m["phases"]["selfcheck"]
        assert check["seconds"] > 0 and check["tokens"] == 32
        assert f"| {name} | self-check (1 sequence) | {check['seconds']:.2f} |" in out.with_suffix(".md").read_text()
    scaling = report["results"][1]["scaling"]
    assert fp32["scaling"] == [] and len(scaling) == 6  # (2,32), (4,16), (4,32) at batch auto; (4,32) at 1, 2, 8
    at = {p["batch_setting"]: p["batch_size"] for p in scaling if (p["nsamples"], p["seqlen"]) == (4, 32)}
    assert at == {1: 1, 2: 2, 8: 8, "auto": report["results"][1]["batch_size"]}  # the walk's own resolved batch
    assert fp32["batch_size"] == auto_batch_size(tiny_model("llama").to(torch.float32), 4, 32)
    assert all(p["floor"] > 0 and "rss_peak_above_base" in p for p in scaling)
    assert fp32["rss_base"] > 0
    assert all(m["peak"]["gflops"] > 0 for m in fp32["methods"].values())  # each process measured its own
    w = fp32["methods"]["uniform+wanda"]["phases"]["replay"]
    assert w["share_of_peak"] == pytest.approx(w["gflop_per_s"] / fp32["methods"]["uniform+wanda"]["peak"]["gflops"])
    assert sum(fp32["forward_time_shares"][k] for k in ("products", "attention", "other")) == pytest.approx(1)
    assert [a["what"] for a in report["results"][1]["ablation"]] == ["Wanda prune"] * 6 + ["evaluation"] * 2
    assert "## One change at a time" in out.with_suffix(".md").read_text()
    md = out.with_suffix(".md").read_text()
    assert "## Targets" in md and "## Perplexity in each dtype" in md and "Mixed: float32 weights" in md
    assert "Where one batch's dense forward pass spends its time" in md
    sgpt = fp32["methods"]["uniform+sparsegpt"]
    assert (f"| uniform+sparsegpt | {sgpt['allocation_plus_prune_s']:.1f} | {sgpt['dense_forward_before_s']:.1f} / "
            f"{sgpt['dense_forward_after_s']:.1f} | {sgpt['times_dense_forward']:.2f} |") in md
    assert (tmp_path / "bench-scaling.png").stat().st_size > 0


def test_bench_bad_input_is_one_line(capsys):
    assert bench.main(["--dtypes", "float64"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown dtype 'float64'; choose from float32, bfloat16, float16, mixed"


def test_bench_repeats_below_one_is_one_line(capsys):
    assert bench.main(["--repeats", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --repeats must be at least 1 (got 0)"


def test_median_repeat_keeps_the_middle_run_whole_and_lists_every_repeat():
    def run(alloc_prune, dense, peak):
        return {"allocation_plus_prune_s": alloc_prune, "dense_forward_s": dense,
                "times_dense_forward": alloc_prune / dense, "ppl": peak / 10,
                "phases": {"prune": {"memory": {"rss_peak_above_base": peak}}}}
    runs = [run(30.0, 10.0, 300), run(40.0, 10.0, 400), run(24.0, 12.0, 200)]  # 3.0, 4.0, 2.0 x dense
    chosen = bench.median_repeat(runs)
    assert chosen["times_dense_forward"] == 3.0 and chosen["ppl"] == 30.0  # the 3.0 run, all of its figures
    assert [r["times_dense_forward"] for r in chosen["repeats"]] == [3.0, 4.0, 2.0]  # in the order they ran
    assert [r["prune_memory"]["rss_peak_above_base"] for r in chosen["repeats"]] == [300, 400, 200]
    assert bench.median_repeat(runs[:2])["times_dense_forward"] == 3.0  # even count: the lower middle
    assert bench.median_repeat(runs[:1])["repeats"] == [{k: runs[0][k] for k in (
        "allocation_plus_prune_s", "dense_forward_s", "times_dense_forward")} | {"prune_memory": runs[0]["phases"][
            "prune"]["memory"]}]


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_forward_time_shares_split_the_whole_pass(family):
    """Products, attention and the rest partition the profiled time; a model made only of products (no
    attention) puts nothing in attention, and a forward pass with Linears spends time in products."""
    from experiments.bench.profile import time_shares
    shares = time_shares(tiny_model(family), torch.randint(0, 100, (2, 16)))
    assert shares["products"] + shares["attention"] + shares["other"] == pytest.approx(1.0)
    assert shares["products"] > 0 and shares["seconds"] > 0

    class OnlyLinears(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 64)
            self.lin = torch.nn.Linear(64, 64)

        def get_input_embeddings(self):
            return self.emb

        def forward(self, input_ids, use_cache=False):
            return self.lin(self.emb(input_ids))
    assert time_shares(OnlyLinears(), torch.randint(0, 10, (2, 8)))["attention"] == 0


def test_dtype_agreement_has_no_verdict_without_a_float32_run():
    """--dtypes bfloat16 alone: "keeps perplexity within 1% of float32" cannot be judged, so it is neither met nor
    missed; with a float32 run to compare with, the verdict follows the measured change."""
    from experiments.bench.report import targets
    report = {"settings": {"model": "smollm2-135m", "nsamples": 32, "seqlen": 512, "eval_windows": 64,
                           "eval_seqlen": 512}, "machine": {"device": "cpu"},
              "results": [{"dtype": "bfloat16", "methods": {},
                           "phases": {"evaluation": {"share_of_peak": 0.5, "seconds": 20.0}}}]}

    def verdict(worst):
        line = next(t for t in targets(report, worst) if "keeps every perplexity" in t)
        return line.rsplit("|", 2)[1].strip()
    assert verdict({}) == "not checked"
    assert verdict({"float32": 0.0, "bfloat16": 0.0141}) == "**missed**"
    assert verdict({"float32": 0.0, "bfloat16": 0.004}) == "met"


def test_gpu_targets_judge_seconds_and_peak_memory_over_the_weights():
    """On a GPU report of the LLaMA-2-7B shape at 128 x 2048 in bf16, the GPU targets are checked: seconds
    of allocation + prune (Wanda 20, DLP 30, SparseGPT 90), and the larger peak of allocation and prune against
    weights + 6 GiB. The same figures from a CPU run, or another shape, are not judged by them."""
    from experiments.bench.report import targets
    gib, weights = 2 ** 30, 13 * 2 ** 30

    def method(seconds, prune_peak, allocation_peak=None):
        phases = {"statistics": {"share_of_peak": 0.7}, "replay": {"share_of_peak": 0.7},
                  "prune": {"memory": {"cuda_peak": prune_peak}}}
        if allocation_peak:
            phases["allocation"] = {"memory": {"cuda_peak": allocation_peak}}
        return {"allocation_plus_prune_s": seconds, "times_dense_forward": 2.0, "phases": phases,
                "floor": {"weights": weights, "total": weights + 5 * gib}}

    def report(device, shape):
        return {"settings": {"model": "smollm2-135m", "shape": shape, "nsamples": 128, "seqlen": 2048,
                             "eval_windows": 32, "eval_seqlen": 2048}, "machine": {"device": device},
                "results": [{"dtype": "bfloat16", "phases": {"evaluation": {"share_of_peak": 0.7, "seconds": 3.0}},
                             "methods": {"uniform+wanda": method(18.0, weights + 5.5 * gib),
                                         "dlp+wanda": method(31.0, weights + 5 * gib, weights + 6.5 * gib),
                                         "uniform+sparsegpt": method(60.0, weights + 7 * gib)}}]}

    rows = {t.split("|")[1].strip(): (t.split("|")[2].strip(), t.split("|")[3].strip())
            for t in targets(report("cuda:0", "llama2-7b"), {}) if t.startswith("| ") and "<=" in t}
    assert rows["uniform+wanda (allocation included, load excluded) <= 20 s"] == ("18.0 s", "met")
    assert rows["dlp+wanda (allocation included, load excluded) <= 30 s"] == ("31.0 s", "**missed**")
    assert rows["uniform+sparsegpt (allocation included, load excluded) <= 90 s"] == ("60.0 s", "met")
    assert rows["uniform+wanda: peak GPU memory <= weights + 6 GiB"] == ("weights + 5.50 GiB", "met")
    assert rows["dlp+wanda: peak GPU memory <= weights + 6 GiB"] == ("weights + 6.50 GiB", "**missed**")  # allocation's
    assert rows["uniform+sparsegpt: peak GPU memory <= weights + 6 GiB"] == ("weights + 7.00 GiB", "**missed**")
    for device, shape in (("cpu", "llama2-7b"), ("cuda:0", "tiny")):
        assert not any("GPU memory" in t or "load excluded" in t for t in targets(report(device, shape), {}))


def test_methods_option_takes_any_registered_pair_in_the_order_given(capsys):
    args = bench.parse(["--methods", "uniform+sparsegpt, alphapruning+magnitude"])
    assert args.methods == [("sparsegpt", "uniform"), ("magnitude", "alphapruning")]
    # The default comes from the registry: every allocation but the controls and the searches (ATP, EvoPress) under Wanda
    # (uniform first), then every other criterion that reads statistics under uniform.
    assert bench.parse([]).methods == [("wanda", "uniform"), ("wanda", "alphapruning"), ("wanda", "owl"),
                                       ("wanda", "dlp"), ("ria", "uniform"), ("sparsegpt", "uniform")]
    assert bench.main(["--methods", "uniform+wanda,alpha+wanda"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown method 'alpha+wanda'; write allocation+criterion from allocations alphapruning, atp, "
        "evopress, linear, owl, reversed, shuffled, uniform, dlp and criteria magnitude, ria, sparsegpt, wanda")


@pytest.mark.slow
def test_a_run_cut_short_leaves_a_partial_report_with_what_it_measured(tmp_path, monkeypatch, capsys):
    """A time-limited GPU job may end mid-run: after the dense phases and after each method the bench writes
    OUT.partial.json, which `python -m experiments.bench.report` renders; a finished run removes it."""
    from experiments.bench import report as bench_report
    monkeypatch.setenv("DLP_CACHE", str(tmp_path / "cache"))

    def in_this_process(fn, *args):  # no fresh process, and SparseGPT "fails" (as a run killed there would stop)
        if args[4] == "sparsegpt":
            raise RuntimeError("cut short")
        return fn(*args)
    monkeypatch.setattr(bench, "in_fresh_process", in_this_process)
    out = tmp_path / "bench"
    argv = ["--shape", "tiny", "--dtypes", "float32", "--nsamples", "2", "--seqlen", "16", "--eval-windows", "1",
            "--eval-seqlen", "16", "--no-scaling", "--no-progress", "--out", str(out),
            "--methods", "uniform+wanda,uniform+sparsegpt"]
    with pytest.raises(RuntimeError, match="cut short"):
        bench.main(argv)
    partial = tmp_path / "bench.partial.json"
    report = json.loads(partial.read_text())
    assert report["complete"] is False and not out.with_suffix(".json").exists()
    assert list(report["results"][0]["methods"]) == ["uniform+wanda"]  # the method that finished, whole
    assert report["results"][0]["methods"]["uniform+wanda"]["ppl"] > 1
    assert bench_report.main([str(partial), str(tmp_path / "partial.md")]) == 0
    md = (tmp_path / "partial.md").read_text()
    assert "**Partial**" in md and "| uniform+wanda | prune (all blocks) |" in md and "uniform+sparsegpt" not in md
    (tmp_path / "cut.json").write_text(partial.read_text()[:100])  # a file cut mid-write elsewhere
    capsys.readouterr()
    assert bench_report.main([str(tmp_path / "cut.json")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot render {tmp_path / 'cut.json'}: JSONDecodeError")

    monkeypatch.setattr(bench, "in_fresh_process", lambda fn, *args: fn(*args))
    assert bench.main(argv) == 0
    assert not partial.exists() and "**Partial**" not in out.with_suffix(".md").read_text()
    capsys.readouterr()


def test_opt_groups_found_by_the_engines_own_sharing():
    """OPT: q/k/v read one tensor; out_proj, fc1 and fc2 each their own (fc1 is not paired with anything)."""
    s = shapes(tiny_model("opt"))
    assert sorted(s.matrices) == sorted([(3 * 64, 64), (64, 64), (128, 64), (64, 128)])


@pytest.mark.parametrize("needs", [frozenset({SQNORM}), frozenset({HESSIAN})])
def test_floor_counts_the_statistics_one_block_really_holds(needs):
    """The floor's statistics term equals the bytes of the distinct LinearStats one block accumulates."""
    from dlp.walk.stats import attach
    from dlp.walk.structure import find_blocks, find_linears
    model = tiny_model("llama")
    linears = find_linears(find_blocks(model).blocks[0])
    stats, handles = attach(linears, needs)
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 4, dtype=torch.long), use_cache=False)
    for h in handles:
        h.remove()
    held = sum(t.numel() * t.element_size() for st in {id(v): v for v in stats.values()}.values()
               for t in (st.sqnorm, st.gram) if t is not None)
    assert bench.floor_bytes(model, shapes(model), 4, 8, needs)["statistics"] == held > 0


def test_zeroshot_bench_counts_positions_and_compares_results_across_batches():
    """Batch 1 pads nothing: a larger batch computes at least its positions, in fewer forwards, with the same
    result for every example (float32); the report says so per row."""
    from tiny import char_tokenizer, tiny_model

    from experiments.bench import zeroshot
    from experiments.records import environment

    model = tiny_model("llama")
    model.config.max_position_embeddings = 4096
    rows = [zeroshot.measure(model, char_tokenizer(), ["rte", "arc_easy"], 6, b, "local") for b in (1, 4)]
    one, four = rows
    assert one["examples"] == four["examples"] == 12
    assert one["forwards"] > four["forwards"] and four["positions"] >= one["positions"] > 0
    assert one["per_example"] == four["per_example"]
    md = zeroshot.render("tiny", ["rte", "arc_easy"], 6, rows, environment(), {"model": {"dtype": "float32"}})
    table = [line for line in md.splitlines() if line.startswith("| 4 |")]
    assert len(table) == 1 and table[0].endswith("| yes |")
    assert f"{1 - one['positions'] / four['positions']:.1%}" in table[0]


def test_rounding_bench_runs_each_cell_at_two_thread_counts(workspace, tmp_path):
    """Two processes per cell, forced, differing only in torch threads; the seeds' records found beside them."""
    from experiments.bench import rounding
    from experiments.cells import run_cell

    extra = tiny_overrides(workspace, "rounding_runs")
    seeds = [run_cell(["criterion=wanda", "allocation=uniform", "sparsity=0.7", "model=smollm2-135m", "preset=cpu",
                       *extra, f"seed={s}"]) for s in (0, 1)]
    out = tmp_path / "rounding"
    assert rounding.main(["--cells", "wanda/uniform", "--records", str(workspace / "rounding_runs"), "--out", str(out),
                          *extra]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    (row,) = report["rows"]
    assert sorted(row["ppl"]) == ["1", "2"] and row["seeds_ppl"] == [r["metrics"]["ppl"] for r in seeds]
    ppl = list(row["ppl"].values())
    assert row["relative_difference"] == pytest.approx(abs(ppl[0] - ppl[1]) / min(ppl))
    assert row["same_ppl"] == (ppl[0] == ppl[1])
    md = out.with_suffix(".md").read_text()
    assert md.count("\n| ") == 2 and "\n| wanda / uniform | " in md
    assert report["settings"][-1] == "seed=0" and not any(o.startswith("results_dir=") for o in report["settings"])


def test_rounding_bench_refuses_a_cell_that_is_not_a_pair(capsys):
    from experiments.bench import rounding

    with pytest.raises(SystemExit) as exc:
        from experiments.commandline import one_line_errors
        one_line_errors(lambda: rounding.main(["--cells", "wanda"]))
    assert exc.value.code == 2 and "criterion/allocation pairs" in capsys.readouterr().err
