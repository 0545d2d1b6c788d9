"""A fidelity dump's pairs: each of our saved tensors beside the authors' result on it (written outside this project
into the dump's `theirs/` folder), refusing in one line when theirs is missing."""
from pathlib import Path

import torch

from dlp.errors import UserError


def dumped_pairs(folder: Path, pattern: str, theirs_made_by: str):
    """(our file, our saved dict, theirs) for each file of `folder` matching `pattern`, in name order."""
    for path in sorted(Path(folder).glob(pattern)):
        theirs_path = Path(folder) / "theirs" / path.name
        if not theirs_path.is_file():
            raise UserError(f"{theirs_path} is missing: run {theirs_made_by} on {path} first")
        yield path, torch.load(path), torch.load(theirs_path)
