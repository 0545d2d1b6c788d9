"""Calibration windows exactly as the Wanda/SparseGPT/OWL/DLP code draws them.

Documents (C4 style): `random.seed(seed)`; for each sample pick random documents until one is strictly
longer than `seqlen` tokens, then a random window inside it. Stream (WikiText style): the rows joined by a
space and tokenized once, random windows in it. The same seed gives the same windows.
"""
import random

import torch

from dlp.data.corpora import Corpus
from dlp.errors import UserError


def _document_draws(corpus: Corpus, encode, nsamples: int, seqlen: int, seed: int) -> list[tuple[int, int]]:
    """(document index, window start) of every calibration window, in the reference code's order of draws."""
    random.seed(seed)
    draws = []
    for _ in range(nsamples):
        for _attempt in range(100_000):
            i = random.randint(0, len(corpus.rows) - 1)
            if encode(i).shape[0] > seqlen:
                break
        else:
            raise UserError(f"no document of {corpus.name} is longer than seqlen={seqlen} tokens")
        draws.append((i, random.randint(0, encode(i).shape[0] - seqlen - 1)))
    return draws


def _encoder(corpus: Corpus, tokenizer):
    lengths: dict[int, torch.Tensor] = {}

    def encode(i: int) -> torch.Tensor:
        if i not in lengths:
            lengths[i] = tokenizer(corpus.rows[i], return_tensors="pt").input_ids[0]
        return lengths[i]
    return encode


def sample_documents(corpus: Corpus, tokenizer, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    encode = _encoder(corpus, tokenizer)
    return torch.stack([encode(i)[start:start + seqlen]
                        for i, start in _document_draws(corpus, encode, nsamples, seqlen, seed)])


def heldout_windows(corpus: Corpus, tokenizer, nsamples: int, seqlen: int, seed: int,
                    windows: int) -> tuple[torch.Tensor, list[int]]:
    """Text the calibration never saw, from the calibration corpus itself: the first `seqlen` tokens of each
    document longer than `seqlen` that the calibration draw (same nsamples, seqlen, seed) did not pick, in
    corpus order, at most `windows` of them. Returns the (n, seqlen) ids and the documents' indices."""
    encode = _encoder(corpus, tokenizer)
    drawn = {i for i, _ in _document_draws(corpus, encode, nsamples, seqlen, seed)}
    chosen = []
    for i in range(len(corpus.rows)):
        if len(chosen) == windows:
            break
        if i not in drawn and encode(i).shape[0] > seqlen:
            chosen.append(i)
    if not chosen:
        raise UserError(f"every document of {corpus.name} longer than seqlen={seqlen} tokens was drawn for "
                        "calibration: none is left to select on")
    return torch.stack([encode(i)[:seqlen] for i in chosen]), chosen


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
