"""What a searched allocation's cells cost, from their records: a search runs in every cell (minutes to an hour on
a CPU) and its budget decides both its cost and how good an allocation it can find, so a table that sets a
search against DLP says what the search was allowed and what it took; and its progress, step by step, for W&B."""
from .numbers import finished


def span(values: list[float], digits: int = 0) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if round(low, digits) == round(high, digits) else f"{low:.{digits}f} to {high:.{digits}f}"


def budget_text(search: dict) -> str:
    """The search's size as its record names it: trials (a grid, ATP) or generations of offspring (EvoPress)."""
    if "generations" in search:
        tokens = "/".join(str(t) for t in search["tokens"])
        return (f"budget `{search['budget']}`: {search['generations']} generations x {search['offspring']} "
                f"offspring, survivors {'/'.join(map(str, search['survivors']))}, tokens {tokens}")
    if "trials" in search:
        return f"{search['trials']} trials on {search['selection'].get('windows', '?')} windows"
    return ""


def search_progress(allocation: dict | None) -> tuple[str, str, str, list[list]] | None:
    """A searched allocation's progress as its record keeps it, for a W&B line: (name, x, y, points). ATP: each
    trial's beta and the perplexity it gave on the selection text; EvoPress: each generation's best fitness (KL
    to the dense model on that generation's token draw, so it moves with the draw too). None when the allocation
    does not search."""
    search = (allocation or {}).get("search") or {}
    if search.get("tried"):
        return "search_trials", "beta", "selection_ppl", [[t["beta"], t["ppl"]] for t in search["tried"]]
    if search.get("fitness"):
        return ("search_generations", "generation", "fitness_kl",
                [[g, f] for g, f in enumerate(search["fitness"], start=1) if f is not None])
    return None


def seconds(search: dict) -> float:
    return search["seconds"] if "seconds" in search else search["database_seconds"] + search["search_seconds"]


def cost_line(subject: str, records: list[dict]) -> str | None:
    """One line for one cell's records (one per seed), or None when none of them searched."""
    searches = [r["allocation"]["search"] for r in finished(records) if (r.get("allocation") or {}).get("search")]
    searches = [s for s in searches if "seconds" in s or "search_seconds" in s]
    if not searches:
        return None
    parts = [f"{span([seconds(s) / 60 for s in searches], 1)} min a search"]
    if all("seconds_per_generation" in s for s in searches):
        parts.append(f"level database {span([s['database_seconds'] for s in searches])} s, "
                     f"{span([s['seconds_per_generation'] for s in searches], 1)} s a generation")
    elif all("trials" in s for s in searches):
        parts.append(f"{span([s['seconds'] / s['trials'] for s in searches])} s a trial")
    budgets = sorted({budget_text(s) for s in searches} - {""})
    return (f"{subject}: {'; '.join(parts)} ({'; '.join(budgets)}; {len(searches)} "
            f"record{'s' if len(searches) > 1 else ''})")
