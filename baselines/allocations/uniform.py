"""Uniform allocation: every block at the global target."""
from dlp.structure import find_blocks

from dlp.allocator import Allocation, Allocator


class Uniform(Allocator):
    name = "uniform"

    def allocate(self, model, calib_ids, target, batch_size, progress=True, model_id=None):
        return Allocation([float(target)] * len(find_blocks(model)))
