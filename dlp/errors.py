"""The one exception type that reaches the user as a single clear line instead of a traceback."""


class UserError(Exception):
    """Bad input or a missing resource the user can fix (unknown method, bad sparsity, missing path...)."""


class CheckFailed(UserError):
    """A check of the run's own correctness failed (the walk does not reproduce the model's forward): told in
    one line like bad input, but a finding about this model and code, so a run records it."""


def last_line(output: str, default: str = "?") -> str:
    """The last line of a process's output, where a failed command says why (its traceback's final line)."""
    return (output.strip().splitlines() or [default])[-1]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty: enough to name a
    cause in the one line a UserError or a warning gives, without the library's traceback-sized text."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
