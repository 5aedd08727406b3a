"""Exact control-step Jacobians by forward-mode automatic differentiation through MJX.

Two methods compute the same derivative of ``dynsparse.envs.make_control_step`` w.r.t. ``(s, a)``,
in the tangent space ``[dq, dv]`` of ``dynsparse.tangent`` (``2 nv`` coordinates, like
``mjd_transitionFD``; ``[qpos, qvel]`` itself when there are no free or ball joints):

``reference``
  ``jax.jacfwd`` of the whole control step: ``2 nv + nu`` tangent directions carried through
  all ``n_substeps`` physics steps at once. Simple and obviously right; the guard the other is
  checked against.

``substep`` (default)
  The chain rule over substeps, as ``finite_diff`` does with ``mjd_transitionFD``: at each
  substep the one-step Jacobians ``A_k = d[q', v']/d[q, v]`` and ``B_k = d[q', v']/da`` are
  taken at the nominal substep state and chained, ``A = A_n ... A_1``,
  ``B = sum_k A_n ... A_(k+1) B_k``. Per substep the ``q`` directions and the ``(v, a)``
  directions are two separate ``jacfwd`` calls, so that JAX's symbolic zeros keep the ``nv + nu``
  velocity and action tangents out of everything that depends on ``qpos`` alone (kinematics,
  inertia and its factorisation, collision detection, constraint Jacobians). In the whole-step
  ``reference`` every direction flows through every substep's position stage (after the first
  substep the position depends on everything). Measured (``benchmarks/jacobians.py``, 2-core
  CPU, batch 64-256): 2.0x the reference's throughput on CheetahRun, 3.1x on WalkerRun, 2.5x on
  SwimmerSwimmer6 (0.8x on CartpoleBalance, where the second primal pass weighs most); zero
  decisions identical and values equal to the reference to <1e-8 relative (round-off of the
  different summation order; tested).

Known limit (both methods; measured on FingerSpin, pinned in the tests): when a substep's
constraint solver starts at a point whose gradient is already below tolerance, MJX runs zero
solver iterations and returns the start point (``qacc_smooth`` or the warm start). Forward-mode
AD then differentiates that start point, not the constrained optimum, and misses the
constraints' sensitivity: on FingerSpin with the spinner stuck by its joint friction loss
(velocity exactly 0) autodiff gave dv'/dv = 165.8 where the simulator's true slope (native and
MJX finite differences, eps 1e-3 to 1e-8) is 0.0793; at velocity 1e-9 one iteration runs and
autodiff is right. Every step records ``solver_start_returned``; such steps are counted by
``structure`` and are the ones to check against ``finite_diff`` (``collect --check-every``).
Where no constraint is active at such a step (e.g. a body in free flight), the start point is
the optimum and autodiff is right.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from dynsparse import envs, errors, tangent

METHODS = ("substep", "reference")
DEFAULT_METHOD = "substep"

#: Recorded in every autodiff dataset's attrs.
METHOD_DESCRIPTIONS = {
    "substep": (
        "forward-mode autodiff (jax.jacfwd) through MJX per physics substep at the nominal substep "
        "state, q directions and (v, a) directions in two passes, chained: A = A_n...A_1, "
        "B = sum_k A_n...A_(k+1) B_k"
    ),
    "reference": "forward-mode autodiff (jax.jacfwd) of the whole control step in one pass",
}

JacobianFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array, jax.Array]]


def check_method(method: str) -> None:
    """Raise ``UserError`` unless ``method`` is one of ``METHODS``."""
    if method not in METHODS:
        raise errors.UserError(f"unknown autodiff method {method!r}; allowed: {', '.join(METHODS)}")


def make_jacobian_fn(spec: envs.EnvSpec, method: str = DEFAULT_METHOD) -> JacobianFn:
    """Jacobians of one control step for one (unbatched) environment.

    Args:
      spec: the environment.
      method: ``"substep"`` (default, faster) or ``"reference"`` (see the module docstring).

    Returns:
      ``jac(data, a) -> (J_s, J_a, s_next, start_returned)`` with ``J_s`` ``(2nv, 2nv)`` and
      ``J_a`` ``(2nv, nu)`` in the tangent space ``[dq, dv]`` (``dynsparse.tangent``; equal to
      ``[qpos, qvel]`` when ``nq == nv``; units: state units per state/action unit, rotations in
      radians, over one control step of ``spec.dt`` seconds), ``s_next`` the next ``[qpos,
      qvel]`` ``(nq+nv,)``, ``start_returned`` a bool scalar (some substep's solver returned its
      start point with a constraint active). Not jitted: jit at the outer boundary.
    """
    check_method(method)
    if method == "reference":
        return _reference(spec)
    return _substep_chain(spec)


def _reference(spec: envs.EnvSpec) -> JacobianFn:
    f = envs.make_control_step(spec)
    c, nv = spec.charts, spec.nv

    def jac(data: Any, a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        def g(x: jax.Array, a_: jax.Array) -> tuple[jax.Array, tuple[Any, jax.Array]]:
            s = jnp.concatenate([tangent.retract(c, data.qpos, x[:nv]), data.qvel + x[nv:]])
            s_next, aux = f(data, s, a_)
            return tangent_state(c, s_next[: c.nq], s_next[c.nq:]), aux

        x0 = jnp.zeros((2 * nv,), data.qpos.dtype)
        (j_s, j_a), (d_next, returned) = jax.jacfwd(g, argnums=(0, 1), has_aux=True)(x0, a)
        return j_s, j_a, envs.state_of(d_next), returned

    return jac


def make_substep_jacobian_fn(spec: envs.EnvSpec) -> Callable[[Any, jax.Array], tuple[Any, jax.Array, jax.Array, jax.Array]]:
    """Jacobians of one physics substep (unbatched), ``q`` and ``(v, a)`` directions apart.

    Returns:
      ``sub(d, a) -> (d_next, A_k, B_k, start_returned)``: ``d`` is the nominal ``mjx.Data`` at
      the substep (its ``qacc_warmstart`` is held, not differentiated), ``a`` ``(nu,)`` the
      control; ``A_k`` is ``(2nv, 2nv)``, ``B_k`` ``(2nv, nu)`` (tangent space) over one substep
      of ``spec.sim_dt`` seconds; ``d_next`` the nominal next data.
    """
    from mujoco import mjx

    model = without_sensors(spec.mjx_model)
    c = spec.charts

    def sub(d: Any, a: jax.Array) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
        warm = jax.lax.stop_gradient(d.qacc_warmstart)

        def g(q: jax.Array, v: jax.Array, a_: jax.Array) -> tuple[jax.Array, Any]:
            d_next = mjx.step(model, d.replace(qpos=q, qvel=v, ctrl=a_, qacc_warmstart=warm))
            return tangent_state(c, d_next.qpos, d_next.qvel), d_next

        dq0 = jnp.zeros((c.nv,), d.qpos.dtype)
        j_q, d_next = jax.jacfwd(lambda dq: g(tangent.retract(c, d.qpos, dq), d.qvel, a), has_aux=True)(dq0)
        j_v, j_a = jax.jacfwd(lambda v, a_: g(d.qpos, v, a_)[0], argnums=(0, 1))(d.qvel, a)
        return d_next, jnp.concatenate([j_q, j_v], axis=1), j_a, envs.solver_returned_start(d_next, warm)

    return sub


def tangent_state(c: tangent.Charts, q: jax.Array, v: jax.Array) -> jax.Array:
    """``(2nv,)`` ``[local(q), v]``: the position read in the tangent space at its own (constant)
    value, so that ``jacfwd`` of it gives tangent-space output rows (zero-valued; only its
    derivative is used)."""
    return jnp.concatenate([tangent.local(c, jax.lax.stop_gradient(q), q), v])


def without_sensors(model: Any) -> Any:
    """The MJX ``model`` with sensors disabled (``mjDSBL_SENSOR``): they do not act on the
    dynamics, and the Jacobians need neither their values nor their tangents."""
    import mujoco

    flags = int(model.opt.disableflags) | int(mujoco.mjtDisableBit.mjDSBL_SENSOR)
    return model.replace(opt=model.opt.replace(disableflags=type(model.opt.disableflags)(flags)))


def _substep_chain(spec: envs.EnvSpec) -> JacobianFn:
    sub = make_substep_jacobian_fn(spec)
    n = spec.state_size

    def jac(data: Any, a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        def body(carry: tuple[Any, jax.Array, jax.Array, jax.Array], _: None) -> tuple[tuple[Any, jax.Array, jax.Array, jax.Array], None]:
            d, a_tot, b_tot, returned = carry
            d_next, a_k, b_k, ret_k = sub(d, a)
            return (d_next, a_k @ a_tot, a_k @ b_tot + b_k, returned | ret_k), None

        dtype = data.qpos.dtype
        init = (data, jnp.eye(n, dtype=dtype), jnp.zeros((n, a.shape[0]), dtype), jnp.zeros((), bool))
        (d_next, j_s, j_a, returned), _ = jax.lax.scan(body, init, None, length=spec.n_substeps)
        return j_s, j_a, envs.state_of(d_next), returned

    return jac
