"""The SLURM launcher with its jobs run on this machine by submitit's local executor: a rehearsal of a cluster
sweep. Every option of conf/hydra/launcher/slurm.yaml (and of the command line) is read and checked by submitit
as for a cluster, the jobs are real processes that pickle, run and return as SLURM jobs do, and the options
only SLURM understands (partition, GPUs per node, array parallelism) are not applied.
`LAUNCHER=slurm_local` before `LAUNCHER=slurm`; the tests run the SLURM path through it.
"""
from typing import Any, Sequence

import submitit
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class LocalSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        cluster_executor = submitit.AutoExecutor

        def local_executor(cluster: str, **kwargs: Any) -> submitit.AutoExecutor:
            return cluster_executor(cluster="local", **kwargs)

        submitit.AutoExecutor = local_executor
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            submitit.AutoExecutor = cluster_executor
