"""Threshold sensitivity: do the conclusions depend on the zero threshold?

For each threshold ``tau``: the global-zero percentage (entries with ``|J| < tau`` at every counted
step) and the mean per-sample sparsity (share of (step, entry) pairs with ``|J| < tau``), for
absolute thresholds and for relative ones (``|J_ij| < tau * ||J_i.||_2``; a zero row counts as
zero). Streams the dataset one episode block at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dynsparse import dataset

ABSOLUTE = tuple(10.0 ** -k for k in range(15, 2, -1))  # 1e-15 ... 1e-3
RELATIVE = tuple(10.0 ** -k for k in range(15, 0, -1))  # 1e-15 ... 1e-1


def magnitudes(jac: np.ndarray, kind: str) -> np.ndarray:
    """Values compared with the threshold: ``|J|`` (absolute) or ``|J_ij| / ||J_i.||`` (relative,
    0 where the row is 0, so the entry is zero at every threshold).

    Args:
      jac: ``(..., n_out, n_in)``.
    """
    mag = np.abs(jac)
    if kind == "absolute":
        return mag
    row = np.sqrt(np.sum(np.square(jac), axis=-1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(row > 0, mag / np.where(row > 0, row, 1.0), 0.0)


class _Accumulator:
    """Per-entry maxima and per-threshold below-counts of one matrix, over counted steps."""

    def __init__(self, shape: tuple[int, ...], thresholds: np.ndarray):
        self.max = np.full(shape, -np.inf)
        self.below = np.zeros(thresholds.size, np.int64)
        self.thresholds = thresholds
        self.values = 0

    def add(self, mags: np.ndarray) -> None:
        """``mags``: ``(n_steps, n_out, n_in)`` of counted steps."""
        if not mags.size:
            return
        self.max = np.maximum(self.max, mags.max(axis=0))
        # value < tau_k  <=>  k >= searchsorted(thresholds, value, "right")
        idx = np.searchsorted(self.thresholds, mags.reshape(-1), side="right")
        self.below += np.cumsum(np.bincount(idx, minlength=self.thresholds.size + 1))[: self.thresholds.size]
        self.values += mags.size


def sensitivity(ds: Any, absolute: tuple[float, ...] = ABSOLUTE, relative: tuple[float, ...] = RELATIVE) -> dict[str, Any]:
    """Threshold-sensitivity curves of a dataset.

    Returns:
      ``{"absolute": {...}, "relative": {...}}``, each ``{"thresholds": [...], "global_zero_percent":
      {"J_s", "J_a", "both"} -> [...], "mean_sparsity": {"J_s", "J_a", "both"} -> [...], "steps": n}``;
      curves are None with no counted step.
    """
    grids = {"absolute": np.asarray(sorted(absolute), float), "relative": np.asarray(sorted(relative), float)}
    acc = {
        (kind, name): _Accumulator((ds.sizes["out"], ds.sizes[dim]), grids[kind])
        for kind in grids for name, dim in (("J_s", "state_in"), ("J_a", "action_in"))
    }
    steps = 0
    for block in dataset.iter_episode_blocks(ds, ("valid", "finite", "J_s", "J_a")):
        counted = np.asarray(block["valid"].values, bool) & np.asarray(block["finite"].values, bool)
        steps += int(counted.sum())
        for name in ("J_s", "J_a"):
            jac = np.asarray(block[name].values)[counted]
            for kind in grids:
                acc[(kind, name)].add(magnitudes(jac, kind))
    result: dict[str, Any] = {}
    for kind, grid in grids.items():
        a_s, a_a = acc[(kind, "J_s")], acc[(kind, "J_a")]
        gz, ms = {}, {}
        for name, parts in (("J_s", [a_s]), ("J_a", [a_a]), ("both", [a_s, a_a])):
            entries = sum(p.max.size for p in parts)
            if not steps:
                gz[name] = ms[name] = None
                continue
            gz[name] = [100.0 * sum(int(np.sum(p.max < t)) for p in parts) / entries for t in grid]
            ms[name] = (sum(p.below for p in parts) / sum(p.values for p in parts)).tolist()
        result[kind] = {"thresholds": grid.tolist(), "global_zero_percent": gz, "mean_sparsity": ms, "steps": steps}
    return result
