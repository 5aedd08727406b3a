"""The constraint solve with implicit tangents: MJX's own primal, closed-form answers where the
solver exits at its start point, and a converged contact case against finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest
from helpers import one_error_line
from models import LIMITED_ARM, RESTING_BOX, RESTING_BOX_SUBSTEPS, STICTION_HINGE, STICTION_SUBSTEPS
from mujoco import mjx

from dynsparse import envs, errors
from dynsparse.jacobians import autodiff, certify, definitions, finite_diff, solve


def _settle(spec: envs.EnvSpec, u: jax.Array, steps: int):
    """The MJX data after ``steps`` physics steps from ``qpos0`` at rest with ``ctrl = u``."""

    @jax.jit
    def run(d):
        return jax.lax.scan(lambda d, _: (mjx.step(spec.mjx_model, d.replace(ctrl=u)), None), d, None, length=steps)[0]

    return run(mjx.make_data(spec.mjx_model).replace(ctrl=u))


def _unrolled(spec: envs.EnvSpec, data, u):
    """Forward mode through ``mjx.step``'s solver iterations, warm start held at every substep
    (the derivative dynsparse stored before named definitions)."""
    nq = spec.nq

    def f(s, a):
        d = data.replace(qpos=s[:nq], qvel=s[nq:], ctrl=a)
        for _ in range(spec.n_substeps):
            d = mjx.step(spec.mjx_model, d.replace(qacc_warmstart=jax.lax.stop_gradient(d.qacc_warmstart)))
        return envs.state_of(d)

    j_s, j_a = jax.jit(jax.jacfwd(f, argnums=(0, 1)))(envs.state_of(data), u)
    return np.asarray(j_s), np.asarray(j_a)


@pytest.fixture(scope="module")
def stiction():
    spec = envs.from_mjcf(STICTION_HINGE, name="Stiction", n_substeps=STICTION_SUBSTEPS, init_noise=0.0)
    u = jnp.asarray([0.3])  # below the friction loss (1): the wheel creeps at a steady velocity
    return spec, _settle(spec, u, 400), u


@pytest.mark.parametrize("definition", definitions.DEFINITIONS)
def test_stiction_hinge_has_the_closed_form_jacobian(stiction, definition):
    """In the friction-loss row's quadratic zone the solve is linear: with inertia I, constraint
    stiffness D = efc_D and aref = -b v (native MuJoCo's constraint quantities), the optimum is
    x = (u - D b v) / (I + D), so one substep is v' = alpha v + beta u, q' = q + h v' with
    alpha = 1 - h D b / (I + D), beta = h / (I + D); chained over the substeps."""
    spec, data, u = stiction
    j_s, j_a, _, diag = jax.jit(autodiff.make_jacobian_fn(spec, "substep", definition))(data, u)
    if definition == "as-run":  # MJX returned its start point (the warm start) at every substep
        assert int(diag["solver_start_returned"]) == STICTION_SUBSTEPS
    m = spec.mj_model
    nd = mujoco.MjData(m)
    nd.qpos[:], nd.qvel[:], nd.ctrl[:] = np.asarray(data.qpos), np.asarray(data.qvel), np.asarray(u)
    mujoco.mj_forward(m, nd)
    inertia, stiff, v = nd.M[0], nd.efc_D[0], nd.qvel[0]
    assert nd.nefc == 1 and v > 0 and abs(nd.efc_force[0]) < 1.0  # stuck: inside the friction zone
    b = -nd.efc_aref[0] / v
    h = m.opt.timestep
    alpha, beta = 1 - h * stiff * b / (inertia + stiff), h / (inertia + stiff)
    a_1, b_1 = np.array([[1.0, h * alpha], [0.0, alpha]]), np.array([[h * beta], [beta]])
    want_s, want_a = np.eye(2), np.zeros((2, 1))
    for _ in range(STICTION_SUBSTEPS):
        want_s, want_a = a_1 @ want_s, a_1 @ want_a + b_1
    np.testing.assert_allclose(np.asarray(j_s), want_s, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(np.asarray(j_a), want_a, rtol=1e-10, atol=1e-15)
    # forward mode through the (zero) iterations misses the constraint: dv'/dv = 71.8, not 0.0028
    old_s, _ = _unrolled(spec, data, u)
    assert old_s[1, 1] > 10 and want_s[1, 1] < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("definition", definitions.DEFINITIONS)
def test_resting_box_certified_where_unrolled_forward_mode_is_not(definition):
    """Four friction contacts at rest: both definitions agree with MJX and native finite
    differences (native reproduces the step; for as-run only where MJX's own solve did not stall,
    see below); forward mode through the converged solver's iterations is 1e-4..1e-3 off there
    (its tangents lag the iterates)."""
    spec = envs.from_mjcf(RESTING_BOX, name="Box", n_substeps=RESTING_BOX_SUBSTEPS, init_noise=0.0)
    u = jnp.asarray([0.0])
    data = _settle(spec, u, 3000)
    assert int(envs.count_contacts(data)) == 4
    j_s, j_a, _, diag = jax.jit(autodiff.make_jacobian_fn(spec, "substep", definition))(data, u)
    jac = np.concatenate([np.asarray(j_s), np.asarray(j_a)], axis=1)
    refs, s_next = jax.jit(certify.make_mjx_fd(spec, definition))(data, u)
    native = finite_diff.NativeStep(spec.mj_model, spec.n_substeps, definition)
    x = finite_diff.StepInputs(np.asarray(data.qpos), np.asarray(data.qvel), np.asarray(data.qacc_warmstart),
                               np.asarray(u), np.zeros(0), np.zeros((0, 3)), np.zeros((0, 4)), float(data.time))
    cert = certify.classify(jac, np.asarray(refs), np.asarray(s_next), spec.nq, certify.native_refs(native, x))
    if definition == "as-run" and float(diag["solver_residual"]) > 1e-10:
        # MJX's own line search moves only where the cost falls, and here it can stall with the
        # gradient ~1e-7 (round-off decides; seen on one machine, not another), where native
        # MuJoCo's Newton reaches round-off: then native MuJoCo runs another function and the
        # certificate says so, the MJX finite differences still agreeing
        assert cert.cls == "native-differs" and cert.err <= certify.RTOL and cert.native_state_err > certify.NATIVE_STATE_TOL, cert
    else:
        assert cert.cls == "certified" and cert.native_err <= certify.RTOL and cert.native_state_err < 1e-12, cert
    old = np.concatenate(_unrolled(spec, data, u), axis=1)
    scale = certify.output_scale(np.asarray(s_next), spec.nq, spec.nv)
    assert certify.scaled_error(old, np.asarray(refs)[1], scale, 1e-6) > 1e-4


def _arm(integrator: str) -> envs.EnvSpec:
    xml = LIMITED_ARM.replace('<option timestep="0.005"/>', f'<option timestep="0.005" integrator="{integrator}"/>')
    return envs.from_mjcf(xml, name=f"Arm{integrator}", n_substeps=1, init_noise=0.3)


@pytest.mark.parametrize("integrator", [
    # implicitfast in the fast tier; Euler (~140 s cold) and RK4 (~150 s) in the slow tier (the
    # fast tier still steps Euler in the substep guard and RK4 in the mjcf tests, against
    # independent references)
    pytest.param("Euler", marks=pytest.mark.slow), "implicitfast", pytest.param("RK4", marks=pytest.mark.slow),
])
def test_the_composed_step_is_mjx_step_bit_for_bit(integrator):
    """``solve.step`` (both tangent rules) and ``solve.primal_step`` reproduce ``mjx.step`` exactly
    on a model with limits, friction loss and contacts: bit for bit with Euler and implicitfast.
    With RK4 the same operations in the same order run through four stages, and XLA fuses the
    two programs' stages differently on different hosts (one field differed by 1 ulp on one
    machine and not on another), so there the fields agree to 4 ulp of each field's largest entry:
    a wrong tableau weight differs by far more (checked by mutation)."""
    spec = _arm(integrator)
    model = definitions.mjx_model(spec, "as-run")
    states = jax.vmap(spec.env.reset)(jax.random.split(jax.random.PRNGKey(1), 8))
    data = states.data.replace(ctrl=jnp.full((8, spec.nu), 0.7))

    @jax.jit
    def run(d):
        want = jax.vmap(lambda x: mjx.step(model, x))(d)
        got = [jax.vmap(lambda x: solve.step(model, x, rule)[0])(d) for rule in solve.TANGENTS]
        got.append(jax.vmap(lambda x: solve.primal_step(model, x)[0])(d))
        return want, got

    want, got = run(data)
    for g in got:
        for name in ("qpos", "qvel", "qacc", "qacc_warmstart", "qfrc_constraint"):
            a, b = np.asarray(getattr(g, name)), np.asarray(getattr(want, name))
            if integrator == "RK4":
                np.testing.assert_allclose(a, b, rtol=0, atol=4 * np.spacing(np.abs(b).max()), err_msg=name)
            else:
                np.testing.assert_array_equal(a, b, err_msg=name)
    assert int(np.asarray(jax.vmap(envs.count_contacts)(want)).max()) > 0


@pytest.mark.parametrize("integrator, feature", [
    ("implicit", "mjtIntegrator.mjINT_IMPLICIT is not implemented (mjx.step runs Euler, RK4, implicitfast)"),
    ("discrete", "mjtIntegrator.mjINT_DISCRETE is not implemented (mjx.step runs Euler, RK4, implicitfast)"),
])
def test_integrators_mjx_cannot_step_are_refused_with_one_line_error(integrator, feature):
    """MJX steps with neither the fully implicit nor the discrete integrator (put_model accepts
    the latter, mjx.step does not): both refused when the model is built, naming the integrator;
    every integrator mjx.step runs is differentiated."""
    with pytest.raises(errors.UserError) as exc:
        _arm(integrator)
    assert one_error_line(str(exc.value)).startswith(f"Arm{integrator}: MJX (mujoco-mjx 3.17.0) cannot simulate this model: {feature};")
    assert {i.name for i in solve.SUPPORTED_INTEGRATORS} == {"EULER", "RK4", "IMPLICITFAST"}


def test_converged_settings_apply_to_both_simulators(cartpole):
    m = definitions.mjx_model(cartpole, "converged")
    native = definitions.native_model(cartpole.mj_model, "converged")
    want = definitions.CONVERGED
    assert (m.opt.iterations, m.opt.ls_iterations, float(m.opt.tolerance)) == (want.iterations, want.ls_iterations, want.tolerance)
    assert (native.opt.iterations, native.opt.ls_iterations, native.opt.tolerance) == (want.iterations, want.ls_iterations, want.tolerance)
    own = definitions.native_model(cartpole.mj_model, "as-run")
    assert own.opt.iterations == cartpole.mj_model.opt.iterations == 1 and own.opt.tolerance == cartpole.mj_model.opt.tolerance
    assert int(m.opt.disableflags) & int(mujoco.mjtDisableBit.mjDSBL_SENSOR)


def test_a_cg_models_converged_solves_use_newton_in_mjx_too():
    """A CG model's ``converged`` MJX model solves with Newton (as its native copy does): along a
    falling and sliding box's first 30 steps, the converged substeps' residuals are at round-off,
    where CG at the same settings and MJX's stopping rule stops by its improvement test far above
    it; as-run keeps CG."""
    from test_finite_diff import _visited

    xml = RESTING_BOX.replace("<option", '<option solver="CG" iterations="2"', 1)
    assert xml != RESTING_BOX
    spec = envs.from_mjcf(xml, name="BoxCG", n_substeps=RESTING_BOX_SUBSTEPS, init_noise=0.0)
    m = definitions.mjx_model(spec, "converged")
    assert int(m.opt.solver) == int(mujoco.mjtSolver.mjSOL_NEWTON)
    assert int(definitions.mjx_model(spec, "as-run").opt.solver) == int(mujoco.mjtSolver.mjSOL_CG)
    cg = m.replace(opt=m.opt.replace(solver=type(m.opt.solver)(int(mujoco.mjtSolver.mjSOL_CG))))
    x = _visited(spec.mj_model, RESTING_BOX_SUBSTEPS, 30, seed=4)
    base = mjx.make_data(spec.mjx_model)

    def residuals(model, converged=True):  # (30, substeps): each control step's substeps, warm start carried
        def one(qpos, qvel, warm, ctrl):
            d = base.replace(qpos=qpos, qvel=qvel, qacc_warmstart=warm, ctrl=ctrl)
            sub = lambda d, _: (lambda out: (out[0], out[1].residual))(solve.step(model, d, "implicit", converged))
            return jax.lax.scan(sub, d, None, length=RESTING_BOX_SUBSTEPS)[1]
        return np.asarray(jax.jit(jax.vmap(one))(x["qpos"], x["qvel"], x["warmstart"], x["ctrl"]))

    assert residuals(m).max() < 1e-12  # 3.4e-14 measured before the final Newton step, less with it
    # CG at the converged settings with MJX's own stopping rule: its improvement test stops it
    assert residuals(cg, converged=False).max() > 1e-8  # 2.0e-7 measured (native MuJoCo's CG: 4.6e-7)


def test_converged_solves_end_at_round_off_where_mjx_line_search_stalls():
    """MJX's line search moves only where the cost falls; at a box resting on four friction
    contacts the cost cannot fall measurably any more while the gradient is still ~1e-7, so MJX's
    Newton (its own rule) stops there. The converged definition's final Newton step lands on the
    optimum: its next state equals native MuJoCo's converged one to round-off."""
    spec = envs.from_mjcf(RESTING_BOX, name="Box", n_substeps=RESTING_BOX_SUBSTEPS, init_noise=0.0)
    u = jnp.asarray([0.0])
    data = _settle(spec, u, 3000).replace(ctrl=u)
    m = definitions.mjx_model(spec, "converged")

    def control_step(d, converged):
        residuals = []
        for _ in range(RESTING_BOX_SUBSTEPS):
            d, info = solve.step(m, d, "implicit", converged)
            residuals.append(info.residual)
        return envs.state_of(d), jnp.stack(residuals)

    s_mjx_rule, r_mjx_rule = jax.jit(lambda d: control_step(d, False))(data)
    s_conv, r_conv = jax.jit(lambda d: control_step(d, True))(data)
    native = finite_diff.NativeStep(spec.mj_model, spec.n_substeps, "converged")
    x = finite_diff.StepInputs(np.asarray(data.qpos), np.asarray(data.qvel), np.asarray(data.qacc_warmstart),
                               np.asarray(u), np.zeros(0), np.zeros((0, 3)), np.zeros((0, 4)), float(data.time))
    s_native = native.next_state(x)
    assert float(r_conv.max()) < 1e-13
    assert np.abs(np.asarray(s_conv) - s_native).max() < 1e-13
    # the stall this guards against (seen on this machine; round-off decides whether it occurs)
    if float(r_mjx_rule.max()) > 1e-10:
        assert np.abs(np.asarray(s_mjx_rule) - s_native).max() > 1e-10


@pytest.mark.parametrize("cone", ["pyramidal", "elliptic"])
def test_the_final_newton_step_is_the_same_from_newtons_factor_and_from_the_hessian(cone):
    """The converged definition's final step ``qacc - H^-1 r`` takes ``H^-1 r`` from the context
    of MJX's Newton (its Cholesky factor of ``M + J^T D_active J``, plus the elliptic cones'
    blocks) and, for any other solver, from ``hessian`` (``jacfwd`` of the gradient). Both give
    the same step, at a point where some rows are active and some not (the box's optimum with an
    added angular acceleration, which lifts one edge) and, with elliptic cones, where the cone
    blocks count."""
    from mujoco.mjx._src import support

    xml = RESTING_BOX if cone == "pyramidal" else RESTING_BOX.replace("<option", '<option cone="elliptic"', 1)
    spec = envs.from_mjcf(xml, name=f"Box-{cone}", n_substeps=RESTING_BOX_SUBSTEPS, init_noise=0.0)
    u = jnp.asarray([0.8])
    d = solve._smooth_stages(spec.mjx_model, _settle(spec, u, 400).replace(ctrl=u))
    newton = definitions.mjx_model(spec, "converged")
    cg = newton.replace(opt=newton.opt.replace(solver=type(newton.opt.solver)(int(mujoco.mjtSolver.mjSOL_CG))))

    def polished(m):
        qacc = solve.run(newton, d, exact_norm=True)[0].qacc + jnp.asarray([0.0, 0.0, 20.0])
        ctx = solve.mjx_solver.Context.create(m, d.replace(qacc=qacc))
        without_cones = support.full_m(m, d) + (d._impl.efc_J.T * d._impl.efc_D * ctx.active) @ d._impl.efc_J
        cone_blocks = jnp.abs(solve.hessian(m, d, qacc) - without_cones).max()
        return qacc, ctx, solve._newton_polish(m, d, ctx, jnp.linalg.norm), cone_blocks

    (qacc, ctx, with_newton, cone_blocks), (_, _, with_cg, _) = jax.jit(lambda: (polished(newton), polished(cg)))()
    active = np.asarray(ctx.active).ravel()
    assert 0 < active.sum() < active.size
    assert (float(cone_blocks) > 1.0) == (cone == "elliptic")  # 13.6 measured with elliptic cones, 4e-16 without
    step = np.abs(np.asarray(with_newton.qacc) - np.asarray(qacc)).max()
    assert step > 1e-3 and float(jnp.linalg.norm(with_newton.grad)) < float(jnp.linalg.norm(ctx.grad))  # kept
    np.testing.assert_allclose(np.asarray(with_newton.qacc), np.asarray(with_cg.qacc), rtol=0, atol=1e-10 * step)
    np.testing.assert_allclose(np.asarray(with_newton.grad), np.asarray(with_cg.grad), rtol=0, atol=1e-9)
