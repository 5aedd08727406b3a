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
position) and in the action (one-sided into the control range for an action at its bound:
``stencil``): ``2 (2 nv + nu)`` control steps per Jacobian. Activations are held.
Finite differences never give exact zeros (round-off ~1e-10 where the true entry is 0): decide
zeros on exact derivatives, use these to check values.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import mujoco
import numpy as np

from dynsparse import envs
from dynsparse.jacobians import definitions

#: Default centred-difference step (tangent coordinates and action units).
DEFAULT_EPS = 1e-6


def stencil(a: Any, low: Any, high: Any, eps: Any, n_state: int, xp: Any = np) -> tuple[Any, Any, Any, Any]:
    """Where and with which weights each column of ``[J_s | J_a]`` is differenced, in units of eps.

    Column ``j``'s derivative is ``(w_plus d(x + up_j eps e_j) + w_minus d(x + down_j eps e_j)) /
    (2 eps)`` with ``d(y) = f(y) - f(x)`` (in the tangent space). State columns and actions at
    least eps inside their control range are centred: ``(up, down, w_plus, w_minus) = (1, -1, 1,
    -1)``. An action less than eps from its upper bound (or beyond it) is differenced backward from
    inside the range, second order, ``(-2, -1, 1, -4)``: ``(3 f(a) - 4 f(a - eps) + f(a - 2 eps)) /
    (2 eps)``; one near its lower bound forward, ``(1, 2, 4, -1)``. MuJoCo clamps ``ctrl`` to its
    range, so a centred difference there would straddle the clamp and give half the actuator's
    effect; this is the one-sided derivative into the range, as ``definitions.control_fn`` gives
    autodiff (and as ``mjd_transitionFD`` takes it), and 0 beyond the bound by more than ``2 eps``.

    Args:
      a: ``(..., nu)`` actions (NumPy, or JAX with ``xp=jax.numpy``).
      low, high: ``(nu,)`` the control range (``-inf``/``inf`` where not limited).
      eps: the step (a scalar, or broadcasting against ``a``).
      n_state: ``2 nv``, the state columns before the action columns.
      xp: the array module.

    Returns:
      ``(up, down, w_plus, w_minus)``, each ``(..., n_state + nu)``, float64.
    """
    a = xp.asarray(a, dtype=xp.float64)
    near_high = a + eps > high
    near_low = (a - eps < low) & ~near_high
    state = xp.ones(near_high.shape[:-1] + (n_state,), xp.float64)

    def column(centred: float, at_high: float, at_low: float) -> Any:
        act = xp.where(near_high, at_high, xp.where(near_low, at_low, centred))
        return xp.concatenate([state * centred, act], axis=-1)

    return column(1.0, -2.0, 1.0), column(-1.0, -1.0, 2.0), column(1.0, 1.0, 4.0), column(-1.0, -4.0, -1.0)


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
        self.low, self.high = envs.action_bounds(model)

    def next_state(self, x: StepInputs, dq: np.ndarray | None = None, dv: np.ndarray | None = None, du: np.ndarray | None = None) -> np.ndarray:
        """``[qpos, qvel]`` ``(nq + nv,)`` after the control step from ``x`` perturbed by the
        tangent displacement ``dq`` ``(nv,)``, velocity ``dv`` ``(nv,)`` and action ``du`` ``(nu,)``."""
        m, d = self.model, self.data
        # from scratch, as BatchedFD's rollout: nothing outside StepInputs (actuator history,
        # sleep state, plugin state) carries over from the last step simulated in ``d``
        mujoco.mj_resetData(m, d)
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
        """Finite differences of the control step at ``x``: centred, one-sided into the control
        range for an action at its bound (``stencil``).

        Returns:
          ``(J, s_next)``: ``J`` ``(2 nv, 2 nv + nu)`` = ``[J_s | J_a]`` in the tangent space,
          ``s_next`` the nominal ``[qpos, qvel]`` after the step.
        """
        nv, nu = self.nv, self.nu
        s_next = self.next_state(x)
        up, down, w_plus, w_minus = stencil(x.ctrl, self.low, self.high, eps, 2 * nv)
        cols = np.zeros((2 * nv, 2 * nv + nu))
        for j in range(2 * nv + nu):
            diffs = []
            for k in (up[j], down[j]):
                e = np.zeros(2 * nv + nu)
                e[j] = k * eps
                diffs.append(self.tangent_difference(s_next, self.next_state(x, e[:nv], e[nv:2 * nv], e[2 * nv:])))
            cols[:, j] = (w_plus[j] * diffs[0] + w_minus[j] * diffs[1]) / (2 * eps)
        return cols, s_next


#: ``DYNSPARSE_FD_THREADS=N``: threads of native finite-difference batches (default: the cores
#: this process may use); a sweep's local Dask cluster gives each worker its share of the cores
THREADS_ENV_VAR = "DYNSPARSE_FD_THREADS"


def default_threads() -> int:
    """Threads for native batches: ``$DYNSPARSE_FD_THREADS`` if it is an integer > 0, else the
    cores this process may use."""
    text = os.environ.get(THREADS_ENV_VAR, "")
    if text.strip().isdigit() and int(text) > 0:
        return int(text)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class BatchedFD:
    """``NativeStep.jacobian`` for many steps at once: every perturbed control step of a batch
    is one trajectory of ``mujoco.rollout`` (C++, on ``threads`` threads, no Python per substep).

    Computes the same numbers as ``NativeStep.jacobian`` (the same ``mj_step`` sequence from the
    same state, warm start, ``ctrl``, activations and mocap; the same perturbation and difference
    arithmetic; checked bit for bit in ``tests/test_finite_diff.py``). Per step ``1 + 2 (2 nv +
    nu)`` trajectories of ``n_substeps`` steps: the nominal one and each centred pair.

    Args:
      model: the environment's native model (copied with the definition's solver settings).
      n_substeps: physics steps per control step.
      definition: ``"converged"`` or ``"as-run"``.
      threads: worker threads (default: this process's cores); 0 runs on the calling thread.
      chunk: steps per ``rollout`` call (bounds memory: ``chunk (1 + 2 (2nv + nu)) n_substeps``
        states are held at once).
    """

    def __init__(self, model: mujoco.MjModel, n_substeps: int, definition: str = definitions.DEFAULT_DEFINITION,
                 threads: int | None = None, chunk: int = 256):
        from mujoco import rollout

        self.model = definitions.native_model(model, definition)
        self.n_substeps = int(n_substeps)
        self.nq, self.nv, self.nu = int(model.nq), int(model.nv), int(model.nu)
        self.threads = default_threads() if threads is None else int(threads)
        self.chunk = max(1, int(chunk))
        self.low, self.high = envs.action_bounds(model)
        self._rollout = rollout.Rollout(nthread=self.threads)
        self._datas = [mujoco.MjData(self.model) for _ in range(max(1, self.threads))]
        self._scratch = mujoco.MjData(self.model)
        self.state_spec = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
        self.control_spec = int(mujoco.mjtState.mjSTATE_CTRL)
        if self.model.nmocap:
            self.control_spec |= int(mujoco.mjtState.mjSTATE_MOCAP_POS) | int(mujoco.mjtState.mjSTATE_MOCAP_QUAT)
        self.nstate = mujoco.mj_stateSize(self.model, self.state_spec)
        self.ncontrol = mujoco.mj_stateSize(self.model, self.control_spec)
        # positions of qpos / qvel inside a full-physics state and of ctrl inside a control vector
        self._qpos_at = self._offset(self.state_spec, "qpos", self.nq)
        self._qvel_at = self._offset(self.state_spec, "qvel", self.nv)
        self._ctrl_at = self._offset(self.control_spec, "ctrl", self.nu)
        # hinge and slide joints only: mj_integratePos / mj_differentiatePos are one addition /
        # subtraction per coordinate, done here on whole arrays; otherwise MuJoCo's own calls
        self._layout: tuple[dict[str, slice], dict[str, slice]] | None = None
        self._layout = self._vector_layout()
        self._flat = self.nq == self.nv and not np.isin(self.model.jnt_type, (mujoco.mjtJoint.mjJNT_FREE, mujoco.mjtJoint.mjJNT_BALL)).any()

    def _offset(self, spec: int, field: str, size: int) -> int:
        """Where ``data.<field>`` starts in an ``mj_getState(spec)`` vector (found by marking)."""
        d = mujoco.MjData(self.model)
        if not size:
            return 0
        a = getattr(d, field)
        a[...] = (np.arange(1, size + 1) * 1e9).reshape(a.shape)
        v = np.zeros(mujoco.mj_stateSize(self.model, spec))
        mujoco.mj_getState(self.model, d, v, spec)
        at = int(np.flatnonzero(v == 1e9)[0])
        if not np.array_equal(v[at:at + size], a.ravel()):
            raise RuntimeError(f"MuJoCo's state vector does not hold data.{field} contiguously")
        return at

    def _pack(self, x: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Full-physics states ``(k, nstate)`` and control vectors ``(k, ncontrol)`` of ``k`` steps.

        Whole arrays where the vectors hold only time, qpos, qvel, act / ctrl, mocap (their
        layout found by marking at construction); ``mj_getState`` per step otherwise."""
        k = len(x["qpos"])
        if self._layout is not None:
            st, ct = self._layout
            state, control = np.zeros((k, self.nstate)), np.zeros((k, self.ncontrol))
            for name, at in st.items():
                state[:, at] = np.asarray(x[name], np.float64).reshape(k, -1)
            for name, at in ct.items():
                control[:, at] = np.asarray(x[name], np.float64).reshape(k, -1)
            return state, control
        m, d = self.model, self._scratch
        state, control = np.zeros((k, self.nstate)), np.zeros((k, self.ncontrol))
        for i in range(k):
            set_inputs(m, d, StepInputs.from_arrays(x, (i,)))
            mujoco.mj_getState(m, d, state[i], self.state_spec)
            mujoco.mj_getState(m, d, control[i], self.control_spec)
        return state, control

    def _vector_layout(self) -> tuple[dict[str, slice], dict[str, slice]] | None:
        """Where each ``StepInputs`` field sits in the state and control vectors, or ``None``
        when they hold anything else (plugin state, history)."""
        m = self.model
        st = {"time": slice(0, 1), "qpos": slice(self._qpos_at, self._qpos_at + self.nq),
              "qvel": slice(self._qvel_at, self._qvel_at + self.nv),
              "act": slice(self._offset(self.state_spec, "act", m.na), self._offset(self.state_spec, "act", m.na) + m.na)}
        ct = {"ctrl": slice(self._ctrl_at, self._ctrl_at + self.nu)}
        if m.nmocap:
            p, q = self._offset(self.control_spec, "mocap_pos", 3 * m.nmocap), self._offset(self.control_spec, "mocap_quat", 4 * m.nmocap)
            ct |= {"mocap_pos": slice(p, p + 3 * m.nmocap), "mocap_quat": slice(q, q + 4 * m.nmocap)}
        if self.nstate != 1 + self.nq + self.nv + m.na or self.ncontrol != self.nu + 7 * m.nmocap:
            return None
        # check on a marked example that the layout reproduces mj_getState
        d = mujoco.MjData(m)
        rng = np.random.default_rng(0)
        x = StepInputs(rng.normal(size=m.nq), rng.normal(size=m.nv), rng.normal(size=m.nv), rng.normal(size=m.nu),
                       rng.normal(size=m.na), rng.normal(size=(m.nmocap, 3)), rng.normal(size=(m.nmocap, 4)), 1.5)
        set_inputs(m, d, x)
        a, b = np.zeros(self.nstate), np.zeros(self.ncontrol)
        mujoco.mj_getState(m, d, a, self.state_spec)
        mujoco.mj_getState(m, d, b, self.control_spec)
        self._layout = (st, ct)
        arrays = {f.name: np.asarray(getattr(x, f.name))[None] for f in dataclasses.fields(StepInputs)}
        got = self._pack(arrays)
        self._layout = None
        return (st, ct) if np.array_equal(got[0][0], a) and np.array_equal(got[1][0], b) else None

    def _qpos_perturbed(self, qpos: np.ndarray, eps: float) -> np.ndarray:
        """``(nv, nq)``: ``qpos (+) eps e_j`` for each tangent direction ``j`` (``mj_integratePos``)."""
        out = np.repeat(qpos[None], self.nv, axis=0)
        for j in range(self.nv):
            e = np.zeros(self.nv)
            e[j] = eps
            mujoco.mj_integratePos(self.model, out[j], e, 1.0)
        return out

    def _tangent_differences(self, ref: np.ndarray, s: np.ndarray) -> np.ndarray:
        """``(r, 2 nv)``: ``s[i] - ref`` in the tangent space at ``ref`` (``mj_differentiatePos``)."""
        nq = self.nq
        if self._flat:
            return s - ref
        dq = np.zeros((len(s), self.nv))
        for i in range(len(s)):
            mujoco.mj_differentiatePos(self.model, dq[i], 1.0, ref[:nq], s[i, :nq])
        return np.concatenate([dq, s[:, nq:] - ref[nq:]], axis=1)

    def jacobians(self, arrays: Mapping[str, np.ndarray], eps: float = DEFAULT_EPS) -> tuple[np.ndarray, np.ndarray]:
        """Centred FD Jacobians of ``k`` steps.

        Args:
          arrays: ``StepInputs`` fields, each with leading ``(k,)``.
          eps: the centred-difference step (tangent coordinates and action units).

        Returns:
          ``(J, s_next)``: ``J`` ``(k, 2nv, 2nv + nu)`` = ``[J_s | J_a]`` in the tangent space,
          ``s_next`` ``(k, nq + nv)`` the nominal ``[qpos, qvel]`` after each step.
        """
        k = len(np.asarray(arrays["qpos"]))
        ncol = 2 * self.nv + self.nu
        jac = np.zeros((k, 2 * self.nv, ncol))
        s_next = np.zeros((k, self.nq + self.nv))
        for c0 in range(0, k, self.chunk):
            idx = np.arange(c0, min(k, c0 + self.chunk))
            jac[idx], s_next[idx] = self._chunk({f: np.asarray(v)[idx] for f, v in arrays.items()}, float(eps))
        return jac, s_next

    def _chunk(self, x: Mapping[str, np.ndarray], eps: float) -> tuple[np.ndarray, np.ndarray]:
        k, nq, nv, nu = len(x["qpos"]), self.nq, self.nv, self.nu
        ncol, per = 2 * nv + nu, 1 + 2 * (2 * nv + nu)
        state, control = self._pack(x)
        states = np.repeat(state[:, None], per, axis=1)  # row 0 nominal, 1..ncol plus, ncol+1.. minus
        controls = np.repeat(control[:, None], per, axis=1)
        qp, qv, cu = (slice(self._qpos_at, self._qpos_at + nq), slice(self._qvel_at, self._qvel_at + nv),
                      slice(self._ctrl_at, self._ctrl_at + nu))
        up, down, w_plus, w_minus = stencil(np.asarray(x["ctrl"]).reshape(k, nu), self.low, self.high, eps, 2 * nv)
        for sign, r0, at in ((eps, 1, up), (-eps, 1 + ncol, down)):
            if self._flat:
                states[:, r0:r0 + nv, qp] = state[:, None, qp] + np.eye(nv) * sign
            else:
                for i in range(k):
                    states[i, r0:r0 + nv, qp] = self._qpos_perturbed(state[i, qp], sign)
            states[:, r0 + nv:r0 + 2 * nv, qv] = state[:, None, qv] + np.eye(nv) * sign
            # each action column at its own stencil point (one-sided at a control bound)
            controls[:, r0 + 2 * nv:r0 + ncol, cu] = control[:, None, cu] + np.eye(nu)[None] * (at[:, 2 * nv:, None] * eps)
        warm = np.repeat(np.asarray(x["warmstart"], np.float64)[:, None, :], per, axis=1)
        out, _ = self._rollout.rollout(
            self.model, self._datas, states.reshape(k * per, self.nstate),
            controls.reshape(k * per, 1, self.ncontrol), control_spec=self.control_spec,
            nstep=self.n_substeps, initial_warmstart=warm.reshape(k * per, nv))
        final = out[:, -1].reshape(k, per, self.nstate)
        s = np.concatenate([final[..., self._qpos_at:self._qpos_at + nq], final[..., self._qvel_at:self._qvel_at + nv]], axis=-1)
        if self._flat:
            plus, minus = s[:, 1:1 + ncol] - s[:, :1], s[:, 1 + ncol:] - s[:, :1]
        else:
            plus = np.stack([self._tangent_differences(s[i, 0], s[i, 1:1 + ncol]) for i in range(k)])
            minus = np.stack([self._tangent_differences(s[i, 0], s[i, 1 + ncol:]) for i in range(k)])
        return np.swapaxes((w_plus[:, :, None] * plus + w_minus[:, :, None] * minus) / (2 * eps), 1, 2), s[:, 0]


class FiniteDiffBackend:
    """The ``finite_diff`` backend: native FD Jacobians of a definition's control step
    (batched on all cores through ``BatchedFD``)."""

    def __init__(self, model: mujoco.MjModel, n_substeps: int, eps: float = DEFAULT_EPS, definition: str = definitions.DEFAULT_DEFINITION,
                 threads: int | None = None):
        self.step = NativeStep(model, n_substeps, definition)
        self.batched = BatchedFD(model, n_substeps, definition, threads)
        self.eps = float(eps)
        self.nx = 2 * model.nv

    def __call__(self, x: StepInputs) -> tuple[np.ndarray, np.ndarray]:
        """``(J_s, J_a)`` at ``x``: ``(2nv, 2nv)`` and ``(2nv, nu)`` (tangent space; one step,
        on the calling thread)."""
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
        n = int(np.prod(lead))
        flat = {f.name: np.asarray(arrays[f.name]).reshape((n,) + np.asarray(arrays[f.name]).shape[len(lead):])
                for f in dataclasses.fields(StepInputs)}
        j, _ = self.batched.jacobians(flat, self.eps)
        j = j.reshape(lead + j.shape[1:])
        return j[..., : self.nx], j[..., self.nx:]
