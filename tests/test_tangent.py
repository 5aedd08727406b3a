"""Free and ball joints: Jacobians in MuJoCo's tangent space (2 nv), by hand and against native
and MJX finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest
from models import FREE_SPHERE, SPHERE_DT

from dynsparse import envs, results, tangent
from dynsparse.jacobians import autodiff, certify, definitions, finite_diff

BALL_AND_FREE = """<mujoco><worldbody><body><freejoint name="root"/><geom size=".1"/>
  <body pos="0 0 -.3"><joint name="knee" type="hinge"/><geom size=".1"/>
  <body pos="0 0 -.3"><joint name="ball" type="ball"/><geom size=".1"/></body></body></body></worldbody></mujoco>"""


def _random_qpos(model: mujoco.MjModel, rng: np.random.Generator) -> np.ndarray:
    q = model.qpos0.copy()
    mujoco.mj_integratePos(model, q, rng.normal(size=model.nv), 1.0)
    return q


def test_retract_and_local_have_mujocos_derivatives():
    """d retract/d dq = d mj_integratePos/d dq and d local/d q = d mj_differentiatePos/d q at the
    base point (checked through their composition with MuJoCo's own maps, by central differences)."""
    model = mujoco.MjModel.from_xml_string(BALL_AND_FREE)
    c = tangent.charts(model)
    assert (c.nq, c.nv, c.quat_q.tolist(), c.quat_v.tolist()) == (12, 10, [[3, 4, 5, 6], [8, 9, 10, 11]], [[3, 4, 5], [7, 8, 9]])
    rng = np.random.default_rng(0)
    q0 = _random_qpos(model, rng)
    eps, eye = 1e-6, np.eye(model.nv)
    # d/d dq of mj_differentiatePos(q0, retract(q0, dq)) = identity (central differences)
    cols = []
    for i in range(model.nv):
        ends = []
        for sign in (1, -1):
            moved = np.asarray(tangent.retract(c, jnp.asarray(q0), jnp.asarray(sign * eps * eye[i])))
            dq = np.zeros(model.nv)
            mujoco.mj_differentiatePos(model, dq, 1.0, q0, moved)
            ends.append(dq)
        cols.append((ends[0] - ends[1]) / (2 * eps))
    np.testing.assert_allclose(np.stack(cols, axis=1), eye, atol=1e-8)
    # d/d dq of local(q0, integratePos(q0, dq)) = identity, by central differences through MuJoCo
    cols = []
    for i in range(model.nv):
        plus, minus = q0.copy(), q0.copy()
        mujoco.mj_integratePos(model, plus, eps * eye[i], 1.0)
        mujoco.mj_integratePos(model, minus, -eps * eye[i], 1.0)
        cols.append((np.asarray(tangent.local(c, q0, plus)) - np.asarray(tangent.local(c, q0, minus))) / (2 * eps))
    np.testing.assert_allclose(np.stack(cols, axis=1), np.eye(model.nv), atol=1e-8)
    # at the base point local is zero (to round-off) and retract is the identity
    assert np.abs(np.asarray(tangent.local(c, q0, q0))).max() < 1e-15
    np.testing.assert_array_equal(np.asarray(tangent.retract(c, jnp.asarray(q0), jnp.zeros(model.nv))), q0)


def test_hinge_models_keep_qpos_as_their_tangent_space():
    model = mujoco.MjModel.from_xml_string("""<mujoco><worldbody><body><joint name="a"/><geom size=".1"/>
        </body></worldbody></mujoco>""")
    c = tangent.charts(model)
    q = jnp.asarray([0.3])
    assert c.identity and float(tangent.retract(c, q, jnp.asarray([0.2]))[0]) == 0.5
    assert float(tangent.local(c, q, jnp.asarray([0.5]))[0]) == 0.5 - 0.3


def _skew(w: np.ndarray) -> np.ndarray:
    return np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])


def _rotation(phi: np.ndarray) -> np.ndarray:
    quat = np.zeros(4)
    mujoco.mju_axisAngle2Quat(quat, phi / np.linalg.norm(phi), np.linalg.norm(phi))
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, quat)
    return mat.reshape(3, 3)


def _right_jacobian(phi: np.ndarray) -> np.ndarray:
    """SO(3) right Jacobian: exp(phi + d) = exp(phi) exp(J_r(phi) d) to first order."""
    th = np.linalg.norm(phi)
    k = _skew(phi)
    return np.eye(3) - (1 - np.cos(th)) / th**2 * k + (th - np.sin(th)) / th**3 * k @ k


@pytest.fixture(scope="module")
def sphere_case():
    """A free sphere turned and spinning, one control step (one Euler substep)."""
    spec = envs.from_mjcf(FREE_SPHERE, name="free_sphere", init_noise=0.0)
    data = jax.jit(spec.env.reset)(jax.random.PRNGKey(0)).data
    rng = np.random.default_rng(3)
    q = _random_qpos(spec.mj_model, rng)
    data = data.replace(qpos=jnp.asarray(q), qvel=jnp.asarray([0.1, -0.2, 0.3, 2.0, -1.5, 3.0]))
    a = jnp.asarray([0.4, -0.7])
    return spec, data, a


@pytest.mark.parametrize("method", autodiff.METHODS)
@pytest.mark.parametrize("definition", definitions.DEFINITIONS)
def test_free_sphere_jacobians_by_hand(sphere_case, method, definition):
    spec, data, a = sphere_case
    j_s, j_a, s_next, diag = jax.jit(autodiff.make_jacobian_fn(spec, method, definition))(data, a)
    j_s, j_a, s_next = np.asarray(j_s), np.asarray(j_a), np.asarray(s_next)
    assert j_s.shape == (12, 12) and j_a.shape == (12, 2) and s_next.shape == (13,)
    assert int(diag["solver_start_returned"]) == 0 and int(diag["solver_truncated"]) == 0  # no constraints
    h, mass, inertia = SPHERE_DT, 2.0, 0.4 * 2.0 * 0.1**2
    w_next = s_next[7 + 3:]
    p, r, v, w = slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12)
    want = np.zeros((12, 12))
    want[p, p] = want[v, v] = want[w, w] = np.eye(3)
    want[p, v] = h * np.eye(3)
    want[r, r] = _rotation(h * w_next).T
    want[r, w] = h * _right_jacobian(h * w_next)
    np.testing.assert_allclose(j_s, want, atol=1e-12)
    want_a = np.zeros((12, 2))
    want_a[2, 0], want_a[8, 0] = h * h / mass, h / mass
    want_a[9, 1] = h / inertia
    want_a[r, 1] = want[r, w][:, 0] * h / inertia
    np.testing.assert_allclose(j_a, want_a, atol=1e-12)


def test_free_sphere_matches_native_and_mjx_finite_differences(sphere_case):
    """Both references of the certificate, in the tangent space with the exact maps: native
    ``mj_integratePos``/``mj_differentiatePos`` and MJX ``retract_exact``/``local_exact``."""
    spec, data, a = sphere_case
    j_s, j_a, _, _ = jax.jit(autodiff.make_jacobian_fn(spec))(data, a)
    fd = finite_diff.FiniteDiffBackend(spec.mj_model, spec.n_substeps)
    x = finite_diff.StepInputs(
        np.asarray(data.qpos), np.asarray(data.qvel), np.asarray(data.qacc_warmstart), np.asarray(a),
        np.zeros(0), np.zeros((0, 3)), np.zeros((0, 4)), 0.0,
    )
    f_s, f_a = fd(x)
    np.testing.assert_allclose(np.asarray(j_s), f_s, atol=1e-8)
    np.testing.assert_allclose(np.asarray(j_a), f_a, atol=1e-8)
    refs, _ = jax.jit(certify.make_mjx_fd(spec, "converged"))(data, a)
    for r in np.asarray(refs):  # eps 1e-5, 1e-6, 1e-7
        np.testing.assert_allclose(r, np.concatenate([np.asarray(j_s), np.asarray(j_a)], axis=1), atol=1e-7)


def test_exact_tangent_maps_match_mujoco():
    """``retract_exact``/``local_exact`` are ``mj_integratePos``/``mj_differentiatePos`` for finite
    steps (a free joint and a ball joint), up to rotations of pi."""
    from models import LEGGED

    model = mujoco.MjModel.from_xml_string(LEGGED)
    c = tangent.charts(model)
    rng = np.random.default_rng(5)
    q = _random_qpos(model, rng)
    for size in (1e-7, 1e-3, 0.5, 1.5):
        dq = rng.normal(size=model.nv) * size
        want = q.copy()
        mujoco.mj_integratePos(model, want, dq, 1.0)
        got = np.asarray(tangent.retract_exact(c, jnp.asarray(q), jnp.asarray(dq)))
        np.testing.assert_allclose(got, want, atol=1e-15)
        back = np.zeros(model.nv)
        mujoco.mj_differentiatePos(model, back, 1.0, q, want)
        np.testing.assert_allclose(np.asarray(tangent.local_exact(c, jnp.asarray(q), jnp.asarray(want))), back, atol=1e-14)
        if size < 1:  # rotations below pi come back unchanged
            np.testing.assert_allclose(back, dq, atol=1e-14)


@pytest.mark.slow
def test_legged_free_base_collects_checks_and_analyses(tmp_path):
    """The hand-written legged robot (free base, ball-jointed tail, foot contacts): a collection
    in the tangent space, every step certified against MJX and native finite differences of the
    converged step, then analysed."""
    from models import LEGGED, LEGGED_SUBSTEPS

    from dynsparse import analysis, collect, dataset
    from dynsparse.metrics import structure

    spec = envs.from_mjcf(LEGGED, name="Legged", n_substeps=LEGGED_SUBSTEPS, init_noise=0.02)
    config = collect.CollectConfig(env="Legged", episodes=2, steps=12, policy={"name": "random"}, seed=0,
                                   check_every=1, batch_size=2, chunk_steps=6)
    path = collect.collect(config, tmp_path / "legged.zarr", spec=spec)
    assert dataset.validate(path)[0] == []
    ds = dataset.open_dataset(path)
    assert ds.sizes["state_in"] == 26 and list(ds["qstate"].values) == list(spec.qstate_names)
    assert ds["state"].dims == ("episode", "step", "qstate") and ds.sizes["qstate"] == 15 + 13
    assert list(ds["state_in"].values[:6]) == [f"qpos:root:{a}" for a in ("x", "y", "z", "rx", "ry", "rz")]
    quat = np.asarray(ds["state"].values)[..., 3:7]
    np.testing.assert_allclose(np.linalg.norm(quat, axis=-1), 1.0, atol=1e-9)  # stored raw, unit quaternions
    assert int((np.asarray(ds["n_contacts"].values) > 0).sum()) >= 12  # the feet are on the floor
    summary = structure.check_summary(ds)
    assert summary["checked_steps"] == 24 and summary["classes"]["wrong"] == 0, summary
    assert summary["classes"]["certified"] >= 22 and summary["steps_pattern_mismatch"] == 0, summary
    out = analysis.analyze(path, tmp_path / "analysis", analysis.AnalyzeOptions(tsne=False, shuffles=20))
    row = results.table_row(results.read_analysis(out))
    assert row["state_dim"] == 26 and row["counted_steps"] == 24
    # translation of the base on the floor is invisible to everything but itself: its column is
    # zero outside the x-y block (Galilean invariance in the horizontal plane, flat floor)
    j_s = np.asarray(ds["J_s"].values)
    names = list(ds["state_in"].values)
    x = names.index("qpos:root:x")
    others = [i for i in range(26) if i != x]
    assert np.abs(j_s[..., others, x]).max() < 1e-9 and np.allclose(j_s[..., x, x], 1.0)


def test_free_joint_dataset_layout_and_learn_refusal(tmp_path):
    """A free-sphere collection (finite_diff backend: no autodiff compile): states on ``qstate``,
    Jacobians on the tangent names; ``learn`` refuses it in one line."""
    from dynsparse import collect, dataset, errors
    from dynsparse.learn import data as learn_data

    spec = envs.from_mjcf(FREE_SPHERE, name="FreeSphere", init_noise=0.3)
    config = collect.CollectConfig(env="FreeSphere", episodes=1, steps=4, policy={"name": "random"},
                                   backend="finite_diff", batch_size=1, chunk_steps=4)
    path = collect.collect(config, tmp_path / "s.zarr", spec=spec)
    assert dataset.validate(path)[0] == []
    ds = dataset.open_dataset(path)
    assert list(ds["qstate"].values) == list(spec.qstate_names) and ds.sizes["qstate"] == 13
    assert ds["next_state"].dims == ("episode", "step", "qstate") and ds["J_s"].shape == (1, 4, 12, 12)
    assert list(ds["dof"].values) == [f"qvel:root:{a}" for a in ("x", "y", "z", "rx", "ry", "rz")]
    # the hand-computed translation block holds at every step
    np.testing.assert_allclose(np.asarray(ds["J_s"].values)[..., 0:3, 6:9], np.broadcast_to(SPHERE_DT * np.eye(3), (1, 4, 3, 3)), atol=1e-8)
    with pytest.raises(errors.UserError, match=r"free or ball joints \(nq=7 != nv=6\); learning a world model"):
        learn_data.load(path)
