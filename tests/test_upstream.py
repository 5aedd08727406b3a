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



def test_overlapping_cache_bypasses_restore_the_state_before_the_first():
    """Two threads' blocks that overlap (the first leaves while the second is open): the cache
    stays bypassed until the last one leaves, then is as before (a saved-and-restored pair per
    block left it bypassed for good)."""
    import threading

    from jax._src import compilation_cache as cc
    from jax._src import xla_bridge

    backend = xla_bridge.get_backend()
    before = cc.is_cache_used(backend)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    inside: list[bool] = []

    def second() -> None:
        first_in.wait()
        with upstream.persistent_cache_bypassed():
            second_in.set()
            first_out.wait()
            inside.append(cc.is_cache_used(backend))  # after the first block left

    thread = threading.Thread(target=second)
    thread.start()
    with upstream.persistent_cache_bypassed():
        first_in.set()
        second_in.wait()
    first_out.set()
    thread.join()
    assert inside == [False]
    assert cc.is_cache_used(backend) == before

_STEP_CODE = """
import sys, numpy as np
from dynsparse import upstream
if sys.argv[1] == "blocked":
    upstream.mjx_without_warp()
import jax
from dynsparse import envs
spec = envs.load("CartpoleBalance", "float64")
state = jax.jit(spec.env.reset)(jax.random.PRNGKey(3))
state = jax.jit(spec.env.step)(state, np.full(spec.nu, 0.3))
np.save(sys.argv[2], np.concatenate([np.asarray(state.data.qpos), np.asarray(state.data.qvel), np.atleast_1d(state.reward)]))
from mujoco.mjx import warp as mjx_warp
print("warp" in sys.modules, mjx_warp.WARP_INSTALLED)
import warp  # still importable after MJX was imported without it
print(warp.__name__)
"""


def test_mjx_without_warp_simulates_identically_and_leaves_warp_importable(tmp_path):
    """The CLI's MJX without its Warp backend: the same numbers as with it; ``warp`` stays
    importable afterwards; MJX's "Failed to import" lines do not reach the user."""
    import subprocess
    import sys

    results = {}
    for mode in ("blocked", "default"):
        proc = subprocess.run([sys.executable, "-c", _STEP_CODE, mode, str(tmp_path / f"{mode}.npy")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[mode] = (proc.stdout, np.load(tmp_path / f"{mode}.npy"))
    assert results["blocked"][0].split() == ["False", "False", "warp"] and "Failed" not in results["blocked"][0]
    assert results["default"][0].split() == ["True", "True", "warp"]
    np.testing.assert_array_equal(results["blocked"][1], results["default"][1])


def test_mjx_without_warp_does_nothing_once_mjx_is_imported():
    import sys

    import mujoco.mjx

    had_warp = "warp" in sys.modules
    assert upstream.mjx_without_warp() is mujoco.mjx and ("warp" in sys.modules) == had_warp


_ALARMS = r'''
import os, sys, threading
from dynsparse import upstream
line = lambda f: ("E1206 06:27:48.908017   11335 cpu_aot_loader.cc:210] Loading XLA:CPU AOT result. Target machine "
                  f"feature +{f} is not  supported on the host machine. Machine type used for XLA:CPU compilation "
                  "doesn't match the machine type for execution. This could lead to execution errors such as SIGILL.\n")
print("before", file=sys.stderr, flush=True)
with upstream.aot_tuning_alarms_dropped():
    os.write(2, line("prefer-no-gather").encode())
    def other():  # a second thread loading at the same time, and a progress bar meanwhile
        with upstream.aot_tuning_alarms_dropped():
            os.write(2, line("prefer-no-scatter").encode())
            print("progress 50%", file=sys.stderr, flush=True)
    t = threading.Thread(target=other); t.start(); t.join()
    os.write(2, line("avx512fp16").encode())  # a real mismatch: kept
    print("still here", file=sys.stderr)
print("after", file=sys.stderr, flush=True)
'''


def test_xla_s_false_sigill_alarm_is_dropped_and_everything_else_kept():
    """The two tuning-flag alarms XLA logs for every executable loaded on a Zen 4 CPU go; the same
    alarm for an ISA feature, other threads' output and output around the block stay, in order."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _ALARMS], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert not [x for x in lines if "prefer-no-" in x], r.stderr
    assert [x for x in lines if "+avx512fp16 is not" in x], r.stderr
    order = [x for x in lines if x in ("before", "progress 50%", "still here", "after")]
    assert order == ["before", "progress 50%", "still here", "after"], r.stderr
    assert len(lines) == 5, r.stderr
