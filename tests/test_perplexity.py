import math

import pytest
import torch
from tiny import TEXT, char_tokenizer, tiny_model

from dlp.data.corpora import Corpus
from dlp.errors import UserError
from dlp.evaluation.perplexity import perplexity


def hand_ppl(model, ids, seqlen, n):
    """The reference loop: one window at a time, log-softmax and gather by hand."""
    total = 0.0
    for w in range(n):
        window = ids[w * seqlen:(w + 1) * seqlen].unsqueeze(0)
        with torch.no_grad():
            logits = model(input_ids=window).logits[0].double()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        total += -logp.gather(1, window[0, 1:].unsqueeze(1)).mean().item()
    return math.exp(total / n)


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_perplexity_matches_hand_computation(family):
    model, tok = tiny_model(family), char_tokenizer()
    corpus = Corpus("t", [TEXT[:100], TEXT[100:], TEXT])
    ids = tok(corpus.text(), return_tensors="pt").input_ids[0]
    seqlen = 40
    n = ids.numel() // seqlen  # tail dropped
    got = perplexity(model, corpus, tok, seqlen, batch_size=3, progress=False)
    assert got["windows"] == n and got["tokens_scored"] == n * seqlen
    assert got["corpus_tokens"] == len(TEXT) * 2 + 4  # rows joined with "\n\n"
    assert got["ppl"] == pytest.approx(hand_ppl(model, ids, seqlen, n), rel=1e-5)
    capped = perplexity(model, corpus, tok, seqlen, max_windows=2, batch_size=2, progress=False)
    assert capped["windows"] == 2
    assert capped["ppl"] == pytest.approx(hand_ppl(model, ids, seqlen, 2), rel=1e-5)


def test_too_short_corpus():
    with pytest.raises(UserError, match="fewer than one window"):
        perplexity(tiny_model(), Corpus("t", ["abc"]), char_tokenizer(), 64, progress=False)
