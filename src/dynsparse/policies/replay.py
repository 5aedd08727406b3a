"""Replay recorded trajectories (``dynsparse collect ENV --from FILE``).

The file is a NumPy ``.npz`` with arrays

==========  ======================  ===================================================
``qpos``    ``(episodes, steps, nq)``  MuJoCo ``qpos`` at each step (before the action)
``qvel``    ``(episodes, steps, nv)``  MuJoCo ``qvel`` at each step
``action``  ``(episodes, steps, nu)``  the action applied at that step (``ctrl``)
``valid``   ``(episodes, steps)``      optional, bool: which steps exist (default all)
==========  ======================  ===================================================

(2-D arrays ``(steps, dim)`` are one episode.) At every valid step dynsparse sets the simulator
to the recorded ``(qpos, qvel)`` (free- and ball-joint quaternions normalised), applies the recorded action and takes the
Jacobians there; the next state it stores is the model's own step from that state, not the
file's next row. The solver's hidden state (its warm start) is not in such files, so only the
``converged`` Jacobian definition, which does not depend on it, is allowed.

A ``ReplayPolicy``'s "noise" for a step is ``[action, qpos, qvel, valid]`` read from the file,
so the collection machinery (batches, chunks, resume) is the one rollouts use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from dynsparse import errors
from dynsparse.policies.base import Policy

NAME = "from-file"
FIELDS = ("qpos", "qvel", "action")


def _sha256(path: Path) -> str:
    from dynsparse import sources

    return sources.file_sha256(path)


def read(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a trajectory file, checked: ``qpos``, ``qvel``, ``action`` as ``(E, T, dim)``
    float64 and ``valid`` ``(E, T)`` bool.

    Raises:
      UserError: not a readable ``.npz``, a missing array, inconsistent shapes, a non-numeric or
        non-finite value at a valid step.
    """
    p = Path(path)
    if not p.is_file():
        raise errors.UserError(f"--from {str(path)!r} is not an existing file; allowed: an .npz file with arrays qpos, qvel, action (episodes x steps x dim) and optional valid")
    try:
        with np.load(p, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile, pickle-refusal and format errors all mean "not our file"
        raise errors.UserError(f"--from {str(path)!r} is not a readable .npz file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    missing = [k for k in FIELDS if k not in raw]
    if missing:
        raise errors.UserError(f"--from {str(path)!r} lacks array(s) {', '.join(missing)}; it has {', '.join(sorted(raw)) or 'none'}; needed: qpos, qvel, action (optional valid)")
    out: dict[str, np.ndarray] = {}
    for k in FIELDS:
        a = raw[k]
        if a.dtype.kind not in "fiu":
            raise errors.UserError(f"--from {str(path)!r}: {k} has dtype {a.dtype}; allowed: numbers")
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise errors.UserError(f"--from {str(path)!r}: {k} has shape {raw[k].shape}; allowed: (episodes, steps, dim) or (steps, dim)")
        out[k] = a.astype(np.float64)
    lead = {k: out[k].shape[:2] for k in FIELDS}
    if len(set(lead.values())) != 1:
        raise errors.UserError(f"--from {str(path)!r}: qpos, qvel and action disagree on (episodes, steps): {', '.join(f'{k} {v}' for k, v in lead.items())}")
    e, t = lead["qpos"]
    if e == 0 or t == 0:
        raise errors.UserError(f"--from {str(path)!r} holds no steps (episodes x steps = {e} x {t})")
    valid = raw.get("valid")
    if valid is None:
        valid = np.ones((e, t), bool)
    else:
        if valid.ndim == 1:
            valid = valid[None]
        if valid.shape != (e, t) or valid.dtype.kind not in "biu":
            raise errors.UserError(f"--from {str(path)!r}: valid has shape {raw['valid'].shape} and dtype {raw['valid'].dtype}; allowed: bool {(e, t)}")
        valid = valid.astype(bool)
    if not valid.any():
        raise errors.UserError(f"--from {str(path)!r}: no step is valid")
    for k in FIELDS:
        bad = ~np.isfinite(out[k]).all(axis=-1) & valid
        if bad.any():
            ep, st = (int(x[0]) for x in np.nonzero(bad))
            raise errors.UserError(f"--from {str(path)!r}: {k} is not finite at episode {ep}, step {st} (a valid step); mark such steps invalid with a valid array")
    out["valid"] = valid
    return out


class ReplayPolicy(Policy):
    """Plays back a trajectory file (see the module docstring)."""

    name = NAME

    def __init__(self, file: str, sha256: str | None = None):
        path = Path(file).expanduser().resolve()
        self.arrays = read(path)
        digest = _sha256(path)
        if sha256 is not None and sha256 != digest:
            raise errors.UserError(f"--from {str(path)!r} changed since the run started (SHA-256 {digest[:12]}..., recorded {sha256[:12]}...); restore it or choose another --out")
        self.file, self.sha256 = str(path), digest
        self.episodes, self.steps = self.arrays["qpos"].shape[:2]
        self.nq, self.nv, self.nu = (self.arrays[k].shape[-1] for k in FIELDS)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "sha256": self.sha256}

    def check_env(self, spec: Any) -> None:
        for k, have, want in (("qpos", self.nq, spec.nq), ("qvel", self.nv, spec.nv), ("action", self.nu, spec.nu)):
            if have != want:
                raise errors.UserError(
                    f"--from {self.file!r}: {k} has {have} columns, {spec.name} has {want} ({'nq' if k == 'qpos' else 'nv' if k == 'qvel' else 'nu'}): "
                    "the file comes from another model"
                )

    def episode_noise(self, seed: int, episode: int, n_steps: int, action_size: int) -> np.ndarray:
        """``(n_steps, nu + nq + nv + 1)``: ``[action, qpos, qvel, valid]`` of the episode (zeros,
        invalid, past the file's episodes or steps)."""
        del seed, action_size
        width = self.nu + self.nq + self.nv + 1
        out = np.zeros((n_steps, width))
        if episode < self.episodes:
            n = min(n_steps, self.steps)
            a = self.arrays
            valid = a["valid"][episode, :n]
            rows = np.concatenate([a["action"][episode, :n], a["qpos"][episode, :n], a["qvel"][episode, :n], valid[:, None]], axis=1)
            out[:n] = np.where(valid[:, None], rows, 0.0)
        return out

    def act(self, obs: Any, noise: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
        del obs, low, high
        return noise[: self.nu]

    def recorded(self, noise: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(qpos (nq,), qvel (nv,), valid ())`` of one step's noise row."""
        q0 = self.nu
        return noise[q0:q0 + self.nq], noise[q0 + self.nq:q0 + self.nq + self.nv], noise[-1] > 0.5


def next_state_mismatch(arrays: dict[str, np.ndarray], model: Any, n_substeps: int, max_steps: int = 50) -> float | None:
    """How well the file's consecutive rows follow ``model``: the median, over up to ``max_steps``
    valid step pairs ``(t, t+1)``, of ``max |s'_model - s_{t+1}| / max(|s_{t+1}|, 1)`` with
    ``s'_model`` native MuJoCo's ``n_substeps`` steps from row ``t`` (model's own solver, cold
    warm start). ``None`` without such a pair. A trajectory produced by this model gives round-off
    to solver tolerance (1e-12..1e-5); another model or frame skip gives O(0.01..1)."""
    import mujoco

    pairs = np.argwhere(arrays["valid"][:, :-1] & arrays["valid"][:, 1:])[:max_steps]
    if not len(pairs):
        return None
    data = mujoco.MjData(model)
    errs = []
    for e, t in pairs:
        mujoco.mj_resetData(model, data)
        data.qpos[:], data.qvel[:], data.ctrl[:] = arrays["qpos"][e, t], arrays["qvel"][e, t], arrays["action"][e, t]
        mujoco.mj_step(model, data, nstep=n_substeps)
        got = np.concatenate([data.qpos, data.qvel])
        want = np.concatenate([arrays["qpos"][e, t + 1], arrays["qvel"][e, t + 1]])
        errs.append(float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0))))
    return float(np.median(errs))

