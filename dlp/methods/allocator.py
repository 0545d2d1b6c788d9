"""What an allocation is: one sparsity per decoder block around a global target (registered by name in
dlp.registry)."""
from dataclasses import dataclass, field


@dataclass
class Allocation:
    sparsities: list[float]  # one target per block, applied to every Linear in it
    scores: list[float] | None = None  # the per-block statistic the allocation ranked by, when it has one
    info: dict = field(default_factory=dict)


class Allocator:
    """An allocation's facts are class attributes, so that no module outside its own file tests for its name."""
    name: str = ""  # set by @register_allocation (dlp.registry)
    label: str = ""  # how tables print it
    score_label: str = "score"  # what `Allocation.scores` holds, for plots
    control: bool = False  # a control to compare with (dlp.registry.register_allocation)
    reference: bool = False  # the one every other is compared with (uniform: each block at the target, no pass)
    central: bool = False  # the one this suite reproduces (DLP): tables compare the newer allocations with it too
    supports_nm: bool = False  # whether an N:M pattern may drive it (N:M fixes every matrix at N/M)
    reads_data: bool = True  # whether it reads calibration data (the ablation says so of a control that does not)
    # How the ablation speaks of it: the subject of a sentence ("{of}" the label of the allocation it reorders),
    # whether that subject is plural, and what a win of the studied allocation over this control would show.
    description: str = ""
    plural: bool = False
    isolates: str = ""
    # An allocation that searches (ATP, EvoPress) prunes and scores candidates with the run's criterion: the run
    # passes `trials` (dlp.methods.search.Trials) to `allocate`, with windows of the text named by `select_on`
    # (None: the search scores on the calibration windows themselves).
    searches: bool = False
    select_on: str | None = None
    windows: int = 0

    def check_calibration(self, nsamples: int, seqlen: int) -> None:
        """Refuse (UserError) calibration too small for the allocation, before anything is loaded."""

    def allocate(self, model, calib_ids, target: float, batch_size: int | str, progress: bool = True,
                 model_id: dict | None = None) -> Allocation:
        """`model_id` names the model for caches keyed by it (the dense profile)."""
        raise NotImplementedError
