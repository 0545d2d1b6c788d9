"""The text a searching allocation (ATP) scores its trials on: never the evaluation's. `heldout` takes the
calibration corpus's documents that the calibration draw did not pick; a corpus name takes that packaged or hub
corpus, cut into windows of the calibration's length."""
import torch

from dlp.data import corpora
from dlp.data.calibration import heldout_windows
from dlp.errors import UserError
from dlp.evaluation.perplexity import tokenize_corpus

HELDOUT = "heldout"
CORPORA = ("wiki-exllamav2", "c4-validation", "wikitext2-train")  # not wikitext2 (the test split) nor a file


def check_selection(cfg: dict, select_on: str | None, offload: str) -> None:
    """`select_on` None: the search scores on the calibration windows (EvoPress); only the offload is checked."""
    if offload != "none":
        raise UserError(f"a search prunes the model once per trial and restores it: it needs offload=none "
                        f"(got offload={offload})")
    if select_on is None:
        return
    if select_on != HELDOUT and select_on not in CORPORA:
        raise UserError(f"unknown select_on '{select_on}'; choose one of {', '.join((HELDOUT, *CORPORA))}")
    if select_on == cfg["eval"]["corpus"]:
        raise UserError(f"select_on={select_on} is the evaluation's own text: choose another")
    if select_on == HELDOUT and cfg["data"]["mode"] != "documents":
        raise UserError("select_on=heldout takes calibration documents the draw did not pick, and "
                        f"data.mode={cfg['data']['mode']} draws from one text: name a corpus "
                        f"({', '.join(CORPORA)})")


def selection_windows(cfg: dict, select_on: str, windows: int, tokenizer, calib_corpus) -> tuple[torch.Tensor, dict]:
    """(n, seqlen) token ids and their provenance for the record; None and the calibration's for `select_on` None."""
    d = cfg["data"]
    if select_on is None:
        return None, {**calib_corpus.provenance(), "text": "the calibration windows"}
    if select_on == HELDOUT:
        ids, documents = heldout_windows(calib_corpus, tokenizer, d["nsamples"], d["seqlen"], cfg["seed"], windows)
        return ids, {**calib_corpus.provenance(), "text": "calibration documents not drawn",
                     "documents": documents, "windows": len(documents), "seqlen": d["seqlen"]}
    corpus = corpora.load(select_on)
    stream = tokenize_corpus(corpus, tokenizer)
    n = min(windows, stream.numel() // d["seqlen"])
    if n == 0:
        raise UserError(f"{corpus.name} has {stream.numel()} tokens, fewer than one window of {d['seqlen']}")
    return (stream[:n * d["seqlen"]].view(n, d["seqlen"]),
            {**corpus.provenance(), "text": "first windows", "windows": n, "seqlen": d["seqlen"]})
