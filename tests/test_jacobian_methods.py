"""The fast exact path (``substep``) against the reference autodiff path (``reference``), for
both Jacobian definitions.

Guard (issue 6): identical zero decisions at the default threshold, values within 1e-6 relative,
the same next state (as-run: bit for bit; converged: to round-off, the two programs differ) and
the same solver diagnostics, on states from real rollouts.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import one_error_line
from models import BOUNCER, LIMITED_ARM

from dynsparse import envs, errors
from dynsparse.jacobians import autodiff, compare, definitions


def rollout_states(spec: envs.EnvSpec, n: int, steps: int, seed: int = 0):
    """``n`` batched ``mjx.Data`` states after ``steps`` uniform random actions, and an action each."""
    env = spec.env
    low, high = np.nan_to_num(spec.action_low, neginf=-1.0), np.nan_to_num(spec.action_high, posinf=1.0)

    @jax.jit
    def roll(keys):
        def one(key):
            state = env.reset(key)
            acts = jax.random.uniform(key, (steps + 1, spec.nu), minval=low, maxval=high)
            state, datas = jax.lax.scan(lambda s, a: (env.step(s, a), s.data), state, acts[:-1])
            return datas, acts[:-1]
        return jax.vmap(one)(keys)

    datas, acts = roll(jax.random.split(jax.random.PRNGKey(seed), n))
    flat = lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])  # noqa: E731
    return jax.tree_util.tree_map(flat, datas), flat(acts)


def both_methods(spec: envs.EnvSpec, data, actions, definition: str):
    out = {}
    for method in ("reference", "substep"):
        fn = jax.jit(jax.vmap(autodiff.make_jacobian_fn(spec, method, definition)))
        j_s, j_a, s_next, diag = fn(data, actions)
        out[method] = [np.asarray(j_s), np.asarray(j_a), np.asarray(s_next), {k: np.asarray(v) for k, v in diag.items()}]
    return out["reference"], out["substep"]


def assert_guard(ref, new, definition: str, expect_zeros: bool = True):
    j_ref = np.concatenate([ref[0], ref[1]], axis=-1)
    j_new = np.concatenate([new[0], new[1]], axis=-1)
    agreement = compare.method_agreement(j_ref, j_new)
    assert agreement.zero_mismatch == 0, agreement
    assert agreement.max_rel_err <= compare.GUARD_RTOL, agreement
    assert agreement.passes()
    # some entries are exact zeros and some are not: the comparison is not vacuous
    if expect_zeros:
        assert 0 < int(np.sum(np.abs(j_ref) < 1e-12)) < j_ref.size
    if definition == "as-run":
        np.testing.assert_array_equal(new[2], ref[2])  # next state: the same simulation, bit for bit
    else:
        np.testing.assert_allclose(new[2], ref[2], rtol=0, atol=1e-12)
    for key in ("solver_truncated", "solver_start_returned"):
        np.testing.assert_array_equal(new[3][key], ref[3][key])
    return agreement


@pytest.mark.slow  # ~160 s cold; the limited arm below (limits, friction loss, contact, sensors) is a superset
@pytest.mark.parametrize("definition", definitions.DEFINITIONS)
def test_substep_equals_reference_on_cartpole(cartpole, definition):
    data, actions = rollout_states(cartpole, 4, 12)
    assert_guard(*both_methods(cartpole, data, actions, definition), definition)


@pytest.mark.slow  # the limited arm below covers contacts too, faster
@pytest.mark.parametrize("definition", definitions.DEFINITIONS)
def test_substep_equals_reference_with_contacts_over_two_substeps(definition):
    spec = envs.from_mjcf(BOUNCER, name="Bouncer", n_substeps=2, init_noise=0.05)
    data, actions = rollout_states(spec, 4, 30)
    ref, new = both_methods(spec, data, actions, definition)
    assert_guard(ref, new, definition)
    # contact and flight steps were both compared: friction couples x and z only in contact
    coupled = np.abs(ref[0][:, 0, 3]) > 1e-12
    assert coupled.any() and not coupled.all()


@pytest.mark.parametrize("definition", [
    # as-run (the model's own, truncated solver) in the fast tier; converged (~180 s cold more)
    # runs the same chain with other solver settings, in the slow tier.
    "as-run", pytest.param("converged", marks=pytest.mark.slow),
])
def test_substep_equals_reference_with_limits_friction_loss_contact_and_sensors(definition):
    spec = envs.from_mjcf(LIMITED_ARM, name="LimitedArm", n_substeps=3, init_noise=0.3)
    assert spec.mj_model.nsensor > 0
    data, actions = rollout_states(spec, 4, 40, seed=3)
    ref, new = both_methods(spec, data, actions, definition)
    assert_guard(ref, new, definition, expect_zeros=False)  # every variable moves every other here
    # limits and contacts were active at some of the compared steps
    assert int(np.asarray(jax.vmap(envs.count_contacts)(data)).max()) > 0


def test_method_agreement_counts_zero_decisions_and_relative_error():
    a = np.array([[0.0, 1.0, 2e-13, 5.0]])
    b = np.array([[0.0, 1.0 + 1e-7, 3e-12, 5.0]])  # entry 2: zero vs nonzero at threshold 1e-12
    agreement = compare.method_agreement(a, b)
    assert agreement.zero_mismatch == 1
    assert agreement.max_rel_err == pytest.approx((3e-12 - 2e-13) / 3e-12)
    assert not agreement.passes()
    close = compare.method_agreement(a[:, :2], b[:, :2])
    assert close.zero_mismatch == 0 and close.max_rel_err == pytest.approx(1e-7 / (1 + 1e-7))
    assert close.passes() and not close.passes(rtol=1e-8)
    assert compare.method_agreement(np.zeros(3), np.zeros(3)) == compare.MethodAgreement(0, 0.0, 3)
    assert np.isnan(compare.method_agreement(np.array([np.nan]), np.array([0.0])).max_rel_err)


def test_unknown_method_is_one_line_error(cartpole):
    with pytest.raises(errors.UserError) as exc:
        autodiff.make_jacobian_fn(cartpole, "jacrev")
    assert one_error_line(str(exc.value)) == "unknown autodiff method 'jacrev'; allowed: substep, reference"


def test_the_default_method_is_the_substep_chain():
    assert autodiff.DEFAULT_METHOD == "substep"
    assert set(autodiff.METHOD_DESCRIPTIONS) == set(autodiff.METHODS)


def test_unknown_definition_is_one_line_error(cartpole):
    with pytest.raises(errors.UserError) as exc:
        autodiff.make_jacobian_fn(cartpole, "substep", "exact")
    assert one_error_line(str(exc.value)) == "unknown Jacobian definition 'exact'; allowed: converged, as-run"


@pytest.mark.long  # ~10 min; benchmarks/jacobians.py runs the same guard on every benchmark
@pytest.mark.parametrize("env", ["CheetahRun", "WalkerRun"])
@pytest.mark.parametrize("definition", definitions.DEFINITIONS)
def test_substep_equals_reference_on_the_target_envs(env, definition):
    spec = envs.load(env)
    data, actions = rollout_states(spec, 2, 40)
    idx = np.arange(0, 80, 5)  # 16 states spread over both trajectories (contacts included)
    data = jax.tree_util.tree_map(lambda x: x[idx], data)
    ref, new = both_methods(spec, data, actions[idx], definition)
    assert_guard(ref, new, definition)
    assert int(np.asarray(jax.vmap(envs.count_contacts)(data)).max()) > 0


def test_batched_like_keeps_every_value_and_makes_the_start_batched_under_vmap():
    """``autodiff.batched_like`` (the chain's start matrices): the same values bit for bit, also
    when the data's time is NaN or the model has no actuator; under ``vmap`` the result is computed
    per episode (a select on a batched predicate), not broadcast from one unbatched value at the
    end, which is what lets the chain's scan start with a batched carry."""
    import types

    import jax.numpy as jnp

    tree = (jnp.eye(3, 2), jnp.zeros((3, 0)), jnp.arange(4, dtype=jnp.int32))
    for time, a in ((0.5, jnp.ones(2)), (np.nan, jnp.ones(2)), (0.5, jnp.zeros(0)), (np.nan, jnp.full(1, np.nan))):
        out = autodiff.batched_like(tree, types.SimpleNamespace(time=jnp.asarray(time)), a)
        for x, y in zip(out, tree):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    def start(t, a):
        return autodiff.batched_like(jnp.eye(2), types.SimpleNamespace(time=t), a)

    batched = jax.make_jaxpr(jax.vmap(start))(jnp.zeros(4), jnp.ones((4, 1))).jaxpr
    last = batched.eqns[-1]  # jnp.where: a select_n, wrapped in a jit named after it
    assert (last.primitive.name, last.params.get("name")) in {("select_n", None), ("jit", "_where")}, last
    assert batched.outvars[0].aval.shape == (4, 2, 2)
    # without it, vmap would make the (unbatched) start and broadcast it to the batch
    plain = jax.make_jaxpr(jax.vmap(lambda t, a: jnp.eye(2)))(jnp.zeros(4), jnp.ones((4, 1))).jaxpr
    assert plain.eqns[-1].primitive.name == "broadcast_in_dim"
