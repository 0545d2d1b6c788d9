"""The one exception type that reaches the user as a single clear line instead of a traceback."""


class UserError(Exception):
    """Bad input or a missing resource the user can fix (unknown method, bad sparsity, missing path...)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty: enough to name a
    cause in the one line a UserError or a warning gives, without the library's traceback-sized text."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
