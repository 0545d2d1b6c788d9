"""A Hydra sweeper that launches a given list of cells, not a cartesian product.

A table's missing cells (the dense row, some seeds of some rows) are no product of choices, yet they should
run as one multirun through whichever launcher is configured (in-process, joblib, SLURM via submitit).
`python -m experiments.run -m hydra/sweeper=cells hydra.sweeper.cells=<file.json>` reads a JSON list of
override lists, one per job, adds the command line's own overrides to each, and hands them to the launcher.
Hydra finds sweepers only inside the `hydra_plugins` package, hence this folder.
"""
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class CellsSweeperConf:
    _target_: str = "hydra_plugins.dlp_bench.cells_sweeper.CellsSweeper"
    cells: str = "???"  # a JSON file: a list of override lists, one per job
    params: Optional[Dict[str, str]] = None  # an experiment config's own sweep: the cells replace it


ConfigStore.instance().store(group="hydra/sweeper", name="cells", node=CellsSweeperConf, provider="dlp-bench")


class CellsSweeper(Sweeper):
    def __init__(self, cells: str, params: Optional[Dict[str, str]] = None) -> None:
        super().__init__()
        self.cells = cells
        self.config: Optional[DictConfig] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        cells = json.loads(Path(self.cells).read_text())
        jobs = [[*arguments, *cell] for cell in cells]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("launching %d cells", len(jobs))
        return [self.launcher.launch(jobs, initial_job_idx=0)] if jobs else []
