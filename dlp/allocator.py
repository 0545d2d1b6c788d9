"""What an allocation is: one sparsity per decoder block around a global target (registered by name in
dlp.registry)."""
from dataclasses import dataclass, field


@dataclass
class Allocation:
    sparsities: list[float]  # one target per block, applied to every Linear in it
    scores: list[float] | None = None  # the per-block statistic the allocation ranked by, when it has one
    info: dict = field(default_factory=dict)


class Allocator:
    name: str = ""  # set by @register_allocation (dlp.registry)
    label: str = ""  # how tables print it
    score_label: str = "score"  # what `Allocation.scores` holds, for plots
    control: bool = False  # a control to compare with (dlp.registry.register_allocation)

    def allocate(self, model, calib_ids, target: float, batch_size: int | str, progress: bool = True,
                 model_id: dict | None = None) -> Allocation:
        """`model_id` names the model for caches keyed by it (the dense profile)."""
        raise NotImplementedError
