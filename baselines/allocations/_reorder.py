"""Controls that keep another allocation's per-block sparsities and change only which block gets which.

They separate what an allocation ranks from the spread it allows: the same multiset of sparsities (hence the
same mean and spread) put on the blocks in another order. The source allocation is looked up by name in the
registry and built with its constructor's defaults (DLP: α = 0.15, the median statistic).
"""
from dlp.errors import UserError
from dlp.methods.allocator import Allocation, Allocator
from dlp.registry import ALLOCATIONS, make_allocator


class Reordered(Allocator):
    def __init__(self, of: str = "dlp"):
        if of not in ALLOCATIONS:
            raise UserError(f"{self.name} of: unknown allocation '{of}'; choose one of {', '.join(ALLOCATIONS)}")
        self.of = of

    def order(self, n_blocks: int) -> list[int]:
        """order[i]: the source block whose sparsity block i receives."""
        raise NotImplementedError

    def allocate(self, model, calib_ids, target, batch_size, progress=True, model_id=None):
        source = make_allocator(self.of).allocate(model, calib_ids, target, batch_size, progress, model_id)
        order = self.order(len(source.sparsities))
        scores = [source.scores[j] for j in order] if source.scores else None
        return Allocation([source.sparsities[j] for j in order], scores,
                          {"of": self.of, "order": order, "source_sparsities": source.sparsities,
                           "source_info": source.info})
