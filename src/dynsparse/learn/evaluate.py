"""Test-split metrics of a world model against the ground truth.

- ``mse_norm``: next-state MSE in normalised target coordinates (each dimension divided by its
  training-split std), averaged over samples and dimensions: comparable across environments.
- ``sparsity_model`` / ``sparsity_true``: mean per-sample share of zero entries of ``[J_s | J_a]``
  (model: raw Jacobian of ``s'``, zero if ``|x| < model_threshold``; truth: ``|x| < true_threshold``);
  ``relative_sparsity`` = their ratio (1 = the model is as sparse as the dynamics).
- ``zero_precision`` / ``zero_recall``: per sample, of the entries the model calls zero, the share
  truly zero; of the truly zero entries, the share the model calls zero; averaged over samples
  where defined (NaN when never defined).
- ``shd``: structural Hamming distance of the global graphs over the test split: entries that are
  zero at every test sample in one and not in the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from dynsparse import graphs
from dynsparse.learn import data as data_lib
from dynsparse.learn import model as model_lib


def raw_jacobian(apply: Callable[..., Any], params: Any, x_n: np.ndarray, norm: data_lib.Normalizer,
                 residual: bool, batch: int = 512) -> np.ndarray:
    """``(N, ds, ds + da)``: the model's Jacobian of ``s'`` w.r.t. raw ``[s, a]`` (float64)."""
    out = []
    for i in range(0, x_n.shape[0], batch):
        j = np.asarray(model_lib.model_jacobian(apply, params, jnp.asarray(x_n[i:i + batch], jnp.float32)), np.float64)
        out.append(j)
    jac = np.concatenate(out) * norm.y_std[None, :, None] / norm.x_std[None, None, :]
    if residual:
        ds = jac.shape[1]
        jac[:, :, :ds] += np.eye(ds)
    return jac


def metrics(pred_n: np.ndarray, y_n: np.ndarray, jac_model: np.ndarray, jac_true: np.ndarray,
            model_threshold: float, true_threshold: float) -> dict[str, float]:
    """The metrics above from normalised predictions/targets ``(N, ds)`` and raw Jacobians ``(N, ds, dx)``."""
    zm = np.abs(jac_model) < model_threshold
    zt = np.abs(jac_true) < true_threshold
    axes = (1, 2)
    sm, st = zm.mean(axis=axes), zt.mean(axis=axes)
    # zeros are the positive class here: graphs.graph_scores of the zero masks
    per_sample = [graphs.graph_scores(zt[n], zm[n]) for n in range(zm.shape[0])]
    precision = np.asarray([p["precision"] for p in per_sample], float)
    recall = np.asarray([p["recall"] for p in per_sample], float)
    mean_true = float(st.mean())
    return {
        "mse_norm": float(np.mean((pred_n - y_n) ** 2)),
        "sparsity_model": float(sm.mean()),
        "sparsity_true": mean_true,
        "relative_sparsity": float(sm.mean() / mean_true) if mean_true > 0 else float("nan"),
        "zero_precision": float(np.nanmean(precision)) if np.isfinite(precision).any() else float("nan"),
        "zero_recall": float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan"),
        "shd": graphs.graph_scores(zt.all(axis=0), zm.all(axis=0))["shd"],
        "global_zeros_model": int(zm.all(axis=0).sum()),
        "global_zeros_true": int(zt.all(axis=0).sum()),
    }
