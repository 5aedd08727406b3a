"""Run a benchmark's measuring code in a fresh Python process and read back its one result.

A fresh process per variant is what makes a cold measurement cold (no traced, compiled or
imported state carried over) and keeps monkeypatched variants apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

PREFIX = "RESULT "


def run(code: str, args: list[str], what: str, env: dict[str, str] | None = None) -> Any:
    """Run ``python -c code *args``; return the JSON it printed on its last ``RESULT `` line.

    Raises:
      SystemExit: the process failed or printed no result (``what`` names it, with its stderr tail).
    """
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode or not lines:
        raise SystemExit(f"{what} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(PREFIX):])


#: The start of a child process that times the converged control-step Jacobian: imports, float64,
#: and ``env, batch, variant, repeat`` from its arguments. A benchmark's variants patch dynsparse
#: after it, then ``JACOBIAN_TIMING`` runs.
JACOBIAN_HEAD = r'''
import json, sys, time
from dynsparse import upstream, xla
upstream.mjx_without_warp()
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from dynsparse import envs, tangent
from dynsparse.jacobians import autodiff, definitions, solve
env, batch, variant, repeat = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
'''

#: The converged Jacobian (``autodiff.make_jacobian_fn``) jitted and vmapped over ``batch`` reset
#: states of ``env`` with uniform random actions; leaves ``spec``, ``out`` (the first call's
#: result), ``compile_s`` (trace, compile and first call, s) and ``per_call`` (the best of
#: ``repeat`` later calls, s).
JACOBIAN_TIMING = r'''
spec = envs.load(env, "float64", None)
states = jax.jit(jax.vmap(spec.env.reset))(jax.random.split(jax.random.PRNGKey(0), batch))
a = jax.random.uniform(jax.random.PRNGKey(1), (batch, spec.env.action_size), minval=-1, maxval=1)
f = jax.jit(jax.vmap(autodiff.make_jacobian_fn(spec, definition="converged")), compiler_options=xla.compiler_options())
t = time.perf_counter(); out = jax.block_until_ready(f(states.data, a)); compile_s = time.perf_counter() - t
per_call = float("inf")
for _ in range(repeat):
    t = time.perf_counter()
    jax.block_until_ready(f(states.data, a))
    per_call = min(per_call, time.perf_counter() - t)
'''


def jacobian_variant(code: str, env: str, batch: int, variant: str, repeat: int, env_vars: dict[str, str] | None = None) -> Any:
    """Run a ``JACOBIAN_HEAD`` + variants + ``JACOBIAN_TIMING`` child for one variant; its result."""
    return run(code, [env, str(batch), variant, str(repeat)], f"{env} {variant}", env=env_vars)


def jacobian_args(description: str, envs: str, batch: int) -> Any:
    """The Jacobian benchmarks' arguments: ``--envs`` (comma-separated), ``--batch``, ``--repeat``."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--envs", default=envs)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--repeat", type=int, default=15, help="timed calls per variant (the best is reported)")
    return p.parse_args()
