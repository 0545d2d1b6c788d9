"""Calibration windows exactly as the Wanda/SparseGPT/OWL/DLP code draws them.

Documents (C4 style): `random.seed(seed)`; for each sample pick random documents until one is strictly
longer than `seqlen` tokens, then a random window inside it. Stream (WikiText style): the rows joined by a
space and tokenized once, random windows in it. The same seed gives the same windows.
"""
import random

import torch

from dlp.data.corpora import Corpus
from dlp.errors import UserError


def sample_documents(corpus: Corpus, tokenizer, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    random.seed(seed)
    lengths: dict[int, torch.Tensor] = {}

    def encode(i: int) -> torch.Tensor:
        if i not in lengths:
            lengths[i] = tokenizer(corpus.rows[i], return_tensors="pt").input_ids[0]
        return lengths[i]

    windows = []
    for _ in range(nsamples):
        for _attempt in range(100_000):
            ids = encode(random.randint(0, len(corpus.rows) - 1))
            if ids.shape[0] > seqlen:
                break
        else:
            raise UserError(f"no document of {corpus.name} is longer than seqlen={seqlen} tokens")
        start = random.randint(0, ids.shape[0] - seqlen - 1)
        windows.append(ids[start:start + seqlen])
    return torch.stack(windows)


def sample_stream(corpus: Corpus, tokenizer, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    random.seed(seed)
    ids = tokenizer(" ".join(corpus.rows), return_tensors="pt").input_ids[0]
    if ids.shape[0] <= seqlen + 1:
        raise UserError(f"{corpus.name} has {ids.shape[0]} tokens, too few for seqlen={seqlen}")
    windows = []
    for _ in range(nsamples):
        start = random.randint(0, ids.shape[0] - seqlen - 1)
        windows.append(ids[start:start + seqlen])
    return torch.stack(windows)


def calibration_windows(corpus: Corpus, tokenizer, nsamples: int, seqlen: int, seed: int,
                        mode: str = "documents") -> torch.Tensor:
    """(nsamples, seqlen) token ids."""
    if nsamples < 1 or seqlen < 2:
        raise UserError(f"calibration needs nsamples >= 1 and seqlen >= 2 (got {nsamples}, {seqlen})")
    if mode == "documents":
        return sample_documents(corpus, tokenizer, nsamples, seqlen, seed)
    if mode == "stream":
        return sample_stream(corpus, tokenizer, nsamples, seqlen, seed)
    raise UserError(f"unknown calibration mode '{mode}'; choose documents or stream")
