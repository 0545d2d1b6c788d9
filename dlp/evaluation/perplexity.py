"""Perplexity with the papers' protocol.

Rows joined with "\n\n" (the corpus's joiner), tokenized once, cut into non-overlapping windows of `seqlen`
(the tail dropped); each window's loss is the mean next-token cross-entropy over its seqlen-1 predictions;
ppl = exp(mean window loss). `max_windows` caps the count for CPU presets (the first windows are kept).

The output layer is applied `chunk_tokens` positions at a time: the full logits of a batch (batch × seqlen ×
vocab, 400 MB in float32 for 4 × 512 × 49k) are never held at once (a chunk of 128 is 25 MB); each chunk's
loss is taken in float32 from the model-dtype logits, as the plain path does. `chunk_tokens=None` is the plain
path (the model's own logits), kept for the tests that show both agree. Every evaluation compares the two
on its first window and falls back to the plain path, with a warning, if a family post-processes its logits
in a way the chunked path does not reproduce (it knows Gemma's final soft cap).

A model whose blocks are offloaded (dlp.walk.offload) is evaluated block by block, as the engine walks it: every
window's first-block inputs are captured, each block visits the device once and runs all of them, and then the
model's own code after the blocks (final norm, output layer) runs per batch with the blocks bypassed and the
last block's stored outputs put in its place. The same batches meet the same kernels, so the losses are those
of the model held whole (bit for bit on a CPU), and each block's weights cross to the device once, not once
per batch.

Why 128 and not a whole window: otherwise the logits chunk and its log-softmax are the largest thing alive
in a whole run, larger than anything pruning holds. The chunk size only splits the output layer's product;
each position's loss is still taken from its own row of logits, so the losses do not depend on it beyond
summation-order rounding. A 128-position product is already large enough to run at full speed.
"""
import logging
import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dlp.data.corpora import Corpus
from dlp.errors import UserError
from dlp.walk.compute_dtype import compute_dtype_of, computing, working_tolerance
from dlp.walk.engine import capture_inputs, forwards_replaced, run_block
from dlp.walk.offload import offload_of
from dlp.walk.structure import find_blocks

CHUNK_TOKENS = 128  # positions of the output layer applied at once (see the module's docstring)
# Largest per-token loss difference allowed between the chunked output layer and the model's own logits on the
# first window. Both paths compute the same products, so float32 needs room only for another summation
# order; reduced precision also leaves room for the rounding of the logits.
AGREE = {torch.float32: 1e-4, torch.float64: 1e-8}
AGREE_REDUCED = 5e-2
log = logging.getLogger(__name__)


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
    streamed = offload_of(model).offloaded
    last_outputs = _block_by_block(model, windows, batch_size, progress) if streamed else None
    losses = []
    checked = chunk_tokens is None
    # A compute dtype (dlp.walk.compute_dtype) runs the forward passes under autocast; the losses stay float32.
    with computing(compute_dtype_of(model), device):
        for start in tqdm(range(0, n, batch_size), desc="perplexity", disable=not progress):
            batch = windows[start:start + batch_size].to(device)
            if streamed:
                forward = _after_blocks(model, batch, last_outputs[start:start + batch_size])
            else:
                def forward(rows: int, batch=batch):
                    return model(input_ids=batch[:rows], use_cache=False)
            if chunk_tokens is None:
                token_losses = _plain_losses(forward, batch)
            else:
                token_losses = _chunked_losses(model, forward, batch, chunk_tokens)
                if not checked:  # once: the output layer alone must give the model's own logits
                    checked = True
                    if not _agrees(model, token_losses[:seqlen - 1], _plain_losses(forward, batch[:1])):
                        chunk_tokens = None
                        token_losses = _plain_losses(forward, batch)
            losses.append(token_losses.view(batch.shape[0], -1).mean(1).cpu())
    return torch.cat(losses)


def _block_by_block(model, windows: torch.Tensor, batch_size: int, progress: bool) -> torch.Tensor:
    """The last block's outputs for every window, each block visiting the device once (an offloaded model)."""
    layout = find_blocks(model)
    home = offload_of(model)
    cap = capture_inputs(model, layout, windows, batch_size)
    x, y = cap.inputs, torch.empty_like(cap.inputs)
    compute = compute_dtype_of(model)
    for index, block, _visit in tqdm(home.visits(layout.blocks), total=len(layout), desc="perplexity (blocks)",
                                      disable=not progress):
        run_block(block, x, cap.block_calls(index), batch_size, out=y, compute_dtype=compute)
        x, y = y, x
    return x


def _after_blocks(model, batch: torch.Tensor, last: torch.Tensor):
    """A forward over the first `rows` windows of `batch` that runs the model's own code around the blocks with
    the blocks bypassed, the last one answering with its stored outputs `last`."""
    layout = find_blocks(model)

    def forward(rows: int):
        def passthrough(index):
            def bypass(*args, **kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                return last[:rows].to(hidden.device) if index == len(layout) - 1 else hidden
            return bypass

        with forwards_replaced(layout, passthrough):
            return model(input_ids=batch[:rows], use_cache=False)
    return forward


def _plain_losses(forward, batch: torch.Tensor) -> torch.Tensor:
    logits = forward(batch.shape[0]).logits
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                           reduction="none")


def _agrees(model, chunked: torch.Tensor, plain: torch.Tensor) -> bool:
    """Whether the chunked path's first-window losses match the model's own; if not (a family that scales or
    caps its logits in a way `_chunked_losses` does not know), say so in one line: the caller falls back."""
    bound = working_tolerance(model, AGREE, AGREE_REDUCED)
    diff = (chunked - plain).abs().max().item()
    if diff <= bound:
        return True
    log.warning("the output layer alone does not reproduce %s's logits (loss differs by %.3g): perplexity "
                "uses the model's full logits", type(model).__name__, diff)
    return False


class _Hidden(Exception):
    pass


def _chunked_losses(model, forward, batch: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
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
        forward(batch.shape[0])
    except _Hidden:
        pass
    finally:
        handle.remove()
    hidden = seen["h"][:, :-1].reshape(-1, seen["h"].shape[-1])
    targets = batch[:, 1:].reshape(-1)
    out = torch.empty(targets.numel(), dtype=torch.float32, device=hidden.device)
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma-2/3 cap their logits after the head
    for a in range(0, targets.numel(), chunk_tokens):
        logits = head(hidden[a:a + chunk_tokens])
        if cap:
            logits = torch.tanh(logits / cap) * cap
        logits = logits.float()
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
