"""brax's PPO training loop, restructured so a run can stop after any evaluation and resume exactly.

``brax.training.agents.ppo.train`` (brax 0.14.2, Apache-2.0) keeps all of its state in local
variables of one function, and its own ``restore_checkpoint_path`` restores only the network
parameters and the observation normaliser: the optimizer's moments, the step count and the random
keys start afresh. This module is the same algorithm, line for line where it matters, split into a
setup (:class:`PPORun`) and an explicit state (:class:`LoopState`) that can be written to and read
from an ``.npz`` file. An uninterrupted run equals brax's ``ppo.train`` with the same arguments bit
for bit (tested on CPU), and a run stopped after evaluation *k* and resumed equals the uninterrupted
one bit for bit (tested), because the saved state is all that the remaining iterations read:

- ``training_state``: optimizer state (Adam's count and moments), policy and value parameters,
  observation normaliser, environment steps;
- ``local_key``: the key brax splits once per training epoch;
- ``key_envs``: the per-environment reset keys (devices x envs-per-device x 2);
- ``eval_key``: the evaluator's key (split once per evaluation);
- ``iterations_done``: outer iterations finished (brax's ``it``), and whether the initial
  evaluation (before any training) was run.

The environments' own state is not stored: with ``num_resets_per_eval > 0`` (Playground's published
settings use 10) brax resets every environment from ``key_envs`` after each epoch, so at an
evaluation boundary that state is ``reset(key_envs)`` and is rebuilt on resume. With
``num_resets_per_eval = 0`` the environments carry over between epochs and resuming is refused.

The subset of ``ppo.train`` kept: flat observations (no vision, no pixel augmentation), the
training wrapper given by ``wrap_env_fn``, no domain randomisation, a constant learning rate (no
adaptive-KL schedule), one host; every numeric option of the loss, the optimizer (Adam, optional
gradient clipping), the normaliser, the rollout and the evaluator is honoured (:data:`SUPPORTED`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dynsparse import errors

#: ``ppo.train`` keywords this loop honours (besides environment, num_timesteps, network_factory,
#: seed, wrap_env_fn, eval_env and the callbacks); ``--set`` may change the numeric ones
SUPPORTED = frozenset({
    "num_envs", "episode_length", "action_repeat", "learning_rate", "entropy_cost", "discounting",
    "unroll_length", "batch_size", "num_minibatches", "num_updates_per_batch", "num_resets_per_eval",
    "normalize_observations", "normalize_observations_std_eps", "normalize_until_count", "reward_scaling",
    "clipping_epsilon", "clipping_epsilon_value", "gae_lambda", "max_grad_norm", "normalize_advantage",
    "vf_loss_coefficient", "bootstrap_on_timeout", "use_distributional_critic",
    "num_evals", "num_eval_envs", "deterministic_eval", "run_evals",
})
_AXIS = "i"  # brax's _PMAP_AXIS_NAME
STATE_FORMAT = "dynsparse-ppo-train-state"
STATE_FORMAT_VERSION = 1


@dataclasses.dataclass
class LoopState:
    """Everything the remaining iterations of a run read (see the module docstring).

    ``training_state`` is replicated over the devices (leading axis = devices), as brax keeps it.
    """

    training_state: Any
    local_key: Any
    key_envs: Any
    eval_key: Any
    iterations_done: int
    initial_evaluated: bool = False
    env_state: Any = None  # only with num_resets_per_eval == 0 (then not resumable); never saved


class PPORun:
    """The fixed part of a PPO run: wrapped environments, networks, optimizer, compiled epoch, evaluator.

    Args:
      environment, eval_env: Playground (brax-style) environments, unwrapped.
      num_timesteps: the run's step budget (fixes the epoch length, as in brax).
      network_factory: brax's ``network_factory(obs_shape, action_size, preprocess_observations_fn)``.
      seed: the run's seed (brax derives every key from it).
      wrap_env_fn: brax's ``wrap_env_fn`` (the training wrappers).
      **hp: keywords of :data:`SUPPORTED` with brax's defaults for the rest.
    """

    def __init__(self, environment: Any, eval_env: Any, num_timesteps: int, network_factory: Any, seed: int,
                 wrap_env_fn: Callable[..., Any], **hp: Any):
        import jax
        import jax.numpy as jnp
        import optax
        from brax.training import acting, gradients
        from brax.training.acme import running_statistics, specs
        from brax.training.agents.ppo import losses as ppo_losses
        from brax.training.agents.ppo import networks as brax_ppo_networks
        from brax.training.agents.ppo import train as brax_train

        unknown = sorted(set(hp) - SUPPORTED)
        if unknown:
            raise errors.UserError(f"the resumable PPO loop does not support {', '.join(unknown)}; "
                                   f"allowed: {', '.join(sorted(SUPPORTED))}")
        defaults = _brax_defaults()
        o = {k: hp.get(k, defaults[k]) for k in SUPPORTED}
        if o["batch_size"] * o["num_minibatches"] % o["num_envs"]:
            raise errors.UserError(f"batch_size * num_minibatches ({o['batch_size']} * {o['num_minibatches']}) must be "
                                   f"a multiple of num_envs ({o['num_envs']}), as brax's PPO requires")
        if jax.process_count() != 1:
            raise errors.UserError("the resumable PPO loop runs on one host; jax.process_count() is "
                                   f"{jax.process_count()}")
        self.options = o
        self.num_timesteps = int(num_timesteps)
        self.seed = int(seed)
        self.devices = jax.local_devices()
        n_dev = len(self.devices)
        if o["num_envs"] % n_dev:
            raise errors.UserError(f"num_envs ({o['num_envs']}) must be a multiple of the {n_dev} local devices")
        self.n_dev = n_dev
        self.env_step_per_training_step = o["batch_size"] * o["unroll_length"] * o["num_minibatches"] * o["action_repeat"]
        self.num_evals_after_init = max(o["num_evals"] - 1, 1)
        self.num_training_steps_per_epoch = int(np.ceil(
            self.num_timesteps / (self.num_evals_after_init * self.env_step_per_training_step * max(o["num_resets_per_eval"], 1))
        ))

        key = jax.random.PRNGKey(seed)
        global_key, local_key = jax.random.split(key)
        local_key = jax.random.fold_in(local_key, 0)  # process id 0
        local_key, key_env, eval_key = jax.random.split(local_key, 3)
        key_policy, key_value = jax.random.split(global_key)
        self._first_keys = (local_key, key_env, eval_key)

        env = brax_train._maybe_wrap_env(environment, True, o["num_envs"], o["episode_length"], o["action_repeat"], n_dev,
                                         key_env, wrap_env_fn, None)
        self.env = env
        self._reset_pmap = jax.pmap(env.reset, axis_name=_AXIS)
        key_envs = jax.random.split(key_env, o["num_envs"])
        self._first_key_envs = jnp.reshape(key_envs, (n_dev, -1) + key_envs.shape[1:])
        env_state = self._reset_pmap(self._first_key_envs)
        obs_shape = jax.tree_util.tree_map(lambda x: x.shape[2:], env_state.obs)

        normalize = (lambda x, y: x) if not o["normalize_observations"] else running_statistics.normalize
        ppo_network = network_factory(obs_shape, env.action_size, preprocess_observations_fn=normalize)
        make_policy = brax_ppo_networks.make_inference_fn(
            ppo_network, compute_value=o["bootstrap_on_timeout"] or o["clipping_epsilon_value"] is not None,
            use_distributional_critic=o["use_distributional_critic"])
        self.make_policy = make_policy
        optimizer = optax.adam(learning_rate=o["learning_rate"])
        if o["max_grad_norm"] is not None:
            optimizer = optax.chain(optax.clip_by_global_norm(o["max_grad_norm"]), optimizer)
        loss_fn = functools.partial(
            ppo_losses.compute_ppo_loss, ppo_network=ppo_network, entropy_cost=o["entropy_cost"],
            discounting=o["discounting"], reward_scaling=o["reward_scaling"], gae_lambda=o["gae_lambda"],
            clipping_epsilon=o["clipping_epsilon"], normalize_advantage=o["normalize_advantage"],
            vf_coefficient=o["vf_loss_coefficient"], clipping_epsilon_value=o["clipping_epsilon_value"],
            use_distributional_critic=o["use_distributional_critic"])
        loss_and_pgrad_fn = gradients.loss_and_pgrad(loss_fn, pmap_axis_name=_AXIS, has_aux=True)
        self._epoch = jax.pmap(_epoch_fn(o, env, make_policy, optimizer, loss_and_pgrad_fn,
                                         self.env_step_per_training_step, self.num_training_steps_per_epoch),
                               axis_name=_AXIS, donate_argnums=(0, 1))

        init_params = ppo_losses.PPONetworkParams(policy=ppo_network.policy_network.init(key_policy),
                                                  value=ppo_network.value_network.init(key_value))
        spec = jax.tree_util.tree_map(lambda x: specs.Array(x.shape[-1:], jnp.dtype("float32")), env_state.obs)
        self._initial_training_state = brax_train.TrainingState(
            optimizer_state=optimizer.init(init_params), params=init_params,
            normalizer_params=running_statistics.init_state(spec, std_eps=o["normalize_observations_std_eps"]),
            env_steps=_uint64_zero(),
        )
        eval_wrapped = brax_train._maybe_wrap_env(eval_env or environment, True, o["num_eval_envs"], o["episode_length"],
                                                  o["action_repeat"], 1, eval_key, wrap_env_fn, None)
        self.evaluator = acting.Evaluator(
            eval_wrapped, functools.partial(make_policy, deterministic=o["deterministic_eval"]),
            num_eval_envs=o["num_eval_envs"], episode_length=o["episode_length"], action_repeat=o["action_repeat"],
            key=eval_key)
        self.training_walltime = 0.0

    # -- state ---------------------------------------------------------------------------------

    def initial_state(self) -> LoopState:
        """The state brax's ``train`` holds just before its initial evaluation."""
        import jax

        from dynsparse import upstream

        upstream.jax_compat()
        replicated = jax.device_put_replicated(self._initial_training_state, self.devices)
        local_key, _, eval_key = self._first_keys
        return LoopState(replicated, local_key, self._first_key_envs, eval_key, 0)

    def params(self, state: LoopState) -> tuple[Any, Any, Any]:
        """(normaliser, policy, value) parameters on the host, as brax's ``_unpmap`` gives them."""
        import jax
        from brax.training.agents.ppo import train as brax_train

        ts = state.training_state
        return jax.device_get(brax_train._unpmap((ts.normalizer_params, ts.params.policy, ts.params.value)))

    def env_steps(self, state: LoopState) -> int:
        """Environment steps trained so far."""
        from brax.training.agents.ppo import train as brax_train

        steps = brax_train._unpmap(state.training_state.env_steps)
        return (int(np.asarray(steps.hi)) << 32) + int(np.asarray(steps.lo))

    def state_arrays(self, state: LoopState) -> dict[str, np.ndarray]:
        """The state as named host arrays (one device's copy of the replicated training state)."""
        import jax
        from brax.training.agents.ppo import train as brax_train

        leaves = jax.tree_util.tree_leaves(jax.device_get(brax_train._unpmap(state.training_state)))
        out = {f"training_state/{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
        out.update({"local_key": np.asarray(state.local_key), "key_envs": np.asarray(state.key_envs),
                    "eval_key": np.asarray(state.eval_key), "iterations_done": np.asarray(state.iterations_done, np.int64),
                    "initial_evaluated": np.asarray(state.initial_evaluated)})
        return out

    def state_from_arrays(self, arrays: dict[str, np.ndarray], source: str) -> LoopState:
        """Inverse of :meth:`state_arrays`; checks every leaf's shape and dtype against this run's.

        Raises:
          UserError: the saved state does not fit this run (other networks, envs or devices).
        """
        import jax

        from dynsparse import upstream

        treedef = jax.tree_util.tree_structure(self._initial_training_state)
        template = self.state_arrays(self.initial_state())  # dtypes as the device holds them
        leaves = []
        for i in range(treedef.num_leaves):
            name = f"training_state/{i:04d}"
            got, ref = arrays.get(name), template[name]
            if got is None or got.shape != ref.shape or got.dtype != ref.dtype:
                raise errors.UserError(
                    f"{source}: saved training state does not fit this run ({name}: "
                    f"{None if got is None else (got.shape, str(got.dtype))} vs {(ref.shape, str(ref.dtype))}); "
                    "resume with the options it was trained with")
            leaves.append(got)
        if f"training_state/{treedef.num_leaves:04d}" in arrays:
            raise errors.UserError(f"{source}: saved training state has more arrays than this run's; resume with the options it was trained with")
        if arrays["key_envs"].shape != np.asarray(self._first_key_envs).shape:
            raise errors.UserError(
                f"{source}: saved for {arrays['key_envs'].shape[0]} device(s) x {arrays['key_envs'].shape[1]} envs; this "
                f"run has {self.n_dev} x {self.options['num_envs'] // self.n_dev} (brax's keys depend on the device count)")
        upstream.jax_compat()
        ts = jax.device_put_replicated(jax.tree_util.tree_unflatten(treedef, leaves), self.devices)
        return LoopState(ts, arrays["local_key"], arrays["key_envs"], arrays["eval_key"], int(arrays["iterations_done"]),
                         bool(arrays["initial_evaluated"]))

    # -- the loop ------------------------------------------------------------------------------

    def evaluate(self, state: LoopState, training_metrics: dict[str, Any]) -> tuple[LoopState, dict[str, Any]]:
        """brax's ``Evaluator.run_evaluation`` with the state's evaluator key (advanced, as brax does)."""
        self.evaluator._key = state.eval_key  # brax keeps the evaluator's key private; it is part of the run's state
        metrics = self.evaluator.run_evaluation(self.params(state), training_metrics)
        return dataclasses.replace(state, eval_key=self.evaluator._key), metrics

    def iterate(self, state: LoopState) -> tuple[LoopState, dict[str, Any]]:
        """One outer iteration of brax's loop: ``max(num_resets_per_eval, 1)`` epochs, each followed by
        the environments' reset. Returns the new state and the last epoch's training metrics."""
        import jax
        import jax.numpy as jnp
        from brax.training.agents.ppo import train as brax_train

        o = self.options
        env_state = state.env_state if state.env_state is not None else self._env_state_for(state)
        training_state, local_key, key_envs = state.training_state, state.local_key, state.key_envs
        metrics: dict[str, Any] = {}
        for _ in range(max(o["num_resets_per_eval"], 1)):
            epoch_key, local_key = jax.random.split(local_key)
            epoch_keys = jax.random.split(epoch_key, self.n_dev)
            t = time.time()
            training_state, env_state = brax_train._strip_weak_type((training_state, env_state))
            training_state, env_state, metrics = brax_train._strip_weak_type(self._epoch(training_state, env_state, epoch_keys))
            metrics = jax.tree_util.tree_map(jnp.mean, metrics)
            jax.tree_util.tree_map(lambda x: x.block_until_ready(), metrics)
            dt = time.time() - t
            self.training_walltime += dt
            sps = self.num_training_steps_per_epoch * self.env_step_per_training_step * max(o["num_resets_per_eval"], 1) / dt
            metrics = {"training/sps": sps, "training/walltime": self.training_walltime,
                       **{f"training/{k}": v for k, v in metrics.items()}}
            key_envs = jax.vmap(lambda x, s: jax.random.split(x[0], s), in_axes=(0, None))(key_envs, key_envs.shape[1])
            if o["num_resets_per_eval"] > 0:
                env_state = self._reset_pmap(key_envs)
        carried = env_state if o["num_resets_per_eval"] == 0 else None  # in memory only: not resumable
        return LoopState(training_state, local_key, key_envs, state.eval_key, state.iterations_done + 1, True, carried), metrics

    def _env_state_for(self, state: LoopState) -> Any:
        # brax resets once before the loop and after every epoch; both are reset(key_envs), recomputed
        # here (bit-identical) rather than kept, since the epoch donates its input buffers
        return self._reset_pmap(state.key_envs)

    @property
    def resumable(self) -> bool:
        """Whether a saved state can continue the run (environments reset at every evaluation)."""
        return self.options["num_resets_per_eval"] > 0


def run(ppo: PPORun, state: LoopState, progress_fn: Callable[[int, dict[str, Any]], None],
        on_iteration: Callable[[LoopState, dict[str, Any]], None], go_on: Callable[[], bool] = lambda: True) -> LoopState:
    """Run (or continue) brax's loop from ``state`` to the end of the budget, or until ``go_on()`` is false.

    Calls, as brax does, ``progress_fn(steps, metrics)`` after each evaluation (including the
    initial one of a fresh run, when ``num_evals > 1``) and then ``on_iteration(state, metrics)``
    with the state after that evaluation (the point to save a checkpoint at). ``go_on`` is asked
    before each iteration.

    Returns:
      the last state (``iterations_done == ppo.num_evals_after_init`` when the budget is done).

    Raises:
      AssertionError: the budget is done but fewer steps than ``num_timesteps`` were trained (as brax).
    """
    o = ppo.options
    if not state.initial_evaluated:
        state = dataclasses.replace(state, initial_evaluated=True)
        if o["num_evals"] > 1 and o["run_evals"]:
            state, metrics = ppo.evaluate(state, {})
            progress_fn(0, metrics)
            on_iteration(state, metrics)
    while state.iterations_done < ppo.num_evals_after_init:
        if not go_on():
            return state
        state, training_metrics = ppo.iterate(state)
        metrics = training_metrics
        if o["num_evals"] > 0 and o["run_evals"]:
            state, metrics = ppo.evaluate(state, training_metrics)
        progress_fn(ppo.env_steps(state), metrics)
        on_iteration(state, metrics)
    if ppo.env_steps(state) < ppo.num_timesteps:
        raise AssertionError(f"total steps {ppo.env_steps(state)} is less than num_timesteps={ppo.num_timesteps}")
    return state


def _epoch_fn(o: dict[str, Any], env: Any, make_policy: Any, optimizer: Any, loss_and_pgrad_fn: Any,
              env_step_per_training_step: int, num_training_steps_per_epoch: int) -> Callable[..., Any]:
    """brax's ``training_epoch`` (minibatch_step, sgd_step, training_step) for this module's subset."""
    import jax
    import jax.numpy as jnp
    import optax
    from brax.training import acting, types
    from brax.training.acme import running_statistics
    from brax.training.agents.ppo import train as brax_train

    num_minibatches, num_envs, unroll_length = o["num_minibatches"], o["num_envs"], o["unroll_length"]

    def minibatch_step(carry: Any, data: Any, normalizer_params: Any) -> Any:
        optimizer_state, params, key = carry
        key, key_loss = jax.random.split(key)
        (_, metrics), grads = loss_and_pgrad_fn(params, normalizer_params, data, key_loss)
        metrics["learning_rate"] = jnp.array(o["learning_rate"])
        params_update, optimizer_state = optimizer.update(grads, optimizer_state)
        params = optax.apply_updates(params, params_update)
        return (optimizer_state, params, key), metrics

    def sgd_step(carry: Any, unused_t: Any, data: Any, normalizer_params: Any) -> Any:
        optimizer_state, params, key = carry
        key, key_perm, key_grad = jax.random.split(key, 3)

        def convert_data(x: Any) -> Any:
            x = jax.random.permutation(key_perm, x)
            return jnp.reshape(x, (num_minibatches, -1) + x.shape[1:])

        shuffled = jax.tree_util.tree_map(convert_data, data)
        (optimizer_state, params, _), metrics = jax.lax.scan(
            functools.partial(minibatch_step, normalizer_params=normalizer_params),
            (optimizer_state, params, key_grad), shuffled, length=num_minibatches)
        return (optimizer_state, params, key), metrics

    def training_step(carry: Any, unused_t: Any) -> Any:
        training_state, state, key = carry
        key_sgd, key_generate_unroll, new_key = jax.random.split(key, 3)
        policy = make_policy((training_state.normalizer_params, training_state.params.policy, training_state.params.value))

        def f(carry: Any, unused_t: Any) -> Any:
            current_state, current_key = carry
            current_key, next_key = jax.random.split(current_key)
            extra = ["truncation", "episode_metrics", "episode_done"] + (["time_out"] if o["bootstrap_on_timeout"] else [])
            next_state, data = acting.generate_unroll(env, current_state, policy, current_key, unroll_length,
                                                      extra_fields=tuple(extra))
            return (next_state, next_key), data

        (state, _), data = jax.lax.scan(f, (state, key_generate_unroll), (),
                                        length=o["batch_size"] * num_minibatches // num_envs)
        data = jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 1, 2), data)
        data = jax.tree_util.tree_map(lambda x: jnp.reshape(x, (-1,) + x.shape[2:]), data)
        if o["bootstrap_on_timeout"]:
            time_out = data.extras["state_extras"]["time_out"]
            value = data.extras["policy_extras"]["value"]
            data = types.Transition(observation=data.observation, action=data.action,
                                    reward=data.reward + o["discounting"] * time_out * value, discount=data.discount,
                                    next_observation=data.next_observation, extras=data.extras)
        normalizer_params = running_statistics.update(training_state.normalizer_params, data.observation,
                                                      pmap_axis_name=_AXIS, until_count=o["normalize_until_count"])
        (optimizer_state, params, _), metrics = jax.lax.scan(
            functools.partial(sgd_step, data=data, normalizer_params=normalizer_params),
            (training_state.optimizer_state, training_state.params, key_sgd), (), length=o["num_updates_per_batch"])
        new_training_state = brax_train.TrainingState(
            optimizer_state=optimizer_state, params=params, normalizer_params=normalizer_params,
            env_steps=training_state.env_steps + env_step_per_training_step)
        return (new_training_state, state, new_key), metrics

    def training_epoch(training_state: Any, state: Any, key: Any) -> Any:
        (training_state, state, _), loss_metrics = jax.lax.scan(
            training_step, (training_state, state, key), (), length=num_training_steps_per_epoch)
        return training_state, state, jax.tree_util.tree_map(jnp.mean, loss_metrics)

    return training_epoch


def _uint64_zero() -> Any:
    from brax.training import types

    return types.UInt64(hi=0, lo=0)


@functools.lru_cache(maxsize=1)
def _brax_defaults() -> dict[str, Any]:
    import inspect

    from brax.training.agents.ppo import train as brax_train

    params = inspect.signature(brax_train.train).parameters
    missing = SUPPORTED - set(params)
    if missing:  # a brax that renamed a keyword: refuse rather than silently use another default
        raise errors.UserError(f"installed brax's ppo.train lacks {', '.join(sorted(missing))}; install the pinned brax "
                               "(constraints.txt)")
    return {k: params[k].default for k in SUPPORTED}


def save_state(ppo: PPORun, state: LoopState, path: Path, identity: dict[str, Any]) -> None:
    """Write ``state`` atomically to ``path`` (.npz) with ``identity`` (the run's configuration) as JSON."""
    import json

    from dynsparse import files

    from dynsparse.policies import checkpoint

    arrays = ppo.state_arrays(state)
    arrays["format"] = np.asarray(f"{STATE_FORMAT}/{STATE_FORMAT_VERSION}")
    arrays["identity"] = np.asarray(json.dumps(identity, sort_keys=True, default=str))
    files.write_atomic(Path(path), checkpoint.npz_bytes(arrays))


def load_state(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file of :func:`save_state`: (arrays, identity).

    Raises:
      UserError: missing, unreadable or not such a file.
    """
    import json

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise errors.UserError(f"cannot read the training state {path}: {e}") from None
    if str(arrays.get("format")) != f"{STATE_FORMAT}/{STATE_FORMAT_VERSION}":
        raise errors.UserError(f"{path} is not a dynsparse PPO training state (format {arrays.get('format')!s}); "
                               f"expected {STATE_FORMAT}/{STATE_FORMAT_VERSION}")
    return arrays, json.loads(str(arrays["identity"]))
