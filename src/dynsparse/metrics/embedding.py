"""A 2-D t-SNE embedding of the (s, a, s') tuples (scikit-learn's Barnes-Hut t-SNE).

Each feature is standardised (zero mean, unit variance; constant features become 0) so that
positions and velocities of different scales weigh alike. Large datasets are subsampled
uniformly without replacement (seeded) to ``max_points``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dynsparse import dataset, errors

DEFAULT_PERPLEXITY = 50.0
DEFAULT_MAX_POINTS = 3000


def standardise(x: np.ndarray) -> np.ndarray:
    """``(n, d)`` -> column-wise z-scores; a constant column becomes 0."""
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    return (x - mu) / np.where(sd > 0, sd, 1.0)


def tsne(features: np.ndarray, perplexity: float = DEFAULT_PERPLEXITY, seed: int = 0) -> tuple[np.ndarray, float]:
    """Embed ``(n, d)`` features in 2-D.

    The perplexity must be below the number of points; with few points it is lowered to
    ``(n - 1) / 3`` (the usual rule), and the value used is returned.

    Returns:
      ``(n, 2)`` coordinates and the perplexity used.

    Raises:
      UserError: perplexity not > 0, or fewer than 4 points.
    """
    from sklearn.manifold import TSNE

    if not (np.isfinite(perplexity) and perplexity > 0):
        raise errors.UserError(f"perplexity {perplexity!r} is not allowed; allowed: a number > 0 (default 50)")
    n = features.shape[0]
    if n < 4:
        raise errors.UserError(f"t-SNE needs at least 4 samples, got {n}")
    used = float(min(perplexity, (n - 1) / 3))
    coords = TSNE(n_components=2, perplexity=used, init="pca", random_state=seed, n_jobs=None).fit_transform(
        standardise(features)
    )
    return coords, used


def embed(ds: Any, sparsity_both: np.ndarray, perplexity: float = DEFAULT_PERPLEXITY,
          max_points: int = DEFAULT_MAX_POINTS, seed: int = 0) -> dict[str, Any]:
    """t-SNE of the counted steps' ``[s, a, s']``, with each point's per-sample sparsity.

    Args:
      ds: the dataset.
      sparsity_both: ``(episode, step)`` per-sample sparsity of ``[J_s | J_a]`` (NaN where not
        counted); its non-NaN steps are the ones embedded.
      max_points: subsample to at most this many steps (seeded, without replacement).

    Returns:
      ``{"x", "y", "sparsity", "episode", "step"}`` 1-D lists, plus ``"perplexity"`` (used),
      ``"points"``, ``"of"`` (counted steps available), ``"seed"``.
    """
    if max_points < 4:
        raise errors.UserError(f"max points {max_points!r} is not allowed; allowed: an integer >= 4")
    ep, st = np.nonzero(np.isfinite(sparsity_both))
    available = ep.size
    if available > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(available, size=max_points, replace=False))
        ep, st = ep[pick], st[pick]
    small = dataset.load(ds, ("state", "action", "next_state"))
    feats = np.concatenate(
        [np.asarray(small[name].values)[ep, st] for name in ("state", "action", "next_state")], axis=1
    ).astype(np.float64)
    coords, used = tsne(feats, perplexity, seed)
    return {
        "x": coords[:, 0].tolist(), "y": coords[:, 1].tolist(), "sparsity": sparsity_both[ep, st].tolist(),
        "episode": ep.tolist(), "step": st.tolist(), "perplexity": used, "requested_perplexity": float(perplexity),
        "points": int(ep.size), "of": int(available), "seed": int(seed),
    }
