"""The one place dynsparse reaches into other packages' private modules (each with why), and
where it patches an upstream API back in (``jax_compat``).

Every function imports on first use (these pull in Playground, MJX or jaxlib) and returns the
module. When an upgrade moves one of them, this file (and the pinned ``constraints.txt``) is what
changes. MJX's solver internals are the exception, kept where they are used:
``dynsparse.jacobians.solve`` re-implements MJX's constraint-solver step with them (the named
Jacobian definitions differentiate that step) and imports them at its top.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any


def playground_mjx_env() -> ModuleType:
    """``mujoco_playground._src.mjx_env``: Playground's ``State`` (the carry of every
    environment, which ``envs.MjcfEnv`` must return) and ``MENAGERIE_PATH`` (where the Menagerie
    models are read; set by ``--menagerie``) are not exported by ``mujoco_playground``."""
    from mujoco_playground._src import mjx_env

    return mjx_env


def playground_wrapper() -> ModuleType:
    """``mujoco_playground._src.wrapper``: ``wrap_for_brax_training`` and ``Wrapper``, which PPO
    training needs exactly as Playground's own training scripts use them (the colored-noise
    wrapper subclasses ``Wrapper``)."""
    from mujoco_playground._src import wrapper

    return wrapper


def mjx_collision_driver() -> ModuleType:
    """``mujoco.mjx._src.collision_driver``: MJX's static list of candidate geom pairs
    (``geom_pairs``, ``has_collision_fn``), the pairs it can put in contact; no public API lists
    them, and the dataset's ``contact_pair`` coordinate must name exactly those."""
    from mujoco.mjx._src import collision_driver

    return collision_driver


#: The modules ``mjx_without_warp`` keeps out: NVIDIA Warp and MJX's bundled MuJoCo Warp.
WARP_MODULES = ("warp", "mujoco.mjx.third_party.mujoco_warp")


def mjx_without_warp() -> ModuleType:
    """Import ``mujoco.mjx`` with its optional Warp backend left out; return it.

    ``mujoco.mjx`` imports NVIDIA Warp and MuJoCo Warp at its top when they are installed
    (Playground requires ``warp-lang``): 2.8 s of a 12 s warm ``collect`` on this 2-core machine,
    for a backend (``impl="warp"``, GPU) dynsparse never uses. MJX guards those imports with
    ``try/except ImportError`` and then runs its JAX implementation unchanged (the compiled
    programs and their results are identical: ``tests/test_upstream.py``), so the CLI's
    simulating commands import MJX with the two modules blocked for the duration of that import
    only (MJX's "Failed to import warp" lines are swallowed); a later ``import warp`` works, but MJX
    in this process then has no Warp backend. Nothing happens when MJX is already imported.
    """
    if "mujoco.mjx" in sys.modules:
        return sys.modules["mujoco.mjx"]
    blocked = [name for name in WARP_MODULES if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` raise ImportError
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            import mujoco.mjx
    except BaseException:
        sys.stdout.write(printed.getvalue())  # MJX's own diagnostics, for the error that follows
        raise
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    # only MJX's "Failed to import ..." lines are swallowed; anything else printed meanwhile is kept
    sys.stdout.write("".join(ln for ln in printed.getvalue().splitlines(keepends=True) if not ln.startswith("Failed to import")))
    return mujoco.mjx


def jaxlib_lapack() -> ModuleType:
    """``jax._src.lib.lapack``: jaxlib fills LAPACK's function table only when it lowers a
    linalg op; a serialized program loaded in a fresh process never lowers one, so
    ``exported`` calls ``prepare_lapack_call`` itself (else its custom calls crash)."""
    from jax._src.lib import lapack

    return lapack


def jax_compat() -> list[str]:
    """Restore the JAX APIs brax 0.14.2's PPO trainer calls that newer JAX removed; names what it added.

    ``jax.device_put_replicated`` (removed in JAX 0.10) is rebuilt from ``jax.device_put`` with a
    sharding over the devices' leading axis. Only used where JAX lacks it (e.g. a GPU machine with a
    newer JAX than the pinned set).
    """
    import jax

    added = []
    if not hasattr(jax, "device_put_replicated"):
        jax.device_put_replicated = device_put_replicated
        added.append("jax.device_put_replicated")
    return added


def device_put_replicated(x: Any, devices: Any) -> Any:
    """``jax.device_put_replicated`` as JAX had it: every leaf of ``x`` stacked once per device
    on a new leading axis, that axis sharded over ``devices``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    return jax.tree_util.tree_map(lambda a: jax.device_put(jnp.stack([jnp.asarray(a)] * len(devices)), sharding), x)


#: ``persistent_cache_bypassed``'s open blocks (all threads) and JAX's cache state before the first.
_bypass: dict[str, Any] = {"depth": 0, "saved": None}


@contextlib.contextmanager
def persistent_cache_bypassed() -> Iterator[None]:
    """Compile without JAX's persistent compilation cache (neither read nor written) in the block.

    ``jax._src.compilation_cache``: JAX decides once per process whether the cache is used
    (``is_cache_used`` memoises ``_cache_checked`` / ``_cache_used``) and no public API turns it
    off for one compile. ``exported`` needs that: an executable the cache handed back cannot be
    serialized again on CPU (jaxlib 0.8.2: the copy loads, then fails at run time, "Function
    wrapped_iota not found"), so the executables it keeps are compiled with the cache bypassed.

    The state is process-wide, so blocks open at once (nested, or in several threads) share one
    bypass: the first saves JAX's state, the last to leave restores it (also when a compile
    raises). A compile in another thread while a block is open bypasses the cache too (it is
    only slower).
    """
    from jax._src import compilation_cache as cc

    with cc._cache_initialized_mutex:
        if _bypass["depth"] == 0:
            _bypass["saved"] = (cc._cache_checked, cc._cache_used)
            cc._cache_checked, cc._cache_used = True, False
        _bypass["depth"] += 1
    try:
        yield
    finally:
        with cc._cache_initialized_mutex:
            _bypass["depth"] -= 1
            if _bypass["depth"] == 0:
                cc._cache_checked, cc._cache_used = _bypass["saved"]


#: XLA's false alarm on loading an executable compiled on this very CPU (see ``aot_tuning_alarms_dropped``)
AOT_TUNING_ALARM = re.compile(
    rb"^[^\n]*cpu_aot_loader\.cc:\d+\] Loading XLA:CPU AOT result\. Target machine feature "
    rb"\+prefer-no-(?:gather|scatter) is not +supported on the host machine\.[^\n]*(?:\n|$)", re.M)

def _redirect_stderr() -> tuple[int | None, Any]:
    """Descriptor 2 pointed at a new temporary file: ``(a duplicate of the old descriptor 2, the
    file)``, or ``(None, None)`` (nothing changed) where that fails."""
    capture = saved = None
    try:
        sys.stderr.flush()
        capture = tempfile.TemporaryFile()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        return saved, capture
    except (OSError, ValueError, AttributeError):
        if saved is not None:
            os.close(saved)
        if capture is not None:
            capture.close()
        return None, None


#: ``aot_tuning_alarms_dropped``'s open blocks (all threads), the saved standard error and the capture
_alarms: dict[str, Any] = {"depth": 0, "saved": None, "capture": None, "lock": threading.Lock()}


@contextlib.contextmanager
def aot_tuning_alarms_dropped() -> Iterator[None]:
    """Load compiled executables without XLA's false "could lead to SIGILL" alarm.

    jaxlib 0.8.2 records LLVM's *tuning* flags ``+prefer-no-gather`` / ``+prefer-no-scatter`` among
    an executable's target features (set for AMD Zen 4, this project's CPU), and its loader
    (``cpu_aot_loader.cc``) compares them with the host's ISA features, where they never appear:
    every load of an executable compiled on this same machine logged two ERROR lines ending "This
    could lead to execution errors such as SIGILL" (loading goes on; 18 such lines in README
    command (a), 48 in a warm paper-scale study). Upstream: openxla/xla#44565, jax-ml/jax#38445.
    Those two lines are dropped; anything else written to standard error meanwhile, including the
    same alarm for any other feature (a real mismatch), is written out when the block ends.

    Standard error (file descriptor 2) is process-wide, so blocks open at once (executables loading
    in several threads) share one capture: the first redirects descriptor 2 to a temporary file,
    the last to leave restores it and writes out what was captured (other threads' output, e.g. a
    progress bar, appears when the load ends, ~1-2 s late). Where descriptor 2 cannot be
    redirected the block changes nothing.
    """
    with _alarms["lock"]:
        if _alarms["depth"] == 0:
            _alarms["saved"], _alarms["capture"] = _redirect_stderr()
        _alarms["depth"] += 1
    try:
        yield
    finally:
        with _alarms["lock"]:
            _alarms["depth"] -= 1
            if _alarms["depth"] == 0 and _alarms["capture"] is not None:
                saved, capture = _alarms["saved"], _alarms["capture"]
                _alarms["saved"] = _alarms["capture"] = None
                try:
                    sys.stderr.flush()
                except (OSError, ValueError, AttributeError):
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                rest = AOT_TUNING_ALARM.sub(b"", capture.read())
                capture.close()
                while rest:
                    rest = rest[os.write(2, rest):]
