"""A program for tests/test_exported.py, run in fresh processes: a custom pytree with static NumPy
data (as MJX's Contact carries), LAPACK calls (Cholesky, LU solve), two CPU devices or one."""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from dynsparse import exported, jaxcache  # noqa: E402


class Static:
    """Hashable static data holding an array (like mjx's _NumPyArrayHashWrapper)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array

    def __hash__(self) -> int:
        return hash(self.array.tobytes())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Static) and np.array_equal(self.array, other.array)


@jax.tree_util.register_pytree_node_class
class Box:
    def __init__(self, x: jax.Array, y: jax.Array, ids: Static):
        self.x, self.y, self.ids = x, y, ids

    def tree_flatten(self):
        return (self.x, self.y), self.ids

    @classmethod
    def tree_unflatten(cls, ids, children):
        return cls(*children, ids)


def program(box: Box, rhs: jax.Array) -> tuple[Box, dict]:
    import os
    import time

    time.sleep(float(os.environ.get("EXPORTED_PROGRAM_TRACE_SLEEP", "0")))  # Python: runs while tracing only
    a = box.x @ box.x.T + 3.0 * jnp.eye(box.x.shape[0])
    chol = jnp.linalg.cholesky(a)
    sol = jnp.linalg.solve(a, rhs)
    return Box(chol, box.y * 2.0, box.ids), {"sol": sol, "ids": jnp.asarray(box.ids.array).sum()}


def run(folder: str) -> dict:
    import os

    jaxcache.enable(folder)
    if os.environ.get("EXPORTED_PROGRAM_CACHE_ALL"):  # keep even this quick compile in XLA's cache
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if os.environ.get("EXPORTED_PROGRAM_NO_BYPASS"):  # compile the kept executable through XLA's cache, as before
        import contextlib

        from dynsparse import upstream

        upstream.persistent_cache_bypassed = contextlib.nullcontext
    fn = exported.Cached(jax.jit(program), "test", {"name": "exported_program"})
    x = np.arange(16.0).reshape(4, 4) / 7.0
    box = Box(jnp.asarray(x), jnp.ones(3), Static(np.array([1, 2, 3])))
    out_box, out = fn(box, jnp.arange(4.0))
    from pathlib import Path

    (path,) = (Path(folder) / "exported").glob("test-*.bin")
    targets = sorted(exported.custom_call_targets(exported._read(path)[0]))
    return {"sources": sorted(fn.sources.values()), "targets": targets, "chol": np.asarray(out_box.x).tolist(), "y": np.asarray(out_box.y).tolist(),
            "sol": np.asarray(out["sol"]).tolist(), "ids": int(out["ids"]), "ids_static": out_box.ids.array.tolist()}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])))
