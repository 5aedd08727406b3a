"""Train a PPO policy with brax's trainer and Playground's published DM-Control hyper-parameters.

``train(TrainConfig(env="CheetahRun"), out)`` runs ``brax.training.agents.ppo.train`` with
``mujoco_playground.config.dm_control_suite_params.brax_ppo_config(env)`` (optionally a scaled
step budget and overrides), on the accelerator JAX finds (GPU when present, else CPU), in float32,
on the MJX JAX implementation (``impl="jax"``, the one dynsparse differentiates). Exploration uses
colored noise of exponent ``noise_beta`` (see ``ppo_networks``; beta 0 is brax's white noise).

After every evaluation the checkpoint in ``out`` is replaced (crash-safe, see ``checkpoint``), so an
interrupted run leaves its latest evaluated policy, marked ``"complete": false``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dynsparse import errors, files, locks, options
from dynsparse.policies import checkpoint
from dynsparse.policies import noise as noise_lib
from dynsparse.versions import package_versions

VERSIONS = ("dynsparse", "jax", "jaxlib", "brax", "flax", "optax", "mujoco", "mujoco-mjx", "playground")
DEFAULT_TRAIN_BETA = 0.5


def _env(name: Any) -> str:
    names = dm_control_names()
    if name not in names:
        raise errors.UserError(
            f"train-policy supports the DM-Control suite environments of MuJoCo Playground; {name!r} is not one "
            f"(allowed: {', '.join(names)})"
        )
    return name


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run (each field's help is also its ``dynsparse train-policy`` flag's).

    ``overrides`` are brax ``ppo.train`` keywords replacing published values (``num_envs``, ...);
    the hidden widths default to brax's, as Playground uses.
    """

    env: str = options.option(help="a DM-Control suite name in Playground, e.g. CheetahRun",
                              check=options.via(_env, "the DM-Control suite environments of MuJoCo Playground"))
    timesteps: int | None = options.option(None, help="environment steps (default: the published budget times budget-scale)",
                                           check=options.optional(options.integer(1)))
    budget_scale: float = options.option(1.0, help="fraction of the published step budget, when --timesteps is not given",
                                         check=options.number(0.0))
    noise_beta: float = options.option(
        DEFAULT_TRAIN_BETA, help="exploration colored-noise exponent in [0, 2] (0 = brax's white noise, 0.5 the paper's best "
                                 "for PPO, 1 pink, 2 red)",
        check=options.via(noise_lib.check_beta, "0 <= beta <= 2", float))
    exploration_scale: float = options.option(1.0, help="multiply the policy's standard deviation (brax's var_scale)",
                                              check=options.number(0.0))
    seed: int = options.option(0, help="training seed", check=options.seed())
    overrides: tuple[tuple[str, Any], ...] = options.option(
        (), help="brax ppo.train keywords replacing published values, e.g. (('num_envs', 256),)")
    policy_hidden: tuple[int, ...] = options.option((32, 32, 32, 32), help="policy MLP widths", check=options.widths())
    value_hidden: tuple[int, ...] = options.option((256, 256, 256, 256, 256), help="value MLP widths", check=options.widths())

    def validated(self) -> "TrainConfig":
        """Check every field (raises ``UserError`` naming the first bad value)."""
        return options.validate(self)

    def _cross_check(self) -> "TrainConfig":
        rl = self.rl_config()
        for key in ("num_envs", "batch_size", "num_minibatches", "unroll_length", "num_evals", "episode_length"):
            if not isinstance(rl[key], int) or rl[key] <= 0:
                raise errors.UserError(f"{key} {rl[key]!r} is not allowed; allowed: an integer > 0")
        if (rl["batch_size"] * rl["num_minibatches"]) % rl["num_envs"]:
            raise errors.UserError(
                f"batch_size * num_minibatches ({rl['batch_size']} * {rl['num_minibatches']}) must be a multiple of "
                f"num_envs ({rl['num_envs']}), as brax's PPO requires"
            )
        return self

    def rl_config(self) -> dict[str, Any]:
        """The brax ``ppo.train`` keywords: published values, budget, overrides."""
        from mujoco_playground.config import dm_control_suite_params

        published = dict(dm_control_suite_params.brax_ppo_config(self.env))
        rl = dict(published)
        rl["num_timesteps"] = int(self.timesteps) if self.timesteps is not None else max(1, round(published["num_timesteps"] * self.budget_scale))
        allowed = overridable_keys()
        for key, value in self.overrides:
            if key not in allowed:
                raise errors.UserError(f"cannot set {key!r}; allowed: {', '.join(sorted(allowed))}")
            expected = type(rl[key]) if key in rl else type(allowed[key])
            try:
                rl[key] = _cast(value, expected)
            except (TypeError, ValueError):
                raise errors.UserError(f"{key}={value!r} is not a valid {expected.__name__}") from None
        return rl


def _cast(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes"):
                return True
            if value.lower() in ("0", "false", "no"):
                return False
            raise ValueError(value)
        return bool(value)
    if kind is int:
        f = float(value)
        if not f.is_integer():
            raise ValueError(value)
        return int(f)
    if kind is float:
        f = float(value)
        if not math.isfinite(f):
            raise ValueError(value)
        return f
    raise TypeError(kind)


@functools.lru_cache(maxsize=1)
def overridable_keys() -> dict[str, Any]:
    """brax ``ppo.train`` keywords the resumable loop honours (``ppo_loop.SUPPORTED``) that ``--set``
    may change, with brax's defaults (``None`` defaults listed as 0.0: a number turns them on)."""
    from brax.training.agents.ppo import train as ppo

    from dynsparse.policies import ppo_loop

    out: dict[str, Any] = {}
    for name, p in inspect.signature(ppo.train).parameters.items():
        if name not in ppo_loop.SUPPORTED:
            continue
        default = p.default
        if isinstance(default, (bool, int, float)) or default is None and name in ("max_grad_norm", "episode_length", "clipping_epsilon_value", "normalize_until_count"):
            out[name] = 0.0 if default is None else default
    return out


@functools.lru_cache(maxsize=1)
def dm_control_names() -> tuple[str, ...]:
    from mujoco_playground import registry

    return tuple(registry.dm_control_suite.ALL_ENVS)


@dataclasses.dataclass
class EvalPoint:
    """One evaluation: steps trained, mean/std episode return, seconds since start."""

    steps: int
    return_mean: float
    return_std: float
    elapsed_s: float


def make_colored_noise_wrapper(n_obs: int, nu: int, beta: float, length: int) -> Callable[..., Any]:
    """A brax ``wrap_env_fn``: Playground's training wrappers, then ``ColoredNoiseWrapper``."""
    from dynsparse import upstream

    pg_wrapper = upstream.playground_wrapper()

    def wrap(env: Any, episode_length: int, action_repeat: int, randomization_fn: Any = None) -> Any:
        inner = pg_wrapper.wrap_for_brax_training(env, episode_length=episode_length, action_repeat=action_repeat,
                                                  randomization_fn=randomization_fn)
        return ColoredNoiseWrapper(inner, n_obs, nu, beta, length)

    return wrap


def _colored_noise_wrapper_class() -> type:
    from dynsparse import upstream

    pg_wrapper = upstream.playground_wrapper()

    class _ColoredNoiseWrapper(pg_wrapper.Wrapper):
        """Appends this step's exploration noise ``eps_t`` (``nu`` values) to the observation.

        Operates on the batched (training-wrapped) environment. Each environment holds a colored
        noise sequence of ``length`` steps; it advances one entry per step and is redrawn when the
        episode ends (only then is the FFT computed: ``lax.cond`` on any episode ending).
        """

        def __init__(self, env: Any, n_obs: int, nu: int, beta: float, length: int):
            super().__init__(env)
            self.n_obs, self.nu, self.beta, self.length = n_obs, nu, float(beta), int(length)

        def _draw(self, key: Any, n: int) -> Any:
            import jax.numpy as jnp

            x = noise_lib.colored_noise_jax(key, self.beta, self.length, n * self.nu)
            return jnp.transpose(x.reshape(self.length, n, self.nu), (1, 0, 2))

        def _with_noise(self, state: Any) -> Any:
            import jax.numpy as jnp

            noise, t = state.info["cn_noise"], state.info["cn_t"]
            eps = jnp.take_along_axis(noise, (t % self.length)[:, None, None], axis=1)[:, 0]
            return state.replace(obs=jnp.concatenate([state.obs, eps.astype(state.obs.dtype)], axis=-1))

        def reset(self, rng: Any) -> Any:
            import jax
            import jax.numpy as jnp

            state = self.env.reset(rng)
            n = rng.shape[0]
            key = jax.random.fold_in(rng[0], 0xC0105ED)
            key, sub = jax.random.split(key)
            state.info["cn_key"] = key
            state.info["cn_noise"] = self._draw(sub, n)
            state.info["cn_t"] = jnp.zeros((n,), jnp.int32)
            return self._with_noise(state)

        def step(self, state: Any, action: Any) -> Any:
            import jax
            import jax.numpy as jnp

            # The inner (vmapped) wrappers see neither the noise entries nor this wrapper's info.
            info = {k: v for k, v in state.info.items() if not k.startswith("cn_")}
            inner = state.replace(obs=state.obs[..., : self.n_obs], info=info)
            nxt = self.env.step(inner, action)
            done = nxt.done > 0
            old = state.info["cn_noise"]
            key = state.info["cn_key"]
            n = old.shape[0]

            def redraw(key: Any) -> tuple[Any, Any]:
                key, sub = jax.random.split(key)
                return key, jnp.where(done[:, None, None], self._draw(sub, n), old)

            key, noise = jax.lax.cond(jnp.any(done), redraw, lambda k: (k, old), key)
            nxt.info["cn_key"] = key
            nxt.info["cn_noise"] = noise
            nxt.info["cn_t"] = jnp.where(done, 0, state.info["cn_t"] + 1).astype(jnp.int32)
            return self._with_noise(nxt)

        @property
        def observation_size(self) -> Any:
            return self.n_obs + self.nu

    return _ColoredNoiseWrapper


def ColoredNoiseWrapper(env: Any, n_obs: int, nu: int, beta: float, length: int) -> Any:
    """``_ColoredNoiseWrapper`` (defined lazily: it subclasses Playground's wrapper)."""
    return _colored_noise_wrapper_class()(env, n_obs, nu, beta, length)


def versions() -> dict[str, str]:
    """Installed versions of the packages a checkpoint depends on."""
    return package_versions(VERSIONS)


STATE_FILE = "train_state.npz"


@dataclasses.dataclass(frozen=True)
class Budget:
    """When a training segment stops early: ``stop_at`` is a ``time.time()`` deadline (None: none).

    Before each iteration the trainer estimates its duration from the previous one (x 1.2); it
    stops (saving nothing new: the last evaluation is already saved) when that would pass
    ``stop_at``, so a lease's deadline costs no half-done iteration.
    """

    stop_at: float | None = None

    def allows(self, last_iteration_s: float, now: float | None = None) -> bool:
        """Whether an iteration expected to last ``last_iteration_s`` seconds (x 1.2) ends before ``stop_at``."""
        now = time.time() if now is None else now
        return self.stop_at is None or now + 1.2 * last_iteration_s < self.stop_at


@locks.writes("out")
def train(config: TrainConfig, out: str | Path, on_eval: Callable[[EvalPoint, int], None] | None = None,
          resume: bool = False, budget: Budget = Budget()) -> dict[str, Any]:
    """Train (or continue training) and save a checkpoint in ``out``.

    After every evaluation ``out`` receives the policy checkpoint (``policy.json`` and
    ``params-*.npz``, see ``checkpoint``) and the full training state ``train_state.npz`` (optimizer
    moments, normaliser, step count, random keys: see ``ppo_loop``), both replaced atomically.

    Args:
      config: the run (validated here). On resume it must equal the saved run's configuration.
      out: checkpoint folder: new or empty, or (``resume``) a folder this function wrote.
      on_eval: called with each evaluation and the total step budget.
      resume: continue the run saved in ``out`` from its last evaluation (bit for bit the same
        result as an uninterrupted run on the same device and package versions).
      budget: an optional deadline for this segment (see :class:`Budget`).

    Returns:
      The checkpoint's ``policy.json`` content (``"complete"`` false when the budget is not done).

    Raises:
      UserError: bad configuration; ``out`` not empty (fresh) or holding no resumable run, or a run
        with another configuration (resume).
    """
    import jax

    config = config.validated()
    out = Path(out)
    saved = None
    if resume:
        saved = _saved_run(out, config)
    else:
        files.claim(out, STATE_FILE, None, "training", hint="choose a new --out, or continue it with --resume")
    rl = config.rl_config()
    previous_x64 = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", False)  # brax PPO trains in float32
    try:
        return _train(config, rl, out, on_eval, saved, budget)
    finally:
        jax.config.update("jax_enable_x64", previous_x64)


def config_record(config: TrainConfig) -> dict[str, Any]:
    """The configuration as JSON values (what a resume must match)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _saved_run(out: Path, config: TrainConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from dynsparse.policies import ppo_loop

    path = out / STATE_FILE
    if not path.is_file():
        what = "a policy without its training state (trained before resumable training, or exported)" if (out / checkpoint.META).is_file() else "no training state"
        raise errors.UserError(f"cannot resume {out}: it holds {what}; train into a new --out")
    arrays, record = ppo_loop.load_state(path)
    # a field added since the run was saved has its default
    saved_config = {**config_record(TrainConfig(env="")), **record.get("config", {})}
    mine = config_record(config)
    diff = sorted(k for k in set(saved_config) | set(mine) if saved_config.get(k) != mine.get(k))
    if diff:
        k = diff[0]
        raise errors.UserError(f"cannot resume {out}: it was trained with {k}={saved_config.get(k)!r}, not {mine.get(k)!r}; "
                               "resume with the same options (or train into a new --out)")
    return arrays, record


def config_from_saved(out: str | Path) -> TrainConfig:
    """The ``TrainConfig`` of the run saved in ``out`` (for ``train-policy --resume`` without options).

    Raises:
      UserError: ``out`` holds no resumable run.
    """
    from dynsparse.policies import ppo_loop

    path = Path(out) / STATE_FILE
    if not path.is_file():
        raise errors.UserError(f"cannot resume {out}: no {STATE_FILE} in it")
    c = dict(ppo_loop.load_state(path)[1]["config"])
    c["overrides"] = tuple((k, v) for k, v in c.get("overrides", ()))
    c["policy_hidden"], c["value_hidden"] = tuple(c["policy_hidden"]), tuple(c["value_hidden"])
    return TrainConfig(**c)


def _train(config: TrainConfig, rl: dict[str, Any], out: Path, on_eval: Callable[[EvalPoint, int], None] | None,
           saved: tuple[dict[str, np.ndarray], dict[str, Any]] | None, budget: Budget) -> dict[str, Any]:
    import jax
    from mujoco_playground import registry

    from dynsparse.policies import ppo_loop, ppo_networks

    from dynsparse import upstream

    compat = upstream.jax_compat()
    env = registry.load(config.env, config_overrides={"impl": "jax"})
    eval_env = registry.load(config.env, config_overrides={"impl": "jax"})
    n_obs = env.observation_size
    if not isinstance(n_obs, int):
        raise errors.UserError(f"{config.env} has a structured observation {n_obs!r}; train-policy needs a flat one")
    nu = env.action_size
    network = {"policy_hidden": list(config.policy_hidden), "value_hidden": list(config.value_hidden),
               "activation": "swish", "distribution": "tanh_normal", "min_std": 0.001,
               "var_scale": float(config.exploration_scale)}
    factory = ppo_networks.make_network_factory(nu, config.policy_hidden, config.value_hidden, network["activation"],
                                                var_scale=float(config.exploration_scale))
    hp = dict(rl)
    num_timesteps = hp.pop("num_timesteps")
    device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
    run = ppo_loop.PPORun(env, eval_env, num_timesteps, factory, config.seed,
                          make_colored_noise_wrapper(int(n_obs), int(nu), config.noise_beta, int(rl["episode_length"])), **hp)
    if saved is None:
        record: dict[str, Any] = {"config": config_record(config), "curve": [], "wall_s": 0.0, "segments": []}
        state = run.initial_state()
    else:
        arrays, record = saved
        state = run.state_from_arrays(arrays, str(out / STATE_FILE))
    if not run.resumable:
        print(f"dynsparse: num_resets_per_eval is 0, so this run cannot be resumed (environments carry over between "
              f"epochs); only its policy is saved", file=sys.stderr)
    segment = {"from_steps": run.env_steps(state), "device": device, "versions": versions(), "jax_compat": compat}
    record["segments"] = [*record["segments"], segment]
    wall_before = float(record["wall_s"])
    start = time.time()
    curve = [EvalPoint(**p) for p in record["curve"]]
    base_meta = {
        "env": config.env, "obs_size": int(n_obs), "action_size": int(nu), "network": network,
        "normalize_observations": bool(rl.get("normalize_observations", False)),
        "noise": {"beta": float(config.noise_beta), "length": int(rl["episode_length"]), "kind": "colored, per episode"},
        "training": {
            "trainer": "dynsparse.policies.ppo_loop (brax.training.agents.ppo.train, resumable)", "impl": "jax",
            "dtype": "float32", "seed": config.seed,
            "budget_timesteps": int(num_timesteps), "budget_scale": config.budget_scale if config.timesteps is None else None,
            "hyperparameters": {k: v for k, v in rl.items()},
            "overrides": {k: v for k, v in config.overrides},
            "device": device, "jax_compat": compat, "segments": record["segments"],
            "resumable": run.resumable,
        },
        "evaluation_protocol": "brax Evaluator: mean undiscounted return of num_eval_envs episodes of episode_length steps, "
                               "stochastic policy with the training noise",
        "versions": versions(),
        "python": platform.python_version(),
    }
    num_eval_envs = int(hp.get("num_eval_envs", 128))
    last_iteration = {"t": time.time(), "duration": 0.0}

    def on_progress(step: int, metrics: dict[str, Any]) -> None:
        curve.append(EvalPoint(int(step), float(metrics.get("eval/episode_reward", float("nan"))),
                               float(metrics.get("eval/episode_reward_std", float("nan"))),
                               wall_before + time.time() - start))

    def on_iteration(st: ppo_loop.LoopState, metrics: dict[str, Any]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        steps = run.env_steps(st)
        segment["to_steps"] = steps
        record.update(curve=[dataclasses.asdict(p) for p in curve], wall_s=wall_before + time.time() - start)
        if run.resumable:
            ppo_loop.save_state(run, st, out / STATE_FILE, record)
        _save(out, base_meta, run.params(st), curve, complete=False, steps_done=steps, num_eval_envs=num_eval_envs,
              wall_s=record["wall_s"])
        now = time.time()
        last_iteration.update(duration=now - last_iteration["t"], t=now)
        if on_eval is not None and curve:
            on_eval(curve[-1], int(num_timesteps))

    def go_on() -> bool:
        return budget.allows(last_iteration["duration"])

    state = ppo_loop.run(run, state, on_progress, on_iteration, go_on)
    done = state.iterations_done >= run.num_evals_after_init
    return _save(out, base_meta, run.params(state), curve, complete=done, steps_done=run.env_steps(state),
                 num_eval_envs=num_eval_envs, wall_s=wall_before + time.time() - start)


def _count(count: Any) -> np.ndarray:
    """The normaliser's sample count as a uint64 scalar (brax keeps it as ``UInt64(hi, lo)``)."""
    if hasattr(count, "hi"):
        return np.asarray((int(np.asarray(count.hi)) << 32) + int(np.asarray(count.lo)), np.uint64)
    return np.asarray(count)


def params_arrays(params: Any) -> dict[str, np.ndarray]:
    """brax's ``(normaliser, policy, value)`` parameters as the checkpoint's flat named arrays."""
    normalizer, policy, value = params
    arrays = {
        "normalizer/mean": np.asarray(normalizer.mean), "normalizer/std": np.asarray(normalizer.std),
        "normalizer/count": _count(normalizer.count), "normalizer/summed_variance": np.asarray(normalizer.summed_variance),
    }
    arrays.update(checkpoint.flatten(policy, "policy/"))
    arrays.update(checkpoint.flatten(value, "value/"))
    return arrays


def _save(out: Path, base_meta: dict[str, Any], params: Any, curve: list[EvalPoint], complete: bool, steps_done: int,
          num_eval_envs: int, wall_s: float | None = None) -> dict[str, Any]:
    arrays = params_arrays(params)
    last = curve[-1] if curve else None
    meta = {
        **base_meta,
        "complete": complete,
        "training": {**base_meta["training"], "steps_done": int(steps_done),
                     "wall_s": wall_s if wall_s is not None else (last.elapsed_s if last else None)},
        "evaluation": None if last is None else {
            "steps": last.steps, "return_mean": last.return_mean, "return_std": last.return_std, "episodes": num_eval_envs,
        },
        "curve": [dataclasses.asdict(p) for p in curve],
    }
    checkpoint.save(out, meta, arrays)
    return checkpoint.read_meta(out)
