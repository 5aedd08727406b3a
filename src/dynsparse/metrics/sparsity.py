"""Zero decisions for Jacobian entries.

An entry is zero when ``|J| < threshold`` (absolute, default 1e-12) or, with a relative threshold,
when ``|J_ij| < threshold * ||J_i.||_2``, the Euclidean norm of its row (output ``i``) in the same
matrix at the same step. A row that is entirely zero has all entries zero under both rules.
Exact zeros are never blurred: no smoothing, no rounding before the comparison.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

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


@dataclasses.dataclass
class Masks:
    """Zero masks of a whole dataset, the common input of the Q2/Q3 metrics.

    Attributes:
      J_s: ``(episode, step, out, state_in)`` bool, True where the entry is zero.
      J_a: ``(episode, step, out, action_in)`` bool.
      counted: ``(episode, step)`` bool, the step exists (``valid``) and both Jacobians are finite.
        Masks at other steps are False and must not be read.
      valid: ``(episode, step)`` bool, the step exists.
      n_contacts: ``(episode, step)`` int, active contacts (-1 where not valid).
      out, state_in, action_in: variable names.
      threshold, kind: the zero rule used.
      contact_pairs: ``(episode, step, pair)`` bool, geom pairs in contact (None if not stored).
    """

    J_s: np.ndarray
    J_a: np.ndarray
    counted: np.ndarray
    valid: np.ndarray
    n_contacts: np.ndarray
    out: tuple[str, ...]
    state_in: tuple[str, ...]
    action_in: tuple[str, ...]
    threshold: float
    kind: str
    contact_pairs: np.ndarray | None = None

    @property
    def both(self) -> np.ndarray:
        """``(episode, step, out, state_in + action_in)`` bool: ``[J_s | J_a]`` side by side."""
        return np.concatenate([self.J_s, self.J_a], axis=-1)


def masks_of(ds: Any, threshold: float = DEFAULT_THRESHOLD, kind: str = "absolute") -> Masks:
    """Zero masks of every step of a dataset (read one episode block at a time).

    Only booleans are kept in memory (1 byte per entry and step), never the Jacobian values.
    """
    from dynsparse import dataset

    threshold = check_threshold(threshold, kind)
    has_pairs = "contact_pairs" in ds.data_vars
    names = ("valid", "finite", "J_s", "J_a", "n_contacts") + (("contact_pairs",) if has_pairs else ())
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("J_s", "J_a", "counted", "valid", "n_contacts", "contact_pairs")}
    for block in dataset.iter_episode_blocks(ds, names):
        valid = np.asarray(block["valid"].values, bool)
        counted = valid & np.asarray(block["finite"].values, bool)
        parts["valid"].append(valid)
        parts["counted"].append(counted)
        parts["n_contacts"].append(np.where(valid, np.asarray(block["n_contacts"].values), -1).astype(np.int64))
        if has_pairs:
            parts["contact_pairs"].append(np.asarray(block["contact_pairs"].values, bool) & valid[..., None])
        for name in ("J_s", "J_a"):
            parts[name].append(zero_mask(np.asarray(block[name].values), threshold, kind) & counted[..., None, None])
    cat = {k: np.concatenate(v, axis=0) for k, v in parts.items() if v}
    return Masks(
        J_s=cat["J_s"], J_a=cat["J_a"], counted=cat["counted"], valid=cat["valid"], n_contacts=cat["n_contacts"],
        out=tuple(str(x) for x in ds["out"].values), state_in=tuple(str(x) for x in ds["state_in"].values),
        action_in=tuple(str(x) for x in ds["action_in"].values), threshold=threshold, kind=kind,
        contact_pairs=cat.get("contact_pairs"),
    )
