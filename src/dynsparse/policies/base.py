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

    #: whether the actions are a function of the noise alone (``open_loop_actions``), so that the
    #: trajectory can be simulated natively (``dynsparse.native_rollout``)
    open_loop: bool = False

    def open_loop_actions(self, noise: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """The actions of an open-loop policy in NumPy, equal to ``act`` (``open_loop`` policies only).

        Args:
          noise: ``(..., nu)`` entries of episode noise.
          low, high: ``(nu,)`` action bounds.

        Returns:
          ``(..., nu)`` float64 actions.
        """
        raise NotImplementedError(f"policy {self.name!r} acts on the state; it has no open-loop actions")

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

    open_loop = True

    def act(self, obs: Any, noise: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
        del obs
        return low + noise * (high - low)

    def open_loop_actions(self, noise: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        return low + np.asarray(noise, np.float64) * (high - low)


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

    open_loop = True

    def act(self, obs: Any, noise: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
        del obs
        center = 0.5 * (low + high)
        half = 0.5 * (high - low)
        return jnp.clip(center + self.scale * half * noise, low, high)

    def open_loop_actions(self, noise: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        center = 0.5 * (low + high)
        half = 0.5 * (high - low)
        return np.clip(center + self.scale * half * np.asarray(noise, np.float64), low, high)
