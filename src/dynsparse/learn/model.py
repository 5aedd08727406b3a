"""The world model, its losses and its training, as pure functions (brax style).

The network ``g`` maps normalised inputs ``x_n = ([s, a] - x_mean) / x_std`` to normalised targets
``y_n`` (``s'`` or, residual, ``s' - s``). Every Jacobian loss compares Jacobians **in normalised
coordinates**: the model's is ``dg/dx_n`` and the ground truth is mapped with the chain rule,
``diag(1 / y_std) J diag(x_std)`` (``data.normalised_jacobian``), so entries of very different
physical scales weigh alike. Zeros are decided on raw ground-truth Jacobians (threshold 1e-12, the
dataset default) and raw model Jacobians (threshold 1e-6 by default).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dynsparse import errors, options

LOSSES = ("mse", "mse+mse_j", "mse+mae_j", "mse+l1_j", "mse+sae_j")


def check_losses(names: Sequence[str]) -> tuple[str, ...]:
    """Validate loss names (``all`` = every variant)."""
    if list(names) == ["all"]:
        return LOSSES
    for n in names:
        if n not in LOSSES:
            raise errors.UserError(f"unknown loss {n!r}; allowed: all, {', '.join(LOSSES)}")
    if not names:
        raise errors.UserError("no loss given; allowed: all, " + ", ".join(LOSSES))
    return tuple(dict.fromkeys(names))


def make_network(out_size: int, hidden: Sequence[int] = (512, 512)) -> Any:
    """Flax MLP ``x_n -> y_n`` with ELU between layers (``hidden=()`` is a linear model)."""
    from flax import linen

    class WorldModel(linen.Module):
        @linen.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            for width in hidden:
                x = linen.elu(linen.Dense(width)(x))
            return linen.Dense(out_size)(x)

    return WorldModel()


def model_jacobian(apply: Callable[..., jax.Array], params: Any, x_n: jax.Array) -> jax.Array:
    """``(B, ds, dx)``: ``dg/dx_n`` at each row of ``x_n`` (forward mode)."""
    return jax.vmap(jax.jacfwd(lambda x: apply(params, x)))(x_n)


def loss_fn(name: str, apply: Callable[..., jax.Array], weight: float) -> Callable[..., tuple[jax.Array, dict]]:
    """``loss(params, batch) -> (scalar, parts)``; ``batch`` holds ``x``, ``y``, ``J``, ``zero``
    (normalised inputs/targets, normalised ground-truth Jacobians, ground-truth zero mask)."""
    name = check_losses([name])[0]

    def loss(params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
        pred = apply(params, batch["x"])
        mse = jnp.mean((pred - batch["y"]) ** 2)
        parts = {"mse": mse}
        if name == "mse":
            return mse, parts
        jac = model_jacobian(apply, params, batch["x"])
        if name == "mse+mse_j":
            extra = jnp.mean((jac - batch["J"]) ** 2)
        elif name == "mse+mae_j":
            extra = jnp.mean(jnp.abs(jac - batch["J"]))
        elif name == "mse+l1_j":
            extra = jnp.mean(jnp.abs(jac))
        else:  # mse+sae_j: L1 only on the entries the ground truth says are zero
            extra = jnp.mean(jnp.abs(jac) * batch["zero"])
        parts["jacobian"] = extra
        return mse + weight * extra, parts

    return loss


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Optimisation: Adam with a cosine learning-rate decay to ``lr * final_lr_factor``."""

    epochs: int = options.option(100, help="training epochs (30 with --quick)", check=options.integer(1))
    batch_size: int = options.option(256, help="minibatch size", check=options.integer(1))
    lr: float = options.option(1e-3, help="Adam learning rate, cosine-decayed to final-lr-factor of it", check=options.number(0.0))
    final_lr_factor: float = options.option(1e-3, help="learning rate at the end, as a fraction of lr", check=options.number(0.0))
    jac_weight: float = options.option(1.0, help="weight of the Jacobian term", check=options.number(0.0))
    hidden: tuple[int, ...] = options.option((512, 512), help="hidden widths (128,128 with --quick; none: a linear model)",
                                             check=options.widths(empty=True))

    def validated(self) -> "TrainOptions":
        """Check every field; raise ``UserError`` naming the first bad value."""
        return options.validate(self)


@functools.lru_cache(maxsize=32)
def _epoch_fn(loss_name: str, out_size: int, hidden: tuple[int, ...], weight: float, n_batches: int,
              batch_size: int, lr: float, final_factor: float, total_steps: int) -> tuple[Any, Any, Any]:
    import optax

    net = make_network(out_size, hidden)
    loss = loss_fn(loss_name, net.apply, weight)
    opt = optax.adam(optax.cosine_decay_schedule(lr, max(total_steps, 1), alpha=final_factor))

    @jax.jit
    def epoch(params: Any, opt_state: Any, data: dict[str, jax.Array], key: jax.Array) -> tuple[Any, Any, jax.Array]:
        n = data["x"].shape[0]
        perm = jax.random.permutation(key, n)[: n_batches * batch_size].reshape(n_batches, batch_size)

        def step(carry: tuple[Any, Any], idx: jax.Array) -> tuple[tuple[Any, Any], jax.Array]:
            p, s = carry
            batch = {k: v[idx] for k, v in data.items()}
            (value, _), grads = jax.value_and_grad(loss, has_aux=True)(p, batch)
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), value

        (params, opt_state), values = jax.lax.scan(step, (params, opt_state), perm)
        return params, opt_state, jnp.mean(values)

    return net, opt, epoch


def train(loss_name: str, data: dict[str, np.ndarray], options: TrainOptions, seed: int,
          on_epoch: Callable[[int, float], None] | None = None) -> tuple[Any, Any, list[float]]:
    """Train one model.

    Args:
      loss_name: one of ``LOSSES``.
      data: normalised ``x (N, dx)``, ``y (N, ds)``, ``J (N, ds, dx)``, ``zero (N, ds, dx)``.
      options: optimisation settings.
      seed: initialisation and shuffling.
      on_epoch: called with (epoch, mean training loss).

    Returns:
      ``(apply, params, losses per epoch)``; ``params`` of the untrained model are
      ``init_params(...)`` with the same seed.
    """
    n = int(data["x"].shape[0])
    batch = min(options.batch_size, n)
    n_batches = max(1, n // batch)
    net, opt, epoch = _epoch_fn(loss_name, int(data["y"].shape[1]), tuple(options.hidden), float(options.jac_weight),
                                n_batches, batch, float(options.lr), float(options.final_lr_factor),
                                options.epochs * n_batches)
    params = init_params(net, int(data["x"].shape[1]), seed)
    opt_state = opt.init(params)
    jdata = {k: jnp.asarray(v, jnp.float32) for k, v in data.items()}
    key = jax.random.PRNGKey(seed)
    history = []
    for e in range(options.epochs):
        key, sub = jax.random.split(key)
        params, opt_state, value = epoch(params, opt_state, jdata, sub)
        history.append(float(value))
        if on_epoch is not None:
            on_epoch(e, history[-1])
    return net.apply, params, history


def init_params(net: Any, in_size: int, seed: int) -> Any:
    """The network's initial parameters for ``seed`` (the untrained model)."""
    return net.init(jax.random.PRNGKey(seed), jnp.zeros((1, in_size), jnp.float32))
