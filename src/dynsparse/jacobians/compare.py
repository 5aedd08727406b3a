"""Agreement between two exact Jacobians of the same steps: two methods of one definition (the
guard every faster path must pass), or the two definitions (``--compare-definitions``).

Checks against finite differences live in ``certify``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_THRESHOLD = 1e-12


def definition_difference(a: np.ndarray, b: np.ndarray, floor: float = 1e-3, threshold: float = DEFAULT_THRESHOLD) -> tuple[float, int]:
    """How two definitions' Jacobians of one step differ.

    Args:
      a, b: ``(2nv, 2nv + nu)`` ``[J_s | J_a]`` of the same step.
      floor: entries below ``floor`` times their row's scale ``max_j max(|a_ij|, |b_ij|)`` are
        compared against that (as in ``certify``).
      threshold: the absolute zero threshold.

    Returns:
      ``(rel, pattern)``: ``max |a - b| / max(|a|, |b|, floor m_i)`` (NaN with NaN/Inf) and the
      number of entries whose zero decision (``|x| < threshold``) differs.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan"), int(a.size)
    big = np.maximum(np.abs(a), np.abs(b))
    m = big.max(axis=-1, keepdims=True)
    denom = np.maximum(big, floor * m)
    diff = np.abs(a - b)
    rel = np.where(diff > 0, diff / np.where(denom > 0, denom, 1.0), 0.0)
    return float(rel.max(initial=0.0)), int(np.sum((np.abs(a) < threshold) != (np.abs(b) < threshold)))


#: The guard every faster exact path must pass against the reference autodiff path.
GUARD_RTOL = 1e-6


@dataclasses.dataclass(frozen=True)
class MethodAgreement:
    """How two exact (autodiff) methods agree on the same steps.

    Attributes:
      zero_mismatch: entries one method calls zero (``|x| < threshold``) and the other not.
      max_rel_err: largest ``|a - b| / max(|a|, |b|)`` over entries that either method calls
        nonzero (0.0 if none; NaN if either has NaN/Inf).
      entries: entries compared.
    """

    zero_mismatch: int
    max_rel_err: float
    entries: int

    def passes(self, rtol: float = GUARD_RTOL) -> bool:
        """Identical zero decisions and values within ``rtol`` relative."""
        return self.zero_mismatch == 0 and self.max_rel_err <= rtol


def method_agreement(a: np.ndarray, b: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> MethodAgreement:
    """Compare two exact methods' Jacobians of the same steps (equal shapes, any leading axes)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return MethodAgreement(int(a.size), float("nan"), int(a.size))
    za, zb = np.abs(a) < threshold, np.abs(b) < threshold
    big = np.maximum(np.abs(a), np.abs(b))
    mask = ~(za & zb)
    rel = float(np.max(np.abs(a - b)[mask] / big[mask])) if mask.any() else 0.0
    return MethodAgreement(int(np.sum(za != zb)), rel, int(a.size))
