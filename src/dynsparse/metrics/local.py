"""Q2: local, state-dependent sparsity.

Per-sample sparsity is the fraction of a step's Jacobian entries that are zero, for ``J_s``,
for ``J_a`` and for both together (``[J_s | J_a]``). It is computed from integer zero counts, so
histogram bins and distinct levels are exact (no float rounding at bin edges).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dynsparse import errors
from dynsparse.metrics.sparsity import Masks

MATRICES = ("J_s", "J_a", "both")
DEFAULT_BIN_WIDTH = 0.1


def zero_counts_per_step(masks: Masks) -> dict[str, np.ndarray]:
    """Zero entries per step.

    Returns:
      ``{"J_s", "J_a", "both"}`` -> ``(episode, step)`` int arrays (0 where not counted).
    """
    zs = masks.J_s.sum(axis=(-2, -1))
    za = masks.J_a.sum(axis=(-2, -1))
    return {"J_s": zs, "J_a": za, "both": zs + za}


def n_entries(masks: Masks) -> dict[str, int]:
    """Entries per matrix: ``{"J_s": n_out * n_state, "J_a": n_out * n_action, "both": sum}``."""
    ns = int(np.prod(masks.J_s.shape[-2:]))
    na = int(np.prod(masks.J_a.shape[-2:]))
    return {"J_s": ns, "J_a": na, "both": ns + na}


def per_sample_sparsity(masks: Masks) -> dict[str, np.ndarray]:
    """Per-sample sparsity = zeros / entries.

    Returns:
      ``{"J_s", "J_a", "both"}`` -> ``(episode, step)`` float arrays in [0, 1], NaN where the step
      is not counted (does not exist, or has a non-finite Jacobian).
    """
    counts = zero_counts_per_step(masks)
    sizes = n_entries(masks)
    return {k: np.where(masks.counted, counts[k] / sizes[k], np.nan) for k in MATRICES}


def check_bin_width(width: float) -> int:
    """Number of bins for ``width``; ``1 / width`` must be a whole number (0.1, 0.05, 0.25, ...)."""
    try:
        w = float(width)
    except (TypeError, ValueError):
        raise errors.UserError(f"bin width {width!r} is not a number; allowed: 1/n for a whole n, e.g. 0.1") from None
    if not (math.isfinite(w) and 0 < w <= 1) or abs(1 / w - round(1 / w)) > 1e-9:
        raise errors.UserError(f"bin width {width!r} is not allowed; allowed: 1/n for a whole n >= 1, e.g. 0.1, 0.05, 0.25")
    return int(round(1 / w))


def histogram(masks: Masks, bin_width: float = DEFAULT_BIN_WIDTH) -> dict[str, Any]:
    """Histogram of per-sample sparsity over counted steps, with its mean.

    Bin ``b`` holds steps with ``b * w <= sparsity < (b + 1) * w``; the last bin also holds 1.0.
    Bins are assigned from integer zero counts, so a sparsity of exactly 0.3 is in ``[0.3, 0.4)``.

    Returns:
      ``{"edges": [n_bins + 1], "J_s"/"J_a"/"both": {"counts": [n_bins], "mean": float | None,
      "steps": int}}``.
    """
    n_bins = check_bin_width(bin_width)
    counts = zero_counts_per_step(masks)
    sizes = n_entries(masks)
    result: dict[str, Any] = {"edges": [b / n_bins for b in range(n_bins + 1)]}
    for k in MATRICES:
        zeros = counts[k][masks.counted].astype(np.int64)
        idx = np.minimum(zeros * n_bins // sizes[k], n_bins - 1) if sizes[k] else np.zeros_like(zeros)
        result[k] = {
            "counts": np.bincount(idx, minlength=n_bins).tolist(),
            "mean": float(zeros.mean() / sizes[k]) if zeros.size and sizes[k] else None,
            "steps": int(zeros.size),
        }
    return result


def levels(masks: Masks) -> dict[str, list[dict[str, float]]]:
    """The distinct per-sample sparsity levels that occur and how often.

    Returns:
      ``{"J_s"/"J_a"/"both": [{"zeros": int, "sparsity": float, "steps": int, "share": float}, ...]}``
      sorted by sparsity; ``share`` is the fraction of counted steps at that level.
    """
    counts = zero_counts_per_step(masks)
    sizes = n_entries(masks)
    out: dict[str, list[dict[str, float]]] = {}
    for k in MATRICES:
        zeros = counts[k][masks.counted]
        values, freq = np.unique(zeros, return_counts=True)
        total = int(freq.sum())
        out[k] = [
            {"zeros": int(v), "sparsity": float(v / sizes[k]), "steps": int(f), "share": float(f / total)}
            for v, f in zip(values, freq)
        ]
    return out


def zero_frequency_per_episode(masks: Masks) -> dict[str, np.ndarray]:
    """Per-element zero frequency within each episode, in percent of that episode's counted steps.

    Returns:
      ``{"J_s": (episode, out, state_in), "J_a": (episode, out, action_in)}`` float arrays; NaN for
      an episode with no counted step.
    """
    n = masks.counted.sum(axis=1).astype(np.float64)[:, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            name: np.where(n > 0, 100.0 * getattr(masks, name).sum(axis=1) / n, np.nan)
            for name in ("J_s", "J_a")
        }


def zero_frequency_pooled(masks: Masks) -> dict[str, np.ndarray]:
    """Per-element zero frequency over all counted steps, in percent (NaN if none counted)."""
    n = float(masks.counted.sum())
    return {
        name: (100.0 * getattr(masks, name).sum(axis=(0, 1)) / n) if n else np.full(getattr(masks, name).shape[2:], np.nan)
        for name in ("J_s", "J_a")
    }
