"""The certificate: scaled errors and classes on hand-made cases, and a collection's certificates."""

from __future__ import annotations

import numpy as np
import pytest

from dynsparse.jacobians import certify

EPS = certify.EPS
S_NEXT = np.array([0.5, -0.2, 1.0, 0.1])  # nq = nv = 2: outputs of magnitude <= 1, scale 1


def _jac():
    """A 4 x 5 ``[J_s | J_a]`` with exact zeros and entries of several magnitudes."""
    return np.array([
        [1.0, 0.0, 0.01, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.01, 0.0],
        [-2.0, 0.0, 0.9, 0.0, 0.05],
        [0.0, -3.0, 0.0, 0.8, 1e-4],
    ])


def _refs(j, per_eps_error):
    """References at each eps: ``j`` plus an error matrix for each eps."""
    return np.stack([j + e for e in per_eps_error])


def test_scaled_error_by_hand():
    j = _jac()
    r = j.copy()
    r[2, 0] += 2e-5  # J = -2: relative 1e-5
    r[3, 4] += 3e-8  # below 1e-3 * row max (3): compared against 3e-3: 1e-5
    scale = np.ones(4)
    noise_free = certify.scaled_error(j, r, scale, eps=np.inf)
    assert noise_free == pytest.approx(max(2e-5 / 2, 3e-8 / 3e-3), rel=1e-9)
    # round-off allowance: NOISE * scale / eps is subtracted first
    assert certify.scaled_error(j, r, scale, eps=1e-7) == pytest.approx((2e-5 - 1e-7) / 2, rel=1e-9)
    assert certify.scaled_error(j, j, scale, 1e-6) == 0.0


def test_certified_when_some_eps_agrees():
    j = _jac()
    big = np.full(j.shape, 0.0)
    big[2, 0] = 1.0  # a kink straddled at eps 1e-5
    tiny = np.full(j.shape, 1e-9)
    cert = certify.classify(j, _refs(j, [big, tiny, 2 * tiny]), S_NEXT, nq=2)
    assert cert.cls == "certified" and cert.eps == 1e-6 and cert.err < certify.RTOL
    assert cert.pattern_mismatch == 0 and np.isnan(cert.native_state_err)


def test_wrong_when_finite_differences_settle_elsewhere():
    """The FingerSpin case: FD agree with each other at every eps, J is off by O(1)."""
    j = _jac()
    r = j.copy()
    r[3, 3] = 0.0793  # J says 0.8
    refs = _refs(r, [np.zeros(j.shape), 1e-10 * np.ones(j.shape), -1e-10 * np.ones(j.shape)])
    cert = certify.classify(j, refs, S_NEXT, nq=2)
    assert cert.cls == "wrong" and cert.err > 0.5 and cert.spread < 1e-8


def test_kink_when_finite_differences_do_not_settle():
    j = _jac()
    errs = []
    for k in range(3):
        e = np.zeros(j.shape)
        e[2, 2] = 0.3 * (-1) ** k  # every eps lands on another side of a switch
        errs.append(e)
    cert = certify.classify(j, _refs(j, errs), S_NEXT, nq=2)
    assert cert.cls == "kink" and cert.err > certify.RTOL and cert.spread > cert.err / certify.STABLE_RATIO


def test_a_zero_that_finite_differences_see_is_a_pattern_mismatch():
    j = _jac()
    r = j.copy()
    r[0, 1] = 0.02  # J says exactly 0, FD clearly sees a dependence
    cert = certify.classify(j, _refs(r, [np.zeros(j.shape)] * 3), S_NEXT, nq=2)
    assert cert.cls == "wrong" and cert.pattern_mismatch == 1


def test_native_reference_can_only_demote_a_certificate_to_native_differs():
    j = _jac()
    refs = _refs(j, [np.zeros(j.shape)] * 3)
    # native reproduces MJX's next state and agrees: certified, with the native error recorded
    cert = certify.classify(j, refs, S_NEXT, nq=2, native=(refs, S_NEXT + 1e-13))
    assert cert.cls == "certified" and cert.native_err == 0.0 and cert.native_state_err == pytest.approx(1e-13, rel=1e-3)
    # native lands elsewhere: no second opinion is possible
    cert = certify.classify(j, refs, S_NEXT, nq=2, native=(refs, S_NEXT + 1e-6))
    assert cert.cls == "native-differs" and np.isnan(cert.native_err)
    # native reproduces the state but its FD settles on another value
    off = refs.copy()
    off[:, 2, 0] += 0.5
    cert = certify.classify(j, refs, S_NEXT, nq=2, native=(off, S_NEXT))
    assert cert.cls == "native-differs" and cert.native_err > 0.1
    # a wrong MJX verdict stays wrong whatever native says
    bad = refs.copy()
    bad[:, 1, 1] = 5.0
    assert certify.classify(j, bad, S_NEXT, nq=2, native=(refs, S_NEXT)).cls == "wrong"


def test_non_finite_is_wrong():
    j = _jac()
    j[0, 0] = np.nan
    assert certify.classify(j, _refs(_jac(), [np.zeros(j.shape)] * 3), S_NEXT, nq=2).cls == "wrong"


def test_output_scale_uses_state_magnitudes():
    assert list(certify.output_scale(np.array([3.0, -0.1, 20.0, 0.2]), nq=2, nv=2)) == [3.0, 1.0, 20.0, 1.0]
    # with quaternions (nq != nv) every position row takes the largest |qpos|
    s = np.array([5.0, 1.0, 0.0, 0.0, 0.0, 0.3, -7.0, 0.0, 0.0])  # nq 5 (x + quaternion), nv 4
    assert list(certify.output_scale(s, nq=5, nv=4)) == [5.0] * 4 + [1.0, 7.0, 1.0, 1.0]


def test_classes_are_the_datasets():
    from dynsparse import dataset

    assert certify.CLASSES == dataset.CHECK_CLASSES == ("certified", "kink", "native-differs", "wrong")


def test_fd_round_off_is_no_pattern_mismatch():
    """A row of small scale: FD's round-off at eps 1e-7 (NOISE * 1 / 1e-7 = 1e-7) exceeds CLEAR
    times the row scale (1e-6 * 1e-3), so FD values within that round-off contradict no zero of J,
    and a J entry FD cannot resolve is no contradiction either; above the round-off they are."""
    j = np.zeros((4, 5))
    j[1, 1] = 1e-3  # the row's scale
    j[1, 2] = 5e-8  # below FD's round-off at eps 1e-7
    r = j.copy()
    r[1, 0] = 5e-8  # J exactly 0, FD within its round-off
    r[1, 2] = 0.0
    scale = np.ones(4)
    assert certify.pattern_mismatch(j, r, scale, 1e-7) == 0
    assert certify.scaled_error(j, r, scale, 1e-7) == 0.0  # the certificate allows the same noise
    r[1, 0] = 3e-7  # now clearly above round-off and CLEAR * 1e-3
    assert certify.pattern_mismatch(j, r, scale, 1e-7) == 1
    j2 = j.copy()
    j2[1, 3] = 4e-7  # J clearly nonzero, FD exactly 0
    assert certify.pattern_mismatch(j2, r, scale, 1e-7) == 2


def test_a_group_of_steps_gets_each_steps_own_references(cartpole):
    """The MJX finite differences of a group of steps, run as one flat batch of every step's
    perturbed states, give each step the references it gets alone: per-step stencils included
    (the last step's action sits at its upper bound, so its action column is one-sided)."""
    import jax
    from mujoco import mjx

    spec = cartpole
    rng = np.random.default_rng(3)
    g = 3
    base = mjx.make_data(spec.mjx_model)
    qpos = spec.mj_model.qpos0[None] + rng.uniform(-0.5, 0.5, (g, spec.nq))
    qvel = rng.normal(0.0, 1.0, (g, spec.nv))
    a = rng.uniform(-0.5, 0.5, (g, spec.nu))
    a[-1] = spec.action_high
    data = jax.tree_util.tree_map(lambda x: np.broadcast_to(x, (g,) + x.shape), base).replace(qpos=qpos, qvel=qvel)
    refs, s_next = jax.jit(certify.make_batched_mjx_fd(spec, "converged"))(data, a)
    assert refs.shape == (g, len(EPS), 2 * spec.nv, 2 * spec.nv + spec.nu) and s_next.shape == (g, spec.nq + spec.nv)
    one = jax.jit(certify.make_mjx_fd(spec, "converged"))
    for i in range(g):
        r_i, s_i = one(jax.tree_util.tree_map(lambda x: x[i], data), a[i])
        np.testing.assert_allclose(np.asarray(s_next[i]), np.asarray(s_i), rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(refs[i]), np.asarray(r_i), rtol=0, atol=1e-6 * float(np.abs(r_i).max()))
    # the steps differ, so a mix-up between them could not pass
    assert float(np.abs(np.asarray(refs[0]) - np.asarray(refs[1])).max()) > 1e-3
    # the action at its bound is differenced backward from inside the range, second order:
    # (3 f(a) - 4 f(a - eps) + f(a - 2 eps)) / (2 eps), by hand from the primal control step
    from dynsparse.jacobians import definitions

    f = definitions.make_primal_control_step(spec, "converged")
    model = definitions.mjx_model(spec, "converged")
    d2 = certify.match_step_dtypes(model, jax.tree_util.tree_map(lambda x: x[2], data))
    s2 = np.concatenate([qpos[2], qvel[2]])
    step = jax.jit(lambda u: f(d2, s2, u)[0])
    e = EPS[0]
    by_hand = (3 * np.asarray(step(a[2])) - 4 * np.asarray(step(a[2] - e)) + np.asarray(step(a[2] - 2 * e))) / (2 * e)
    column = np.asarray(refs[2])[0, :, -1]  # eps EPS[0], the action column (cartpole: no quaternions)
    assert np.abs(by_hand).max() > 1e-3
    np.testing.assert_allclose(column, by_hand, rtol=0, atol=1e-9 * np.abs(by_hand).max() + 1e-9)


def test_column_weights_are_one_centred_and_four_one_sided():
    """``w_j``: half the stencil's absolute weights. State columns and actions inside the range are
    centred (1); an action at its bound, or closer to it than eps, is one-sided (4) at that eps."""
    low, high = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    w = certify.column_weights(np.array([0.0, 0.3]), low, high, n_state=4)
    np.testing.assert_array_equal(w, np.ones((len(EPS), 6)))
    w = certify.column_weights(np.array([1.0, -1.0]), low, high, n_state=4)
    np.testing.assert_array_equal(w[:, :4], 1.0)
    np.testing.assert_array_equal(w[:, 4:], 4.0)
    near = 1.0 - 2.5e-6  # within eps 1e-5 of the bound, not within 1e-6 or 1e-7
    w = certify.column_weights(np.array([near, 0.0]), low, high, n_state=4)
    np.testing.assert_array_equal(w[:, 4], [4.0, 1.0, 1.0])


def test_a_one_sided_column_is_allowed_its_own_round_off():
    """An action column differenced one-sided sums four times a centred difference's round-off.
    References off by three centred round-offs in that column (at every eps, as round-off is):
    within the one-sided allowance, so the step is certified and no zero is contradicted; with
    every column allowed only the centred round-off (as before), the same step was a kink and
    an exact zero of ``J`` was counted as contradicted."""
    j = np.array([
        [1.0, 0.0, 0.01, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.01, 0.0],
        [-2.0, 0.0, 0.9, 0.0, 0.05],
        [0.0, -1e-4, 0.0, 0.0, 0.0],  # a row of small scale: its action entry is an exact zero
    ])
    dev = [np.zeros_like(j) for _ in EPS]
    for k, e in enumerate(EPS):
        dev[k][3, 4] = 3 * certify.NOISE * 1.0 / e  # output scale 1 (S_NEXT)
    refs = _refs(j, dev)
    one_sided = np.ones((len(EPS), 5))
    one_sided[:, 4] = 4.0
    cert = certify.classify(j, refs, S_NEXT, nq=2, weights=one_sided)
    assert cert.cls == "certified" and cert.err == 0.0 and cert.pattern_mismatch == 0
    before = certify.classify(j, refs, S_NEXT, nq=2)
    assert before.cls == "kink" and before.err > certify.RTOL
    assert certify.pattern_mismatch(j, refs[2], np.ones(4), EPS[2]) == 1
    assert certify.pattern_mismatch(j, refs[2], np.ones(4), EPS[2], one_sided[2]) == 0
    # beyond the one-sided allowance it counts again
    dev5 = [d * 5 / 3 for d in dev]
    assert certify.classify(j, _refs(j, dev5), S_NEXT, nq=2, weights=one_sided).err > 0
