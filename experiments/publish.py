"""Writing a grid's result files (a table, the ablation, the curves, the recovery table, a figure): all of them
when every cell finished, none when any failed. A committed table is what a user cloned; one of `failed`
cells written over it would say nothing, so an incomplete grid goes beside it under a `.partial` name and the
command exits non-zero, naming each failed cell and why."""
import sys
from pathlib import Path

from dlp.storage.io import write_atomic


class CellsFailed(Exception):
    """Some cells of a grid failed: its result files were left as they were (not bad input: exit status 1)."""


def partial_path(path: Path) -> Path:
    """results/table1.md -> results/table1.partial.md"""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def publish(files: dict[Path, bytes], failures: list[tuple[str, str]], incomplete: bool = False) -> list[Path]:
    """Write `files` (path -> content) when `failures` ((cell, why) pairs) is empty, and remove the partial
    files an earlier incomplete try left; else write them under their partial names and raise CellsFailed,
    after one line per failed cell. `incomplete`: some cells were not run on purpose (a grid rendered from its
    finished records): the partial names, and no error."""
    paths = [Path(p) for p in files]
    if incomplete and not failures:
        partial = [partial_path(p) for p in paths]
        for path, data in zip(partial, files.values()):
            write_atomic(path, data)
        print(f"some cells not run: {names(paths)} left as {'they were' if len(paths) > 1 else 'it was'}; this "
              f"rendering is in {names(partial)}", file=sys.stderr)
        return partial
    if not failures:
        for path, data in zip(paths, files.values()):
            write_atomic(path, data)
            partial_path(path).unlink(missing_ok=True)
        return paths
    partial = [partial_path(p) for p in paths]
    for path, data in zip(partial, files.values()):
        write_atomic(path, data)
    for cell, why in failures:
        print(f"failed: {cell}: {why}", file=sys.stderr)
    cells = f"{len(failures)} cell{'s' if len(failures) > 1 else ''}"
    raise CellsFailed(f"{cells} failed: {names(paths)} left as {'they were' if len(paths) > 1 else 'it was'}; "
                      f"the partial results are in {names(partial)}")


def names(paths: list[Path]) -> str:
    """results/table1.{md,csv,tex}: one stem, several suffixes, said once."""
    stems = {(p.parent, p.stem) for p in paths}
    if len(stems) == 1 and len(paths) > 1:
        (parent, stem), = stems
        return f"{parent / stem}.{{{','.join(p.suffix.lstrip('.') for p in paths)}}}"
    return ", ".join(str(p) for p in paths)
