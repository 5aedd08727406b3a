"""autodiff vs finite_diff: agreement where both are right, and the FingerSpin case where not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynsparse import collect, dataset, envs
from dynsparse.jacobians import autodiff, compare, finite_diff
from dynsparse.metrics import structure


def _collect_checked(tmp_path, env, episodes, steps, every):
    config = collect.CollectConfig(env=env, episodes=episodes, steps=steps, policy={"name": "random"}, seed=1,
                                   check_every=every, chunk_steps=steps)
    return dataset.open_dataset(collect.collect(config, tmp_path / f"{env}.zarr"))


def _assert_agree(ds, n_checked):
    summary = structure.check_summary(ds)
    assert summary["checked_steps"] == n_checked
    # relative error <= 1e-5 wherever finite differences can resolve it (|J| rtol + 1e-8 abs)
    assert summary["steps_disagree"] == 0, summary
    assert summary["steps_pattern_mismatch"] == 0, summary
    assert summary["max_rel_err"] < 1e-3


def test_cartpole_autodiff_matches_finite_diff(tmp_path):
    ds = _collect_checked(tmp_path, "CartpoleBalance", 2, 20, 1)
    _assert_agree(ds, 40)
    # Cartpole has no constraints: the rows are exactly comparable to 1e-5 relative.
    assert structure.check_summary(ds)["max_rel_err"] < 1e-5


@pytest.mark.slow
def test_cheetah_autodiff_matches_finite_diff(tmp_path):
    ds = _collect_checked(tmp_path, "CheetahRun", 2, 60, 5)
    _assert_agree(ds, 24)
    assert int(np.asarray(ds["n_contacts"].values).max()) > 0  # contact steps were checked


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
    return spec, state.data, action


@pytest.mark.slow
def test_fingerspin_autodiff_is_wrong_and_finite_differences_are_right():
    spec, data, action = _fingerspin_state()
    hinge_v = spec.state_names.index("qvel:hinge")
    j_s, j_a, s_next, returned = jax.jit(autodiff.make_jacobian_fn(spec))(data, action)
    # The spinner is held by its joint friction loss: velocity exactly 0.
    assert float(data.qvel[2]) == 0.0
    fd = finite_diff.FiniteDiffBackend(spec.mj_model, spec.n_substeps)
    inputs = finite_diff.StepInputs(
        qpos=np.asarray(data.qpos), qvel=np.asarray(data.qvel), warmstart=np.asarray(data.qacc_warmstart),
        ctrl=np.asarray(action), act=np.asarray(data.act), mocap_pos=np.asarray(data.mocap_pos),
        mocap_quat=np.asarray(data.mocap_quat), time=float(data.time),
    )
    a_fd, b_fd = fd(inputs)
    _, _, s_native = finite_diff.control_step_jacobian(fd.model, fd.data, inputs, spec.n_substeps)
    # Same simulation: native MuJoCo and MJX land on the same next state.
    np.testing.assert_allclose(s_native, np.asarray(s_next), rtol=0, atol=1e-12)
    # Autodiff says 165.8, finite differences 0.0793 ...
    assert float(j_s[hinge_v, hinge_v]) == pytest.approx(165.7725, rel=1e-5)
    assert a_fd[hinge_v, hinge_v] == pytest.approx(0.079308, rel=1e-4)
    # ... and the simulator itself agrees with finite differences: MJX's own next state is
    # linear in the spinner velocity with slope 0.0793 over perturbations from 1e-3 to 1e-8.
    f = envs.make_control_step(spec)
    s0 = envs.state_of(data)
    step = jax.jit(lambda s: f(data, s, action)[0])
    for eps in (1e-3, 1e-6, 1e-8):
        e = jnp.zeros_like(s0).at[hinge_v].set(eps)
        slope = float((step(s0 + e) - step(s0 - e))[hinge_v] / (2 * eps))
        assert slope == pytest.approx(0.079308, rel=1e-4)
    # The zero patterns agree; only that one value is wrong, and dynsparse flags the step.
    agreement = compare.compare(np.asarray(j_s), a_fd)
    assert agreement.pattern_mismatch == 0
    assert agreement.n_disagree >= 1 and agreement.max_rel_err > 0.99
    assert bool(returned)
    np.testing.assert_allclose(np.asarray(j_a), b_fd, rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_fingerspin_autodiff_right_once_the_solver_iterates():
    """One substep from velocity 1e-9 (not exactly 0): the solver iterates and autodiff is right."""
    from mujoco import mjx

    spec, data, action = _fingerspin_state()
    model = spec.mjx_model
    s0 = envs.state_of(data).at[5].set(1e-9)

    def one(s):
        d = mjx.step(model, data.replace(qpos=s[:3], qvel=s[3:], ctrl=action))
        return d.qacc

    jac = jax.jit(jax.jacfwd(one))(s0)
    step = jax.jit(one)
    e = jnp.zeros(6).at[5].set(1e-6)
    fd = (step(s0 + e) - step(s0 - e)) / 2e-6
    assert float(jac[2, 5]) == pytest.approx(float(fd[2]), rel=1e-6)
