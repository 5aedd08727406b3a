"""``upstream``: the private modules of other packages that dynsparse uses are where it expects
them, with what it uses (an upgrade that moves one fails here, by name, not deep in a run)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynsparse import upstream


def test_private_modules_hold_what_dynsparse_uses():
    mjx_env = upstream.playground_mjx_env()
    assert hasattr(mjx_env, "State") and hasattr(mjx_env, "MENAGERIE_PATH")
    wrapper = upstream.playground_wrapper()
    assert callable(wrapper.wrap_for_brax_training) and isinstance(wrapper.Wrapper, type)
    driver = upstream.mjx_collision_driver()
    assert callable(driver.geom_pairs) and callable(driver.has_collision_fn)
    assert callable(upstream.jaxlib_lapack().prepare_lapack_call)


def test_jax_compat_rebuilds_device_put_replicated():
    devices = jax.devices()
    out = upstream.device_put_replicated({"a": jnp.arange(3.0)}, devices)
    assert out["a"].shape == (len(devices), 3) and len(out["a"].sharding.device_set) == len(devices)
    np.testing.assert_array_equal(np.asarray(out["a"])[-1], [0.0, 1.0, 2.0])
    if hasattr(jax, "device_put_replicated"):  # JAX's own, where it still has one: the same values
        assert upstream.jax_compat() == []
        theirs = jax.device_put_replicated({"a": jnp.arange(3.0)}, devices)
        np.testing.assert_array_equal(np.asarray(theirs["a"]), np.asarray(out["a"]))
    else:
        assert upstream.jax_compat() == ["jax.device_put_replicated"] and jax.device_put_replicated is upstream.device_put_replicated
        del jax.device_put_replicated  # leave JAX as it was for the other tests


def test_the_persistent_cache_bypass_is_scoped():
    """Inside the block JAX uses no persistent cache; after it (also after an error) as before."""
    import pytest
    from jax._src import compilation_cache as cc
    from jax._src import xla_bridge

    backend = xla_bridge.get_backend()
    before = cc.is_cache_used(backend)
    with upstream.persistent_cache_bypassed():
        assert cc.is_cache_used(backend) is False
    assert cc.is_cache_used(backend) == before
    with pytest.raises(RuntimeError), upstream.persistent_cache_bypassed():
        raise RuntimeError("compile failed")
    assert cc.is_cache_used(backend) == before
