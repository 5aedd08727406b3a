"""Native MuJoCo finite-difference Jacobians of the control step.

``mujoco.mjd_transitionFD`` (centred differences, solver tolerance 0) gives the one-substep
Jacobians ``A_k = dx_{k+1}/dx_k`` and ``B_k = dx_{k+1}/du`` in MuJoCo's tangent space
(``2 nv + na``). Over ``n`` substeps with the control held, the control-step Jacobians are the
chain ``A = A_n ... A_1`` and ``B = sum_k A_n ... A_{k+1} B_k``. Each ``A_k`` is taken at the
nominal substep state, whose solver warm start is the one the nominal trajectory carries: the
same ``f`` as the autodiff backend (see ``dynsparse.envs``).

The tangent space is ``[dq, dv]`` (``2 nv``; see ``dynsparse.tangent``); for ``nq == nv`` (hinge
and slide joints only) it equals ``[qpos, qvel]``. Activations (``na``) are held and dropped.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Mapping

import mujoco
import numpy as np

#: Default centred-difference step.
DEFAULT_EPS = 1e-6


@dataclasses.dataclass
class StepInputs:
    """Everything a native control step needs besides the model (one environment, one step).

    Shapes: ``qpos (nq,)``, ``qvel (nv,)``, ``warmstart (nv,)`` (``qacc_warmstart``),
    ``ctrl (nu,)``, ``act (na,)``, ``mocap_pos (nmocap, 3)``, ``mocap_quat (nmocap, 4)``;
    ``time`` in seconds.
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


def fd_model(model: mujoco.MjModel) -> mujoco.MjModel:
    """A copy of ``model`` with ``opt.tolerance = 0``: every solver iteration runs, so that
    perturbed and nominal evaluations take the same number of iterations (clean near-zeros)."""
    m = copy.deepcopy(model)
    m.opt.tolerance = 0.0
    return m


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


def control_step_jacobian(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    x: StepInputs,
    n_substeps: int,
    eps: float = DEFAULT_EPS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Finite-difference Jacobians of one control step at ``x``.

    Args:
      model: native model, normally from ``fd_model`` (tolerance 0).
      data: scratch ``MjData`` for ``model`` (overwritten).
      x: the step's inputs.
      n_substeps: physics steps per control step.
      eps: centred-difference step (in tangent coordinates).

    Returns:
      ``(A, B, s_next)``: ``A`` is ``(2 nv + na, 2 nv + na)``, ``B`` is ``(2 nv + na, nu)``, both
      in MuJoCo's tangent space; ``s_next`` is the nominal ``[qpos, qvel]`` after the step.
    """
    nx = 2 * model.nv + model.na
    nu = model.nu
    set_inputs(model, data, x)
    a_total = np.eye(nx)
    b_total = np.zeros((nx, nu))
    a_k = np.zeros((nx, nx))
    b_k = np.zeros((nx, nu))
    for _ in range(n_substeps):
        mujoco.mjd_transitionFD(model, data, eps, True, a_k, b_k, None, None)
        a_total = a_k @ a_total
        b_total = a_k @ b_total + b_k
        mujoco.mj_step(model, data)
    s_next = np.concatenate([data.qpos, data.qvel])
    return a_total, b_total, s_next


class FiniteDiffBackend:
    """Reusable native finite-difference evaluator for one environment (single thread)."""

    def __init__(self, model: mujoco.MjModel, n_substeps: int, eps: float = DEFAULT_EPS):
        self.model = fd_model(model)
        self.data = mujoco.MjData(self.model)
        self.n_substeps = int(n_substeps)
        self.eps = float(eps)
        self.nx = 2 * model.nv

    def __call__(self, x: StepInputs) -> tuple[np.ndarray, np.ndarray]:
        """``(J_s, J_a)`` at ``x``: ``(2nv, 2nv)`` and ``(2nv, nu)`` (tangent space), activations dropped."""
        a, b, _ = control_step_jacobian(self.model, self.data, x, self.n_substeps, self.eps)
        return a[: self.nx, : self.nx], b[: self.nx]

    def batch(self, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Jacobians for every leading index of batched inputs.

        Args:
          arrays: ``StepInputs`` fields with a common leading shape ``L`` (e.g. ``(E, T)``).

        Returns:
          ``J_s`` of shape ``L + (nx, nx)`` and ``J_a`` of shape ``L + (nx, nu)``.
        """
        lead = np.asarray(arrays["qpos"]).shape[:-1]
        js = np.zeros(lead + (self.nx, self.nx))
        ja = np.zeros(lead + (self.nx, self.model.nu))
        for idx in np.ndindex(*lead):
            js[idx], ja[idx] = self(StepInputs.from_arrays(arrays, idx))
        return js, ja
