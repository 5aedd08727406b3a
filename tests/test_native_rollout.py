"""The native rollout (``native_rollout``): the MJX rollout's function simulated by MuJoCo's C
library, resumable bit for bit, ending diverging episodes as MJX does; models MJX cannot build
measured natively against MuJoCo's own finite differences and a hand-computed Jacobian."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from dynsparse import cli, collect, dataset, envs, errors, native_rollout, policies, rollout, sources
from dynsparse.jacobians import finite_diff
from dynsparse.metrics import constraints, structure
from helpers import interrupt_after_first_unit, one_error_line
from models import BOUNCER, DIVERGING_SPRING, FREE_SLIDER, LEGGED, LEGGED_SUBSTEPS, SLIDER_DT, SLIDER_MASS

#: the free slider with MuJoCo's PGS solver, which MJX does not implement (no constraint is ever
#: active, so its Jacobian is the hand-computed one of tests/test_models.py)
PGS_SLIDER = FREE_SLIDER.replace('gravity="0 0 0"', 'gravity="0 0 0" solver="PGS"')
#: the ball hopping over a floor with the PGS solver: contacts come and go
PGS_BOUNCER = BOUNCER.replace('<option timestep="0.01"/>', '<option timestep="0.01" solver="PGS"/>')


def _native_from(spec: envs.EnvSpec, nat: native_rollout.NativeRollout, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Carry states ``(k, nstate)`` of native data set to ``k`` steps' ``StepInputs``."""
    d = mujoco.MjData(spec.mj_model)
    k = len(inputs["qpos"])
    states = np.zeros((k, nat.nstate))
    for i in range(k):
        finite_diff.set_inputs(spec.mj_model, d, finite_diff.StepInputs.from_arrays(inputs, (i,)))
        mujoco.mj_getState(spec.mj_model, d, states[i], native_rollout.STATE_SPEC)
    return states


def _against_mjx(spec: envs.EnvSpec, policy: policies.Policy, b: int, t: int) -> tuple[dict, dict, np.ndarray]:
    """Both rollouts of ``b`` episodes x ``t`` steps (seed 5), checked to start alike, and one native
    control step from every state the MJX rollout visited.

    Returns:
      ``(mjx outputs, the one-step native outputs (b t, 1, ...), relative next-state errors (b t,))``.
    """
    keys = rollout.episode_keys(5, np.arange(b))
    noise = policy.batch_noise(5, np.arange(b), t, spec.nu)
    nat = native_rollout.NativeRollout(spec, policy)
    (_, alive), got = nat.chunk(nat.initial_carry(keys), noise)
    chunk = rollout.make_chunk_fn(spec, policy, with_jacobians=False)
    _, _, want = chunk(rollout.make_reset_fn(spec)(keys), jnp.ones(b, bool), noise)
    want = jax.device_get(want)
    assert alive.all() and got["valid"].all() and np.asarray(want["valid"]).all()
    # the same JAX draw in another program: quaternions normalised to within an ulp
    assert np.abs(got["state"][:, 0] - want["state"][:, 0]).max() <= 1e-15
    np.testing.assert_allclose(got["action"], want["action"], rtol=0, atol=1e-15)
    for k in ("warmstart", "time", "mocap_pos", "mocap_quat"):
        np.testing.assert_array_equal(got[k][:, 0], want[k][:, 0])
    flat = {f.name: np.asarray(want[f.name]).reshape(b * t, *np.asarray(want[f.name]).shape[2:])
            for f in dataclasses.fields(finite_diff.StepInputs)}
    carry = (_native_from(spec, nat, flat), np.ones(b * t, bool))
    (after, _), one = nat.chunk(carry, noise.reshape(b * t, 1, spec.nu))
    mjx_next = np.asarray(want["next_state"]).reshape(b * t, -1)
    err = np.abs(one["next_state"][:, 0] - mjx_next).max(axis=-1) / np.maximum(np.abs(mjx_next).max(axis=-1), 1.0)
    np.testing.assert_array_equal(one["n_contacts"][:, 0], np.asarray(want["n_contacts"]).reshape(-1))
    np.testing.assert_array_equal(one["contact_pairs"][:, 0], np.asarray(want["contact_pairs"]).reshape(b * t, -1))
    # the warm start each native step leaves is the one MJX enters the next step with
    d = mujoco.MjData(spec.mj_model)
    warm = np.zeros((b * t, spec.nv))
    for i in range(b * t):
        mujoco.mj_setState(spec.mj_model, d, after[i], native_rollout.STATE_SPEC)
        warm[i] = d.qacc_warmstart
    nxt = np.asarray(want["warmstart"])[:, 1:].reshape(-1, spec.nv)
    cur = warm.reshape(b, t, spec.nv)[:, :-1].reshape(-1, spec.nv)
    same = (err < 1e-12).reshape(b, t)[:, :-1].reshape(-1)
    assert np.abs(cur - nxt)[same].max() / max(np.abs(nxt).max(), 1.0) < 1e-9
    return want, one, err


def test_the_native_rollout_simulates_the_mjx_rollouts_function():
    """A free-base legged robot with a ball-jointed tail at its limit, foot contacts and 3
    substeps: both rollouts start from the same states and actions (to an ulp); from every state
    the MJX rollout visited, one native control step lands on MJX's next state to round-off (but
    where the two solvers stop differently) with the same contacts and the same next warm start."""
    spec = envs.from_mjcf(LEGGED, name="Legged", n_substeps=LEGGED_SUBSTEPS, init_noise=0.1)
    want, _, err = _against_mjx(spec, policies.from_config({"name": "colored", "beta": 1.0, "scale": 1.0}), 2, 25)
    # where MJX's gradient test counts a gradient below 1e-8 as zero, MJX returns its solver's
    # start point or stops an iteration before native MuJoCo does (2 of these 50 steps: 1e-5 apart)
    assert (err < 1e-12).mean() >= 0.9 and err.max() < 1e-4, np.sort(err)[::-1][:5]
    assert np.asarray(want["n_contacts"]).max() > 0 and np.asarray(want["contact_pairs"]).any()


@pytest.mark.slow
@pytest.mark.parametrize("env", ["gymnasium:HalfCheetah-v5", "gymnasium:Hopper-v5", "dm_control:cheetah-run"])
def test_the_native_rollout_simulates_each_sources_mjx_rollout(env):
    """Euler with 5 substeps (HalfCheetah), RK4 with floor contacts (Hopper), dm_control's own
    cheetah: one native control step from each state of an MJX rollout lands on MJX's next state
    to round-off at nearly every step."""
    _, _, err = _against_mjx(envs.load(env), policies.from_config({"name": "random"}), 2, 40)
    assert (err < 1e-12).mean() >= 0.9 and err.max() < 1e-4, np.sort(err)[::-1][:5]


def _config(env: str, **kw) -> collect.CollectConfig:
    base = {"episodes": 2, "steps": 12, "policy": {"name": "random"}, "seed": 3, "backend": "finite_diff", "chunk_steps": 4}
    return collect.CollectConfig(env=env, **(base | kw))


def test_a_native_collection_resumes_bit_for_bit(tmp_path):
    """Interrupted after its first unit and run again, a native collection writes exactly the
    uninterrupted dataset (the carry is each episode's MuJoCo integration state)."""
    spec = envs.from_mjcf(LEGGED, name="Legged", n_substeps=LEGGED_SUBSTEPS, init_noise=0.1)
    config = _config("Legged", policy={"name": "colored", "beta": 2.0, "scale": 1.0})
    whole = dataset.open_dataset(collect.collect(config, tmp_path / "whole.zarr", spec=spec)).load()
    assert whole.attrs["rollout"] == "native" and "native MuJoCo" in whole.attrs["rollout_definition"]
    interrupt_after_first_unit(config, tmp_path / "split.zarr", spec)
    assert dataset.read_checkpoint(tmp_path / "split.zarr").next_unit == 1
    split = dataset.open_dataset(collect.collect(config, tmp_path / "split.zarr", spec=spec)).load()
    for name in whole.data_vars:
        np.testing.assert_array_equal(split[name].values, whole[name].values, err_msg=name)
    assert np.isfinite(whole["J_s"].values).all() and whole["valid"].values.all()


def test_a_diverging_episode_ends_at_the_step_mujoco_resets(tmp_path):
    """Native MuJoCo resets a simulation past 1e10 (mjWARN_BADQVEL): that step gets a NaN next
    state and no Jacobian, the episode ends there; no state after it is a reset's."""
    spec = envs.from_mjcf(DIVERGING_SPRING, name="Spring", init_noise=0.5)
    ds = dataset.open_dataset(collect.collect(_config("Spring", steps=120, chunk_steps=40), tmp_path / "s.zarr", spec=spec)).load()
    valid, finite = ds["valid"].values, ds["finite"].values
    assert valid[:, 0].all() and not valid[:, -1].any()
    for e in range(2):
        last = int(np.flatnonzero(valid[e])[-1])
        assert np.isnan(ds["next_state"].values[e, last]).all() and not finite[e, last]
        assert np.isnan(ds["J_s"].values[e, last]).all()
        states = ds["state"].values[e, :last + 1, 0]
        assert np.all(np.diff(np.abs(states[-5:])) > 0)  # growing until the end: never reset to qpos0
        assert finite[e, :last].all()


def test_models_mjx_cannot_build_are_measured_natively(tmp_path, capsys):
    """MuJoCo's PGS solver (which MJX lacks): the finite_diff backend measures the hand-computed
    Jacobian of the free slider through the CLI; autodiff and an MJX rollout are refused in one
    line naming the solver and saying what measures it."""
    path = tmp_path / "pgs_slider.xml"
    path.write_text(PGS_SLIDER)
    env = f"mjcf:{path}"
    out = tmp_path / "s.zarr"
    assert cli.main(["collect", env, "--backend", "finite_diff", "--substeps", "3", "--episodes", "2", "--steps", "8", "--out", str(out)]) == 0
    ds = dataset.open_dataset(out)
    assert ds.attrs["rollout"] == "native"
    n, h, m = 3, SLIDER_DT, SLIDER_MASS
    j_s, j_a = ds["J_s"].values.reshape(-1, 2, 2), ds["J_a"].values.reshape(-1, 2)
    np.testing.assert_allclose(j_s, np.broadcast_to([[1.0, n * h], [0.0, 1.0]], j_s.shape), rtol=0, atol=1e-8)
    np.testing.assert_allclose(j_a, np.broadcast_to([h * h / m * n * (n + 1) / 2, n * h / m], j_a.shape), rtol=0, atol=1e-8)
    assert structure.global_structure(ds, 1e-8)["J_s"]["entries"] == ["qvel:x <- qpos:x"]
    model, note = constraints.model_of(ds)  # the analysis rebuilds the native-only model
    assert model is not None and note == "" and model.opt.solver == mujoco.mjtSolver.mjSOL_PGS
    capsys.readouterr()
    for extra in ([], ["--backend", "finite_diff", "--rollout", "mjx"]):
        assert cli.main(["collect", env, *extra, "--substeps", "3", "--out", str(tmp_path / "no.zarr")]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "cannot simulate this model: mjtSolver.mjSOL_PGS is not implemented" in line
        assert "--backend finite_diff measures it with native MuJoCo" in line
    assert not (tmp_path / "no.zarr").exists()
    with pytest.raises(sources.MJXCannotBuild):
        envs.from_mjcf(PGS_SLIDER)


@pytest.mark.parametrize("definition", ["as-run", "converged"])
def test_native_only_jacobians_equal_mujocos_own_finite_differences(tmp_path, definition):
    """A PGS ball hopping over a floor (contacts come and go; one substep): at every stored step
    the finite_diff backend's Jacobian equals MuJoCo's own centred ``mjd_transitionFD`` of
    ``mj_step`` from the stored state, warm start and action (an independent implementation),
    and the native candidate pair list names the ball-floor contact."""
    spec = envs.from_mjcf(PGS_BOUNCER, name="PgsBouncer", init_noise=0.05, native=True)
    assert spec.native_only and envs.contact_pairs(spec)[0] == ("floor|ball",)
    config = _config("PgsBouncer", steps=40, chunk_steps=20, jacobian=definition)
    ds = dataset.open_dataset(collect.collect(config, tmp_path / "b.zarr", spec=spec)).load()
    assert ds["contact_pairs"].values.any() and not ds["contact_pairs"].values.all()
    from dynsparse.jacobians import definitions

    if definition == "as-run":  # the finite differences' nominal step is the trajectory's own, bit for bit
        k = 2 * 40
        state = ds["state"].values.reshape(k, -1)
        inputs = {"qpos": state[:, :spec.nq], "qvel": state[:, spec.nq:], "warmstart": ds["warmstart"].values.reshape(k, -1),
                  "ctrl": ds["action"].values.reshape(k, -1), "act": np.zeros((k, 0)), "mocap_pos": np.zeros((k, 0, 3)),
                  "mocap_quat": np.zeros((k, 0, 4)), "time": np.tile(0.01 * np.arange(40), 2)}
        _, s_next = finite_diff.BatchedFD(spec.mj_model, 1, "as-run").jacobians(inputs)
        np.testing.assert_array_equal(s_next, ds["next_state"].values.reshape(k, -1))
    m = definitions.native_model(spec.mj_model, definition)
    d = mujoco.MjData(m)
    nx = 2 * m.nv
    for e in range(2):
        for t in range(40):
            d.qpos[:], d.qvel[:] = ds["state"].values[e, t, :m.nq], ds["state"].values[e, t, m.nq:]
            d.qacc_warmstart[:] = ds["warmstart"].values[e, t]
            d.ctrl[:] = ds["action"].values[e, t]
            d.time = 0.01 * t
            a, bm = np.zeros((nx, nx)), np.zeros((nx, m.nu))
            mujoco.mjd_transitionFD(m, d, finite_diff.DEFAULT_EPS, True, a, bm, None, None)
            np.testing.assert_allclose(ds["J_s"].values[e, t], a, rtol=0, atol=1e-7)
            np.testing.assert_allclose(ds["J_a"].values[e, t], bm, rtol=0, atol=1e-7)


def test_the_rollout_option(tmp_path):
    """``auto`` is native exactly where it can run (finite_diff, an own model, an open-loop
    policy); ``native`` elsewhere is refused in one line; a resumed run keeps its own rollout."""
    spec = envs.from_mjcf(FREE_SLIDER, name="Slider")
    assert collect.resolve_rollout(_config("Slider"), spec) == "native"
    assert collect.resolve_rollout(_config("Slider", backend="autodiff"), spec) == "mjx"
    assert collect.resolve_rollout(_config("Slider", rollout="mjx"), spec) == "mjx"
    with pytest.raises(errors.UserError, match="rollout 'native' simulates with native MuJoCo, whose Jacobians are finite differences"):
        _config("Slider", backend="autodiff", rollout="native").validated()
    with pytest.raises(errors.UserError, match="rollout 'lua' is not allowed; allowed: auto, native, mjx"):
        _config("Slider", rollout="lua").validated()
    recorded = tmp_path / "rec.npz"  # a replay sets the recorded states: MJX only
    np.savez(recorded, qpos=np.zeros((1, 4, 1)), qvel=np.zeros((1, 4, 1)), action=np.zeros((1, 4, 1)))
    replay = collect.CollectConfig(env="Slider", backend="finite_diff", rollout="native", policy={"name": "from-file", "file": str(recorded)})
    with pytest.raises(errors.UserError, match="rollout 'native' is not allowed here: policy 'from-file' does not act on noise alone"):
        collect.resolve_rollout(replay, spec)
    assert collect.resolve_rollout(dataclasses.replace(replay, rollout="auto"), spec) == "mjx"
    out = tmp_path / "s.zarr"
    collect.collect(_config("Slider", episodes=1, steps=4), out, spec=spec)
    collect.collect(_config("Slider", episodes=1, steps=4), out, spec=spec)  # auto: the stored native
    with pytest.raises(errors.UserError, match="rollout: stored 'native', requested 'mjx'"):
        collect.collect(_config("Slider", episodes=1, steps=4, rollout="mjx"), out, spec=spec)
    assert collect.prepare(_config("Slider", episodes=1, steps=4), spec=spec) == {}  # nothing to build ahead


def test_open_loop_actions_equal_the_jitted_ones():
    """The native rollout's actions (NumPy) are the MJX rollout's (``Policy.act`` in JAX) to within
    an ulp (XLA folds the bounds' constants in another order)."""
    low, high = np.array([-1.0, 0.0, -3.0]), np.array([1.0, 2.0, 0.5])
    for config in ({"name": "random"}, {"name": "colored", "beta": 1.5, "scale": 2.0}):
        policy = policies.from_config(config)
        noise = policy.batch_noise(7, np.arange(3), 50, 3)
        want = jax.jit(jax.vmap(jax.vmap(lambda n: policy.act(None, n, jnp.asarray(low), jnp.asarray(high)))))(noise)
        np.testing.assert_allclose(policy.open_loop_actions(noise, low, high), np.asarray(want), rtol=0, atol=1e-15)


def test_envs_lists_what_only_finite_differences_measure(capsys):
    cli._print_env_row("gymnasium:Humanoid-v5")
    row = capsys.readouterr().out
    assert row.startswith("gymnasium:Humanoid-v5") and row.rstrip().endswith("finite_diff only (MJX lacks the PGS solver)")


def test_envs_names_what_mjx_lacks_in_a_few_words():
    assert cli._short_feature("mjtSolver.mjSOL_PGS is not implemented") == "the PGS solver"
    assert cli._short_feature("(mjtGeom.mjGEOM_ELLIPSOID, mjtGeom.mjGEOM_BOX) collisions not implemented") == "ellipsoid-box collisions"
    assert cli._short_feature("mjINT_IMPLICIT is not implemented") == "mjINT_IMPLICIT"
    assert cli._short_feature("some new feature") == "some new feature"


SPINNING_BALL = """<mujoco><option integrator="{integrator}"/><worldbody><body><joint type="ball"/>
<geom type="box" size=".1 .2 .3" pos=".2 0 0"/></body></worldbody></mujoco>"""


def test_native_rk4_turns_a_ball_joint_otherwise_than_mjx():
    """Why Ant-v5 (RK4, a free joint) is ``native-differs``: the pinned native MuJoCo's RK4 step
    of a spinning ball joint (no contact, nothing else) differs from MJX's by ~1e-9 in velocity,
    while MJX's equals the published ``mj_RungeKutta`` (its stages repeated by
    ``native_solver.rk4_stages`` on native forward passes, combined by MuJoCo's final update) to
    round-off, and under Euler native and MJX agree to round-off. So the RK4 integration of
    orientations differs, not the forward dynamics (stage 3's orientation, read with a control
    callback, is where the pinned MuJoCo departs)."""
    from mujoco import mjx
    from test_native_solver import _rk4_next

    from dynsparse.jacobians import native_solver

    apart = {}
    for integrator in ("RK4", "Euler"):
        m = mujoco.MjModel.from_xml_string(SPINNING_BALL.format(integrator=integrator))
        d = mujoco.MjData(m)
        d.qpos[:] = np.array([0.9, 0.1, -0.3, 0.2]) / np.linalg.norm([0.9, 0.1, -0.3, 0.2])
        d.qvel[:] = [1.0, 2.0, 3.0]
        out = jax.jit(mjx.step)(mjx.put_model(m), mjx.put_data(m, d))
        if integrator == "RK4":
            published = _rk4_next(m, d, native_solver.rk4_stages(m, d, mujoco.MjData(m), native_solver.SolveReader(m)))
            np.testing.assert_allclose(np.asarray(out.qpos), published[0], rtol=0, atol=1e-14)
            np.testing.assert_allclose(np.asarray(out.qvel), published[1], rtol=0, atol=1e-13)
        mujoco.mj_step(m, d)
        apart[integrator] = float(np.abs(np.asarray(out.qvel) - d.qvel).max())
    assert apart["Euler"] < 1e-13 and 1e-10 < apart["RK4"] < 1e-7, apart
