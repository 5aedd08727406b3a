"""``rollout``: placing a carry on the episode sharding (PPO's evaluation loop: test_ppo_train.py;
collection's chunks: test_collect.py, test_resume.py)."""

from __future__ import annotations

import os
import subprocess
import sys

_CODE = """
import numpy as np
from dynsparse import xla
xla.use_cpu_cores(2)
import jax, jax.numpy as jnp
from dynsparse import rollout
sharding = rollout.batch_sharding(4)
assert sharding is not None and len(sharding.device_set) == 2
tree = {"one_device": jnp.arange(8.0).reshape(4, 2) / 3, "host": np.arange(4), "flag": jnp.ones(4, bool)}
placed = rollout.put_sharded(tree, sharding)
for name, x in placed.items():
    assert x.sharding.is_equivalent_to(sharding, x.ndim), name
    np.testing.assert_array_equal(np.asarray(x), np.asarray(tree[name]))
    assert x.dtype == jnp.asarray(tree[name]).dtype, name
again = rollout.put_sharded(placed, sharding)
assert all(again[name] is placed[name] for name in placed)  # already placed: left as it is
from jax.sharding import NamedSharding, PartitionSpec
# spread over the devices another way, weakly typed, typed PRNG keys: put directly, kept as they are
replicated = jax.device_put(jnp.arange(4.0), NamedSharding(sharding.mesh, PartitionSpec()))
weak = jax.lax.broadcast(jnp.asarray(2.0), (4,))
assert weak.weak_type
keys = jax.random.split(jax.random.key(0), 4)
other = rollout.put_sharded({"replicated": replicated, "weak": weak, "keys": keys}, sharding)
for name, x in other.items():
    assert x.sharding.is_equivalent_to(sharding, 1), name
np.testing.assert_array_equal(np.asarray(other["replicated"]), np.arange(4.0))
assert other["weak"].weak_type and other["weak"].dtype == weak.dtype
np.testing.assert_array_equal(jax.random.key_data(other["keys"]), jax.random.key_data(keys))
print("ok")
"""


def test_put_sharded_places_every_leaf_unchanged_and_keeps_placed_ones():
    env = {k: v for k, v in os.environ.items() if k != "DYNSPARSE_CPU_DEVICES"}
    proc = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_strong_like_makes_only_the_leaves_weak_where_the_reference_is_not_strong():
    """The chunk returns its carry with the types it came in with (``rollout.strong_like``): a
    step's weakly typed reward would otherwise give the next chunk other argument types (another
    compiled program)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dynsparse import rollout

    def weak_of(x) -> bool:
        return bool(jax.core.get_aval(x).weak_type)

    ref = {"reward": jnp.zeros((2,)), "w": jnp.asarray(1.0), "n": jnp.arange(2)}
    assert not weak_of(ref["reward"]) and weak_of(ref["w"])

    @jax.jit
    def step(tree):
        out = {"reward": jnp.asarray(0.5) * 2.0, "w": tree["w"] * 2.0, "n": tree["n"] + 1}  # reward: weakly typed
        out["reward"] = jnp.broadcast_to(out["reward"], (2,))
        return out, rollout.strong_like(out, tree)

    raw, fixed = step(ref)
    assert weak_of(raw["reward"]) and not weak_of(fixed["reward"]) and fixed["reward"].dtype == raw["reward"].dtype
    assert weak_of(fixed["w"])  # weak in the reference too: left as it is
    for k in raw:
        assert np.array_equal(np.asarray(raw[k]), np.asarray(fixed[k]))


def test_per_episode_returns_what_vmap_returns_for_one_episode_too():
    """A batch of one episode is traced unbatched; its results have vmap's structure, shapes,
    dtypes and weak types, Python scalars among them (CheetahRun's reset returns some: a batch
    of one crashed on them before)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dynsparse import rollout

    def one(x):
        return {"x": 2.0 * x, "py_float": 0.5, "py_int": 3, "py_bool": True, "sum": jnp.sum(x)}

    for batch in (1, 2):
        x = jnp.arange(3.0 * batch).reshape(batch, 3)
        got = jax.jit(rollout.per_episode(one))(x)
        want = jax.jit(jax.vmap(one))(x)
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
        for name in want:
            assert got[name].shape == want[name].shape == (batch,) + np.shape(one(x[0])[name]), name
            assert got[name].dtype == want[name].dtype and got[name].weak_type == want[name].weak_type, name
            np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]))
