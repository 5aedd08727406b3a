"""Errors that reach the user as one clear line."""


class UserError(ValueError):
    """Bad input or an unusable file: the message names the bad value and what is allowed."""


#: seeds are non-negative 32-bit integers (numpy's SeedSequence and JAX's PRNGKey both take them)
MAX_SEED = 2**32 - 1


def check_seed(seed: object, name: str = "seed") -> int:
    """Return ``seed`` as an int if it is an integer in ``0 .. MAX_SEED``; else raise ``UserError``."""
    import numbers

    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) <= MAX_SEED:
        raise UserError(f"{name} {seed!r} is not allowed; allowed: an integer in 0 .. 2**32 - 1")
    return int(seed)
