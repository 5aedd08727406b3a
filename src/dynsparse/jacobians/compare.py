"""Agreement between two Jacobian backends at the same step.

Centred finite differences cannot resolve what autodiff gives exactly: with eps 1e-6 their
round-off is ~1e-10 * |s'| per entry (measured on CheetahRun: absolute errors up to 5e-9, i.e.
relative errors up to 1e-4 on entries of 1e-5 whose autodiff values larger eps confirm), and a
larger eps crosses contact kinks (eps 1e-5 gave 5e-3 at a contact step). So an entry disagrees
only beyond ``rtol * max(|a|, |b|) + atol``, and zero decisions are compared only against entries
the finite differences can resolve (``>= floor``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_FLOOR = 1e-6
DEFAULT_THRESHOLD = 1e-12
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-8


@dataclasses.dataclass(frozen=True)
class Agreement:
    """How two Jacobians of one step agree.

    Attributes:
      max_rel_err: largest ``|a - b| / max(|a|, |b|)`` over entries with ``max(|a|, |b|) > floor``
        (0.0 if none; NaN if either has NaN/Inf).
      max_abs_err: largest ``|a - b|`` (NaN if either has NaN/Inf).
      n_disagree: entries with ``|a - b| > rtol * max(|a|, |b|) + atol``.
      pattern_mismatch: entries one backend calls zero (``|x| < threshold``) while the other is
        ``>= floor``.
    """

    max_rel_err: float
    max_abs_err: float
    n_disagree: int
    pattern_mismatch: int


#: dataset variable -> ``Agreement`` field
DATASET_FIELDS = {
    "fd_max_rel_err": "max_rel_err",
    "fd_max_abs_err": "max_abs_err",
    "fd_disagree": "n_disagree",
    "fd_pattern_mismatch": "pattern_mismatch",
}


def compare(
    a: np.ndarray,
    b: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    floor: float = DEFAULT_FLOOR,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> Agreement:
    """Compare two Jacobians of the same step (equal shapes, e.g. ``[J_s | J_a]``)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return Agreement(float("nan"), float("nan"), int(a.size), int(a.size))
    diff = np.abs(a - b)
    big = np.maximum(np.abs(a), np.abs(b))
    mask = big > floor
    rel = float(np.max(diff[mask] / big[mask])) if mask.any() else 0.0
    za, zb = np.abs(a) < threshold, np.abs(b) < threshold
    mismatch = int(np.sum((za & (np.abs(b) >= floor)) | (zb & (np.abs(a) >= floor))))
    disagree = int(np.sum(diff > rtol * big + atol))
    return Agreement(rel, float(diff.max(initial=0.0)), disagree, mismatch)


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
