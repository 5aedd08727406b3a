"""Coverage: does the global-zero count rest on enough data?

Steps are pooled in episode-major order (episode 0's steps, then episode 1's, ...). After ``n``
pooled counted steps, an entry is a global zero when it was zero at all ``n``. The curve falls
as data visits states where entries are non-zero; a curve still falling at the end means the
count has not saturated and more (or different) data would lower it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dynsparse.metrics.sparsity import Masks


def first_nonzero(zero: np.ndarray) -> np.ndarray:
    """Index of the first pooled step at which each entry is non-zero.

    Args:
      zero: ``(n_steps, entries)`` bool, pooled counted steps.

    Returns:
      ``(entries,)`` int; ``n_steps`` for an entry zero at every step.
    """
    nonzero = ~zero
    any_nz = nonzero.any(axis=0)
    return np.where(any_nz, np.argmax(nonzero, axis=0), zero.shape[0])


def global_zero_curve(masks: Masks, n_points: int = 200) -> dict[str, Any]:
    """Global-zero counts against pooled steps and against pooled episodes.

    Returns:
      ``{"steps": [n...], "J_s": [count...], "J_a": [...], "episodes": [1..E],
      "J_s_by_episode": [...], "J_a_by_episode": [...], "n_steps": N,
      "last_change": {"J_s": step or None, "J_a": ...}, "entries": {"J_s", "J_a"}}``.
      ``steps`` are pooled step counts (log-spaced, always including 1 and N);
      ``last_change`` is the pooled step count after which the count no longer changed (None if
      it never changed), so ``last_change / N`` near 1 means not saturated.
    """
    counted = masks.counted.reshape(-1)
    n_total = int(counted.sum())
    per_episode = np.cumsum(masks.counted.sum(axis=1))
    grid = np.unique(np.clip(np.round(np.geomspace(1, max(n_total, 1), n_points)).astype(np.int64), 1, max(n_total, 1)))
    result: dict[str, Any] = {
        "steps": grid.tolist() if n_total else [],
        "episodes": list(range(1, masks.counted.shape[0] + 1)),
        "n_steps": n_total,
        "last_change": {},
        "entries": {},
    }
    for name in ("J_s", "J_a"):
        mask = getattr(masks, name)
        zero = mask.reshape(-1, int(np.prod(mask.shape[2:])))[counted]
        first = np.sort(first_nonzero(zero))
        entries = zero.shape[1]
        # count(n) = entries zero at all of the first n steps = #{first >= n}
        def count(n: np.ndarray) -> np.ndarray:
            return entries - np.searchsorted(first, n, side="left")
        result[name] = count(grid).tolist() if n_total else []
        result[f"{name}_by_episode"] = count(per_episode).tolist() if n_total else []
        changed = first[first < n_total]
        result["last_change"][name] = int(changed.max()) + 1 if changed.size else None
        result["entries"][name] = entries
    return result
