"""Uniform allocation: every block at the global target."""
from dlp.methods.allocator import Allocation, Allocator
from dlp.registry import register_allocation
from dlp.walk.structure import find_blocks


@register_allocation("uniform", label="Uniform")
class Uniform(Allocator):
    reference, supports_nm, reads_data = True, True, False

    def allocate(self, model, calib_ids, target, batch_size, progress=True, model_id=None):
        return Allocation([float(target)] * len(find_blocks(model)))
