"""Small fixed tensors and the masks the authors' own code gives on them (tests/fixtures/authors_masks.pt).

Made outside this project by running, on the tensors in the file: RIA's lib/prune.py:238-241 and 390-410
(biomedical-cybernetics/Relative-importance-and-activation-pruning at 7bc55b06924659ea977f7804b773ce3ef0d55c2f,
default options), and DSnoT's lib/layerwrapper.py statistics and lib/prune.py:520-852 (zyxxmu/DSnoT at
4c029dfa66cae3dba7f4a77c78a524e272fc638c, the README's options) on a Wanda initial mask: 48 x 256 weights, 8
calibration sequences of 32 tokens with column means and scales of their own.
"""
from pathlib import Path

import torch
import torch.nn as nn

from dlp.walk.stats import HESSIAN, MEAN, SQNORM, VARIANCE, attach

FIXTURE = Path(__file__).parent / "fixtures" / "authors_masks.pt"


def load() -> dict:
    return torch.load(FIXTURE)


def our_stats(case: dict, needs=frozenset({SQNORM, MEAN, VARIANCE})):
    """This suite's statistics of the fixture's inputs, one calibration sequence per forward as the engine does."""
    x, weight = case["inputs"], case["weight"]
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data = weight.clone()
    stats, handles = attach({"l": layer}, needs | ({HESSIAN} if HESSIAN in needs else frozenset()),
                            seqlen=x.shape[1])
    with torch.no_grad():
        layer(x)
    for h in handles:
        h.remove()
    stats["l"].nsamples = x.shape[0]
    return stats["l"]
