"""Exact control-step Jacobians by forward-mode automatic differentiation through MJX.

What is differentiated is a named definition (``dynsparse.jacobians.definitions``:
``converged``, the physics' Jacobian, or ``as-run``, the simulator's); the constraint solve's
tangents come from ``dynsparse.jacobians.solve`` (implicit function theorem at the solver's
result, or forward mode through the iterations as they ran). Jacobians are in the tangent space
``[dq, dv]`` of ``dynsparse.tangent`` (``2 nv`` coordinates, like ``mjd_transitionFD``;
``[qpos, qvel]`` itself when there are no free or ball joints). Two methods compute the same
derivative:

``reference``
  ``jax.jacfwd`` of the whole control step: ``2 nv + nu`` tangent directions carried through
  all ``n_substeps`` physics steps at once. Simple and obviously right; the guard the other is
  checked against.

``substep`` (default)
  The chain rule over substeps: at each substep the one-step Jacobians are taken at the nominal
  substep state and chained, ``A = A_n ... A_1``, ``B = sum_k A_n ... A_(k+1) B_k``. Per
  substep the ``q`` directions and the velocity/action directions are two separate ``jacfwd``
  calls, so that JAX's symbolic zeros keep the velocity and action tangents out of everything
  that depends on ``qpos`` alone (kinematics, inertia, collision, constraint Jacobians).
  For ``converged`` the solver runs once per substep without tangents and both passes take the
  implicit tangent at its result (no solver iterations are differentiated). For ``as-run`` the
  substep state is ``[q, v, w]`` with ``w`` the solver warm start carried to the next substep
  (its incoming tangent is zero: the previous control step's warm start is held), and both
  passes run the solver with tangents.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from dynsparse import envs, errors, tangent
from dynsparse.jacobians import definitions, solve

METHODS = ("substep", "reference")
DEFAULT_METHOD = "substep"

#: Recorded in every autodiff dataset's attrs.
METHOD_DESCRIPTIONS = {
    "substep": (
        "forward-mode autodiff (jax.jacfwd) through MJX per physics substep at the nominal substep "
        "state, q directions and (v, [w,] a) directions in two passes, chained: A = A_n...A_1, "
        "B = sum_k A_n...A_(k+1) B_k"
    ),
    "reference": "forward-mode autodiff (jax.jacfwd) of the whole control step in one pass",
}

#: ``jac(data, a) -> (J_s, J_a, s_next, diagnostics)``
JacobianFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array, dict[str, jax.Array]]]


def check_method(method: str) -> None:
    """Raise ``UserError`` unless ``method`` is one of ``METHODS``."""
    if method not in METHODS:
        raise errors.UserError(f"unknown autodiff method {method!r}; allowed: {', '.join(METHODS)}")


def make_jacobian_fn(spec: envs.EnvSpec, method: str = DEFAULT_METHOD, definition: str = definitions.DEFAULT_DEFINITION) -> JacobianFn:
    """Jacobians of one control step for one (unbatched) environment.

    Args:
      spec: the environment.
      method: ``"substep"`` (default, faster) or ``"reference"`` (see the module docstring).
      definition: ``"converged"`` (default) or ``"as-run"`` (``definitions``).

    Returns:
      ``jac(data, a) -> (J_s, J_a, s_next, diagnostics)`` with ``J_s`` ``(2nv, 2nv)`` and ``J_a``
      ``(2nv, nu)`` in the tangent space ``[dq, dv]`` (units: state units per state/action unit,
      rotations in radians, over one control step of ``spec.dt`` seconds), ``s_next`` the next
      ``[qpos, qvel]`` ``(nq+nv,)`` of the definition's function (for ``as-run`` the recorded
      next state; for ``converged`` the converged step's), ``diagnostics`` the scalars of
      ``definitions.diagnostics``. Not jitted: jit at the outer boundary.
    """
    check_method(method)
    definitions.check_definition(definition)
    if method == "reference":
        return _reference(spec, definition)
    if definition == "converged":
        return _converged_chain(spec)
    return _as_run_chain(spec)


def _reference(spec: envs.EnvSpec, definition: str) -> JacobianFn:
    f = definitions.make_control_step(spec, definition)
    m = definitions.mjx_model(spec, definition)
    c, nv = spec.charts, spec.nv

    def jac(data: Any, a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, dict[str, jax.Array]]:
        def g(x: jax.Array, a_: jax.Array) -> tuple[jax.Array, tuple[Any, solve.SolveInfo]]:
            s = jnp.concatenate([tangent.retract(c, data.qpos, x[:nv]), data.qvel + x[nv:]])
            s_next, aux = f(data, s, a_)
            return tangent_state(c, s_next[: c.nq], s_next[c.nq:]), aux

        x0 = jnp.zeros((2 * nv,), data.qpos.dtype)
        (j_s, j_a), (d_next, infos) = jax.jacfwd(g, argnums=(0, 1), has_aux=True)(x0, a)
        return j_s, j_a, envs.state_of(d_next), definitions.diagnostics(m, infos)

    return jac


def tangent_state(c: tangent.Charts, q: jax.Array, v: jax.Array) -> jax.Array:
    """``(2nv,)`` ``[local(q), v]``: the position read in the tangent space at its own (constant)
    value, so that ``jacfwd`` of it gives tangent-space output rows (zero-valued; only its
    derivative is used)."""
    return jnp.concatenate([tangent.local(c, jax.lax.stop_gradient(q), q), v])


def _chain(spec: envs.EnvSpec, sub: Callable[[Any, jax.Array], tuple[Any, jax.Array, jax.Array, solve.SolveInfo]], rows: int, m: Any) -> JacobianFn:
    """Chain per-substep Jacobians ``sub(d, a) -> (d_next, A_k (rows, rows), B_k (rows, nu),
    info)`` whose first ``2 nv`` rows/columns are the tangent state; the other rows (the as-run
    warm start) start with a zero tangent."""
    n, control = spec.state_size, definitions.control_fn(spec)

    def jac(data: Any, a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, dict[str, jax.Array]]:
        def body(carry: tuple[Any, jax.Array, jax.Array], _: None) -> tuple[tuple[Any, jax.Array, jax.Array], solve.SolveInfo]:
            d, a_tot, b_tot = carry
            d_next, a_k, b_k, info = sub(d, a)
            return (d_next, a_k @ a_tot, a_k @ b_tot + b_k), info

        dtype = data.qpos.dtype
        start = batched_like((jnp.eye(rows, n, dtype=dtype), jnp.zeros((rows, a.shape[0]), dtype)), data, a)
        init = (data.replace(ctrl=control(a)), *start)
        (d_next, j_s, j_a), infos = jax.lax.scan(body, init, None, length=spec.n_substeps)
        return j_s[:n], j_a[:n], envs.state_of(d_next), definitions.diagnostics(m, infos)

    return jac


def batched_like(tree: Any, data: Any, a: jax.Array) -> Any:
    """``tree`` with the same values, each leaf made to depend on ``data.time`` and ``a``, so that
    under ``vmap`` it is batched wherever they are (``where(p, x, x)`` with ``p`` true or false: the
    value is ``x`` either way, and XLA removes the select).

    A scan whose carry starts unbatched (the chain's identity and zero matrices) and comes out
    batched is batched twice while tracing: JAX's batching rule finds which carries are batched by
    a fixpoint, one pass of the whole body per change. Starting batched, one pass suffices:
    tracing CheetahRun's chunk with Jacobians for 2 episodes, the chain's body (19,943 equations)
    was batched in 3.7 s and then again in 2.9 s.
    """
    keep = (data.time == data.time) | jnp.any(a == a)
    return jax.tree_util.tree_map(lambda x: jnp.where(keep, x, x), tree)


def _converged_chain(spec: envs.EnvSpec) -> JacobianFn:
    m = definitions.mjx_model(spec, "converged")
    solve.check_integrator(m)
    c, control = spec.charts, definitions.control_fn(spec)

    def sub(d: Any, a: jax.Array) -> tuple[Any, jax.Array, jax.Array, solve.SolveInfo]:
        d_next, info, solution = solve.primal_step(m, d, exact_norm=True)  # d.ctrl: control(a)

        def g(q: jax.Array, v: jax.Array, a_: jax.Array) -> jax.Array:
            d2 = solve.step_at(m, d.replace(qpos=q, qvel=v, ctrl=control(a_)), solution)
            return tangent_state(c, d2.qpos, d2.qvel)

        dq0 = jnp.zeros((c.nv,), d.qpos.dtype)
        j_q = jax.jacfwd(lambda dq: g(tangent.retract(c, d.qpos, dq), d.qvel, a))(dq0)
        j_v, j_a = jax.jacfwd(lambda v, a_: g(d.qpos, v, a_), argnums=(0, 1))(d.qvel, a)
        return d_next, jnp.concatenate([j_q, j_v], axis=1), j_a, info

    return _chain(spec, sub, spec.state_size, m)


def _as_run_chain(spec: envs.EnvSpec) -> JacobianFn:
    m = definitions.mjx_model(spec, "as-run")
    solve.check_integrator(m)
    c, control = spec.charts, definitions.control_fn(spec)

    def sub(d: Any, a: jax.Array) -> tuple[Any, jax.Array, jax.Array, solve.SolveInfo]:
        def g(q: jax.Array, v: jax.Array, w: jax.Array, a_: jax.Array) -> tuple[jax.Array, tuple[Any, solve.SolveInfo]]:
            d2, info = solve.step(m, d.replace(qpos=q, qvel=v, qacc_warmstart=w, ctrl=control(a_)), "as-run")
            return jnp.concatenate([tangent_state(c, d2.qpos, d2.qvel), d2.qacc_warmstart]), (d2, info)

        dq0 = jnp.zeros((c.nv,), d.qpos.dtype)
        w = jax.lax.stop_gradient(d.qacc_warmstart)
        j_q, (d_next, info) = jax.jacfwd(lambda dq: g(tangent.retract(c, d.qpos, dq), d.qvel, w, a), has_aux=True)(dq0)
        j_v, j_w, j_a = jax.jacfwd(lambda v, w_, a_: g(d.qpos, v, w_, a_)[0], argnums=(0, 1, 2))(d.qvel, w, a)
        return d_next, jnp.concatenate([j_q, j_v, j_w], axis=1), j_a, info

    return _chain(spec, sub, spec.state_size + spec.nv, m)
