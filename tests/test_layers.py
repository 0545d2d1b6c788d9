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
    assert "dlp.walk.engine" in GRAPH["dlp.walk.prune"] and "dlp.registry" in GRAPH["baselines.criteria.wanda"]
    assert "dlp.methods.profile" in GRAPH["dlp.methods.dlp_allocation"]  # a relative import, resolved
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


def test_readme_is_a_guide_that_links_what_was_found():
    """The README stays a user guide (at most 14,000 bytes) with its sections, and every results file it names
    is there: findings live in results/, written by the commands that measured them."""
    import re

    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 14_000
    sections = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    for wanted in ("Two commands", "Results", "On a GPU", "Runs, sweeps, clusters", "Taking the pruned model away",
                   "Adding a method", "Configuration", "How the engine works", "Where things go", "Tests"):
        assert any(s.startswith(wanted) for s in sections), wanted
    def expand(name: str) -> set:  # results/curves-m.{md,png,csv}: three files
        braces = re.search(r"\{([^}]*)\}", name)
        if not braces:
            return {name}
        return set().union(*(expand(name[:braces.start()] + alternative + name[braces.end():])
                             for alternative in braces.group(1).split(",")))

    named = set()
    for name in re.findall(r"`(results/[^`\s]+)`", text):
        named |= expand(name)
    files = [n for n in named if "." in n.rsplit("/", 1)[-1] and not re.search(r"[<*]|\.partial\.", n)]
    assert len(files) >= 10
    missing = [n for n in files if not (ROOT / n).exists()]
    assert not missing, missing


def method_names_tested(source: str) -> list[tuple[int, str]]:
    """(line, string) for each string constant compared with (==, !=, in, not in, also inside a tuple, list or
    set) or used as a dictionary key in `source`."""
    import ast

    def strings(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [s for element in node.elts for s in strings(element)]
        return []
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            found += [(node.lineno, s) for part in (node.left, *node.comparators) for s in strings(part)]
        elif isinstance(node, ast.Dict):
            found += [(node.lineno, s) for key in node.keys if key is not None for s in strings(key)]
    return found


def test_no_module_tests_for_a_method_by_name_outside_its_own_file():
    """Facts about a method live on its registered class (reference, N:M support, what a control isolates, its
    FLOP model): no comparison, membership test or dictionary key on a registered name elsewhere in the code."""
    import inspect

    from dlp.registry import ALLOCATIONS, CRITERIA

    assert method_names_tested('if a == "wanda" or b in ("x", "dlp"):\n    d = {"owl": 1}\n') == [
        (1, "wanda"), (1, "x"), (1, "dlp"), (2, "owl")]  # the check finds what it looks for
    owners = {name: Path(inspect.getfile(cls)).resolve() for table in (CRITERIA, ALLOCATIONS)
              for name, cls in table.items()}
    assert {"uniform", "dlp", "wanda", "sparsegpt"} <= owners.keys()
    hits = [f"{path.relative_to(ROOT)}:{line}: '{name}'" for package in PACKAGES
            for path in sorted((ROOT / package).rglob("*.py"))
            for line, name in method_names_tested(path.read_text())
            if name in owners and owners[name] != path.resolve()]
    assert not hits
