"""Every grid of cells (the tables, the ablation, the curves, the recovery table) from its experiment config,
conf/experiment/<name>.yaml: the grid `python -m experiments.run -m +experiment=<name>` sweeps, expanded here
into cells the same way for every report."""
from omegaconf import OmegaConf

from dlp.storage.paths import ROOT

from .methods import method_overrides


def experiment_config(name: str):
    return OmegaConf.load(ROOT / "conf" / "experiment" / f"{name}.yaml")


def sweep_lists(name: str) -> dict[str, list[str]]:
    """An experiment config's sweep (`hydra.sweeper.params`), as a list of choices per key."""
    return {k: str(v).split(",") for k, v in experiment_config(name).hydra.sweeper.params.items()}


def axes(name: str, **given) -> dict[str, list]:
    """The experiment's sweep, each key replaced by the list given for it (None: the config's own); numbers as
    numbers (sparsity a float, seed an int)."""
    sweep = sweep_lists(name)
    out = {key: given.get(key) or values for key, values in sweep.items()}
    out.update({k: v for k, v in given.items() if v and k not in out})
    cast = {"sparsity": float, "seed": int}
    return {k: [cast[k](x) for x in v] if k in cast else list(v) for k, v in out.items()}


def cells(name: str, grid_axes: dict[str, list], fixed: list[str], extra: list[str]) -> dict[tuple, list[list[str]]]:
    """(a value per axis but the seed) -> one override list per seed, in the axes' order:
    `+experiment=<name>`, the fixed overrides, each axis's `key=value`, the extra overrides, then the seed (the
    config's own when the axes have none)."""
    keys = [k for k in grid_axes if k != "seed"]
    seeds = [[f"seed={s}"] for s in grid_axes.get("seed") or []] or [[]]
    out = {(): []}
    for key in keys:
        out = {(*point, value): [*chosen, *setting(key, value)] for point, chosen in out.items()
               for value in grid_axes[key]}
    return {point: [[f"+experiment={name}", *fixed, *chosen, *extra, *seed] for seed in seeds]
            for point, chosen in out.items()}


def setting(key: str, value) -> list[str]:
    """The overrides of one axis value: `criterion=wanda+dsnot` is a criterion and the refinement it takes."""
    return method_overrides(value) if key == "criterion" else [f"{key}={value}"]


def dense_cell(name: str, fixed: list[str], extra: list[str]) -> list[list[str]]:
    """The dense model's one cell beside a grid (no calibration: one record whatever the seeds)."""
    return [[f"+experiment={name}", *fixed, "criterion=none", *extra]]
