"""Policies: one interface (``base.Policy``) for random, colored-noise, trained (PPO) and replayed
policies, and their registry: ``make`` / ``from_config`` build any of them by name.

The registry lives here, above the policy modules, so no policy module imports another's
package-level names (``ppo`` and ``replay`` are imported on first use: they need a checkpoint
or a file, and ``ppo`` pulls in brax).
"""

from __future__ import annotations

from typing import Any

from dynsparse import errors
from dynsparse.policies.base import ColoredNoisePolicy, Policy, RandomPolicy
from dynsparse.policies.noise import colored_noise

__all__ = ["NAMES", "Policy", "colored_noise", "config_from_text", "from_config", "make"]

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
