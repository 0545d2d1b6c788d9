"""Sparsity patterns: unstructured (a fraction of weights) or N:M (N of every M consecutive inputs pruned)."""
from dataclasses import dataclass

from dlp.errors import UserError


@dataclass(frozen=True)
class NM:
    n: int  # weights pruned in each group
    m: int  # group size along the input dimension

    @property
    def sparsity(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_form(text: str | None) -> NM | None:
    """'unstructured' → None; '2:4' → NM(2, 4); anything else, N >= M included, is refused in one line."""
    if text in (None, "", "unstructured"):
        return None
    try:
        n, m = (int(part) for part in str(text).split(":"))
    except ValueError:
        raise UserError(f"pattern must be 'unstructured' or 'N:M' such as 2:4 (got '{text}')") from None
    if not 0 < n < m:
        raise UserError(f"pattern {text}: need 0 < N < M (N of every M weights pruned)")
    return NM(n, m)


def parse_pattern(text: str | None, sparsity: float) -> NM | None:
    """parse_form, and N:M fixes the sparsity, so any other target is refused."""
    nm = parse_form(text)
    if nm is None:
        return None
    n, m = nm.n, nm.m
    if abs(sparsity - n / m) > 1e-9:
        raise UserError(f"pattern {n}:{m} prunes exactly {n / m:g} of the weights; set sparsity={n / m:g} "
                        f"(got {sparsity:g})")
    return NM(n, m)


def check_sparsity(sparsity: float) -> float:
    # bool is an int to Python, but `sparsity=true` is a typo, not 100% or 0%.
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise UserError(f"sparsity must be a number in [0, 1) (got {sparsity!r})")
    if not 0.0 <= float(sparsity) < 1.0:
        raise UserError(f"sparsity must be in [0, 1) (got {sparsity})")
    return float(sparsity)
