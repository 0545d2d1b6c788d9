import pytest
import torch
from tiny import TEXT, char_tokenizer

from dlp.data import corpora
from dlp.data.calibration import calibration_windows
from dlp.data.corpora import Corpus
from dlp.errors import UserError


def corpus():
    # Documents of many lengths; only some are longer than the window.
    return Corpus("docs", [TEXT[: 10 * (i + 1)] for i in range(20)])


def test_windows_come_from_documents_strictly_longer_than_seqlen():
    tok, c = char_tokenizer(), corpus()
    seqlen = 150
    ids = calibration_windows(c, tok, nsamples=16, seqlen=seqlen, seed=0)
    assert ids.shape == (16, seqlen)
    long_docs = [tok(d).input_ids for d in c.rows if len(tok(d).input_ids) > seqlen]
    for window in ids.tolist():
        assert any(any(doc[i:i + seqlen] == window for i in range(len(doc) - seqlen)) for doc in long_docs)


def test_same_seed_same_windows_and_other_seed_differs():
    tok, c = char_tokenizer(), corpus()
    a = calibration_windows(c, tok, 8, 50, seed=0)
    assert torch.equal(a, calibration_windows(c, tok, 8, 50, seed=0))
    assert not torch.equal(a, calibration_windows(c, tok, 8, 50, seed=1))


def test_no_document_long_enough():
    with pytest.raises(UserError, match="no document"):
        calibration_windows(corpus(), char_tokenizer(), 2, 10_000, seed=0)


def test_stream_mode():
    ids = calibration_windows(corpus(), char_tokenizer(), 4, 64, seed=0, mode="stream")
    assert ids.shape == (4, 64)


def test_wikitext_local_copy_reads_rows_like_the_hub(tmp_path):
    folder = tmp_path / "wikitext-2-raw"
    folder.mkdir()
    (folder / "wiki.test.raw").write_bytes(b" = Title = \r\n Some text . \r\n")
    c = corpora.load("wikitext2", data_dir_cfg=str(tmp_path))
    assert c.name == "wikitext2-test-nonempty"  # named as itself, not as the hub split
    assert c.rows == [" = Title = \n", " Some text . \n"]
    assert c.text() == " = Title = \n\n\n Some text . \n"
    prov = c.provenance(char_tokenizer())
    assert prov["tokens"] == len(c.text()) and len(prov["sha256"]) == 64


def test_missing_local_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="has no"):
        corpora.load("wikitext2", data_dir_cfg=str(tmp_path))


def test_packaged_corpora_are_named_as_themselves():
    c4 = corpora.load("c4-exllamav2")
    assert c4.name == "c4-exllamav2" and len(c4.rows) == 118
    wiki = corpora.load("wiki-exllamav2")
    assert wiki.name == "wiki-exllamav2" and not any(r.startswith("<doc") for r in wiki.rows)
    assert wiki.source["wheel"].startswith("exllamav2-0.3.2")


def test_unknown_corpus():
    with pytest.raises(UserError, match="unknown corpus"):
        corpora.load("pile")
