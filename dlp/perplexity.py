"""Perplexity with the papers' protocol.

Rows joined with "\n\n" (the corpus's joiner), tokenized once, cut into non-overlapping windows of `seqlen`
(the tail dropped); each window's loss is the mean next-token cross-entropy over its seqlen-1 predictions;
ppl = exp(mean window loss). `max_windows` caps the count for CPU presets (the first windows are kept).

The output layer is applied `chunk_tokens` positions at a time: the full logits of a batch (batch × seqlen ×
vocab, 400 MB in float32 for 4 × 512 × 49k) are never held at once (a chunk of 128 is 25 MB); each chunk's
loss is taken in float32 from the model-dtype logits, as the plain path does. `chunk_tokens=None` is the plain
path (the model's own logits), kept for the tests that show both agree.

Why 128 and not 512: the logits chunk and its log-softmax were the largest thing alive in a whole run
(evaluation peaked ~1 GB above the process base in float32 against ~0.6 GB for pruning). On the embedded model,
64 windows of 512 WikiText-2 tokens, float32 losses were bit-identical for 128 and 512 (ppl 29.1059 both), and
in bfloat16 they moved by at most 2.4e-4 per window (ppl 29.114 either way); 128 was not slower
(51 vs 61 s float32, 16.6 vs 19.0 s bfloat16, 2 cores, 2026-11-29).
"""
import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .compute_dtype import compute_dtype_of, computing
from .data.corpora import Corpus
from .errors import UserError

CHUNK_TOKENS = 128  # positions of the output layer applied at once (see the module's docstring)


def tokenize_corpus(corpus: Corpus, tokenizer) -> torch.Tensor:
    return tokenizer(corpus.text(), return_tensors="pt").input_ids[0]


@torch.no_grad()
def window_losses(model, ids: torch.Tensor, seqlen: int, max_windows: int | None = None, batch_size: int = 4,
                  progress: bool = True, chunk_tokens: int | None = CHUNK_TOKENS) -> torch.Tensor:
    n = ids.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise UserError(f"corpus has {ids.numel()} tokens, fewer than one window of {seqlen}")
    windows = ids[: n * seqlen].view(n, seqlen)
    device = model.get_input_embeddings().weight.device
    losses = []
    # A compute dtype (dlp.compute_dtype) runs the forward passes under autocast; the losses stay float32.
    with computing(compute_dtype_of(model), device):
        for start in tqdm(range(0, n, batch_size), desc="perplexity", disable=not progress):
            batch = windows[start:start + batch_size].to(device)
            if chunk_tokens is None:
                logits = model(input_ids=batch, use_cache=False).logits
                token_losses = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                               batch[:, 1:].reshape(-1), reduction="none")
            else:
                token_losses = _chunked_losses(model, batch, chunk_tokens)
            losses.append(token_losses.view(batch.shape[0], -1).mean(1).cpu())
    return torch.cat(losses)


class _Hidden(Exception):
    pass


def _chunked_losses(model, batch: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """Per-token losses of every next-token prediction, the output layer applied a chunk at a time.

    The hidden states are taken at the output layer's input (a pre-hook that stops the forward there), so
    whatever the architecture does before it (final norm, OPT's project_out) is the model's own code.
    """
    head = model.get_output_embeddings()
    seen = {}

    def grab(_module, args):
        seen["h"] = args[0]
        raise _Hidden

    handle = head.register_forward_pre_hook(grab)
    try:
        model(input_ids=batch, use_cache=False)
    except _Hidden:
        pass
    finally:
        handle.remove()
    hidden = seen["h"][:, :-1].reshape(-1, seen["h"].shape[-1])
    targets = batch[:, 1:].reshape(-1)
    out = torch.empty(targets.numel(), dtype=torch.float32, device=hidden.device)
    for a in range(0, targets.numel(), chunk_tokens):
        logits = head(hidden[a:a + chunk_tokens]).float()
        out[a:a + chunk_tokens] = F.cross_entropy(logits, targets[a:a + chunk_tokens], reduction="none")
    return out


def perplexity(model, corpus: Corpus, tokenizer, seqlen: int, max_windows: int | None = None,
               batch_size: int = 4, progress: bool = True, chunk_tokens: int | None = CHUNK_TOKENS) -> dict:
    ids = tokenize_corpus(corpus, tokenizer)
    cap = corpus.max_tokens_windows
    if cap is not None:
        max_windows = cap if max_windows is None else min(cap, max_windows)
    losses = window_losses(model, ids, seqlen, max_windows, batch_size, progress, chunk_tokens)
    return {"ppl": math.exp(losses.double().mean().item()), "windows": int(losses.numel()), "seqlen": seqlen,
            "tokens_scored": int(losses.numel() * seqlen), "corpus_tokens": int(ids.numel())}
