"""ATP: the authors' schedule to the last bit, their search grid, the search's choice, and selection text that
calibration never saw."""
import pytest
import torch
from tiny import char_tokenizer, tiny_model

from baselines.allocations.atp import atp_sparsities, beta_grid
from dlp.data.calibration import _document_draws, _encoder, heldout_windows, sample_documents
from dlp.data.corpora import Corpus
from dlp.errors import UserError
from dlp.registry import make_allocator
from dlp.walk.structure import find_blocks

# The authors' main.py:58-66 (wzhuang-xmu/ATP at 56b84370d5f78af2490db5a272baaa678c6bd701), run for 32 blocks,
# sparsity 0.7 and beta 0.01.
AUTHORS_32_07_001 = [
    0.5449999999999999, 0.5549999999999999, 0.565, 0.575, 0.585, 0.595, 0.605, 0.615, 0.6249999999999999,
    0.6349999999999999, 0.6449999999999999, 0.6549999999999999, 0.6649999999999999, 0.6749999999999999,
    0.6849999999999999, 0.695, 0.705, 0.715, 0.7249999999999999, 0.7349999999999999, 0.7449999999999999,
    0.7549999999999999, 0.7649999999999999, 0.7749999999999999, 0.7849999999999999, 0.7949999999999999,
    0.8049999999999999, 0.815, 0.825, 0.835, 0.845, 0.855]


def test_schedule_equals_the_authors_to_the_last_bit():
    assert atp_sparsities(32, 0.7, 0.01) == AUTHORS_32_07_001
    s = atp_sparsities(30, 0.6, 0.004)
    assert abs(sum(s) / 30 - 0.6) < 1e-12 and s[0] < s[-1] and abs(s[1] - s[0] - 0.004) < 1e-12


def test_grid_is_the_authors_search_grid():
    # search.sh: 0.002, 0.004, ... (bc decimals) until main.py says "Illegal beta" (beta > min(2S, 2(1-S))/(L-1))
    assert beta_grid(32, 0.7, 0.002) == [0.002, 0.004, 0.006, 0.008, 0.01, 0.012, 0.014, 0.016, 0.018]
    assert beta_grid(30, 0.7, 0.002) == [0.002, 0.004, 0.006, 0.008, 0.01, 0.012, 0.014, 0.016, 0.018, 0.02]


class FakeTrials:
    """Perplexity as a known function of the candidate's spread, so the choice can be computed by hand."""
    def __init__(self, best_beta, flat_from=None):
        self.best, self.flat_from, self.seen = best_beta, flat_from, []

    def perplexity(self, sparsities):
        beta = sparsities[1] - sparsities[0]
        self.seen.append(round(beta, 6))
        if self.flat_from is not None and beta >= self.flat_from - 1e-9:
            return 1.0
        return 1.0 + (beta - self.best) ** 2 + (0.0 if self.flat_from is None else 1.0)

    selection, seconds, count = {"name": "fake"}, 0.0, 0

    def resume(self, search, settings):
        return None  # nothing kept from an earlier attempt (tests/test_search_resume.py covers one)

    def keep(self, search, settings, state):
        pass

    def record(self):
        return {"selection": self.selection, "trials": len(self.seen), "seconds": 0.0}


def test_search_tries_the_grid_and_keeps_the_lowest_smallest_first():
    model = tiny_model("llama")
    assert len(find_blocks(model)) == 3  # the largest legal beta at 0.7 is min(1.4, 0.6) / 2 = 0.3
    atp = make_allocator("atp", step=0.05)
    trials = FakeTrials(best_beta=0.2)
    allocation = atp.allocate(model, None, 0.7, 1, trials=trials)
    assert trials.seen == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    assert allocation.info["beta"] == 0.2 and allocation.sparsities == atp_sparsities(3, 0.7, 0.2)
    assert [t["beta"] for t in allocation.info["search"]["tried"]] == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    tie = make_allocator("atp", step=0.05).allocate(model, None, 0.7, 1, trials=FakeTrials(0.0, flat_from=0.15))
    assert tie.info["beta"] == 0.15  # equal perplexities from 0.15 on: the smallest


def test_fixed_beta_reads_nothing_and_is_checked():
    model = tiny_model("llama")
    assert make_allocator("atp", beta=0.2).allocate(model, None, 0.7, 1).sparsities == atp_sparsities(3, 0.7, 0.2)
    with pytest.raises(UserError, match="atp beta=0.31 takes a block outside"):
        make_allocator("atp", beta=0.31).allocate(model, None, 0.7, 1)
    with pytest.raises(UserError, match="run it through experiments.run, or give allocation.beta"):
        make_allocator("atp").allocate(model, None, 0.7, 1)


def test_heldout_windows_are_documents_calibration_did_not_draw():
    tok = char_tokenizer()
    rows = [f"document {i} " + "abcdefgh" * (3 + i % 4) for i in range(30)]
    corpus = Corpus("docs", rows)
    drawn = {i for i, _ in _document_draws(corpus, _encoder(corpus, tok), 8, 24, seed=3)}
    ids, documents = heldout_windows(corpus, tok, 8, 24, 3, windows=5)
    long_enough = [i for i in range(30) if len(tok(rows[i]).input_ids) > 24]
    assert documents == [i for i in long_enough if i not in drawn][:5]
    assert torch.equal(ids, torch.stack([tok(rows[i], return_tensors="pt").input_ids[0][:24] for i in documents]))
    # the calibration windows are those very draws
    calib = sample_documents(corpus, tok, 8, 24, 3)
    assert all(any(torch.equal(w, tok(rows[i], return_tensors="pt").input_ids[0][s:s + 24])
                   for i, s in _document_draws(corpus, _encoder(corpus, tok), 8, 24, 3)) for w in calib)


def test_fidelity_schedule_says_equal_or_not(tmp_path):
    import json

    from experiments.fidelity import schedule

    cases = [{"blocks": 32, "target": 0.7, "beta": 0.01, "sparsities": AUTHORS_32_07_001},
             {"blocks": 32, "target": 0.7, "beta": 0.01, "sparsities": [s + 1e-12 for s in AUTHORS_32_07_001]},
             {"blocks": 32, "target": 0.7, "grid": beta_grid(32, 0.7, 0.002)}]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    text = schedule(tmp_path / "cases.json", "test", tmp_path).read_text()
    assert "| 32 | 0.7 | 0.01 | 0 | yes |" in text and "| 32 | 0.7 | 0.01 | 1e-12 | no |" in text
    assert "| 32 | 0.7 | 0.002, 0.004, 0.006, 0.008, 0.01, 0.012, 0.014, 0.016, 0.018 | yes |" in text
