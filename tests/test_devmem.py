"""Device memory under a per-process cap, checked on a CPU with torch's CUDA memory calls replaced by fakes that
behave as torch's do (they refuse a CUDA device without an index)."""
import types

import pytest
import torch

from dlp.errors import UserError
from dlp.walk import devmem

GIB = 2**30


@pytest.fixture
def fake_cuda(monkeypatch):
    """A 100 GiB card with 30 GiB free, 4 GiB allocated and 6 GiB reserved by this process."""
    state = {"fraction": 1.0}

    def index(device):
        if isinstance(device, torch.device) and device.index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        return device.index if isinstance(device, torch.device) else device

    def set_fraction(fraction, device):
        index(device)
        state["fraction"] = fraction

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (30 * GIB, 100 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 4 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 6 * GIB)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(total_memory=100 * GIB))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction",
                        lambda device: index(device) * 0 + state["fraction"])
    return state


def test_a_cap_on_cuda_without_an_index_applies_to_the_current_device(fake_cuda):
    cap = devmem.set_memory_cap(torch.device("cuda"), 10)
    assert cap == {"gib": 10, "fraction": 0.1}
    assert fake_cuda["fraction"] == 0.1


def test_available_memory_is_what_the_cap_leaves_or_the_card_has(fake_cuda):
    # No cap: free 30 + reserved-but-unused 2 GiB.
    assert devmem.available_bytes(torch.device("cuda")) == 32 * GIB
    devmem.set_memory_cap(torch.device("cuda", 0), 10)
    assert devmem.available_bytes(torch.device("cuda")) == 6 * GIB  # 10 GiB cap - 4 GiB allocated


def test_a_cap_that_cannot_apply_is_one_line(fake_cuda):
    with pytest.raises(UserError, match="at most the card's 100.0 GiB"):
        devmem.set_memory_cap(torch.device("cuda"), 200)
    with pytest.raises(UserError, match="caps a CUDA device's memory; this run computes on cpu"):
        devmem.set_memory_cap(torch.device("cpu"), 10)
    assert devmem.set_memory_cap(torch.device("cuda"), None) is None


def test_a_copy_sent_elsewhere_names_its_commit(monkeypatch):
    from experiments import records
    monkeypatch.setenv("DLP_COMMIT", "abc123")
    assert records.git_commit() == {"commit": "abc123", "dirty": False}
    monkeypatch.setenv("DLP_DIRTY", "1")
    assert records.git_commit()["dirty"] is True


def test_the_automatic_batch_fits_what_the_device_has_left(monkeypatch):
    """On a CUDA device the batch's working set also stays within a quarter of the memory left (an offloaded or
    capped run), and is unchanged when the device has plenty."""
    from tiny import tiny_model

    from dlp.walk import batching
    model = tiny_model("llama")
    per_sequence = batching.working_set_per_token(model.config, torch.float32, 32) * 32
    unbounded = batching.auto_batch_size(model, 2048, 32)
    assert unbounded > 3
    monkeypatch.setattr(model, "get_input_embeddings",
                        lambda: types.SimpleNamespace(weight=types.SimpleNamespace(device=torch.device("cuda", 0))))
    monkeypatch.setattr(batching, "available_bytes", lambda device: 10**12)
    assert batching.auto_batch_size(model, 2048, 32) == unbounded
    monkeypatch.setattr(batching, "available_bytes", lambda device: 12 * per_sequence)
    assert batching.auto_batch_size(model, 2048, 32) == 3
