"""Policies: one interface for random, colored-noise and (later) trained policies."""

from dynsparse.policies.base import Policy, from_config, make
from dynsparse.policies.noise import colored_noise

__all__ = ["Policy", "colored_noise", "from_config", "make"]
