import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import TEXT, save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A tiny saved model and a small text file, for runs through the real command line and pipeline."""
    tmp = tmp_path_factory.mktemp("tiny")
    save_tiny(tmp / "model")
    (tmp / "docs.txt").write_text("\n".join(TEXT * (i + 1) for i in range(6)))
    return tmp


def tiny_overrides(workspace, results="runs"):
    return [f"model.path={workspace / 'model'}", "model.name=tiny", "data=file", f"data.path={workspace / 'docs.txt'}",
            "data.nsamples=4", "data.seqlen=64", "data.batch_size=4", "eval=file", f"eval.path={workspace / 'docs.txt'}",
            "eval.seqlen=64", "eval.max_windows=3", f"results_dir={workspace / results}", "progress=false",
            "wandb.mode=disabled"]
