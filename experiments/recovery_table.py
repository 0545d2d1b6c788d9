"""Does an allocation's lead survive LoRA recovery?

`python -m experiments.recovery_table --model smollm2-135m --preset cpu` prunes (or reuses) uniform, OWL and DLP
at one sparsity with one criterion, recovers each with LoRA merged through the mask (experiments.recover, the
preset's `recovery` settings), and writes results/recovery.{md,csv}: perplexity before and after, the change,
that every pruned weight is still zero, and the training budget. `--finished-only` runs nothing: the rows
whose recovery record is written, the others "not run" (results/recovery.partial.{md,csv}).
"""
import csv
import io
import time
from pathlib import Path

from dlp.registry import ALLOCATIONS, CRITERIA
from dlp.storage.paths import ROOT

from . import grids, records, recover
from .cells import read_cell, run_cells, sweep_setup
from .commandline import grid_options, grid_parser, one_line_errors
from .config import compose_config
from .publish import publish
from .reports.markdown import md_table
from .reports.numbers import NOT_RUN

NAME = "recovery"  # its grid: conf/experiment/recovery.yaml


def recorded(cfg: dict) -> dict:
    """A cell that is not run here: its recovery record, the failure its pruned run recorded, or what it waits
    for (its pruning or its recovery)."""
    path, record = read_cell(cfg)
    if record is None:
        why = records.recorded_failure(path)
        return {"error": why} if why else {"waiting": "pruned run"}
    result = records.load_record(recover.recovery_path(path, record, cfg["recovery"]))
    return {"result": result} if result is not None else {"waiting": "recovery"}


def rows_for(model, preset, criteria, allocations, sparsities, seeds, extra, launcher=None,
             run: bool = True) -> list[dict]:
    """One row per cell: the run's record path and its recovery record (or the error that stopped either).
    The pruning runs go first (through `launcher` when given); recovery then runs here, cell by cell. `run`
    False: nothing runs, each row is what is recorded (`recorded`)."""
    grid = grids.cells(NAME, {"criterion": criteria, "sparsity": sparsities, "allocation": allocations, "seed": seeds},
                       [f"model={model}", f"preset={preset}"], extra)
    runs = run_cells(grid, NAME, launcher, run=run)  # not run: every cell checked, the finished ones named
    rows = []
    for (crit, s, alloc), cells in grid.items():
        for i, (seed, overrides) in enumerate(zip(seeds, cells)):
            row = {"criterion": crit, "allocation": alloc, "sparsity": s, "seed": seed}
            if not run:  # runs[] holds the finished records only: each cell is read by its own config
                rows.append({**row, **recorded(compose_config(overrides))})
                continue
            run_record = runs[(crit, s, alloc)][i]
            if run_record.get("status") != "ok":
                rows.append({**row, "error": run_record.get("error")})
                continue
            cfg = compose_config(overrides)
            try:
                path, result, reused = recover.run(records.record_path(cfg), cfg["recovery"],
                                                   progress=cfg["progress"])
            except Exception as exc:  # one failed recovery is a row that says so, not a lost table
                rows.append({**row, "error": f"{type(exc).__name__}: {exc}"})
                continue
            print(" ".join(overrides) + ": " + recover.summary(path, result, reused).splitlines()[0], flush=True)
            rows.append({**row, "result": result})
    return rows


def render(model, preset, rows, elapsed) -> tuple[str, str]:
    header = ["Criterion", "Sparsity", "Allocation", "Seed", "Before", "After LoRA", "Change", "Zeros kept"]
    table, csv_rows = [], [["criterion", "sparsity", "allocation", "seed", "ppl_before", "ppl_after",
                            "ppl_unmerged_adapters", "zeros_all_kept", "matrices", "steps", "tokens", "lr", "train_s"]]
    for row in rows:
        label = [CRITERIA[row["criterion"]].label, f"{float(row['sparsity']):.0%}", ALLOCATIONS[row["allocation"]].label,
                 str(row["seed"])]
        if "error" in row or "waiting" in row:
            what = "failed" if "error" in row else NOT_RUN
            table.append([*label, what, "", "", row.get("error", f"waits for its {row.get('waiting')}")])
            csv_rows.append([row["criterion"], row["sparsity"], row["allocation"], row["seed"], what])
            continue
        r = row["result"]
        m, z, rec = r["metrics"], r["zeros"], r["recovery"]
        table.append([*label, f"{m['ppl_before']:.2f}", f"{m['ppl_after']:.2f}",
                      f"{(m['ppl_after'] / m['ppl_before'] - 1):+.1%}",
                      f"{'all' if z['all_kept'] else 'NOT all'} {z['matrices']} matrices"])
        csv_rows.append([row["criterion"], row["sparsity"], row["allocation"], row["seed"], f"{m['ppl_before']:.6g}",
                         f"{m['ppl_after']:.6g}", "" if m["ppl_with_unmerged_adapters"] is None else
                         f"{m['ppl_with_unmerged_adapters']:.6g}", z["all_kept"], z["matrices"], rec["steps"],
                         r["tokens"], rec["lr"], f"{r['timings_s']['train']:.0f}"])
    done = [row["result"] for row in rows if "result" in row]
    waiting = sum("waiting" in row for row in rows)
    md = [f"# LoRA recovery under the mask: WikiText-2 perplexity of {model}", "",
          "Before: the pruned run's perplexity. After: LoRA adapters trained on calibration-corpus text, merged "
          "through the mask (every pruned weight checked to be exactly zero afterwards). One calibration seed per "
          "row: no verdict is drawn between rows.", "", *md_table(header, table),
          *(["", f"{waiting} row{'s' if waiting > 1 else ''} without a recovery record yet read \"{NOT_RUN}\": "
                 "rendered from the finished records only (--finished-only)."] if waiting else [])]
    if done:
        r = done[0]
        rec, env, data = r["recovery"], r["environment"], r["training_data"]
        md += ["", f"Settings (preset `{preset}`): rank {rec['rank']}, alpha {rec['alpha']}, dropout {rec['dropout']}, "
               f"targets {rec['targets']}, lr {rec['lr']} (warm-up {rec['warmup_steps']}, linear decay), {rec['steps']} "
               f"steps of {rec['batch_size']} x {rec['seqlen']} tokens ({r['tokens']} tokens) from {data['name']} "
               f"(seed {rec['seed']}), masked training {'on' if rec['mask_training'] else 'off'}; "
               f"{r['trainable_parameters']} trainable parameters in {r['lora_layers']} LoRA layers.",
               f"Measured on {records.machine_line(env)}, commit {records.commit_label(env)}; training "
               + ", ".join(f"{x['timings_s']['train']:.0f} s" for x in done) + " per row.",
               "", f"Table rendered in {elapsed:.0f} s (reused records count as 0)."]
    buf = io.StringIO()
    csv.writer(buf).writerows(csv_rows)
    return "\n".join(md) + "\n", buf.getvalue()


def build(model="smollm2-135m", preset="cpu", seeds=None, extra=(), out_dir=ROOT / "results", criteria=None,
          allocations=None, sparsities=None, launcher=None, finished_only=False):
    """`finished_only`: run nothing, render the recorded rows (an incomplete table goes under its .partial
    names)."""
    start = time.time()
    launch, extra, (criteria, allocations, sparsities, seeds) = sweep_setup(
        NAME, model, preset, launcher, extra, criterion=criteria, allocation=allocations, sparsity=sparsities,
        seed=seeds)
    recover.check_settings(compose_config([f"preset={preset}", *extra])["recovery"])
    rows = rows_for(model, preset, criteria, allocations, sparsities, seeds, list(extra), launch,
                    run=not finished_only)
    md, csv_text = render(model, preset, rows, time.time() - start)
    out_dir = Path(out_dir)
    failed = [(f"criterion={r['criterion']} sparsity={r['sparsity']} allocation={r['allocation']} seed={r['seed']}",
               r["error"]) for r in rows if "error" in r]
    publish({out_dir / f"{NAME}.md": md.encode(), out_dir / f"{NAME}.csv": csv_text.encode()}, failed,
            incomplete=any("waiting" in r for r in rows))
    return md, rows


def main(argv=None):
    args = grid_parser(__doc__.splitlines()[0], dict.fromkeys(("seeds", "criteria", "allocations", "sparsities"),
                                                             "the experiment config's"), peek=True).parse_args(argv)
    md, _ = one_line_errors(lambda: build(**grid_options(args)))
    print(md)


if __name__ == "__main__":
    main()
