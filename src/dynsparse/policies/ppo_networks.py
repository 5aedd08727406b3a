"""PPO networks whose exploration noise comes from the observation: colored-noise PPO on brax.

brax's PPO samples ``a = tanh(mu(o) + sigma(o) * eps)`` with ``eps`` i.i.d. white noise drawn from
a fresh PRNG key per step. "Colored Noise in PPO" (Hollenstein et al., AAAI 2024) replaces ``eps``
by a colored-noise sequence per episode and action dimension. brax has no hook for a per-episode
noise sequence, so the training wrapper (``ppo_train.ColoredNoiseWrapper``) appends this step's
``eps_t`` (``nu`` values) to the observation, and the networks here:

- normalise the observation as brax does, but feed only its first ``n_obs`` entries (the
  environment's own observation) to the policy and value MLPs;
- output ``[mu_raw, sigma_raw, eps_t]`` as the distribution parameters; ``ColoredNormalTanh``
  samples ``mu + sigma * eps_t`` from them, and computes log-probabilities and entropy from
  ``mu``/``sigma`` only, exactly as brax's ``NormalTanhDistribution``.

The PPO loss is unchanged: the log-probability of the taken (pre-tanh) action under the current
Gaussian, whatever noise produced it (colored ``eps_t`` is marginally standard normal).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from brax.training import distribution, networks
from brax.training.agents.ppo import networks as ppo_networks
from flax import linen

#: activations by the name stored in a checkpoint
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "swish": linen.swish,
    "relu": linen.relu,
    "tanh": linen.tanh,
    "elu": linen.elu,
}


class ColoredNormalTanh(distribution.NormalTanhDistribution):
    """brax's tanh-Gaussian whose reparameterisation noise is read from the parameters.

    Parameters are ``(..., 3 * nu)``: ``mu``, raw ``sigma`` (softplus + ``min_std`` as brax) and
    ``eps``. ``sample_no_postprocessing`` returns ``mu + sigma * eps`` and ignores the key.
    """

    def __init__(self, event_size: int, min_std: float = 0.001, var_scale: float = 1.0):
        super().__init__(event_size, min_std=min_std, var_scale=var_scale)
        self._nu = event_size
        self._param_size = 3 * event_size

    def create_dist(self, parameters: jax.Array) -> Any:
        return super().create_dist(parameters[..., : 2 * self._nu])

    def sample_no_postprocessing(self, parameters: jax.Array, seed: jax.Array) -> jax.Array:
        del seed
        dist = self.create_dist(parameters)
        return dist.loc + dist.scale * parameters[..., 2 * self._nu :]


def mean_and_std(policy_out: jax.Array, min_std: float = 0.001, var_scale: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """The Gaussian of the policy MLP's ``(..., 2 * nu)`` output: ``mu``, ``sigma`` (pre-tanh),
    ``sigma = (softplus(raw) + min_std) * var_scale`` as brax's ``NormalTanhDistribution``."""
    loc, scale = jnp.split(policy_out, 2, axis=-1)
    return loc, (jax.nn.softplus(scale) + min_std) * var_scale


def make_network_factory(
    n_noise: int,
    policy_hidden: Sequence[int] = (32,) * 4,
    value_hidden: Sequence[int] = (256,) * 5,
    activation: str = "swish",
    var_scale: float = 1.0,
) -> Callable[..., ppo_networks.PPONetworks]:
    """A brax ``network_factory`` for observations that end with ``n_noise`` noise entries.

    Args:
      n_noise: noise entries at the end of each observation (the action size ``nu``).
      policy_hidden, value_hidden: hidden layer widths (brax's defaults, which Playground's
        DM-Control parameters use).
      activation: a name in ``ACTIVATIONS``.
      var_scale: multiplies the policy's standard deviation (brax's ``var_scale``; 1 = brax's
        default; > 1 explores more widely from the start, e.g. for a sparse reward).

    Returns:
      ``factory(observation_size, action_size, preprocess_observations_fn) -> PPONetworks``.
    """
    act = ACTIVATIONS[activation]

    def factory(observation_size: Any, action_size: int, preprocess_observations_fn: Any = None) -> ppo_networks.PPONetworks:
        if preprocess_observations_fn is None:
            preprocess_observations_fn = lambda x, y: x
        size = observation_size[-1] if isinstance(observation_size, tuple) else int(observation_size)
        if action_size != n_noise:
            raise ValueError(f"noise entries {n_noise} != action size {action_size}")
        n_obs = size - n_noise
        policy_module = networks.MLP(layer_sizes=list(policy_hidden) + [2 * action_size], activation=act,
                                     kernel_init=jax.nn.initializers.lecun_uniform())
        value_module = networks.MLP(layer_sizes=list(value_hidden) + [1], activation=act,
                                    kernel_init=jax.nn.initializers.lecun_uniform())

        def features(processor_params: Any, obs: jax.Array) -> jax.Array:
            return preprocess_observations_fn(obs, processor_params)[..., :n_obs]

        def policy_apply(processor_params: Any, params: Any, obs: jax.Array) -> jax.Array:
            out = policy_module.apply(params, features(processor_params, obs))
            return jnp.concatenate([out, obs[..., n_obs:]], axis=-1)

        def value_apply(processor_params: Any, params: Any, obs: jax.Array) -> jax.Array:
            return jnp.squeeze(value_module.apply(params, features(processor_params, obs)), axis=-1)

        dummy = jnp.zeros((1, n_obs))
        return ppo_networks.PPONetworks(
            policy_network=networks.FeedForwardNetwork(init=lambda key: policy_module.init(key, dummy), apply=policy_apply),
            value_network=networks.FeedForwardNetwork(init=lambda key: value_module.init(key, dummy), apply=value_apply),
            parametric_action_distribution=ColoredNormalTanh(action_size, var_scale=var_scale),
        )

    return factory


def policy_mlp(policy_hidden: Sequence[int], action_size: int, activation: str) -> networks.MLP:
    """The policy MLP (observation features -> ``2 * nu``) as trained, for loading checkpoints."""
    return networks.MLP(layer_sizes=list(policy_hidden) + [2 * action_size], activation=ACTIVATIONS[activation],
                        kernel_init=jax.nn.initializers.lecun_uniform())
