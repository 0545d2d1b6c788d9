"""What methods share: the Criterion and Allocator interfaces, masks and N:M patterns, scores, the dense
profile allocations rank blocks by, DLP's own allocation, and the masked LoRA that keeps a mask while training."""
