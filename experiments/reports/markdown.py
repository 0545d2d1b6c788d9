"""What a report prints beside its numbers: Markdown tables, and the line per column that says what it was
measured on (data, sizes, dtype, machine, commits), read from the records."""
from ..records import machines_text
from .numbers import commits, finished


def precision(model_cfg: dict) -> str:
    """The weights' dtype, and the compute dtype their passes ran under when one was set (dlp.walk.compute_dtype)."""
    compute = model_cfg.get("compute_dtype")
    return model_cfg["dtype"] + (f" (forward passes under {compute} autocast)" if compute else "")


def provenance_lines(cells, models, preset) -> list[str]:
    """What each column was measured on: data, sizes, dtype, machine and commit, from its records."""
    lines = []
    for model in models:
        ok = [r for (label, m), records in cells.items() if m == model for r in finished(records)]
        if not ok:
            lines.append(f"- {model}: no finished cell")
            continue
        r = next((x for x in ok if x["data"].get("calibration")), ok[0])
        ev = r["metrics"]["eval"]
        calib = r["data"].get("calibration", {})
        lines.append(
            f"- {model}: preset `{preset}`, eval on `{r['metrics']['eval_corpus']}` ({ev['windows']} windows x "
            f"{ev['seqlen']} tokens), calibration `{calib.get('name', '-')}` ({calib.get('nsamples', '-')} x "
            f"{calib.get('seqlen', '-')}), dtype {precision(r['config']['model'])}; {machines_text(ok)}, "
            f"commits {commits(ok)}")
    return lines


def md_table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]
