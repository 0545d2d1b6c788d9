"""The one exception type that reaches the user as a single clear line instead of a traceback."""


class UserError(Exception):
    """Bad input or a missing resource the user can fix (unknown method, bad sparsity, missing path...)."""
