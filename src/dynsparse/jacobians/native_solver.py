"""Solver diagnostics of a definition's control step in native MuJoCo (the ``finite_diff`` backend).

The autodiff backend records how each of its own constraint solves went (``definitions.diagnostics``
from MJX's iterations). The finite-difference backend's function is native MuJoCo's step with the
definition's solver settings (``definitions.native_model``); this module replays the nominal
control step of each stored step once (the same ``mj_step`` sequence as ``BatchedFD``'s nominal
trajectory: from a reset ``mjData`` with the same state, warm start, ``ctrl``, activations and
mocap, stopping at a MuJoCo warning as ``mujoco.rollout`` does; its next state is checked bit for
bit in ``tests/test_native_solver.py``) and reads, after every substep's forward pass:

- ``niter``: ``max(d.solver_niter[:max(1, nisland)])``, the iterations of the slowest island
  (islands are on by default in the pinned MuJoCo 4.0.0; each island is solved on its own and
  counts its own iterations; 0 means the solver returned its start point, the warm start or
  ``qacc_smooth``; MuJoCo keeps counts for ``mjNISLAND`` = 20 islands: beyond that a residual
  above the tolerance counts as truncated and no start point as returned);
- ``residual``: ``|r| / trace(M)`` with ``r = M qacc - qfrc_smooth -
  qfrc_constraint(qacc)`` the gradient of the primal constraint cost at the returned ``qacc``:
  Newton and CG leave the primal forces at that ``qacc`` in ``mjData``; for PGS (which solves the
  dual, and whose own forces satisfy ``M qacc = qfrc_smooth + J'f`` by construction) and with
  noslip they are recomputed there by ``mj_constraintUpdate``, so every solver is measured by the
  same primal optimality residual (both routes checked against a dense recompute); the scaling is MJX's ``_rescale`` (the trace of
  the joint-space inertia at the state), as in the autodiff datasets; 0 without constraint rows;
- ``active``: some constraint row is not satisfied (``efc_state != mjCNSTRSTATE_SATISFIED``) at
  the returned ``qacc``.

Per control step: ``solver_residual`` = the largest residual over its solves (one per substep),
``solver_truncated`` = solves with ``niter >= opt.iterations`` and ``residual >= opt.tolerance``
(MJX's rule, ``definitions.diagnostics``), ``solver_start_returned`` = solves with ``niter == 0``
while a constraint row was active. With noslip, MuJoCo adds noslip's iterations to
``solver_niter`` and noslip changes the forces: the main solve is read instead, from an
``mj_forward`` of the model with noslip off at the substep's start (``mj_step`` then recomputes
the substep itself). With RK4 a substep runs four forward passes, each with its own solve, and
the ``mjData`` left by ``mj_step`` mixes them (the residual recomputed from it is not any stage's:
measured 27 at a converged step). There all four are read, as the autodiff backend counts them:
``rk4_stages`` repeats MuJoCo's ``mj_RungeKutta`` stage states (its tableau; positions by
``mj_integratePos``, velocities and activations from the earlier stages' accelerations, each
stage's time) on a copy of the substep's ``mjData`` and runs ``mj_forward`` at each (the same
warm start for all four, as in ``mj_step``); ``mj_step`` then takes the substep itself. The
counts and the residual then cover four solves per substep. With hinge and slide joints the
stages are ``mj_step``'s own (combined, they give its next state bit for bit); with free or ball
joints the pinned MuJoCo 4.0.0 builds the later stages' orientations otherwise than its published
``mj_RungeKutta`` (which this repeats, as MJX does), so there stages 3 and 4 are solved at states
slightly off the step's own (~4e-8 rad for a ball joint spinning at 3.7 rad/s).
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
from typing import Mapping, NamedTuple

import mujoco
import numpy as np

from dynsparse.jacobians import definitions
from dynsparse.jacobians.finite_diff import FiniteDiffBackend, StepInputs, default_threads, set_inputs

#: Recorded in the ``solver_diagnostics`` attrs of every ``finite_diff`` dataset.
DEFINITION_TEXT = (
    "of the definition's native constraint solves (the nominal control step replayed with native MuJoCo and the "
    "definition's solver settings, one solve per substep; with RK4 four, one per stage, the stage states repeated as "
    "mj_RungeKutta computes them): solver_residual = max over the solves of |r| / trace(M) with r = "
    "M qacc - qfrc_smooth - qfrc_constraint the primal constraint cost's gradient at the returned qacc (the primal "
    "forces there: Newton's and CG's own, recomputed by mj_constraintUpdate for PGS); solver_truncated = solves "
    "whose slowest island (max of solver_niter over the islands) ran opt.iterations iterations and whose residual is "
    ">= opt.tolerance (beyond the 20 islands MuJoCo keeps counts for: residual >= opt.tolerance); "
    "solver_start_returned = solves where every island returned its start point (solver_niter 0) while a "
    "constraint row was active; with noslip, the main solve's (read from mj_forward with noslip off)"
)


@dataclasses.dataclass(frozen=True)
class SubstepSolve:
    """What one substep's constraint solve did (read from ``mjData`` after its forward pass)."""

    niter: int
    residual: float
    active: bool
    #: more islands than MuJoCo records iteration counts for (``mjNISLAND``): ``niter`` is the
    #: largest recorded one
    unrecorded: bool = False


class SolveReader:
    """Reads the solve of the forward pass whose results an ``mjData`` of ``model`` holds
    (``qacc``, ``efc_*``, ``M``), with buffers kept between calls (one reader per thread)."""

    def __init__(self, model: mujoco.MjModel):
        self.model = model
        self._ma = np.zeros(model.nv)
        self._cost = np.zeros(1)
        self._diag = np.asarray(model.M_rowadr + model.M_rownnz - 1, np.int64)  # M's diagonal in mjData.M
        self._satisfied = int(mujoco.mjtConstraintState.mjCNSTRSTATE_SATISFIED)
        # Newton and CG leave the primal forces and states at the returned qacc in mjData
        # (checked against mj_constraintUpdate to ~1e-13 in tests/test_native_solver.py); PGS
        # leaves its dual iterate, noslip its own forces: those are recomputed
        primal = (mujoco.mjtSolver.mjSOL_NEWTON, mujoco.mjtSolver.mjSOL_CG)
        self._recompute = int(model.opt.solver) not in [int(x) for x in primal] or model.opt.noslip_iterations > 0

    def __call__(self, d: mujoco.MjData) -> SubstepSolve:
        """For PGS or noslip, overwrites ``d.efc_force``, ``d.efc_state`` and
        ``d.qfrc_constraint`` with the primal forces at ``d.qacc`` (no later ``mj_step`` reads
        them: its forward pass recomputes them)."""
        m = self.model
        nisland, counts = int(d.nisland), d.solver_niter
        niter = int(counts[0]) if nisland <= 1 else int(counts[:nisland].max())
        unrecorded = nisland > len(counts)
        nefc = int(d.nefc)
        if nefc == 0:
            return SubstepSolve(niter, 0.0, False, unrecorded)
        if self._recompute:
            jar = np.empty(nefc)
            mujoco.mj_mulJacVec(m, d, jar, d.qacc)
            jar -= d.efc_aref
            mujoco.mj_constraintUpdate(m, d, jar, self._cost, 0)
        ma = self._ma
        mujoco.mj_mulM(m, d, ma, d.qacc)
        ma -= d.qfrc_smooth
        ma -= d.qfrc_constraint
        trace = float(d.M[self._diag].sum()) if m.nv else 0.0
        residual = float(np.dot(ma, ma)) ** 0.5 / max(mujoco.mjMINVAL, trace)
        active = bool((d.efc_state[:nefc] != self._satisfied).any())
        return SubstepSolve(niter, residual, active, unrecorded)


def read_solve(m: mujoco.MjModel, d: mujoco.MjData) -> SubstepSolve:
    """``SolveReader(m)(d)``: the solve whose results ``d`` holds (one call; see ``SolveReader``)."""
    return SolveReader(m)(d)


#: MuJoCo's RK4 tableau ``A`` (``mj_RungeKutta``; lower triangular, stage ``i`` reads row
#: ``i - 1``; its row sums are the stages' time offsets in timesteps)
RK4_A = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]])


class Stage(NamedTuple):
    """One RK4 stage's forward pass: its solve and the rates the later stages read."""

    solve: SubstepSolve
    qvel: np.ndarray  # (nv,) the stage's velocity
    qacc: np.ndarray  # (nv,) its acceleration (with noslip, noslip's)
    act_dot: np.ndarray  # (na,) its activation rate


def rk4_stages(m: mujoco.MjModel, d: mujoco.MjData, stage: mujoco.MjData, read: SolveReader,
               solve_model: mujoco.MjModel | None = None) -> list[Stage]:
    """The four forward passes of the RK4 substep ``mj_step(m, d)`` would take next, with their
    constraint solves, run without changing ``d`` (``stage``: an ``mjData`` of ``m`` to work in,
    overwritten).

    Stage 1 is the forward pass at ``d``'s state; stage ``i`` = 2..4 the forward pass at
    ``mj_RungeKutta``'s intermediate state: ``qpos`` = ``mj_integratePos(q0, dv, h)``, ``qvel`` =
    ``v0 + h da``, ``act`` = ``act0 + h dact`` with ``dv, da, dact`` the earlier stages'
    velocities, accelerations and activation rates weighted by row ``i - 1`` of ``RK4_A``, and
    time ``t0 + h * sum(row)``; every stage keeps ``d``'s warm start, controls and mocap, as in
    ``mj_step``. Each stage's solve is read after an ``mj_forward`` of ``solve_model`` (default
    ``m``; the model with noslip off where ``m`` has noslip, whose accelerations, which the next
    stages read, then come from a second ``mj_forward`` of ``m``).

    Returns:
      The four ``Stage`` in stage order (``tests/test_native_solver.py`` combines their rates with
      MuJoCo's weights ``B`` and gets ``mj_step``'s next state).
    """
    solve_model = m if solve_model is None else solve_model
    mujoco.mj_copyData(stage, m, d)
    q0, v0, act0, t0, h = d.qpos.copy(), d.qvel.copy(), d.act.copy(), float(d.time), float(m.opt.timestep)
    stages: list[Stage] = []
    for i in range(4):
        if i:
            dv, da, dact = np.zeros(m.nv), np.zeros(m.nv), np.zeros(m.na)
            for j, earlier in enumerate(stages):
                w = RK4_A[i - 1, j]
                if w == 0.0:  # MuJoCo adds 0 * rate: the same sum while the rates are finite
                    continue
                dv += earlier.qvel * w
                da += earlier.qacc * w
                dact += earlier.act_dot * w
            qpos = q0.copy()
            mujoco.mj_integratePos(m, qpos, dv, h)
            stage.qpos[:] = qpos
            stage.qvel[:] = v0 + da * h
            stage.act[:] = act0 + dact * h
            stage.time = t0 + float(RK4_A[i - 1, :i].sum()) * h
        mujoco.mj_forward(solve_model, stage)
        solve = read(stage)
        if solve_model is not m:
            mujoco.mj_forward(m, stage)
        stages.append(Stage(solve, stage.qvel.copy(), stage.qacc.copy(), stage.act_dot.copy()))
    return stages


class NativeSolverDiagnostics:
    """Per-step solver diagnostics of a definition's native control step (module docstring).

    Args:
      model: the environment's native model (copied with the definition's solver settings).
      n_substeps: physics steps per control step.
      definition: ``"converged"`` or ``"as-run"``.
      threads: worker threads (default: this process's cores); 0 runs on the calling thread.
    """

    def __init__(self, model: mujoco.MjModel, n_substeps: int, definition: str = definitions.DEFAULT_DEFINITION,
                 threads: int | None = None):
        self.model = definitions.native_model(model, definition)
        self.n_substeps = int(n_substeps)
        self.threads = default_threads() if threads is None else int(threads)
        m = self.model
        rk4 = int(m.opt.integrator) == int(mujoco.mjtIntegrator.mjINT_RK4)
        noslip = m.opt.noslip_iterations > 0
        # where mj_step's mjData is not the solve's, the solves are read from forward passes run
        # before mj_step, which then recomputes them itself: with RK4 (mj_step's mjData mixes its
        # four stages) all four, on a scratch mjData (rk4_stages); with noslip (it adds its own
        # iterations to solver_niter and changes the forces) from an mj_forward at the substep's
        # start with noslip off (the main solve). Sleep, where a forward pass could change the
        # state, is refused by definitions.native_model.
        self.rk4 = rk4
        self.forward_first = noslip
        self._solve_model = m
        if noslip:
            self._solve_model = copy.deepcopy(m)
            self._solve_model.opt.noslip_iterations = 0
        self._datas = [mujoco.MjData(m) for _ in range(max(1, self.threads))]
        self._readers = [SolveReader(self._solve_model) for _ in self._datas]
        self._stages = [mujoco.MjData(m) for _ in self._datas] if rk4 else [None] * len(self._datas)

    def step(self, d: mujoco.MjData, x: StepInputs, reader: SolveReader | None = None,
             scratch: mujoco.MjData | None = None) -> tuple[np.ndarray, float, int, int]:
        """Replay one control step from ``x`` in ``d`` (``reader``: ``SolveReader`` of this model;
        ``scratch``: an ``mjData`` of this model for the RK4 stages; both per thread).

        Returns:
          ``(s_next, residual, truncated, start_returned)``: ``s_next`` ``(nq + nv,)`` the
          nominal ``[qpos, qvel]`` after it, then the three per-step diagnostics.
        """
        m = self.model
        read = reader or self._readers[0]
        stage_data = scratch if scratch is not None else self._stages[0]
        cap, tol = int(m.opt.iterations), float(m.opt.tolerance)
        # from scratch, as BatchedFD's rollout starts each trajectory: nothing outside StepInputs
        # (actuator history, sleep state, plugin state, warnings) carries over from the last step
        mujoco.mj_resetData(m, d)
        set_inputs(m, d, x)
        residual, truncated, returned = 0.0, 0, 0
        for _ in range(self.n_substeps):
            if d.warning.number.any():  # mujoco.rollout stops stepping at a warning
                break
            if self.rk4:
                solves = [st.solve for st in rk4_stages(m, d, stage_data, read, self._solve_model)]
                mujoco.mj_step(m, d)
            elif self.forward_first:
                mujoco.mj_forward(self._solve_model, d)
                solves = [read(d)]
                mujoco.mj_step(m, d)
            else:
                mujoco.mj_step(m, d)
                solves = [read(d)]
            for solve in solves:
                residual = max(residual, solve.residual)
                # beyond mjNISLAND islands some counts are not recorded: a residual above the
                # tolerance then counts as truncated, and no start point as returned
                truncated += int((solve.niter >= cap or solve.unrecorded) and solve.residual >= tol)
                returned += int(solve.niter == 0 and solve.active and not solve.unrecorded)
        return np.concatenate([d.qpos, d.qvel]), residual, truncated, returned

    def batch(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Diagnostics of ``k`` steps.

        Args:
          arrays: ``StepInputs`` fields, each with leading ``(k,)``.

        Returns:
          ``solver_residual`` ``(k,)`` float64, ``solver_truncated`` and
          ``solver_start_returned`` ``(k,)`` int64 (substep counts), ``next_state`` ``(k, nq + nv)``.
        """
        k = len(np.asarray(arrays["qpos"]))
        out = {"solver_residual": np.zeros(k), "solver_truncated": np.zeros(k, np.int64),
               "solver_start_returned": np.zeros(k, np.int64),
               "next_state": np.zeros((k, self.model.nq + self.model.nv))}

        def work(group: np.ndarray, j: int) -> None:
            d, reader, scratch = self._datas[j], self._readers[j], self._stages[j]
            for i in group:
                s, r, t, z = self.step(d, StepInputs.from_arrays(arrays, (int(i),)), reader, scratch)
                out["next_state"][i], out["solver_residual"][i] = s, r
                out["solver_truncated"][i], out["solver_start_returned"][i] = t, z

        groups = [g for g in np.array_split(np.arange(k), max(1, self.threads)) if g.size]
        if self.threads <= 1 or len(groups) <= 1:
            for g in groups:
                work(g, 0)
            return out
        with concurrent.futures.ThreadPoolExecutor(len(groups), thread_name_prefix="native-solver") as pool:
            for f in [pool.submit(work, g, j) for j, g in enumerate(groups)]:
                f.result()
        return out


def measure(fd: FiniteDiffBackend, solver: NativeSolverDiagnostics, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """FD Jacobians and solver diagnostics of the same ``k`` steps: the replay (Python per
    substep, one thread: more threads only contend for the GIL, 1.4x slower with two on
    HalfCheetah-v5) runs on a second thread while the batched FD's C++ threads run.

    Returns:
      ``(J_s, J_a, diagnostics)``: ``J_s`` ``(k, nx, nx)``, ``J_a`` ``(k, nx, nu)`` (``fd.batch``)
      and ``NativeSolverDiagnostics.batch`` without ``next_state``.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fd-solver-diagnostics") as pool:
        diag = pool.submit(solver.batch, arrays)
        j_s, j_a = fd.batch(arrays)
        out = diag.result()
    return j_s, j_a, {k: v for k, v in out.items() if k != "next_state"}
