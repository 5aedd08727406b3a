"""Stored Jacobians certified against finite differences of the same function; the FingerSpin
case where forward mode through MJX's solver was wrong; WalkerRun and HopperHop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynsparse import collect, dataset, envs
from dynsparse.jacobians import autodiff, certify, definitions, finite_diff
from dynsparse.metrics import structure


def _collect_checked(tmp_path, env, episodes, steps, every, jacobian="converged", **kw):
    config = collect.CollectConfig(env=env, episodes=episodes, steps=steps, policy={"name": "random"}, seed=1,
                                   check_every=every, chunk_steps=steps, jacobian=jacobian, **kw)
    return dataset.open_dataset(collect.collect(config, tmp_path / f"{env}-{jacobian}.zarr"))


def test_cartpole_certified_at_every_step_and_definitions_compared(tmp_path):
    ds = _collect_checked(tmp_path, "CartpoleBalance", 2, 20, 1, compare_definitions=True)
    summary = structure.check_summary(ds)
    assert summary["checked_steps"] == 40 and summary["classes"]["certified"] == 40, summary
    assert summary["steps_pattern_mismatch"] == 0
    # native MuJoCo reproduces MJX's step and confirms every value
    assert summary["max_native_state_err"] < 1e-12
    assert float(np.nanmax(ds["check_native_err"].values)) <= certify.RTOL
    # the two definitions were both computed at every step; Cartpole's single Newton iteration on
    # its rail limit is exact or never active here, so they coincide
    defs = structure.definition_summary(ds)
    assert defs["steps"] == 40 and defs["steps_pattern_differs"] == 0
    assert ds.attrs["jacobian"] == "converged" and "implicit function theorem" in ds.attrs["jacobian_definition"]


#: the free slider's action column over 3 substeps (hand-computed, tests/test_models.py)
_N = 3


def _slider_j_a() -> np.ndarray:
    from models import SLIDER_DT, SLIDER_MASS

    return np.array([SLIDER_DT ** 2 / SLIDER_MASS * _N * (_N + 1) / 2, _N * SLIDER_DT / SLIDER_MASS])


#: actions inside, on, just inside and beyond the slider motor's ctrlrange [-1, 1], and the
#: share of the actuator's effect each must get
_BOUND_CASES = ((0.5, 1.0), (1.0, 1.0), (-1.0, 1.0), (1.0 - 5e-7, 1.0), (1.5, 0.0))


def test_an_action_on_its_control_bound_keeps_the_actuators_effect():
    """MuJoCo clamps ``ctrl`` to its range, and a clipping policy (colored noise, PPO) often emits
    an action exactly on a bound. There the step's derivative in the action is one-sided: both
    backends and both certificate references take it from inside the range (a centred
    difference, and JAX's tie rule for the clamp, gave half of it), and beyond the bound it is 0;
    the certificate certifies it."""
    from models import FREE_SLIDER

    spec = envs.from_mjcf(FREE_SLIDER, name="SliderBound", n_substeps=_N)
    data = spec.env.reset(jax.random.PRNGKey(0)).data
    want = _slider_j_a()
    jac = {d: jax.jit(autodiff.make_jacobian_fn(spec, definition=d)) for d in definitions.DEFINITIONS}
    mjx_fd = jax.jit(certify.make_mjx_fd(spec, "converged"))
    for definition in definitions.DEFINITIONS:
        native = finite_diff.NativeStep(spec.mj_model, _N, definition)
        batched = finite_diff.BatchedFD(spec.mj_model, _N, definition, threads=0)
        for a, share in _BOUND_CASES:
            j_s, j_a, _, _ = jac[definition](data, jnp.array([a]))
            np.testing.assert_allclose(np.asarray(j_a)[:, 0], share * want, rtol=1e-12, atol=1e-15, err_msg=f"autodiff a={a}")
            x = finite_diff.StepInputs(np.asarray(data.qpos), np.asarray(data.qvel), np.asarray(data.qacc_warmstart),
                                       np.array([a]), np.zeros(0), np.zeros((0, 3)), np.zeros((0, 4)), 0.0)
            fd, _ = native.jacobian(x)
            np.testing.assert_allclose(fd[:, 2], share * want, rtol=1e-6, atol=1e-12, err_msg=f"native a={a}")
            many, _ = batched.jacobians({k: np.asarray(v)[None] for k, v in x.__dict__.items()})
            np.testing.assert_array_equal(many[0], fd)
            if definition == "converged":
                refs, s_next = mjx_fd(data, jnp.array([a]))
                np.testing.assert_allclose(np.asarray(refs)[:, :, 2], np.broadcast_to(share * want, (3, 2)), rtol=1e-5, atol=1e-9)
                full = np.concatenate([np.asarray(j_s), np.asarray(j_a)], axis=1)
                cert = certify.classify(full, np.asarray(refs), np.asarray(s_next), spec.nq, certify.native_refs(native, x))
                assert cert.cls == "certified", (a, cert)


def test_clipped_colored_actions_keep_the_actuators_full_effect_in_a_collection(tmp_path):
    """A colored-noise collection clips a third of its actions onto a bound: every step's action
    column is still the hand-computed one (finite differences, native rollout)."""
    from models import FREE_SLIDER

    spec = envs.from_mjcf(FREE_SLIDER, name="SliderColored", n_substeps=_N)
    config = collect.CollectConfig(env="SliderColored", episodes=2, steps=40, policy={"name": "colored", "beta": 1.0, "scale": 1.0},
                                   backend="finite_diff", chunk_steps=20)
    ds = dataset.open_dataset(collect.collect(config, tmp_path / "c.zarr", spec=spec))
    actions = ds["action"].values.ravel()
    assert 0.1 < np.mean(np.abs(actions) == 1.0) < 0.9
    np.testing.assert_allclose(ds["J_a"].values[..., 0].reshape(-1, 2), np.broadcast_to(_slider_j_a(), (80, 2)), rtol=1e-6)


def _fingerspin_state():
    """The measured case: reset(PRNGKey(0)), 40 uniform random actions (PRNGKey(1)), then one more."""
    spec = envs.load("FingerSpin")
    env = spec.env

    @jax.jit
    def roll(key):
        state = env.reset(key)
        actions = jax.random.uniform(jax.random.PRNGKey(1), (41, spec.nu), minval=-1, maxval=1)
        state, _ = jax.lax.scan(lambda s, a: (env.step(s, a), None), state, actions[:-1])
        return state, actions[-1]

    state, action = roll(jax.random.PRNGKey(0))
    return spec, state, action


@pytest.mark.slow
@pytest.mark.parametrize("definition", definitions.DEFINITIONS)
def test_fingerspin_gives_the_simulators_slope(definition):
    """The spinner held by its joint friction loss (velocity exactly 0): the solver returns its
    warm start without iterating. Forward mode through MJX's solver said d qvel:hinge'/d qvel:hinge
    = 165.8; the simulator's slope (MJX and native finite differences, eps 1e-3 to 1e-8) is 0.0793,
    and that is what both definitions now store."""
    spec, state, action = _fingerspin_state()
    data = state.data
    hinge_v = spec.state_names.index("qvel:hinge")
    assert float(data.qvel[2]) == 0.0
    j_s, j_a, s_next, diag = jax.jit(autodiff.make_jacobian_fn(spec, definition=definition))(data, action)
    assert float(j_s[hinge_v, hinge_v]) == pytest.approx(0.079308, rel=1e-4)
    if definition == "as-run":  # MJX returned its start point at every substep
        assert int(diag["solver_start_returned"]) == spec.n_substeps
    if definition == "as-run":  # the recorded next state, bit for bit
        np.testing.assert_array_equal(np.asarray(s_next), np.asarray(envs.state_of(spec.env.step(state, action).data)))
    # the simulator itself: MJX's own step is linear in the spinner velocity with that slope
    f = definitions.make_primal_control_step(spec, definition)
    s0 = envs.state_of(data)
    step = jax.jit(lambda s: f(data, s, action)[0])
    for eps in (1e-3, 1e-6, 1e-8):
        e = jnp.zeros_like(s0).at[hinge_v].set(eps)
        assert float((step(s0 + e) - step(s0 - e))[hinge_v] / (2 * eps)) == pytest.approx(0.079308, rel=1e-4)
    # the certificate: MJX and native finite differences of the same function agree
    jac = np.concatenate([np.asarray(j_s), np.asarray(j_a)], axis=1)
    refs, s_ref = jax.jit(certify.make_mjx_fd(spec, definition))(data, action)
    native = finite_diff.NativeStep(spec.mj_model, spec.n_substeps, definition)
    x = finite_diff.StepInputs(
        qpos=np.asarray(data.qpos), qvel=np.asarray(data.qvel), warmstart=np.asarray(data.qacc_warmstart),
        ctrl=np.asarray(action), act=np.asarray(data.act), mocap_pos=np.asarray(data.mocap_pos),
        mocap_quat=np.asarray(data.mocap_quat), time=float(data.time),
    )
    cert = certify.classify(jac, np.asarray(refs), np.asarray(s_ref), spec.nq, certify.native_refs(native, x))
    assert cert.cls == "certified" and cert.native_state_err < 1e-12, cert
    # what the old forward mode through the iterations gave, for the record
    from mujoco import mjx

    def unrolled(s):
        d = data.replace(qpos=s[:3], qvel=s[3:], ctrl=action)
        for _ in range(spec.n_substeps):
            d = mjx.step(spec.mjx_model, d.replace(qacc_warmstart=jax.lax.stop_gradient(d.qacc_warmstart)))
        return envs.state_of(d)

    assert float(jax.jit(jax.jacfwd(unrolled))(s0)[hinge_v, hinge_v]) == pytest.approx(165.7725, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("env", ["WalkerRun", pytest.param("HopperHop", marks=pytest.mark.long)])
@pytest.mark.parametrize("definition", definitions.DEFINITIONS)
def test_truncated_solver_tasks_have_no_wrong_step(tmp_path, env, definition):
    """The tasks whose checks "disagreed" before (a tolerance-0 reference; the warm start held at
    every substep; unrolled tangents): every checked step is certified or classified with a reason,
    none is wrong, and most are certified."""
    ds = _collect_checked(tmp_path, env, 1, 60, 3, jacobian=definition)
    summary = structure.check_summary(ds)
    assert summary["checked_steps"] == 20 and summary["classes"]["wrong"] == 0, summary
    assert summary["classes"]["certified"] >= 16, summary
    assert int(np.asarray(ds["n_contacts"].values).max()) > 0  # contact steps were checked
