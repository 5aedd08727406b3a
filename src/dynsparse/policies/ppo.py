"""A trained PPO policy acting from the environment's observation, with colored exploration noise.

``a_t = clip(tanh(mu(o_t) + scale * sigma(o_t) * eps_t), low, high)``: the stochastic tanh-Gaussian
policy sampled by re-parameterisation with ``eps_t`` a unit-variance colored-noise sequence per
episode and action dimension ("Colored Noise in PPO", Hollenstein et al., AAAI 2024). ``scale`` 1
is the trained policy's own spread; 0 is its deterministic mode ``tanh(mu)``. The network reads the
observation ``o_t``; the dataset still records the ground-truth state ``[qpos, qvel]``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dynsparse import errors
from dynsparse.policies import base
from dynsparse.policies import checkpoint as ckpt
from dynsparse.policies import noise as noise_lib

#: keys of a PPO policy configuration that only inform (checked against the checkpoint when given)
INFO_KEYS = ("env", "eval_return", "trained_beta")


class PPOPolicy(base.Policy):
    """A dynsparse PPO checkpoint as a ``Policy``.

    Args:
      checkpoint: the checkpoint folder (``train-policy --out``).
      beta: exploration-noise exponent; ``None`` = the beta it was trained with.
      scale: multiplies the policy's ``sigma`` (>= 0; 0 = deterministic).
      sha256: when given, the checkpoint's parameters must have this digest (a dataset records
        it, so resuming with a retrained checkpoint at the same path is refused).
    """

    name = "ppo"

    def __init__(self, checkpoint: str | Path, beta: float | None = None, scale: float = 1.0,
                 sha256: str | None = None, **info: Any):
        unknown = sorted(set(info) - set(INFO_KEYS))
        if unknown:
            raise errors.UserError(f"unknown PPO policy option(s) {', '.join(unknown)}; allowed: beta, scale")
        self.path = Path(checkpoint).resolve()
        self.meta, arrays = _load(str(self.path), _stamp(self.path))
        if sha256 is not None and sha256 != self.meta["params_sha256"]:
            raise errors.UserError(
                f"PPO checkpoint {self.path} has changed since this run started (parameters' SHA-256 "
                f"{self.meta['params_sha256'][:12]}..., recorded {sha256[:12]}...)"
            )
        self.beta = noise_lib.check_beta(self.meta["noise"]["beta"] if beta is None else beta)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise errors.UserError(f"noise scale {scale!r} must be a finite number >= 0 (0 = deterministic)")
        self.scale = float(scale)
        self.n_obs = int(self.meta["obs_size"])
        self.nu = int(self.meta["action_size"])
        net = self.meta["network"]
        self._mlp = _mlp(tuple(net["policy_hidden"]), self.nu, net["activation"])
        missing = [k for k in ("normalizer/mean", "normalizer/std") if k not in arrays]
        if missing or not any(k.startswith("policy/params/") for k in arrays):
            raise errors.UserError(f"corrupt PPO checkpoint {self.path}: its parameters lack {', '.join(missing) or 'the policy network'}")
        self._params = {"params": ckpt.unflatten({k[len("policy/params/"):]: v for k, v in arrays.items()
                                                       if k.startswith("policy/params/")})}
        self._mean = np.asarray(arrays["normalizer/mean"][: self.n_obs], np.float32)
        self._std = np.asarray(arrays["normalizer/std"][: self.n_obs], np.float32)
        self._min_std = float(net.get("min_std", 0.001))
        self._var_scale = float(net.get("var_scale", 1.0))
        try:  # the network must accept its declared observation size and emit its action size
            mu, _ = self.mean_std(np.zeros((1, self.n_obs), np.float32))
            ok = self._mean.shape == (self.n_obs,) and self._std.shape == (self.n_obs,) and tuple(mu.shape) == (1, self.nu)
        except Exception:  # noqa: BLE001 - any mismatch of parameters and declared sizes
            ok = False
        if not ok:
            raise errors.UserError(
                f"corrupt PPO checkpoint {self.path}: its parameters do not fit obs_size {self.n_obs}, action_size {self.nu} "
                f"and network {net['policy_hidden']}"
            )

    def config(self) -> dict[str, Any]:
        ev = self.meta.get("evaluation") or {}
        return {
            "name": self.name, "checkpoint": str(self.path), "sha256": self.meta["params_sha256"],
            "beta": self.beta, "scale": self.scale, "env": self.meta["env"],
            "eval_return": ev.get("return_mean"), "trained_beta": self.meta["noise"]["beta"],
        }

    def program_identity(self) -> dict[str, Any]:
        """What a compiled program with this policy depends on beyond ``config()``: the whole
        ``policy.json`` (network, ``min_std``, ``var_scale``), for ``exported``'s file key."""
        import hashlib
        import json

        return {"policy_json_sha256": hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()}

    def check_env(self, spec: Any) -> None:
        """Refuse an environment this policy was not trained on (name, observation or action size)."""
        env_name, action_size = spec.name, spec.nu
        observation_size = getattr(spec.env, "observation_size", None)
        if env_name != self.meta["env"]:
            raise errors.UserError(f"PPO checkpoint {self.path} was trained on {self.meta['env']}, not {env_name}")
        if not isinstance(observation_size, (int, np.integer)) or int(observation_size) != self.n_obs:
            raise errors.UserError(
                f"PPO checkpoint {self.path} expects observations of size {self.n_obs}; {env_name} gives {observation_size}"
            )
        if int(action_size) != self.nu:
            raise errors.UserError(f"PPO checkpoint {self.path} has {self.nu} actions; {env_name} has {action_size}")

    def episode_noise(self, seed: int, episode: int, n_steps: int, action_size: int) -> np.ndarray:
        return noise_lib.colored_noise(self.beta, n_steps, action_size, base._rng(seed, episode))

    def mean_std(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Pre-tanh Gaussian ``(mu, sigma)`` for ``(..., n_obs)`` observations (float32 network)."""
        from dynsparse.policies.ppo_networks import mean_and_std

        x = (jnp.asarray(obs, jnp.float32) - self._mean) / self._std
        return mean_and_std(self._mlp.apply(self._params, x), self._min_std, self._var_scale)

    def act(self, obs: Any, noise: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
        if not hasattr(obs, "shape"):
            raise errors.UserError("PPO policies need an array observation; this environment's observation is a mapping")
        mu, sigma = self.mean_std(obs)
        a = jnp.tanh(mu + self.scale * sigma * jnp.asarray(noise, jnp.float32))
        return jnp.clip(a.astype(low.dtype), low, high)


def _stamp(path: Path) -> int:
    """Modification time of ``policy.json`` (0 if missing): a rewritten checkpoint is re-read."""
    try:
        return (path / ckpt.META).stat().st_mtime_ns
    except OSError:
        return 0


@functools.lru_cache(maxsize=16)
def _load(path: str, stamp: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    del stamp
    return ckpt.load(path)


@functools.lru_cache(maxsize=16)
def _mlp(hidden: tuple[int, ...], nu: int, activation: str) -> Any:
    from dynsparse.policies.ppo_networks import policy_mlp

    return policy_mlp(hidden, nu, activation)
