"""Perplexity with the papers' protocol.

Rows joined with "\n\n" (the corpus's joiner), tokenized once, cut into non-overlapping windows of `seqlen`
(the tail dropped); each window's loss is the mean next-token cross-entropy over its seqlen-1 predictions;
ppl = exp(mean window loss). `max_windows` caps the count for CPU presets (the first windows are kept).
"""
import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data.corpora import Corpus
from .errors import UserError


def tokenize_corpus(corpus: Corpus, tokenizer) -> torch.Tensor:
    return tokenizer(corpus.text(), return_tensors="pt").input_ids[0]


@torch.no_grad()
def window_losses(model, ids: torch.Tensor, seqlen: int, max_windows: int | None = None, batch_size: int = 4,
                  progress: bool = True) -> torch.Tensor:
    n = ids.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise UserError(f"corpus has {ids.numel()} tokens, fewer than one window of {seqlen}")
    windows = ids[: n * seqlen].view(n, seqlen)
    device = model.get_input_embeddings().weight.device
    losses = []
    for start in tqdm(range(0, n, batch_size), desc="perplexity", disable=not progress):
        batch = windows[start:start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                               reduction="none").view(batch.shape[0], -1).mean(1)
        losses.append(loss.cpu())
    return torch.cat(losses)


def perplexity(model, corpus: Corpus, tokenizer, seqlen: int, max_windows: int | None = None,
               batch_size: int = 4, progress: bool = True) -> dict:
    ids = tokenize_corpus(corpus, tokenizer)
    cap = corpus.max_tokens_windows
    if cap is not None:
        max_windows = cap if max_windows is None else min(cap, max_windows)
    losses = window_losses(model, ids, seqlen, max_windows, batch_size, progress)
    return {"ppl": math.exp(losses.double().mean().item()), "windows": int(losses.numel()), "seqlen": seqlen,
            "tokens_scored": int(losses.numel() * seqlen), "corpus_tokens": int(ids.numel())}
