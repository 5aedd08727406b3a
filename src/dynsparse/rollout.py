"""Batched rollouts: trajectories of s, a, s', contacts and reward, in compiled chunks of steps.

A chunk runs ``chunk_steps`` control steps for a batch of episodes inside one jitted
``vmap(scan)`` (a batch of one: ``scan`` traced unbatched, ``per_episode``); with the autodiff backend the Jacobians are taken inside the same compiled
function. The carry between chunks (the batched Playground ``State`` and an ``alive`` flag) can be
saved and restored exactly, which is what makes collection resumable.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dynsparse import envs, tangent, xla
from dynsparse.jacobians import autodiff, definitions
from dynsparse.policies import Policy


def episode_keys(seed: int, episodes: np.ndarray) -> jax.Array:
    """``(B, 2)`` PRNG keys of the given episode indices: ``fold_in(PRNGKey(seed), episode)``."""
    base = jax.random.PRNGKey(int(seed))
    return jax.vmap(lambda e: jax.random.fold_in(base, e))(jnp.asarray(episodes, jnp.uint32))


@functools.lru_cache(maxsize=32)
def make_reset_fn(spec: envs.EnvSpec) -> Callable[[jax.Array], Any]:
    """Jitted ``reset(keys (B, 2)) -> batched State`` from the environment's own reset.

    Floating leaves are cast to ``spec.dtype`` (Playground's reset makes float64 data even for a
    float32 model) and made strongly typed (``reset`` returns e.g. a weakly typed ``time``), so
    that the carry has exactly the types the chunk function returns and it compiles once.
    With the JAX cache on, the traced program is kept on disk (``exported.Cached``).
    """
    from dynsparse import exported

    dtype = jnp.dtype(spec.dtype)

    def reset(keys: jax.Array) -> Any:
        states = per_episode(spec.env.reset)(keys)
        return jax.tree_util.tree_map(lambda x: _strong(x, dtype), states)

    return exported.Cached(jax.jit(reset), "reset", exported.env_identity(spec))


def _strong(x: jax.Array, dtype: Any) -> jax.Array:
    """Floating ``x`` cast to ``dtype`` with a strong (not weak) type; other leaves unchanged."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(dtype) + jnp.zeros((), dtype)
    return x


def batch_sharding(batch: int) -> Any:
    """A sharding that splits the leading (episode) axis over the CPU devices, or ``None``
    (one device, another backend, or a batch the device count does not divide).

    Every leaf of the chunk function's inputs has the batch as its leading axis, so the
    compiled chunk runs one slice of the episodes on each device; results differ from a
    one-device run only by round-off.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.local_devices()
    if jax.default_backend() != "cpu" or len(devices) < 2 or batch % len(devices):
        return None
    return NamedSharding(Mesh(np.array(devices), ("batch",)), PartitionSpec("batch"))


def per_episode(one: Callable[..., Any]) -> Callable[..., Any]:
    """``one`` (a function of one episode's arrays) mapped over the leading (episode) axis of all
    its arguments and results: ``jax.vmap(one)``, except for a batch of one episode, where ``one``
    is traced unbatched (a leading axis of 1 added to its results, Python scalars among them made
    arrays, with the dtypes and weak types vmap gives them), skipping vmap's batching rules.

    Measured (CheetahRun's chunk with Jacobians, 1 episode, 1 CPU device, 2-core CPU, jaxlib
    0.8.2): tracing 9.8 s against 17.0 s vmapped, compiling 23.2 s against 25.6 s, 39.3 s against
    48.1 s in all. Values may differ from the vmapped program's by round-off (another evaluation
    order); exact zeros are the same. One episode per device over several devices
    (``jax.shard_map`` of the unbatched function) traced as fast but compiled slower than the
    vmapped program (32.6 s against 23.7 s, 2 episodes on 2 devices), so it is not used.
    """

    def call(*args: Any) -> Any:
        if int(jax.tree_util.tree_leaves(args)[0].shape[0]) != 1:
            return jax.vmap(one)(*args)
        out = one(*jax.tree_util.tree_map(lambda x: x[0], args))
        # a Python scalar leaf (CheetahRun's reset returns some) becomes an array, as vmap makes it
        return jax.tree_util.tree_map(lambda y: jnp.asarray(y)[None], out)

    return call


def strong_like(tree: Any, like: Any) -> Any:
    """``tree`` with every weakly typed leaf whose counterpart in ``like`` (same structure) is not
    weakly typed made strong (same dtype, same values). The chunk returns its carry this way, so
    that the next chunk's arguments have the types of the first's: an environment whose step
    returns a weakly typed leaf (ReacherHard's reward) otherwise made every collection compile a
    second chunk program for the chunks after the first."""

    def strong(x: Any, ref: Any) -> Any:
        weak = lambda v: bool(getattr(jax.core.get_aval(v), "weak_type", False))  # noqa: E731
        return jax.lax.convert_element_type(x, x.dtype) if weak(x) and not weak(ref) else x

    return jax.tree_util.tree_map(strong, tree, like)


def put_sharded(tree: Any, sharding: Any) -> Any:
    """Every leaf of ``tree`` placed on ``sharding``: a leaf already there is returned as it is
    (still computing, the chunk's carry keeps its place in the pipeline); a leaf on one device is
    fetched to the host and put from there; a leaf spread over devices some other way, a weakly
    typed one (a host copy would lose its type) or one of another kind (e.g. typed PRNG keys) is
    put directly.

    Values are unchanged (a copy). Putting a one-device array on a sharding over several devices
    directly made JAX compile a resharding program: 1.2-1.4 s of every collection's start-up
    (the reset's carry, CheetahRun, 2 CPU devices), against 0.01 s through the host.
    """

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array):
            if x.sharding.is_equivalent_to(sharding, x.ndim):
                return x
            # already spread over devices (resharding it keeps the pipeline going), or weakly typed
            # (a host copy would lose that, and the program's signature change): put directly
            if len(x.sharding.device_set) > 1 or jax.dtypes.issubdtype(x.dtype, jax.dtypes.extended) or x.weak_type:
                return jax.device_put(x, sharding)
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree_util.tree_map(one, tree)


def make_chunk_fn(
    spec: envs.EnvSpec,
    policy: Policy,
    with_jacobians: bool,
    definition: str = definitions.DEFAULT_DEFINITION,
    compare_definitions: bool = False,
) -> Callable[..., Any]:
    """Jitted ``chunk(states, alive, noise) -> (states, alive, outputs)``, cached per
    ``(spec, policy configuration, with_jacobians, definition, compare_definitions)`` so a process
    traces and compiles it once; with the JAX cache on, the traced program is kept on disk per
    argument signature (``exported.Cached``), so a later process skips tracing too.

    Args (of the returned function):
      states: batched Playground ``State`` (batch ``B``).
      alive: ``(B,)`` bool, false once an episode has produced a NaN state.
      noise: ``(B, Tc, nu)`` the policy noise of these steps.

    Returns:
      The carry after ``Tc`` steps and a dict of ``(B, Tc, ...)`` arrays: ``state``, ``action``,
      ``next_state`` ``(.., nq+nv)``/``(.., nu)``, ``reward``, ``n_contacts``, ``contact_pairs`` ``(.., n_pairs)``, ``valid`` (the
      step exists: the episode was alive before it), the fields of ``finite_diff.StepInputs`` (to re-run a step natively),
      and with Jacobians ``J_s``, ``J_a`` (of ``definition``) and the solver diagnostics of
      ``definitions.diagnostics``; with ``compare_definitions`` also ``J_s_other``, ``J_a_other``
      and ``next_state_other`` of the other definition.
    """
    definitions.check_definition(definition)
    return _chunk_fn(spec, json.dumps(policy.config(), sort_keys=True), with_jacobians, definition, bool(compare_definitions))


@functools.lru_cache(maxsize=32)
def _chunk_fn(spec: envs.EnvSpec, policy_json: str, with_jacobians: bool, definition: str, compare_definitions: bool) -> Callable[..., Any]:
    from dynsparse.policies import from_config

    policy = from_config(json.loads(policy_json))
    env = spec.env
    low = jnp.asarray(spec.action_low)
    high = jnp.asarray(spec.action_high)
    jac = autodiff.make_jacobian_fn(spec, definition=definition) if with_jacobians else None
    other = None
    if with_jacobians and compare_definitions:
        other = autodiff.make_jacobian_fn(spec, definition=next(d for d in definitions.DEFINITIONS if d != definition))
    pair_names, pair_table = envs.contact_pairs(spec)

    replay = getattr(policy, "recorded", None)

    def step(carry: tuple[Any, jax.Array], noise_t: jax.Array) -> tuple[tuple[Any, jax.Array], dict]:
        state, alive = carry
        if replay is not None:  # collect --from: the recorded state of this step, its validity
            from mujoco import mjx

            qpos, qvel, alive = replay(noise_t)
            qpos = tangent.normalize_quaternions(spec.charts, qpos.astype(state.data.qpos.dtype))
            d = mjx.forward(spec.mjx_model, state.data.replace(qpos=qpos, qvel=qvel.astype(state.data.qvel.dtype)))
            state = state.replace(data=d)
        d = state.data
        a = policy.act(state.obs, noise_t, low, high).astype(d.qpos.dtype)
        nxt = env.step(state, a)
        out = {
            "state": envs.state_of(d),
            "action": a,
            "next_state": envs.state_of(nxt.data),
            "reward": nxt.reward,
            "n_contacts": envs.count_contacts(nxt.data),
            "contact_pairs": envs.active_contact_pairs(nxt.data, pair_table, len(pair_names)),
            "valid": alive,
            "qpos": d.qpos,
            "qvel": d.qvel,
            "warmstart": d.qacc_warmstart,
            "ctrl": a,
            "act": d.act,
            "mocap_pos": d.mocap_pos,
            "mocap_quat": d.mocap_quat,
            "time": d.time,
        }
        if jac is not None:
            j_s, j_a, s_next, diag = jac(d, a)
            out.update(J_s=j_s, J_a=j_a, next_state_definition=s_next, **diag)
        if other is not None:
            j_s, j_a, s_next, _ = other(d, a)
            out.update(J_s_other=j_s, J_a_other=j_a, next_state_other=s_next)
        alive = alive & ~(nxt.done > 0)
        return (nxt, alive), out

    def one_env(state: Any, alive: jax.Array, noise: jax.Array) -> tuple[Any, jax.Array, dict]:
        (last, alive), out = jax.lax.scan(step, (state, alive), noise)
        return strong_like(last, state), alive, out

    from dynsparse import exported

    program = getattr(policy, "program_identity", None)
    identity = {**exported.env_identity(spec), "policy": policy_json, "policy_program": program() if program else None,
                "with_jacobians": with_jacobians,
                "definition": definition, "compare_definitions": compare_definitions}
    options = xla.compiler_options()
    return exported.Cached(jax.jit(per_episode(one_env), compiler_options=options), "chunk", identity, options)
