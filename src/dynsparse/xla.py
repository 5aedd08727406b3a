"""XLA compiler options for dynsparse's compiled simulation functions.

On CPU, XLA's newer fusion emitters turn MJX's kinematics of some models into very slow code:
on SwimmerSwimmer6 ``mjx.kinematics`` took ~900-1100 us per environment (linear in the batch)
with them and 52 us without (jaxlib 0.8.2, 2-core AMD EPYC, batch 16), so that the whole
control-step Jacobian ran at 23/s with them and 524/s without. On CartpoleBalance, CheetahRun
and WalkerRun the difference is within +-20% either way (``benchmarks/jacobians.py``). The
results differ only by round-off (a different evaluation order), so the option is part of the
compiled function's identity: every chunk of a dataset is compiled with the same options.
"""

from __future__ import annotations

import os
from typing import Any

#: ``DYNSPARSE_XLA_FUSION_EMITTERS=1`` restores XLA's default (emitters on).
ENV_VAR = "DYNSPARSE_XLA_FUSION_EMITTERS"


def compiler_options() -> dict[str, Any]:
    """Options for ``jax.jit(..., compiler_options=...)`` of simulation functions: the fusion
    emitters off on the CPU backend (see the module docstring); nothing elsewhere."""
    import jax

    if jax.default_backend() != "cpu" or os.environ.get(ENV_VAR, "0") == "1":
        return {}
    return {"xla_cpu_use_fusion_emitters": False}


#: ``DYNSPARSE_CPU_DEVICES=N`` overrides the CPU device count ``use_cpu_cores`` asks for.
DEVICES_ENV_VAR = "DYNSPARSE_CPU_DEVICES"


def use_cpu_cores(n: int | None = None) -> int:
    """Ask JAX for one CPU device per usable core, so that collection can split its episode
    batch over them (``dynsparse.rollout.batch_sharding``). XLA runs one program per device
    at once; within one program it keeps these simulations on one core (measured on CheetahRun,
    batch 256: 1608 Jacobians/s on one device, 3300/s split over two).

    Must run before JAX initialises its backends (the CLI calls it first); later it changes
    nothing. Returns the count asked for (``n``, else ``$DYNSPARSE_CPU_DEVICES``, else the
    cores this process may use).
    """
    import jax

    if n is None:
        n = int(os.environ.get(DEVICES_ENV_VAR, "0")) or len(os.sched_getaffinity(0))
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except Exception:  # noqa: BLE001 - backends already initialised: keep what they have
        pass
    return int(n)
