"""The layers point one way: `dlp/` (the core) imports neither `baselines/` nor `experiments/`, `baselines/`
does not import `experiments/`, and no module imports itself back through others. Read from the source (every
import statement, including those inside functions), not from what happens to be loaded."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dlp", "baselines", "experiments")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The project modules `path` imports, resolved (relative imports included; `from a import b` counts `a.b`
    when that is a module, else `a`)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m.split(".")[0] in PACKAGES}


MODULES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
GRAPH = {name: {m for m in imports_of(path) if m in MODULES or m.split(".")[0] in PACKAGES}
         for name, path in MODULES.items()}


def test_the_graph_is_read():
    """Guards the checks below against reading nothing: known edges are found."""
    assert "dlp.engine" in GRAPH["dlp.prune"] and "dlp.registry" in GRAPH["baselines.criteria.wanda"]
    assert "dlp.profile" in GRAPH["dlp.dlp_allocation"]  # a relative import, resolved
    assert "experiments.pipeline" in GRAPH["experiments.run"]


def test_core_imports_no_baselines_or_entry_points():
    bad = {(m, i) for m, deps in GRAPH.items() if m.startswith("dlp") for i in deps
           if i.split(".")[0] in ("baselines", "experiments")}
    assert not bad


def test_baselines_import_no_entry_points():
    assert not {(m, i) for m, deps in GRAPH.items() if m.startswith("baselines") for i in deps
                if i.startswith("experiments")}


def test_no_import_cycle():
    """Depth-first search over module-level and function-level imports alike."""
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(GRAPH.get(node, ())):
            if dep not in GRAPH:
                continue
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_no_issue_numbers_or_workplace_talk():
    """The repository speaks of the project: no tracker numbers or sessions in code, tests, results or README."""
    import re

    pattern = re.compile(r"\b(issue|session)s?\s*#?\d+|\bthis (session|workplace)\b", re.IGNORECASE)
    files = [ROOT / "README.md", ROOT / "Makefile", *(p for d in (*PACKAGES, "tests", "conf", "results", "notebooks")
                                                     for p in (ROOT / d).rglob("*")
                                                     if p.suffix in (".py", ".md", ".yaml", ".ipynb", ".sh"))]
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files for m in pattern.finditer(p.read_text())]
    assert not hits
