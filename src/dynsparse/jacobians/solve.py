"""MuJoCo's constraint solve and physics step in MJX, with tangents that do not depend on how
many solver iterations ran.

MJX's ``solver.solve`` minimises MuJoCo's convex constraint cost over the acceleration ``x``
(``qacc``); at the optimum its gradient vanishes::

    r(x, theta) = M x - qfrc_smooth - J^T f(J x - aref) = 0

where ``f`` is the constraint force of each row (piecewise linear in ``J x - aref``: quadratic
rows where active, friction loss saturated outside its quadratic zone, elliptic cones) and
``theta`` everything the problem is built from (``M``, ``qfrc_smooth``, ``J``, ``aref``, ``D``,
friction). Forward-mode autodiff through the solver's ``while_loop`` differentiates the
*iterations*: where the solver exits at once because its start point already passes the
gradient test (a joint held by friction loss, a resting contact), no iteration runs and the
tangent is that of the start point, which misses the constraints (FingerSpin: 165.8 instead of
0.0793). Here the tangent is taken from the optimality condition instead (implicit function
theorem over the active set at the returned ``x``)::

    dx = -H^-1 (dr/dtheta . dtheta),   H = dr/dx (the cost's Hessian at x, nv x nv)

computed as one differentiable Newton correction ``delta = -H^-1 r(x, theta)`` whose value is
subtracted again (``x + (delta - stop_gradient(delta))``): the primal ``qacc`` and forces are
MJX's own, bit for bit; only tangents change. ``H`` is ``jacfwd`` of ``r`` in ``x`` (so every
constraint and cone type MJX implements is covered), held constant; the constraint force's
tangent follows from ``r``'s vanishing total tangent: ``d qfrc_constraint = d(M x) - d qfrc_smooth``.

Two tangent rules (``TANGENTS``):

``implicit``
  Always the implicit tangent, and the solver itself runs on tangent-free inputs (no tangents
  through its iterations: cheaper). Exact for a solve run to convergence.
``as-run``
  Where the solver stopped at its iteration cap without meeting its tolerance, forward mode
  through the iterations as they ran: the truncated solve is the function Playground computes.
  Where it stopped by its own tolerance test (including at its start point, zero iterations),
  the implicit tangent at its result: that result is the optimum to the solver's tolerance and
  a perturbed solve lands on the perturbed optimum, which is what finite differences of the step
  see; the unrolled tangent lags behind there (measured: 165.8 instead of 0.0793 on FingerSpin
  at zero iterations; 8.8e-4 scaled error on a box resting on a floor after a converged solve).

``step`` is ``mjx.step`` composed from MJX's own stages with this solve (sensors are not
computed; they do not act on the dynamics). Supported integrators: Euler, implicitfast (every
DM-Control task) and RK4 (most Gymnasium MuJoCo tasks): RK4 runs four forward passes per
step, each with its own constraint solve (``SolveInfo`` then has a trailing axis of 4 stages),
exactly as MJX's ``rungekutta4``; implicit (full) is refused.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import mujoco

# MJX's private solver internals: this module re-implements MJX's solver step with them (see
# dynsparse.upstream, which holds every other private import)
from mujoco.mjx._src import forward as mjx_forward
from mujoco.mjx._src import math as mjx_math
from mujoco.mjx._src import scan as mjx_scan
from mujoco.mjx._src import solver as mjx_solver
from mujoco.mjx._src import support as mjx_support
from mujoco.mjx._src.types import DisableBit, IntegratorType, SolverType

from dynsparse import errors

TANGENTS = ("implicit", "as-run")


class SolveInfo(NamedTuple):
    """What one solve did (scalars; a pytree).

    Fields: ``niter`` (int32, iterations run), ``residual`` (float, the solver's own convergence
    measure at the returned ``qacc``: ``|r| / trace(M)``), ``start_converged`` (bool, the start
    point passed the gradient test), ``converged`` (bool, the solver stopped by its tolerance
    test: gradient or cost improvement below ``opt.tolerance``, not only by its iteration cap),
    ``active`` (bool, some constraint row is active at the returned ``qacc``).
    """

    niter: jax.Array
    residual: jax.Array
    start_converged: jax.Array
    converged: jax.Array
    active: jax.Array


def _sg_tree(tree: Any) -> Any:
    return jax.tree_util.tree_map(jax.lax.stop_gradient, tree)


def _gradient(m: Any, d: Any, qacc: jax.Array) -> tuple[jax.Array, Any]:
    """``r(qacc)`` ``(nv,)`` (force units) and the solver context at ``qacc`` (forces, active set)."""
    ctx = mjx_solver.Context.create(m, d.replace(qacc=qacc), grad=False)
    return ctx.Ma - d.qfrc_smooth - ctx.qfrc_constraint, ctx


def _rescaled_norm(m: Any, d: Any, g: jax.Array) -> jax.Array:
    return mjx_solver._rescale(m, d, mjx_math.norm(g))  # pylint: disable=protected-access


def run(m: Any, d: Any, exact_norm: bool = False) -> tuple[Any, SolveInfo]:
    """MJX's ``solver.solve`` (same operations, same results), also returning what it did.

    Args:
      m: MJX model (JAX implementation).
      d: data after ``fwd_acceleration`` with at least one constraint row.
      exact_norm: measure the gradient in the stopping test with the Euclidean norm. MJX's own
        ``math.norm`` returns 0 for any vector whose entries are all below 1e-8 in absolute value
        (``jnp.allclose(x, 0)``), so MJX stops whenever the cost gradient is below 1e-8 (force
        units), whatever ``opt.tolerance`` says (measured on FingerSpin: a spinner held by friction
        loss, gradient 7e-9, tolerance test 8.6e-8 / 1e-8 would iterate, MJX returns its start
        point; native MuJoCo iterates once and lands 5.5e-8 rad/s^2 away). ``False`` reproduces MJX
        (the ``as-run`` step); ``True`` is for the ``converged`` definition, and also stops it
        only where it converged: the gradient below ``opt.tolerance``, the iteration cap, or an
        iteration that changed nothing (cost improvement <= 0: the line search found no better
        point, so every later iteration would repeat it). MJX's test ``improvement <
        opt.tolerance`` is dropped there: near the optimum the cost changes as the square of the
        gradient, so at tolerance 1e-14 it stopped solves with gradients ~1e-7 (measured: MJX's
        Newton on the resting box stopped after 1 iteration at 1.2e-7 where native MuJoCo's
        reached 1.4e-16; CG at 2e-7).

    Returns:
      ``(d, info)``: ``d`` with ``qacc``, ``qfrc_constraint`` and ``efc_force`` set as MJX sets
      them (with ``exact_norm=False``); ``info`` a ``SolveInfo`` (its ``residual`` always with the
      Euclidean norm). Tangents flow through the iterations as they ran.
    """
    ls = mjx_solver._linesearch  # pylint: disable=protected-access
    update_constraint = mjx_solver._update_constraint  # pylint: disable=protected-access
    update_gradient = mjx_solver._update_gradient  # pylint: disable=protected-access
    rescale = mjx_solver._rescale  # pylint: disable=protected-access

    norm = jnp.linalg.norm if exact_norm else mjx_math.norm

    def cond(ctx: Any) -> jax.Array:
        improvement = rescale(m, d, ctx.prev_cost - ctx.cost)
        gradient = rescale(m, d, norm(ctx.grad))
        done = ctx.solver_niter >= m.opt.iterations
        if exact_norm:  # converged: no progress left, not a small one (see the docstring)
            done |= (ctx.solver_niter > 0) & (improvement <= 0)
        else:
            done |= improvement < m.opt.tolerance
        done |= gradient < m.opt.tolerance
        return ~done

    def body(ctx: Any) -> Any:
        ctx = ls(m, d, ctx)
        prev_grad, prev_mgrad = ctx.grad, ctx.Mgrad
        ctx = update_constraint(m, d, ctx)
        ctx = update_gradient(m, d, ctx)
        if m.opt.solver == SolverType.NEWTON:
            search = -ctx.Mgrad
        else:  # Polak-Ribiere
            beta = jnp.dot(ctx.grad, ctx.Mgrad - prev_mgrad)
            beta = beta / jnp.maximum(mujoco.mjMINVAL, jnp.dot(prev_grad, prev_mgrad))
            beta = jnp.maximum(0, beta)
            search = -ctx.Mgrad + beta * ctx.search
        return ctx.replace(search=search, solver_niter=ctx.solver_niter + 1)

    qacc = d.qacc_smooth
    if not m.opt.disableflags & DisableBit.WARMSTART:
        warm = mjx_solver.Context.create(m, d.replace(qacc=d.qacc_warmstart), grad=False)
        smth = mjx_solver.Context.create(m, d.replace(qacc=d.qacc_smooth), grad=False)
        qacc = jnp.where(warm.cost < smth.cost, d.qacc_warmstart, d.qacc_smooth)
    d = d.replace(qacc=qacc)
    ctx = mjx_solver.Context.create(m, d)
    start_converged = jax.lax.stop_gradient(rescale(m, d, norm(ctx.grad)) < m.opt.tolerance)
    if m.opt.iterations == 1:
        ctx = body(ctx)
    else:
        ctx = jax.lax.while_loop(cond, body, ctx)
    if exact_norm:
        ctx = _newton_polish(m, d, ctx, norm)
    d = d.tree_replace({"qfrc_constraint": ctx.qfrc_constraint, "qacc": ctx.qacc, "_impl.efc_force": ctx.efc_force})
    sg = jax.lax.stop_gradient
    residual = sg(rescale(m, d, jnp.linalg.norm(ctx.grad)))
    improvement = sg(rescale(m, d, ctx.prev_cost - ctx.cost))
    info = SolveInfo(
        niter=jnp.asarray(ctx.solver_niter, jnp.int32),
        residual=residual,
        start_converged=start_converged,
        converged=start_converged | (sg(rescale(m, d, norm(ctx.grad))) < m.opt.tolerance) | (improvement < m.opt.tolerance),
        active=_any_active(d, ctx),
    )
    return d, info


def _newton_polish(m: Any, d: Any, ctx: Any, norm: Callable[[jax.Array], jax.Array]) -> Any:
    """The solver's result refined by one full Newton step ``qacc - H^-1 r(qacc)`` (``H``: the
    cost's Hessian with the active set, cones and friction-loss zones at ``qacc``), kept only
    where it lowers the gradient's norm; the ``converged`` definition's last step. No tangents flow
    (``run`` is called with stopped-gradient data there).

    MJX's line search moves only where the cost falls (``improved``), and near the optimum the
    cost falls as the square of the gradient, below the cost's round-off: MJX's Newton then stops
    short (measured: a box resting on four friction contacts, gradient 1.2e-7 after its one
    iteration, where native MuJoCo's Newton, whose line search follows the derivative, reached
    1.4e-16). The cost is piecewise quadratic, so where the result already has the optimum's
    active set this one step lands on the optimum to round-off; where it does not, the step
    is discarded unless it lowers the gradient.

    With Newton's method (every ``converged`` solve) the step is the context's own ``Mgrad``:
    MJX's last ``_update_gradient`` already solved ``H Mgrad = r`` at ``qacc`` with its Cholesky
    factor of ``M + J^T D_active J`` (plus the elliptic cones' blocks), so nothing is
    refactorised; other solvers' contexts hold no Hessian, and ``hessian`` supplies it.
    """
    if m.opt.solver == SolverType.NEWTON:
        step = ctx.Mgrad
    else:
        step = jnp.linalg.solve(hessian(m, d, ctx.qacc), ctx.grad)
    new = mjx_solver.Context.create(m, d.replace(qacc=ctx.qacc - step), grad=False)
    new = new.replace(grad=new.Ma - d.qfrc_smooth - new.qfrc_constraint,
                      solver_niter=ctx.solver_niter, prev_cost=ctx.prev_cost, search=ctx.search)
    better = norm(new.grad) < norm(ctx.grad)
    return jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), new, ctx)


def _any_active(d: Any, ctx: Any) -> jax.Array:
    """Whether some constraint row with a nonzero Jacobian is active (in its quadratic zone or
    cone) at the context's ``qacc`` (MJX's unused contact slots have all-zero rows)."""
    efc_j = jax.lax.stop_gradient(d._impl.efc_J)  # pylint: disable=protected-access
    active = jnp.broadcast_to(jax.lax.stop_gradient(ctx.active), efc_j.shape[:1]).astype(bool)
    return jnp.any(active & jnp.any(efc_j != 0, axis=1))


def hessian(m: Any, d: Any, qacc: jax.Array) -> jax.Array:
    """``(nv, nv)`` ``H = dr/dqacc`` at ``qacc``: the constraint cost's Hessian with the active set,
    cones and friction-loss zones of that point (``jacfwd`` of the solver's own gradient, so every
    constraint and cone type MJX implements is covered). No tangents flow through it."""
    d_const = _sg_tree(d)
    return jax.jacfwd(lambda y: _gradient(m, d_const, y)[0])(jax.lax.stop_gradient(qacc))


def implicit_tangents(
    m: Any, d: Any, qacc: jax.Array, qfrc_constraint: jax.Array, efc_force: jax.Array, hess: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(qacc, qfrc_constraint, efc_force)`` with the primal values given (bit for bit) and the
    implicit tangents of the constraint solve at ``qacc`` (see the module docstring).

    Args:
      m, d: model and data after ``fwd_acceleration`` (``d`` carries the tangents of theta).
      qacc: ``(nv,)`` the solver's result; qfrc_constraint ``(nv,)``, efc_force ``(nefc,)`` its
        forces. Their own tangents are ignored.
      hess: ``hessian(m, d, qacc)`` if already computed.

    Returns:
      ``qacc`` with tangent ``dx = -H^-1 dr`` (``dr`` the tangent of ``r(qacc, theta)``);
      ``qfrc_constraint = M qacc - qfrc_smooth - r`` with tangent ``d(M qacc) - d qfrc_smooth``
      (``r``'s total tangent vanishes by construction); ``efc_force`` without a tangent (nothing
      downstream of a step reads it).
    """
    sg = jax.lax.stop_gradient
    x = sg(qacc)
    if hess is None:
        hess = hessian(m, d, x)
    r, _ = _gradient(m, d, x)
    delta = jnp.linalg.solve(sg(hess), -r)
    x_t = x + (delta - sg(delta))
    moved = mjx_support.mul_m(m, d, x_t) - d.qfrc_smooth
    qfrc = sg(qfrc_constraint) + (moved - sg(moved))
    return x_t, qfrc, sg(efc_force)


def solve(m: Any, d: Any, tangent: str, exact_norm: bool = False) -> tuple[Any, SolveInfo]:
    """The constraint solve with tangents by rule ``tangent`` (``TANGENTS``); primal = ``run``'s
    (MJX's with ``exact_norm=False``)."""
    if tangent == "implicit":
        out, info = run(m, _sg_tree(d), exact_norm)
    elif tangent == "as-run":
        out, info = run(m, d, exact_norm)
    else:
        raise errors.UserError(f"unknown tangent rule {tangent!r}; allowed: {', '.join(TANGENTS)}")
    impl = out._impl  # pylint: disable=protected-access
    x, qfrc, force = implicit_tangents(m, d, out.qacc, out.qfrc_constraint, impl.efc_force)
    if tangent == "as-run":
        use = info.converged
        x = jnp.where(use, x, out.qacc)
        qfrc = jnp.where(use, qfrc, out.qfrc_constraint)
        force = jnp.where(use, force, impl.efc_force)
    d = d.tree_replace({"qacc": x, "qfrc_constraint": qfrc, "_impl.efc_force": force})
    return d, info


def no_solve_info(d: Any) -> SolveInfo:
    """The ``SolveInfo`` of a step without constraint rows (nothing to solve)."""
    return SolveInfo(
        niter=jnp.zeros((), jnp.int32), residual=jnp.zeros((), d.qacc.dtype),
        start_converged=jnp.ones((), bool), converged=jnp.ones((), bool), active=jnp.zeros((), bool),
    )


SUPPORTED_INTEGRATORS = (IntegratorType.EULER, IntegratorType.IMPLICITFAST, IntegratorType.RK4)


def check_integrator(m: Any) -> None:
    """Raise ``UserError`` unless ``step`` supports the model's integrator."""
    if m.opt.integrator not in SUPPORTED_INTEGRATORS:
        raise errors.UserError(
            f"integrator {IntegratorType(m.opt.integrator).name} is not supported by dynsparse's "
            f"differentiated step; allowed: {', '.join(i.name for i in SUPPORTED_INTEGRATORS)}"
        )


def _smooth_stages(m: Any, d: Any) -> Any:
    """MJX's ``forward`` up to the constraint solve (positions, velocities, actuation, smooth
    acceleration); sensors are not computed."""
    d = mjx_forward.fwd_position(m, d)
    d = mjx_forward.fwd_velocity(m, d)
    d = mjx_forward.fwd_actuation(m, d)
    return mjx_forward.fwd_acceleration(m, d)


def _has_constraints(d: Any) -> bool:
    return d._impl.efc_J.size > 0  # pylint: disable=protected-access


def _integrate(m: Any, d: Any) -> Any:
    if m.opt.integrator == IntegratorType.EULER:
        return mjx_forward.euler(m, d)
    return mjx_forward.implicit(m, d)


def _rk4(m: Any, d: Any, forward: Any, stage_inputs: Any = None) -> tuple[Any, Any]:
    """MJX's ``rungekutta4`` (same operations, same order) with its three inner forward passes
    replaced by ``forward(d, x) -> (d, aux)``; ``x`` is stage ``i``'s slice of ``stage_inputs``
    (leading axis 3, or ``None``). ``d`` is the data after the first forward pass.

    Returns:
      ``(d_next, aux)`` with ``aux`` stacked over the three inner stages (leading axis 3).
    """
    d0 = d
    a_tab, b_tab = mjx_forward._RK4_A, mjx_forward._RK4_B  # pylint: disable=protected-access
    c_tab = jnp.tril(a_tab).sum(axis=0)
    times = d.time + c_tab * m.opt.timestep
    kqvel = d.qvel
    qvel, qacc, act_dot = jax.tree_util.tree_map(lambda k: b_tab[0] * k, (kqvel, d.qacc, d.act_dot))
    integrate_fn = lambda *args: mjx_forward._integrate_pos(*args, dt=m.opt.timestep)  # pylint: disable=protected-access

    def f(carry: Any, xs: Any) -> tuple[Any, Any]:
        qvel, qacc, act_dot, kqvel, d = carry
        (a, b, t), x = xs
        dqvel, dqacc, dact_dot = jax.tree_util.tree_map(lambda k: a * k, (kqvel, d.qacc, d.act_dot))
        kqpos = mjx_scan.flat(m, integrate_fn, "jqv", "q", m.jnt_type, d0.qpos, dqvel)
        kact = d0.act + dact_dot * m.opt.timestep
        kqvel = d0.qvel + dqacc * m.opt.timestep
        d = d.replace(qpos=kqpos, qvel=kqvel, act=kact, time=t)
        d, aux = forward(d, x)
        qvel += b * kqvel
        qacc += b * d.qacc
        act_dot += b * d.act_dot
        return (qvel, qacc, act_dot, kqvel, d), aux

    abt = jnp.vstack([jnp.diag(a_tab), b_tab[1:4], times]).T
    out, aux = jax.lax.scan(f, (qvel, qacc, act_dot, kqvel, d), ((abt[:, 0], abt[:, 1], abt[:, 2]), stage_inputs), unroll=3)
    qvel, qacc, act_dot, _, d1 = out
    d = d1.replace(qpos=d0.qpos, qvel=d0.qvel, act=d0.act, time=d0.time)
    return mjx_forward._advance(m, d, act_dot, qacc, qvel), aux  # pylint: disable=protected-access


def _stack_first(first: Any, rest: Any) -> Any:
    """Stage 0's pytree and stages 1..3 (leading axis 3) as one pytree with a leading axis of 4."""
    return jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x[None], y]), first, rest)


#: The primal result of one constraint solve: ``(qacc (nv,), qfrc_constraint (nv,), efc_force
#: (nefc,), H (nv, nv))`` (``H``: ``hessian`` at ``qacc``).
Solution = tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def _forward(m: Any, d: Any, tangent: str, exact_norm: bool) -> tuple[Any, SolveInfo]:
    """MJX's ``forward`` (no sensors) with the constraint solve of rule ``tangent``."""
    d = _smooth_stages(m, d)
    if _has_constraints(d):
        return solve(m, d, tangent, exact_norm)
    return d.replace(qacc=d.qacc_smooth), no_solve_info(d)


def step(m: Any, d: Any, tangent: str, exact_norm: bool = False) -> tuple[Any, SolveInfo]:
    """``mjx.step(m, d)`` with the constraint solve of rule ``tangent``; sensors not computed
    (``exact_norm``: see ``run``; ``False`` is ``mjx.step`` bit for bit under Euler and
    implicitfast, and to a few ulp under RK4, whose four stages XLA may fuse differently).

    Returns:
      ``(d_next, info)``: the next data (``qacc_warmstart`` = this step's ``qacc``, as MJX) and
      the solve's ``SolveInfo`` (fields of shape ``(4,)``, one per stage, for RK4).
    """
    check_integrator(m)
    d, info = _forward(m, d, tangent, exact_norm)
    if m.opt.integrator == IntegratorType.RK4:
        d, infos = _rk4(m, d, lambda d_, _: _forward(m, d_, tangent, exact_norm))
        return d, _stack_first(info, infos)
    return _integrate(m, d), info


def _primal_forward(m: Any, d: Any, exact_norm: bool) -> tuple[Any, SolveInfo, Solution]:
    d = _smooth_stages(m, d)
    if _has_constraints(d):
        d, info = run(m, d, exact_norm)
        solution = (d.qacc, d.qfrc_constraint, d._impl.efc_force, hessian(m, d, d.qacc))  # pylint: disable=protected-access
    else:
        d, info = d.replace(qacc=d.qacc_smooth), no_solve_info(d)
        solution = (d.qacc, d.qfrc_constraint, jnp.zeros((0,), d.qacc.dtype), jnp.zeros((0, 0), d.qacc.dtype))
    return d, info, solution


def primal_step(m: Any, d: Any, exact_norm: bool = False) -> tuple[Any, SolveInfo, Solution]:
    """One step without tangents (inputs' tangents are dropped): ``(d_next, info, solution)``.
    ``solution`` feeds ``step_at`` so that differentiated passes need not run the solver
    (``exact_norm``: see ``run``). For RK4, ``info`` and ``solution`` have a leading axis of 4
    (one per stage)."""
    check_integrator(m)
    d, info, solution = _primal_forward(m, _sg_tree(d), exact_norm)
    if m.opt.integrator == IntegratorType.RK4:
        def stage(d_: Any, _: None) -> tuple[Any, tuple[SolveInfo, Solution]]:
            d_, info_, solution_ = _primal_forward(m, _sg_tree(d_), exact_norm)
            return d_, (info_, solution_)

        d, (infos, solutions) = _rk4(m, d, stage)
        return d, _stack_first(info, infos), _stack_first(solution, solutions)
    return _integrate(m, d), info, solution


def _forward_at(m: Any, d: Any, solution: Solution) -> Any:
    d = _smooth_stages(m, d)
    if _has_constraints(d):
        x, qfrc, force = implicit_tangents(m, d, *solution)
        return d.tree_replace({"qacc": x, "qfrc_constraint": qfrc, "_impl.efc_force": force})
    return d.replace(qacc=d.qacc_smooth)


def step_at(m: Any, d: Any, solution: Solution) -> Any:
    """The step whose constraint solve returned ``solution`` (from ``primal_step`` at the same
    primal inputs), with implicit tangents: the solver is not run. Returns the next data."""
    if m.opt.integrator == IntegratorType.RK4:
        first = jax.tree_util.tree_map(lambda x: x[0], solution)
        rest = jax.tree_util.tree_map(lambda x: x[1:], solution)
        d = _forward_at(m, d, first)
        return _rk4(m, d, lambda d_, x: (_forward_at(m, d_, x), None), rest)[0]
    return _integrate(m, _forward_at(m, d, solution))
