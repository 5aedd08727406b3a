"""Native MuJoCo finite-difference Jacobians of the control step (an independent reference).

The control step of a definition (``dynsparse.jacobians.definitions``) is simulated with native
MuJoCo: the state is set, the incoming solver warm start written to ``qacc_warmstart``, and
``n_substeps`` ``mj_step`` calls run with ``ctrl`` held; ``mj_step`` carries the warm start
from substep to substep exactly as MJX does. The model is ``definitions.native_model``: the
model's own solver settings for ``as-run``, the converged settings for ``converged``, so the
reference computes the same function as the autodiff path (never ``opt.tolerance = 0``: native
MuJoCo's line search and early exit depend on the tolerance, and a tolerance-0 model follows
another truncated solve).

Centred differences of the whole control step in MuJoCo's tangent space ``[dq, dv]``
(``mj_integratePos`` perturbs positions, ``mj_differentiatePos`` reads them at the nominal next
position) and in the action: ``2 (2 nv + nu)`` control steps per Jacobian. Activations are held.
Finite differences never give exact zeros (round-off ~1e-10 where the true entry is 0): decide
zeros on exact derivatives, use these to check values.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import mujoco
import numpy as np

from dynsparse.jacobians import definitions

#: Default centred-difference step (tangent coordinates and action units).
DEFAULT_EPS = 1e-6


@dataclasses.dataclass
class StepInputs:
    """Everything a native control step needs besides the model (one environment, one step).

    Shapes: ``qpos (nq,)``, ``qvel (nv,)``, ``warmstart (nv,)`` (``qacc_warmstart`` entering
    the step), ``ctrl (nu,)``, ``act (na,)``, ``mocap_pos (nmocap, 3)``, ``mocap_quat
    (nmocap, 4)``; ``time`` in seconds.
    """

    qpos: np.ndarray
    qvel: np.ndarray
    warmstart: np.ndarray
    ctrl: np.ndarray
    act: np.ndarray
    mocap_pos: np.ndarray
    mocap_quat: np.ndarray
    time: float

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], index: tuple[int, ...]) -> "StepInputs":
        """Pick one environment/step ``index`` out of batched arrays keyed like the fields."""
        return cls(**{f.name: np.asarray(arrays[f.name][index]) for f in dataclasses.fields(cls)})


def set_inputs(model: mujoco.MjModel, data: mujoco.MjData, x: StepInputs) -> None:
    """Write ``x`` into ``data`` (in place)."""
    data.time = float(x.time)
    data.qpos[:] = x.qpos
    data.qvel[:] = x.qvel
    data.qacc_warmstart[:] = x.warmstart
    data.ctrl[:] = x.ctrl
    if model.na:
        data.act[:] = x.act
    if model.nmocap:
        data.mocap_pos[:] = x.mocap_pos
        data.mocap_quat[:] = x.mocap_quat


class NativeStep:
    """The control step of one definition in native MuJoCo, and its finite-difference Jacobian
    (single thread; one reusable ``MjData``).

    Args:
      model: the environment's native model (copied with the definition's solver settings).
      n_substeps: physics steps per control step.
      definition: ``"converged"`` or ``"as-run"``.
    """

    def __init__(self, model: mujoco.MjModel, n_substeps: int, definition: str = definitions.DEFAULT_DEFINITION):
        self.model = definitions.native_model(model, definition)
        self.data = mujoco.MjData(self.model)
        self.n_substeps = int(n_substeps)
        self.definition = definition
        self.nv, self.nu = int(model.nv), int(model.nu)

    def next_state(self, x: StepInputs, dq: np.ndarray | None = None, dv: np.ndarray | None = None, du: np.ndarray | None = None) -> np.ndarray:
        """``[qpos, qvel]`` ``(nq + nv,)`` after the control step from ``x`` perturbed by the
        tangent displacement ``dq`` ``(nv,)``, velocity ``dv`` ``(nv,)`` and action ``du`` ``(nu,)``."""
        m, d = self.model, self.data
        set_inputs(m, d, x)
        if dq is not None:
            mujoco.mj_integratePos(m, d.qpos, dq, 1.0)
        if dv is not None:
            d.qvel[:] += dv
        if du is not None:
            d.ctrl[:] += du
        for _ in range(self.n_substeps):
            mujoco.mj_step(m, d)
        return np.concatenate([d.qpos, d.qvel])

    def tangent_difference(self, s_ref: np.ndarray, s: np.ndarray) -> np.ndarray:
        """``(2 nv,)`` ``s - s_ref`` in the tangent space at ``s_ref`` (``mj_differentiatePos``)."""
        nq = self.model.nq
        dq = np.zeros(self.nv)
        mujoco.mj_differentiatePos(self.model, dq, 1.0, s_ref[:nq], s[:nq])
        return np.concatenate([dq, s[nq:] - s_ref[nq:]])

    def jacobian(self, x: StepInputs, eps: float = DEFAULT_EPS) -> tuple[np.ndarray, np.ndarray]:
        """Centred finite differences of the control step at ``x``.

        Returns:
          ``(J, s_next)``: ``J`` ``(2 nv, 2 nv + nu)`` = ``[J_s | J_a]`` in the tangent space,
          ``s_next`` the nominal ``[qpos, qvel]`` after the step.
        """
        nv, nu = self.nv, self.nu
        s_next = self.next_state(x)
        cols = np.zeros((2 * nv, 2 * nv + nu))
        for j in range(2 * nv + nu):
            e = np.zeros(2 * nv + nu)
            e[j] = eps
            plus = self.next_state(x, e[:nv], e[nv:2 * nv], e[2 * nv:])
            minus = self.next_state(x, -e[:nv], -e[nv:2 * nv], -e[2 * nv:])
            cols[:, j] = (self.tangent_difference(s_next, plus) - self.tangent_difference(s_next, minus)) / (2 * eps)
        return cols, s_next


class FiniteDiffBackend:
    """The ``finite_diff`` backend: native FD Jacobians of a definition's control step."""

    def __init__(self, model: mujoco.MjModel, n_substeps: int, eps: float = DEFAULT_EPS, definition: str = definitions.DEFAULT_DEFINITION):
        self.step = NativeStep(model, n_substeps, definition)
        self.eps = float(eps)
        self.nx = 2 * model.nv

    def __call__(self, x: StepInputs) -> tuple[np.ndarray, np.ndarray]:
        """``(J_s, J_a)`` at ``x``: ``(2nv, 2nv)`` and ``(2nv, nu)`` (tangent space)."""
        j, _ = self.step.jacobian(x, self.eps)
        return j[:, : self.nx], j[:, self.nx:]

    def batch(self, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Jacobians for every leading index of batched inputs.

        Args:
          arrays: ``StepInputs`` fields with a common leading shape ``L`` (e.g. ``(E, T)``).

        Returns:
          ``J_s`` of shape ``L + (nx, nx)`` and ``J_a`` of shape ``L + (nx, nu)``.
        """
        lead = np.asarray(arrays["qpos"]).shape[:-1]
        js = np.zeros(lead + (self.nx, self.nx))
        ja = np.zeros(lead + (self.nx, self.step.nu))
        for idx in np.ndindex(*lead):
            js[idx], ja[idx] = self(StepInputs.from_arrays(arrays, idx))
        return js, ja
