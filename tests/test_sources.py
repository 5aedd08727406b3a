"""Model sources beyond Playground (``gymnasium:``, ``mjcf:``) and recorded trajectories (``--from``).

Known answers: hand-computed Jacobians of a damped slider under Euler (implicit damping) and RK4
(the RK4 polynomial of a linear system), Gymnasium's planar robots' translation invariance in x,
the Jacobians of a Gymnasium task against finite differences of the Gymnasium env's own step, and
``--from`` on a dataset's own states reproducing its Jacobians.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest
from helpers import one_error_line

from dynsparse import cli, collect, dataset, envs, errors, sources
from dynsparse.jacobians import autodiff

MASS, DAMPING, H = 2.0, 0.7, 0.01

DAMPED_SLIDER = f"""
<mujoco model="damped_slider">
  <option timestep="{H}" gravity="0 0 0" integrator="INTEGRATOR"/>
  <worldbody>
    <body name="block">
      <joint name="x" type="slide" axis="1 0 0" damping="{DAMPING}"/>
      <geom type="box" size="0.1 0.1 0.1" mass="{MASS}" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator><motor name="push" joint="x" ctrlrange="-1 1"/></actuator>
</mujoco>
"""


def _slider_file(tmp_path, integrator: str):
    path = tmp_path / f"slider_{integrator}.xml"
    path.write_text(DAMPED_SLIDER.replace("INTEGRATOR", integrator))
    return path


def _want_slider(integrator: str, substeps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per substep: Euler integrates damping implicitly, v' = (m v + h (u - b v)) / (m + h b),
    q' = q + h v'; RK4 of the linear ODE x' = A x + B u (u held) is
    Phi = sum_k (hA)^k / k! (k <= 4), Gamma = h sum_k (hA)^k / (k+1)! B (k <= 3)."""
    if integrator == "Euler":
        alpha, beta = MASS / (MASS + H * DAMPING), H / (MASS + H * DAMPING)
        a1 = np.array([[1.0, H * alpha], [0.0, alpha]])
        b1 = np.array([[H * beta], [beta]])
    else:
        a = np.array([[0.0, 1.0], [0.0, -DAMPING / MASS]])
        b = np.array([[0.0], [1.0 / MASS]])
        ha = H * a
        powers = [np.linalg.matrix_power(ha, k) for k in range(5)]
        a1 = sum(powers[k] / float(np.prod(np.arange(1, k + 1))) for k in range(5))
        b1 = H * sum(powers[k] / float(np.prod(np.arange(1, k + 2))) for k in range(4)) @ b
    js, ja = np.eye(2), np.zeros((2, 1))
    for _ in range(substeps):
        js, ja = a1 @ js, a1 @ ja + b1
    return js, ja


@pytest.mark.parametrize("integrator", ["Euler", "RK4"])
def test_mjcf_file_gives_the_hand_computed_jacobian(tmp_path, integrator):
    path = _slider_file(tmp_path, integrator)
    spec = envs.load(f"mjcf:{path}", substeps=3)
    assert spec.n_substeps == 3 and spec.dt == pytest.approx(3 * H) and spec.state_names == ("qpos:x", "qvel:x")
    state = spec.env.reset(jax.random.PRNGKey(0))
    u = jnp.asarray([0.4])
    for definition in ("converged", "as-run"):
        j_s, j_a, _, _ = jax.jit(autodiff.make_jacobian_fn(spec, definition=definition))(state.data, u)
        want_s, want_a = _want_slider(integrator, 3)
        np.testing.assert_allclose(np.asarray(j_s), want_s, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(np.asarray(j_a), want_a, rtol=1e-12, atol=1e-15)


def test_mjcf_collect_records_file_digest_and_substeps_and_refuses_a_changed_file(tmp_path, capsys):
    path = _slider_file(tmp_path, "Euler")
    out = tmp_path / "slider.zarr"
    argv = ["collect", f"mjcf:{path}", "--substeps", "3", "--episodes", "1", "--steps", "4", "--out", str(out)]
    assert cli.main(argv) == 0
    ds = dataset.open_dataset(out)
    assert ds.attrs["model_sha256"] == sources.file_sha256(path) and ds.attrs["n_substeps"] == 3
    assert ds.attrs["model_file"] == str(path.resolve()) and json.loads(ds.attrs["config"])["substeps"] == 3
    want_s, want_a = _want_slider("Euler", 3)
    np.testing.assert_allclose(ds["J_s"].values[0, 0], want_s, rtol=1e-12)
    np.testing.assert_allclose(ds["J_a"].values[0, 0], want_a, rtol=1e-12)
    capsys.readouterr()
    path.write_text(path.read_text().replace('damping="0.7"', 'damping="0.8"'))
    assert cli.main(argv) == 2
    err = one_error_line(capsys.readouterr().err)
    assert "changed since" in err and str(path.resolve()) in err


@pytest.mark.parametrize("argv, message", [
    (["collect", "mjcf:/no/such/model.xml", "--out", "X"], "mjcf model '/no/such/model.xml' is not an existing file"),
    (["collect", "gymnasium:HalfCheetah-v9", "--out", "X"], "unknown Gymnasium MuJoCo task 'HalfCheetah-v9'; did you mean gymnasium:HalfCheetah-v5?"),
    (["collect", "CheetahRun", "--substeps", "2", "--out", "X"], "--substeps 2 applies to mjcf: models only"),
    (["collect", "gymnasium:Humanoid-v5", "--out", "X"], "gymnasium:Humanoid-v5: MJX (mujoco-mjx"),
])
def test_bad_sources_give_one_line(tmp_path, capsys, argv, message):
    argv = [a if a != "X" else str(tmp_path / "x.zarr") for a in argv]
    assert cli.main(argv) == 2
    err = one_error_line(capsys.readouterr().err)
    assert message in err, err
    assert not (tmp_path / "x.zarr").exists()


def test_humanoid_refusal_names_the_solver():
    with pytest.raises(errors.UserError, match="mjSOL_PGS is not implemented") as exc:
        envs.load("gymnasium:Humanoid-v5")
    assert "\n" not in str(exc.value)


def test_dm_control_specs_are_the_suite_models():
    """The suite's own XML (not Playground's port): timestep, solver iterations and substeps of
    ``control_timestep / timestep``; energy (which MJX lacks) switched off; unsupported models
    refused in one line naming the collision pair (no compile)."""
    from dm_control.suite import cheetah, walker

    spec = envs.load("dm_control:cheetah-run")
    want = mujoco.MjModel.from_xml_string(*cheetah.get_model_and_assets())
    assert spec.n_substeps == 1 and spec.sim_dt == want.opt.timestep == 0.01
    assert spec.mj_model.opt.iterations == want.opt.iterations and spec.mj_model.nbody == want.nbody
    assert spec.state_names == envs.load("CheetahRun").state_names
    w = envs.load("dm_control:walker-walk")
    assert w.n_substeps == round(walker._CONTROL_TIMESTEP / w.sim_dt) == 10
    cart = envs.load("dm_control:cartpole-balance")
    assert not cart.mj_model.opt.enableflags & mujoco.mjtEnableBit.mjENBL_ENERGY
    with pytest.raises(errors.UserError, match=r"dm_control:fish-swim: MJX .* cannot simulate this model: \(mjtGeom.mjGEOM_ELLIPSOID, mjtGeom.mjGEOM_BOX\) collisions not implemented;") as exc:
        envs.load("dm_control:fish-swim")
    assert "\n" not in str(exc.value)
    with pytest.raises(errors.UserError, match="unknown dm_control task 'cheetah-runn'; did you mean dm_control:cheetah-run"):
        envs.check_name("dm_control:cheetah-runn")
    record = sources.model_record("dm_control:cheetah-run")
    assert record["model_sha256"] == sources.model_record("dm_control:cheetah-run")["model_sha256"]
    assert record["model_sha256"] != sources.model_record("dm_control:walker-walk")["model_sha256"]


def test_uncompilable_mjcf_gives_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.xml"
    bad.write_text("<mujoco><worldbody><body><joint type='nonsense'/></body></worldbody></mujoco>")
    assert cli.main(["collect", f"mjcf:{bad}", "--out", str(tmp_path / "b.zarr")]) == 2
    assert "MuJoCo cannot compile this MJCF file" in one_error_line(capsys.readouterr().err)


def test_gymnasium_specs_are_the_gymnasium_models():
    """Model, frame skip and action convention as Gymnasium builds them (no compile)."""
    import gymnasium

    for task, frame_skip, integrator in (("HalfCheetah-v5", 5, "EULER"), ("Hopper-v5", 4, "RK4"), ("Walker2d-v5", 4, "RK4")):
        genv = gymnasium.make(task).unwrapped
        spec = envs.load(sources.GYMNASIUM + task)
        assert spec.n_substeps == frame_skip == genv.frame_skip
        assert spec.mj_model.opt.integrator == getattr(mujoco.mjtIntegrator, f"mjINT_{integrator}")
        assert spec.dt == pytest.approx(genv.dt)
        np.testing.assert_array_equal(spec.env.init_qpos, genv.init_qpos)
        np.testing.assert_array_equal(spec.action_low, genv.action_space.low.astype(np.float64))
        np.testing.assert_array_equal(spec.action_high, genv.action_space.high.astype(np.float64))
        assert spec.state_names[0] == "qpos:rootx"


# ----------------------------------------------------------------------------- --from


def _npz(tmp_path, name="t.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, message", [
    ({"qpos": np.zeros((1, 3, 1)), "qvel": np.zeros((1, 3, 1))}, "lacks array(s) action"),
    ({"qpos": np.zeros((1, 3, 1)), "qvel": np.zeros((1, 4, 1)), "action": np.zeros((1, 3, 1))}, "disagree on (episodes, steps)"),
    ({"qpos": np.zeros((1, 3, 1)), "qvel": np.full((1, 3, 1), np.nan), "action": np.zeros((1, 3, 1))}, "qvel is not finite at episode 0, step 0"),
    ({"qpos": np.zeros((1, 3, 2)), "qvel": np.zeros((1, 3, 2)), "action": np.zeros((1, 3, 1))}, "qpos has 2 columns, mjcf:"),
    ({"qpos": np.zeros((3,)), "qvel": np.zeros((3,)), "action": np.zeros((3,))}, "qpos has shape (3,)"),
    ({"qpos": np.zeros((1, 3, 1)), "qvel": np.zeros((1, 3, 1)), "action": np.zeros((1, 3, 1)), "valid": np.zeros((1, 3), bool)}, "no step is valid"),
])
def test_from_file_bad_input_one_line(tmp_path, capsys, arrays, message):
    model = _slider_file(tmp_path, "Euler")
    src = _npz(tmp_path, **arrays)
    out = tmp_path / "r.zarr"
    assert cli.main(["collect", f"mjcf:{model}", "--from", str(src), "--out", str(out)]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert message in err, err
    assert not out.exists()


def test_trajectory_files_are_read_as_episodes_of_float64(tmp_path):
    """``policies.replay.read`` directly: (steps, dim) arrays are one episode, integers become
    float64, ``valid`` defaults to every step, and a non-finite value at an invalid step is allowed."""
    from dynsparse.policies import replay

    arrays = replay.read(_npz(tmp_path, qpos=np.arange(6).reshape(3, 2), qvel=np.zeros((3, 2)), action=np.ones((3, 1))))
    assert {k: v.shape for k, v in arrays.items()} == {"qpos": (1, 3, 2), "qvel": (1, 3, 2), "action": (1, 3, 1), "valid": (1, 3)}
    assert arrays["qpos"].dtype == np.float64 and arrays["valid"].all()
    qvel = np.zeros((2, 3, 1))
    qvel[1, 2] = np.nan
    valid = np.ones((2, 3), bool)
    valid[1, 2] = False
    arrays = replay.read(_npz(tmp_path, "v.npz", qpos=np.zeros((2, 3, 1)), qvel=qvel, action=np.zeros((2, 3, 1)), valid=valid))
    np.testing.assert_array_equal(arrays["valid"], valid)
    with pytest.raises(errors.UserError, match="is not an existing file"):
        replay.read(tmp_path / "missing.npz")


def test_from_file_refuses_as_run_and_policy_options(tmp_path, capsys):
    model = _slider_file(tmp_path, "Euler")
    src = _npz(tmp_path, qpos=np.zeros((1, 3, 1)), qvel=np.zeros((1, 3, 1)), action=np.zeros((1, 3, 1)))
    base = ["collect", f"mjcf:{model}", "--from", str(src), "--out", str(tmp_path / "r.zarr")]
    assert cli.main(base + ["--jacobian", "as-run"]) == 2
    assert "depends on the solver's warm start" in one_error_line(capsys.readouterr().err)
    assert cli.main(base + ["--policy", "colored"]) == 2
    assert "leave out --policy" in one_error_line(capsys.readouterr().err)
    assert cli.main(base + ["--steps", "5"]) == 2
    assert "holds 1 episodes x 3 steps" in one_error_line(capsys.readouterr().err)
    assert cli.main(["collect", f"mjcf:{model}", "--policy", "from-file", "--out", str(tmp_path / "q.zarr")]) == 2
    assert "unknown policy 'from-file'" in one_error_line(capsys.readouterr().err)


def test_from_file_on_a_datasets_states_reproduces_its_jacobians(tmp_path):
    """A rollout of the slider with contacts-free dynamics, then the same states replayed (with an
    invalid step masked): same Jacobians, next states, the file's digest, and a next-row mismatch
    at round-off; a changed file refuses the resume."""
    model = _slider_file(tmp_path, "RK4")
    name = f"mjcf:{model}"
    first = tmp_path / "roll.zarr"
    cfg = collect.CollectConfig(env=name, episodes=2, steps=6, policy={"name": "random"}, seed=3, substeps=2, chunk_steps=4)
    collect.collect(cfg, first)
    ds = dataset.open_dataset(first)
    s, a = ds["state"].values, ds["action"].values
    valid = np.ones((2, 6), bool)
    valid[1, 4] = False
    src = _npz(tmp_path, qpos=s[..., :1], qvel=s[..., 1:], action=a, valid=valid)
    replayed = tmp_path / "replay.zarr"
    rcfg = collect.CollectConfig(env=name, episodes=2, steps=6, policy={"name": "from-file", "file": str(src)}, substeps=2, chunk_steps=4)
    collect.collect(rcfg, replayed)
    rs = dataset.open_dataset(replayed)
    got_valid = rs["valid"].values.astype(bool)
    np.testing.assert_array_equal(got_valid, valid)
    for k in ("J_s", "J_a", "next_state", "state", "action"):
        np.testing.assert_allclose(rs[k].values[valid], ds[k].values[valid], rtol=1e-13, atol=1e-15)
    assert np.isnan(rs["J_s"].values[1, 4]).all()
    assert rs.attrs["source_sha256"] == sources.file_sha256(src) and rs.attrs["source_next_state_mismatch"] < 1e-12
    assert json.loads(rs.attrs["policy"])["name"] == "from-file"
    np.savez(src, qpos=s[..., :1] + 1.0, qvel=s[..., 1:], action=a, valid=valid)
    with pytest.raises(errors.UserError, match="changed since the run in"):
        collect.collect(rcfg, replayed)


@pytest.mark.slow
class TestGymnasiumHalfCheetah:
    """``gymnasium:HalfCheetah-v5`` end to end (one compile of the Jacobian chunk)."""

    @pytest.fixture(scope="class")
    def store(self, tmp_path_factory):
        out = tmp_path_factory.mktemp("hc") / "hc.zarr"
        assert cli.main(["collect", "gymnasium:HalfCheetah-v5", "--episodes", "2", "--steps", "40", "--check-every", "8", "--out", str(out)]) == 0
        return out

    def test_x_position_influences_only_itself(self, store):
        ds = dataset.open_dataset(store)
        names = list(ds["state_in"].values)
        col = names.index("qpos:rootx")
        j = ds["J_s"].values[ds["valid"].values.astype(bool)]
        others = [i for i in range(len(names)) if i != col]
        assert (j[:, others, col] == 0).all()
        np.testing.assert_array_equal(j[:, col, col], 1.0)
        assert (ds["check_class"].values[ds["check_class"].values >= 0] == 0).all()  # every checked step certified

    def test_jacobians_agree_with_finite_differences_of_the_gymnasium_env_step(self, store):
        """Centred differences of ``MujocoEnv.do_simulation`` itself (the env's own model and
        solver, warm start as recorded), eps 1e-6, at 8 steps: scaled error below 1e-4."""
        import gymnasium

        genv = gymnasium.make("HalfCheetah-v5").unwrapped
        ds = dataset.open_dataset(store)
        nq = genv.model.nq
        rng = np.random.default_rng(0)
        steps = [(int(e), int(t)) for e, t in zip(rng.integers(0, 2, 8), rng.integers(0, 40, 8))]

        def f(s, u, warm):
            genv.set_state(s[:nq], s[nq:])
            genv.data.qacc_warmstart[:] = warm
            genv.do_simulation(u, genv.frame_skip)
            return np.concatenate([genv.data.qpos, genv.data.qvel])

        eps = 1e-6
        for e, t in steps:
            s, u, warm = ds["state"].values[e, t], ds["action"].values[e, t], ds["warmstart"].values[e, t]
            x = np.concatenate([s, u])
            cols = []
            for i in range(x.size):
                dx = np.zeros_like(x)
                dx[i] = eps
                cols.append((f((x + dx)[:2 * nq], (x + dx)[2 * nq:], warm) - f((x - dx)[:2 * nq], (x - dx)[2 * nq:], warm)) / (2 * eps))
            fd = np.stack(cols, axis=1)
            jac = np.concatenate([ds["J_s"].values[e, t], ds["J_a"].values[e, t]], axis=1)
            scale = np.maximum(np.abs(fd).max(axis=1, keepdims=True), 1.0)
            assert np.max(np.abs(jac - fd) / scale) < 1e-4, (e, t, np.max(np.abs(jac - fd) / scale))


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    # RK4 compiles 4 stages per substep: 4-7 min each. Both run before a release (long tier); CI keeps
    # the Euler cheetah here and RK4 bit for bit against mjx.step on a small model (fast tier), to stay
    # inside CI's 90 minutes now that cold runs also export their programs.
    pytest.param("gymnasium:Hopper-v5", marks=pytest.mark.long),
    pytest.param("gymnasium:Walker2d-v5", marks=pytest.mark.long),
    "dm_control:cheetah-run",
])
def test_planar_walkers_x_position_influences_only_itself(name):
    """Hopper-v5 and Walker2d-v5 (RK4, contacts with the floor) and dm_control's original cheetah:
    translation invariance on the plane. Below 1e-30 rather than exactly 0: with RK4 and floor
    contacts the tangent arithmetic leaves products of round-off of 1e-34..1e-38 in that column
    (measured on Hopper-v5; Walker2d-v5 and the Euler cheetahs give exact zeros), 22 orders of
    magnitude below the default zero threshold 1e-12."""
    spec = envs.load(name)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    states = jax.vmap(spec.env.reset)(keys)
    jac = jax.jit(jax.vmap(autodiff.make_jacobian_fn(spec)))

    @jax.jit
    def advance(st, a):
        return jax.vmap(spec.env.step)(st, a)

    col = spec.state_names.index("qpos:rootx")
    others = [i for i in range(spec.state_size) if i != col]
    rng = np.random.default_rng(1)
    contacts = 0
    for _ in range(30):
        a = jnp.asarray(rng.uniform(spec.action_low, spec.action_high, (2, spec.nu)))
        j_s, _, _, _ = jac(states.data, a)
        j_s = np.asarray(j_s)
        assert np.abs(j_s[:, others, col]).max() < 1e-30
        states = advance(states, a)
        contacts += int(np.asarray(jax.vmap(envs.count_contacts)(states.data)).sum())
    assert contacts > 0
