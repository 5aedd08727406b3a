"""The policy interface and the action-noise policies.

A policy acts on one environment inside a jitted scan: ``act(obs, noise_t) -> action``. All its
randomness comes from a per-episode noise sequence that ``episode_noise`` draws from a NumPy
generator seeded by ``(seed, episode)``, so an episode's actions do not depend on how episodes are
batched or on where a collection was interrupted and resumed. A trained (PPO) policy implements
the same interface: its noise is the exploration ``eps_t`` of ``a = mu(o) + sigma(o) * eps_t``.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dynsparse import errors
from dynsparse.policies import noise as noise_lib


class Policy(abc.ABC):
    """Interface every policy implements."""

    #: short name stored in dataset attrs
    name: str = ""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable configuration; ``from_config(config())`` rebuilds the policy."""

    @abc.abstractmethod
    def episode_noise(self, seed: int, episode: int, n_steps: int, action_size: int) -> np.ndarray:
        """The noise sequence of one episode: ``(n_steps, action_size)`` float64."""

    @abc.abstractmethod
    def act(self, obs: Any, noise: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
        """Action for one environment (pure, jittable).

        Args:
          obs: the environment's observation (unused by the noise policies).
          noise: ``(nu,)`` this step's entry of the episode noise.
          low, high: ``(nu,)`` action bounds.

        Returns:
          ``(nu,)`` action, inside ``[low, high]``.
        """

    def check_env(self, spec: Any) -> None:
        """Raise ``UserError`` if this policy cannot act in ``spec`` (an ``envs.EnvSpec``; default: it can)."""
        del spec

    def batch_noise(self, seed: int, episodes: np.ndarray, n_steps: int, action_size: int) -> np.ndarray:
        """``(len(episodes), n_steps, action_size)``: ``episode_noise`` stacked over episodes."""
        return np.stack([self.episode_noise(seed, int(e), n_steps, action_size) for e in episodes])


def _rng(seed: int, episode: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(episode), 0x5EED])


class RandomPolicy(Policy):
    """Uniform random actions over the action range (needs finite bounds)."""

    name = "random"

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def episode_noise(self, seed: int, episode: int, n_steps: int, action_size: int) -> np.ndarray:
        return _rng(seed, episode).uniform(0.0, 1.0, (n_steps, action_size))

    def act(self, obs: Any, noise: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
        del obs
        return low + noise * (high - low)


class ColoredNoisePolicy(Policy):
    """Colored Gaussian actions ``a = clip(center + scale * halfwidth * eps, low, high)``.

    ``eps`` is a unit-variance colored-noise sequence per episode and action dimension
    (``beta`` 0 white, 1 pink, 2 red); ``center``/``halfwidth`` are those of the action range.
    """

    name = "colored"

    def __init__(self, beta: float = 1.0, scale: float = 1.0):
        self.beta = noise_lib.check_beta(beta)
        if not np.isfinite(scale) or scale <= 0:
            raise errors.UserError(f"noise scale {scale!r} must be a finite number > 0")
        self.scale = float(scale)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "beta": self.beta, "scale": self.scale}

    def episode_noise(self, seed: int, episode: int, n_steps: int, action_size: int) -> np.ndarray:
        return noise_lib.colored_noise(self.beta, n_steps, action_size, _rng(seed, episode))

    def act(self, obs: Any, noise: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
        del obs
        center = 0.5 * (low + high)
        half = 0.5 * (high - low)
        return jnp.clip(center + self.scale * half * noise, low, high)


POLICIES = {"random": RandomPolicy, "colored": ColoredNoisePolicy}
#: all policy names (``ppo`` is imported on first use: it needs a checkpoint; ``from-file`` replays
#: a trajectory file, ``collect --from``)
NAMES = ("random", "colored", "ppo", "from-file")


def make(name: str, **kwargs: Any) -> Policy:
    """Build a policy by name (``random``, ``colored`` or ``ppo``) with its keyword options."""
    if name == "ppo":
        from dynsparse.policies.ppo import PPOPolicy

        if "checkpoint" not in kwargs:
            raise errors.UserError("policy 'ppo' needs a checkpoint folder (checkpoint=DIR; --policy ppo:DIR)")

        cls: type[Policy] = PPOPolicy
    elif name == "from-file":
        from dynsparse.policies.replay import ReplayPolicy

        cls = ReplayPolicy
    elif name in POLICIES:
        cls = POLICIES[name]
    else:
        raise errors.UserError(f"unknown policy {name!r}; allowed: {', '.join(NAMES)}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise errors.UserError(f"bad options for policy {name!r}: {e}") from None


def from_config(config: dict[str, Any]) -> Policy:
    """Inverse of ``Policy.config``."""
    cfg = dict(config)
    return make(cfg.pop("name"), **cfg)


def config_from_text(text: str, beta: float | None = None, scale: float | None = None) -> dict[str, Any]:
    """A policy configuration from its command-line form and noise options.

    ``text`` is ``random``, ``colored`` or ``ppo:DIR``; ``beta``/``scale`` ``None`` take the
    policy's defaults (colored: beta 1, scale 1; ppo: as trained).

    Raises:
      UserError: an unknown policy, ``ppo`` without a folder, or noise options for ``random``.
    """
    name, _, arg = text.partition(":")
    if name == "ppo":
        if not arg:
            raise errors.UserError("--policy ppo needs a checkpoint folder: --policy ppo:DIR")
        policy: dict[str, Any] = {"name": "ppo", "checkpoint": arg}
        if beta is not None:
            policy["beta"] = beta
        if scale is not None:
            policy["scale"] = scale
        return policy
    if arg or name not in NAMES or name == "from-file":
        raise errors.UserError(f"unknown policy {text!r}; allowed: random, colored, ppo:DIR (recorded trajectories: --from FILE)")
    if name == "colored":
        return {"name": "colored", "beta": 1.0 if beta is None else beta, "scale": 1.0 if scale is None else scale}
    if beta is not None or scale is not None:
        raise errors.UserError(f"--noise-beta and --noise-scale apply to colored and ppo policies, not {name!r}")
    return {"name": name}
