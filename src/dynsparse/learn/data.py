"""Transitions for world-model learning: (s, a, s', J_s, J_a) of a dataset, split by episode.

Only counted steps are used (valid, finite Jacobians). The split is by whole episodes, so no
neighbouring steps of one trajectory end up on both sides. Normalisation statistics come from the
training split only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from dynsparse import errors


@dataclasses.dataclass(frozen=True)
class Transitions:
    """Flat arrays of counted steps.

    Attributes:
      s, a, s_next: ``(N, ds)``, ``(N, da)``, ``(N, ds)`` float64.
      J_s, J_a: ``(N, ds, ds)``, ``(N, ds, da)`` float64 ground-truth Jacobians.
      episode: ``(N,)`` episode index of each step.
    """

    s: np.ndarray
    a: np.ndarray
    s_next: np.ndarray
    J_s: np.ndarray
    J_a: np.ndarray
    episode: np.ndarray

    def take(self, idx: np.ndarray) -> "Transitions":
        return Transitions(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))

    def __len__(self) -> int:
        return int(self.s.shape[0])


def load(path: str | Path) -> tuple[Transitions, dict[str, Any]]:
    """Counted steps of one dataset and its description (env, names, policy).

    Raises:
      UserError: unreadable store, or no counted step.
    """
    from dynsparse import dataset

    ds = dataset.open_dataset(path)
    if "qstate" in ds.dims:
        raise errors.UserError(
            f"{path}: environment {ds.attrs.get('env')!r} has free or ball joints (nq={ds.attrs.get('nq')} != "
            f"nv={ds.attrs.get('nv')}); learning a world model on quaternion states is not supported yet: "
            "use a dataset of an environment with hinge and slide joints only"
        )
    names = ("valid", "finite", "state", "action", "next_state", "J_s", "J_a")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("s", "a", "s_next", "J_s", "J_a", "episode")}
    for block in dataset.iter_episode_blocks(ds, names):
        keep = np.asarray(block["valid"].values, bool) & np.asarray(block["finite"].values, bool)
        ep = np.broadcast_to(np.asarray(block["episode"].values)[:, None], keep.shape)
        parts["s"].append(block["state"].values[keep])
        parts["a"].append(block["action"].values[keep])
        parts["s_next"].append(block["next_state"].values[keep])
        parts["J_s"].append(block["J_s"].values[keep])
        parts["J_a"].append(block["J_a"].values[keep])
        parts["episode"].append(ep[keep])
    tr = Transitions(**{k: np.concatenate(v).astype(np.int64 if k == "episode" else np.float64) for k, v in parts.items()})
    if len(tr) == 0:
        raise errors.UserError(f"{path}: no counted steps (valid, finite Jacobians) to learn from")
    info = {
        "env": str(ds.attrs.get("env")), "path": str(path), "policy": ds.attrs.get("policy"),
        "state_names": [str(x) for x in ds["out"].values], "action_names": [str(x) for x in ds["action_in"].values],
    }
    return tr, info


def split_by_episode(tr: Transitions, test_fraction: float, seed: int) -> tuple[Transitions, Transitions, np.ndarray, np.ndarray]:
    """Train/test split of whole episodes.

    Returns:
      ``(train, test, train_episodes, test_episodes)``.

    Raises:
      UserError: fewer than 2 episodes, or a fraction outside (0, 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise errors.UserError(f"test fraction {test_fraction!r} must be in (0, 1)")
    episodes = np.unique(tr.episode)
    if episodes.size < 2:
        raise errors.UserError(
            f"{episodes.size} episode(s) with counted steps: a split by episode needs at least 2 (collect more --episodes)"
        )
    n_test = min(episodes.size - 1, max(1, round(test_fraction * episodes.size)))
    perm = np.random.default_rng(seed).permutation(episodes)
    test_eps, train_eps = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return (tr.take(np.isin(tr.episode, train_eps)), tr.take(np.isin(tr.episode, test_eps)), train_eps, test_eps)


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Per-dimension affine maps ``x_n = (x - mean) / std`` of inputs ``[s, a]`` and targets.

    A dimension with (near) zero spread in the training split gets ``std = 1`` (it is only shifted).
    """

    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: np.ndarray
    y_std: np.ndarray

    @staticmethod
    def fit(x: np.ndarray, y: np.ndarray) -> "Normalizer":
        def stats(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            mean, std = v.mean(axis=0), v.std(axis=0)
            return mean, np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)

        xm, xs = stats(x)
        ym, ys = stats(y)
        return Normalizer(xm, xs, ym, ys)

    def to_dict(self) -> dict[str, list[float]]:
        return {k: getattr(self, k).tolist() for k in ("x_mean", "x_std", "y_mean", "y_std")}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Normalizer":
        return Normalizer(*(np.asarray(d[k], np.float64) for k in ("x_mean", "x_std", "y_mean", "y_std")))


def inputs(tr: Transitions) -> np.ndarray:
    """``(N, ds + da)``: ``[s, a]``."""
    return np.concatenate([tr.s, tr.a], axis=1)


def targets(tr: Transitions, residual: bool) -> np.ndarray:
    """``(N, ds)``: ``s'`` (direct) or ``s' - s`` (residual)."""
    return tr.s_next - tr.s if residual else tr.s_next


def jacobian_targets(tr: Transitions, residual: bool) -> np.ndarray:
    """``(N, ds, ds + da)``: the ground-truth Jacobian of the target w.r.t. ``[s, a]``.

    Residual targets subtract the identity from ``J_s``.
    """
    j = np.concatenate([tr.J_s, tr.J_a], axis=2)
    if residual:
        j = j.copy()
        j[:, :, : tr.s.shape[1]] -= np.eye(tr.s.shape[1])
    return j


def normalised_jacobian(j: np.ndarray, norm: Normalizer) -> np.ndarray:
    """A Jacobian of raw targets w.r.t. raw inputs, in normalised coordinates:
    ``J_n = diag(1 / y_std) J diag(x_std)`` (the chain rule through both affine maps)."""
    return j * norm.x_std[None, None, :] / norm.y_std[None, :, None]
