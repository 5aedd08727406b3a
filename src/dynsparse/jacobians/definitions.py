"""The named definitions of the control-step derivative, and the functions they differentiate.

A control step ``s' = f(s, a)`` runs the environment's ``n_substeps`` MuJoCo steps with
``ctrl = a`` held. Each substep solves MuJoCo's convex constraint problem for the acceleration;
Playground runs that solver for very few iterations (1 to 4 Newton iterations on the DM-Control
tasks) from a warm start, the previous substep's acceleration. So "the derivative of the step"
needs a definition; dynsparse offers two (``DEFINITIONS``), both with everything but ``(s, a)``
held at its value on the recorded trajectory (time, mocap bodies, activations):

``converged`` (default): the physics' Jacobian.
  Every substep's constraint problem solved to convergence (same solver, ``CONVERGED``
  iteration caps and tolerance, the gradient measured with the Euclidean norm: MJX's own test
  counts any gradient below 1e-8 as zero, see ``solve.run``), differentiated at its unique optimum by the implicit function
  theorem over the active constraint set (``dynsparse.jacobians.solve``). Independent of the
  warm start and of any iteration cap. Its function ``f_conv`` is the step the simulator would
  take with an exact solver; where Playground's truncated solve stops short, ``f_conv(s, a)``
  differs from the recorded next state (measured with ``--compare-definitions``).

``as-run``: the simulator's Jacobian.
  The derivative of the control step exactly as Playground runs it: the model's own solver
  settings, iterations as they ran, the warm start carried from substep to substep (only the
  incoming one, left by the previous control step, is held); forward mode through the
  iterations where a solve stopped at its iteration cap, the implicit tangent where it stopped
  by its own tolerance test (including at its start point), which is what finite differences of
  that step see (see ``solve``).

The earlier definition (the warm start held at its nominal value at *every* substep, which is what
chained per-substep ``mjd_transitionFD`` differentiates) is neither of these functions and was
dropped: it is not the derivative of the step that made the data (O(1) relative differences at
21 of 30 WalkerRun steps) nor of the physics.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from dynsparse import envs, errors
from dynsparse.jacobians import solve

DEFINITIONS = ("converged", "as-run")
DEFAULT_DEFINITION = "converged"


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """Solver settings of the ``converged`` definition (the model's cone; its solver where that is
    Newton, Newton for a CG or PGS model, see ``native_model``)."""

    iterations: int = 100
    ls_iterations: int = 50
    tolerance: float = 1e-14


CONVERGED = SolverSettings()
#: the solver of every ``converged`` solve, whatever the model's own: CG and PGS stop short of the
#: optimum by their cost-improvement test (PGS also by its cap) at the ``CONVERGED`` settings;
#: Newton solves the same convex problem to round-off (``NEWTON_CONVERGED``)
CONVERGED_SOLVER = mujoco.mjtSolver.mjSOL_NEWTON

#: Recorded in every dataset's attrs (``jacobian_definition``).
DESCRIPTIONS = {
    "converged": (
        "converged: J_s = ds'/ds, J_a = ds'/da of the control step s' = f(s, a) (n_substeps MuJoCo steps, "
        "ctrl = a held) with every substep's constraint problem (each of its four stages' with RK4) solved to convergence (same solver and cone, "
        f"iterations {CONVERGED.iterations}, line-search iterations {CONVERGED.ls_iterations}, tolerance "
        f"{CONVERGED.tolerance:g} on the Euclidean norm of the cost gradient; MJX's solves stop at that tolerance, the cap, or an iteration that "
        "changes nothing, not on a small cost change, and end with one full Newton step, kept where it lowers the gradient, "
        "since MJX's line search stalls where the cost no longer falls measurably) and differentiated at its optimum by the implicit function theorem over the "
        "active constraint set: the physics' Jacobian, independent of the solver warm start and iteration cap. "
        "Held fixed (not differentiated): time, mocap bodies, actuator activations."
    ),
    "as-run": (
        "as-run: J_s = ds'/ds, J_a = ds'/da of the control step exactly as the environment runs it (n_substeps "
        "MuJoCo steps, ctrl = a held, the model's own solver settings, iterations as run, the solver warm start "
        "carried from substep to substep); held fixed: the incoming warm start qacc_warmstart (left by the previous "
        "control step, stored as 'warmstart'), time, mocap bodies, actuator activations. Tangents of a substep's "
        "constraint solve: forward mode through its iterations where it stopped at its iteration cap above tolerance "
        "(the truncated solve); the implicit-function tangent at its result where it stopped by its own tolerance "
        "test (including at its start point)."
    ),
}

#: Common to both: the coordinates.
COORDINATES = (
    "s = [qpos, qvel] in MuJoCo's tangent space [dq, dv] (2 nv coordinates, as in mjd_transitionFD: free/ball-"
    "joint quaternions are perturbed by a local rotation vector, q exp(dq/2), and read as log(q0^-1 q); identical to "
    "[qpos, qvel] when nq == nv); a = the action as the policy emits it (ctrl; MuJoCo clamps it to ctrlrange): an "
    "action on its ctrlrange bound is differentiated from inside the range (the one-sided derivative, as "
    "mjd_transitionFD takes it), one beyond it has derivative 0"
)


def check_definition(definition: str) -> None:
    """Raise ``UserError`` unless ``definition`` is one of ``DEFINITIONS``."""
    if definition not in DEFINITIONS:
        raise errors.UserError(f"unknown Jacobian definition {definition!r}; allowed: {', '.join(DEFINITIONS)}")


def tangent_rule(definition: str) -> str:
    """The ``solve.TANGENTS`` rule of a definition."""
    check_definition(definition)
    return "implicit" if definition == "converged" else "as-run"


def exact_norm(definition: str) -> bool:
    """Whether the definition's solver measures its gradient with the Euclidean norm (``converged``)
    or with MJX's ``math.norm``, which counts gradients below 1e-8 as zero (``as-run``: the
    simulator as it runs; see ``solve.run``)."""
    check_definition(definition)
    return definition == "converged"


def mjx_model(spec: envs.EnvSpec, definition: str) -> Any:
    """The MJX model a definition simulates: sensors disabled (they do not act on the dynamics),
    MuJoCo's own clamp of ``ctrl`` disabled (the control steps clamp with ``control_fn``, whose
    derivative at a bound is one-sided), and for ``converged`` the ``CONVERGED`` solver settings
    with Newton's method (``CONVERGED_SOLVER``; a CG model's own solver stops short of the optimum).
    Every step of this model must be given a clamped ``ctrl``."""
    check_definition(definition)
    m = spec.mjx_model
    flags = int(m.opt.disableflags) | int(mujoco.mjtDisableBit.mjDSBL_SENSOR) | int(mujoco.mjtDisableBit.mjDSBL_CLAMPCTRL)
    opt = m.opt.replace(disableflags=type(m.opt.disableflags)(flags))
    if definition == "converged":
        opt = opt.replace(
            iterations=CONVERGED.iterations, ls_iterations=CONVERGED.ls_iterations,
            tolerance=jnp.asarray(CONVERGED.tolerance, jnp.asarray(m.opt.tolerance).dtype),
            solver=type(m.opt.solver)(int(CONVERGED_SOLVER)),
        )
    return m.replace(opt=opt)


def control_fn(spec: envs.EnvSpec) -> Callable[[jax.Array], jax.Array]:
    """``ctrl(a)``: the action clamped to the control range, as MuJoCo clamps ``ctrl`` (``ctrlrange``
    of ``ctrllimited`` actuators; ``spec.action_low/high``), with the derivative taken from inside:
    1 on the closed range, 0 outside it. At an action on its bound (what a clipping policy emits,
    the colored and PPO policies often) the step's ``J_a`` column is then its one-sided derivative
    into the range, as ``mjd_transitionFD`` takes it; a clamp's derivative at the bound is
    otherwise JAX's tie rule, half of it. Values are exactly ``clip(a, low, high)``."""
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)

    def ctrl(a: jax.Array) -> jax.Array:
        inside = (a >= low) & (a <= high)
        return jnp.where(inside, a, jax.lax.stop_gradient(jnp.clip(a, low, high)))

    return ctrl


#: Added to the ``converged`` description of a model whose own solver is PGS or CG (``native_model``).
NEWTON_CONVERGED = {
    "PGS": (
        " This model's own solver is PGS (native MuJoCo only), which stops short of the optimum at these settings, by "
        "its cost-improvement test or its cap (Humanoid-v5: median residual 1.8e-7 at 100 to 10000 iterations; small "
        "test models: capped with residuals up to 1e-3): its converged solves use Newton (the same convex problem, "
        "solved to round-off)."
    ),
    "CG": (
        " This model's own solver is CG, whose cost-improvement test (cost change below the tolerance) stops it short of "
        "the optimum at these settings (a box resting on a plane: gradient residuals up to 5e-7 at tolerance 1e-14, in "
        "MJX and native MuJoCo alike): its converged solves use Newton (the same convex problem, solved to round-off)."
    ),
}


def description(definition: str, model: mujoco.MjModel) -> str:
    """The definition's text for ``model`` (the ``jacobian_definition`` attrs): ``DESCRIPTIONS``,
    with ``NEWTON_CONVERGED`` for a CG or PGS model's ``converged`` definition."""
    check_definition(definition)
    own = mujoco.mjtSolver(int(model.opt.solver)).name.removeprefix("mjSOL_")
    return DESCRIPTIONS[definition] + (NEWTON_CONVERGED.get(own, "") if definition == "converged" else "")


def native_model(model: mujoco.MjModel, definition: str) -> mujoco.MjModel:
    """A native copy of ``model`` that simulates the same function as ``mjx_model``: the model's
    own solver settings for ``as-run``, the ``CONVERGED`` ones for ``converged``.

    A CG or PGS model's ``converged`` copy solves with Newton (``CONVERGED_SOLVER``, as
    ``mjx_model``). CG's cost-improvement test stops it with gradient residuals up to 5e-7 at
    tolerance 1e-14 (a box resting on a plane). PGS (which MJX lacks, so only native
    MuJoCo runs it) stops short of the optimum, by its cost-improvement test or its cap
    (Humanoid-v5 over 300 random steps: median residual 1.8e-7 at 100, 1000 and 10000
    iterations, tolerance 1e-14, next states 2.5e-9 (median) to 2e-8 from Newton's; the legged
    and resting-box test models hit the cap of 100 at most steps, residuals up to 1e-3), while
    Newton solves the same convex problem (MuJoCo's solvers share it: PGS its dual) to round-off
    (residual <= 1.3e-13 there) in fewer seconds.

    Raises:
      UserError: the model enables sleep, or delays its actuators: then the next state depends on
        MuJoCo state outside ``s = [qpos, qvel]`` (sleep timers, past controls), so the step has
        no Jacobian in ``s`` (and a reused ``mjData`` would carry that state from one perturbed
        step into the next).
    """
    check_definition(definition)
    envs.check_state_is_complete(model)
    m = copy.deepcopy(model)
    if definition == "converged":
        m.opt.iterations = CONVERGED.iterations
        m.opt.ls_iterations = CONVERGED.ls_iterations
        m.opt.tolerance = CONVERGED.tolerance
        m.opt.solver = CONVERGED_SOLVER
    return m


def substep_fn(spec: envs.EnvSpec, definition: str) -> Callable[[Any], tuple[Any, solve.SolveInfo]]:
    """One physics substep of a definition: ``sub(d) -> (d_next, info)`` (unbatched ``mjx.Data``
    with ``ctrl`` set; ``d_next.qacc_warmstart`` is the substep's ``qacc``). Differentiable:
    tangents follow the definition's rule."""
    m = mjx_model(spec, definition)
    rule, exact = tangent_rule(definition), exact_norm(definition)
    solve.check_integrator(m)
    return lambda d: solve.step(m, d, rule, exact)


def make_control_step(spec: envs.EnvSpec, definition: str) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, tuple[Any, solve.SolveInfo]]]:
    """The control step ``f`` of a definition.

    Returns:
      ``f(data, s, a) -> (s_next, (data_next, infos))`` for one (unbatched) environment: ``data``
      is the trajectory's ``mjx.Data`` at this step (it supplies everything but ``qpos``/``qvel``,
      including the incoming warm start, which is held), ``s`` is ``(nq + nv,)``, ``a`` is
      ``(nu,)``; ``s_next`` is ``(nq + nv,)``; ``infos`` the ``SolveInfo`` of every substep
      (leading axis ``n_substeps``).
    """
    sub = substep_fn(spec, definition)
    nq, control = spec.nq, control_fn(spec)

    def f(data: Any, s: jax.Array, a: jax.Array) -> tuple[jax.Array, tuple[Any, solve.SolveInfo]]:
        u = control(a)
        d = data.replace(qpos=s[:nq], qvel=s[nq:], ctrl=u, qacc_warmstart=jax.lax.stop_gradient(data.qacc_warmstart))
        d, infos = jax.lax.scan(lambda d_, _: sub(d_.replace(ctrl=u)), d, None, length=spec.n_substeps)
        return envs.state_of(d), (d, infos)

    return f


def make_primal_control_step(spec: envs.EnvSpec, definition: str) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, solve.SolveInfo]]:
    """The control step of a definition without any tangent machinery (for finite differences):
    ``f(data, s, a) -> (s_next, infos)``, same values as ``make_control_step``'s (same operations)."""
    m = mjx_model(spec, definition)
    solve.check_integrator(m)
    nq, exact, control = spec.nq, exact_norm(definition), control_fn(spec)

    def f(data: Any, s: jax.Array, a: jax.Array) -> tuple[jax.Array, solve.SolveInfo]:
        u = control(a)

        def sub(d: Any, _: None) -> tuple[Any, solve.SolveInfo]:
            d_next, info, _ = solve.primal_step(m, d.replace(ctrl=u), exact)
            return d_next, info

        d = data.replace(qpos=s[:nq], qvel=s[nq:], ctrl=u)
        d, infos = jax.lax.scan(sub, d, None, length=spec.n_substeps)
        return envs.state_of(d), infos

    return f


def diagnostics(m: Any, infos: solve.SolveInfo) -> dict[str, jax.Array]:
    """Per-control-step solver diagnostics from the substeps' ``SolveInfo`` (leading axis =
    substeps) of a definition's model ``m``.

    Returns:
      ``solver_residual`` (float: the largest ``|r| / trace(M)`` over the solves at the returned
      accelerations), ``solver_truncated`` (int32: solves stopped at their iteration cap above
      tolerance), ``solver_start_returned`` (int32: solves whose start point passed the gradient
      test while a constraint was active: no iteration moved it). One solve per substep; four
      per substep with RK4 (``infos`` then has a trailing stage axis).
    """
    tol = m.opt.tolerance
    capped = (infos.niter >= m.opt.iterations) & (infos.residual >= tol)
    return {
        "solver_residual": jnp.max(infos.residual),
        "solver_truncated": jnp.sum(capped).astype(jnp.int32),
        "solver_start_returned": jnp.sum(infos.start_converged & infos.active).astype(jnp.int32),
    }
