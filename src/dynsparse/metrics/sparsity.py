"""Zero decisions for Jacobian entries.

An entry is zero when ``|J| < threshold`` (absolute, default 1e-12) or, with a relative threshold,
when ``|J_ij| < threshold * ||J_i.||_2``, the Euclidean norm of its row (output ``i``) in the same
matrix at the same step. A row that is entirely zero has all entries zero under both rules.
Exact zeros are never blurred: no smoothing, no rounding before the comparison.
"""

from __future__ import annotations

import math

import numpy as np

from dynsparse import errors

DEFAULT_THRESHOLD = 1e-12
KINDS = ("absolute", "relative")


def check_threshold(threshold: float, kind: str = "absolute") -> float:
    """Return ``threshold`` as float, or raise ``UserError`` naming the bad value."""
    if kind not in KINDS:
        raise errors.UserError(f"unknown threshold kind {kind!r}; allowed: {', '.join(KINDS)}")
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise errors.UserError(f"threshold {threshold!r} is not a number; allowed: a finite number > 0") from None
    if not math.isfinite(value) or value <= 0:
        raise errors.UserError(f"threshold {threshold!r} is invalid; allowed: a finite number > 0")
    return value


def zero_mask(jac: np.ndarray, threshold: float = DEFAULT_THRESHOLD, kind: str = "absolute") -> np.ndarray:
    """Boolean mask of zero entries.

    Args:
      jac: ``(..., n_out, n_in)`` Jacobians (any leading dims).
      threshold: > 0.
      kind: ``absolute`` or ``relative`` (scaled by each row's L2 norm).

    Returns:
      Bool array of the same shape as ``jac``. NaN entries are not zero.
    """
    threshold = check_threshold(threshold, kind)
    mag = np.abs(jac)
    if kind == "absolute":
        return mag < threshold
    row = np.sqrt(np.sum(np.square(jac), axis=-1, keepdims=True))
    return (mag < threshold * row) | (row == 0)
