"""Policies: reproducible per-episode noise, bounds, and colored-noise spectra."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynsparse import errors, policies
from dynsparse.policies import noise as noise_lib


def _noise(impl: str, beta: float, n_steps: int, n_seq: int, seed: int) -> np.ndarray:
    if impl == "numpy":
        return policies.colored_noise(beta, n_steps, n_seq, np.random.default_rng(seed))
    return np.asarray(noise_lib.colored_noise_jax(jax.random.PRNGKey(seed), beta, n_steps, n_seq))


def _spectral_slope(beta: float, n_steps: int = 4096, n_seq: int = 200, impl: str = "numpy") -> float:
    x = _noise(impl, beta, n_steps, n_seq, 0)
    power = np.mean(np.abs(np.fft.rfft(x, axis=0)) ** 2, axis=1)[1:]
    f = np.fft.rfftfreq(n_steps)[1:]
    band = (f > 2.0 / n_steps) & (f < 0.25)  # away from the DC cut-off and from aliasing
    slope, _ = np.polyfit(np.log(f[band]), np.log(power[band]), 1)
    return float(slope)


@pytest.mark.parametrize("impl", ["numpy", "jax"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
def test_colored_noise_power_spectrum_slope_is_minus_beta(beta, impl):
    assert _spectral_slope(beta, impl=impl) == pytest.approx(-beta, abs=0.1)


@pytest.mark.parametrize("impl", ["numpy", "jax"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_colored_noise_has_unit_variance(beta, impl):
    x = _noise(impl, beta, 1000, 2000, 1)
    assert x.shape == (1000, 2000)
    # variance across independent sequences at each time, averaged: 1 in expectation
    assert np.var(x, axis=1).mean() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("beta", [-0.1, 2.1, float("nan")])
def test_beta_out_of_range(beta):
    with pytest.raises(errors.UserError, match="beta"):
        policies.make("colored", beta=beta)


def test_episode_noise_is_reproducible_and_independent_of_batching():
    pol = policies.make("colored", beta=1.0)
    a = pol.batch_noise(3, np.arange(4), 50, 2)
    b = pol.batch_noise(3, np.array([2, 3]), 50, 2)
    np.testing.assert_array_equal(a[2:], b)
    assert not np.allclose(a[0], a[1])
    assert not np.allclose(a, pol.batch_noise(4, np.arange(4), 50, 2))


def test_random_policy_spans_bounds_and_colored_is_clipped():
    low, high = jnp.array([-1.0, 0.0]), jnp.array([1.0, 4.0])
    rnd = policies.make("random")
    noise = rnd.episode_noise(0, 0, 1000, 2)
    acts = np.stack([np.asarray(rnd.act(None, jnp.asarray(n), low, high)) for n in noise[:200]])
    assert (acts >= np.asarray(low)).all() and (acts <= np.asarray(high)).all()
    col = policies.make("colored", beta=2.0, scale=3.0)
    noise = col.episode_noise(0, 0, 200, 2)
    acts = np.stack([np.asarray(col.act(None, jnp.asarray(n), low, high)) for n in noise])
    assert (acts >= np.asarray(low)).all() and (acts <= np.asarray(high)).all()
    assert (acts == np.asarray(high)).any()  # scale 3 saturates


def test_config_round_trip():
    pol = policies.make("colored", beta=0.5, scale=0.3)
    again = policies.from_config(pol.config())
    assert again.config() == {"name": "colored", "beta": 0.5, "scale": 0.3}
    with pytest.raises(errors.UserError, match="unknown policy 'expert'"):
        policies.from_config({"name": "expert"})
    with pytest.raises(errors.UserError, match="policy 'ppo' needs a checkpoint folder"):
        policies.from_config({"name": "ppo"})
    with pytest.raises(errors.UserError, match="bad options for policy 'colored'"):
        policies.from_config({"name": "colored", "colour": "red"})


def test_the_interface_classes_directly():
    """``policies.base``: the registry builds these classes; their noise is a pure function of
    (seed, episode) and the random policy maps uniform noise in [0, 1) affinely onto the bounds."""
    from dynsparse.policies import base

    assert isinstance(policies.make("random"), base.RandomPolicy) and issubclass(base.ColoredNoisePolicy, base.Policy)
    rnd = base.RandomPolicy()
    noise = rnd.episode_noise(7, 1, 20, 3)
    np.testing.assert_array_equal(noise, rnd.episode_noise(7, 1, 20, 3))
    assert noise.shape == (20, 3) and noise.min() >= 0.0 and noise.max() < 1.0
    low, high = jnp.array([-2.0, 0.0, 1.0]), jnp.array([2.0, 1.0, 3.0])
    np.testing.assert_allclose(np.asarray(rnd.act(None, jnp.array([0.0, 0.5, 1.0]), low, high)), [-2.0, 0.5, 3.0])
    np.testing.assert_array_equal(rnd.batch_noise(7, np.array([1]), 20, 3)[0], noise)
    assert base.ColoredNoisePolicy(beta=2.0, scale=0.5).config() == {"name": "colored", "beta": 2.0, "scale": 0.5}
