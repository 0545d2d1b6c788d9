"""A Markdown report of run records, so that a results file quotes records rather than hand-copied figures.

    python -m experiments.report_runs results/runs/a.json results/runs/b.json --title "..." --out results/x.md

One row per record: method, sparsity, perplexity in full, evaluation data, actual sparsity, self-check, prune
and evaluation seconds, record key; below, the machine, versions and commits the records name.
"""
import argparse
import json
import sys
from pathlib import Path

from dlp.storage.io import write_atomic

from .records import commit_label, is_dense, machine_line
from .reports.markdown import md_table


def row(record: dict) -> list[str]:
    cfg, timings = record["config"], record.get("timings_s", {})
    dense = is_dense(cfg)
    if record.get("status") != "ok":
        return [cfg["criterion"]["name"], "-" if dense else cfg["allocation"]["name"], str(cfg["sparsity"]),
                "failed", "-", "-", "-", "-", "-", f"`{record['key']}`"]
    check = record.get("selfcheck") or {}
    checked = "skipped" if check.get("skipped") else f"{check['max_difference']:.1e}" if check else "-"
    prune = timings.get("prune")
    return ["dense" if dense else cfg["criterion"]["name"], "-" if dense else cfg["allocation"]["name"],
            "0" if dense else f"{float(cfg['sparsity']):g}", repr(record["metrics"]["ppl"]),
            f"{record['metrics']['eval_corpus']} ({record['metrics']['eval']['windows']} x "
            f"{record['metrics']['eval']['seqlen']})", f"{record['sparsity']['actual']:.4f}", checked,
            "-" if prune is None else f"{prune:.0f}", f"{timings.get('evaluation', 0):.0f}", f"`{record['key']}`"]


def render(records: list[dict], title: str) -> str:
    header = ["criterion", "allocation", "sparsity", "perplexity", "evaluated on", "actual sparsity",
              "self-check max diff", "prune s", "eval s", "record key"]
    lines = [f"# {title}", "", *md_table(header, [row(r) for r in records])]
    seen = set()
    lines += ["", "Measured on:"]
    for r in records:
        env, m = r.get("environment", {}), r["config"]["model"]
        calib = (r.get("data") or {}).get("calibration") or {}
        line = (f"- model `{m['name']}` ({m.get('dtype')}), preset `{r['config'].get('preset')}`, calibration "
                f"`{calib.get('name', '-')}` ({calib.get('nsamples', '-')} x {calib.get('seqlen', '-')}), seed "
                f"{r['config'].get('seed')}; {machine_line(env)}, commit {commit_label(env)}")
        if calib and line not in seen:
            seen.add(line)
            lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+")
    parser.add_argument("--title", default="Runs")
    parser.add_argument("--out", default=None, help="write here (default: print)")
    args = parser.parse_args(argv)
    try:
        records = [json.loads(Path(p).read_text()) for p in args.records]
    except (OSError, ValueError) as exc:
        print(f"error: cannot read a record: {exc}", file=sys.stderr)
        return 2
    md = render(records, args.title)
    if args.out:
        write_atomic(Path(args.out), md.encode())
    else:
        print(md, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
