"""Run latency-bound code on one CPU thread.

SparseGPT's column loop is thousands of tiny sequential products: with several OpenMP threads each one pays a
synchronisation cost, and when the cores are shared with another process the threads spin against each other
(which can make one matrix many times slower than on a single thread).
Element-wise and outer-product results do not depend on the thread count.
"""
import contextlib

import torch


@contextlib.contextmanager
def single_thread(device: torch.device):
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
