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
