"""Exact control-step Jacobians by forward-mode automatic differentiation through MJX.

``jax.jacfwd`` of ``dynsparse.envs.make_control_step`` w.r.t. ``(s, a)``: ``nq + nv + nu`` tangent
directions through the ``n_substeps`` physics steps, in the model's dtype (float64 by default).

Known limit (measured on FingerSpin, pinned in the tests): when a substep's constraint solver
starts at a point whose gradient is already below tolerance, MJX runs zero solver iterations and
returns the start point (``qacc_smooth`` or the warm start). Forward-mode AD then differentiates
that start point, not the constrained optimum, and misses the constraints' sensitivity: on
FingerSpin with the spinner stuck by its joint friction loss (velocity exactly 0) autodiff gave
dv'/dv = 165.8 where the simulator's true slope (native and MJX finite differences, eps 1e-3 to
1e-8) is 0.0793; at velocity 1e-9 one iteration runs and autodiff is right. Every step records
``solver_start_returned``; such steps are counted by ``structure`` and are the ones to check
against ``finite_diff`` (``collect --check-every``). Where no constraint is active at such a
step (e.g. a body in free flight), the start point is the optimum and autodiff is right.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from dynsparse import envs


def make_jacobian_fn(spec: envs.EnvSpec) -> Callable[[Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
    """Jacobians of one control step for one (unbatched) environment.

    Returns:
      ``jac(data, a) -> (J_s, J_a, s_next, start_returned)`` with ``J_s`` ``(nq+nv, nq+nv)``,
      ``J_a`` ``(nq+nv, nu)`` (units: state units per state/action unit, over one control step
      of ``spec.dt`` seconds), ``s_next`` ``(nq+nv,)``. Not jitted: jit at the outer boundary.
    """
    envs.require_nq_equals_nv(spec.name, spec.mj_model)
    f = envs.make_control_step(spec)

    def jac(data: Any, a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        s = envs.state_of(data)
        (j_s, j_a), (d_next, returned) = jax.jacfwd(
            lambda s_, a_: f(data, s_, a_), argnums=(0, 1), has_aux=True
        )(s, a)
        return j_s, j_a, envs.state_of(d_next), returned

    return jac
