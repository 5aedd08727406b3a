#!/usr/bin/env python
"""How often does open-loop colored-noise exploration reach a task's reward?

For each noise exponent beta and scale, rolls out ``--episodes`` episodes of ``--steps`` control
steps of a Playground task (MJX, float32, as PPO training runs it) with actions
``clip(scale * eps_t, -1, 1)`` (or ``tanh(scale * eps_t)``, the untrained tanh-normal policy), where ``eps`` is unit-variance colored noise of exponent beta
drawn per episode and action dimension (``dynsparse.policies.noise.colored_noise_jax``, the noise
PPO's exploration wrapper uses). Reports, per (beta, scale): the fraction of episodes with any
reward > 0, the median first step with reward > 0 among those, and the mean return. The episodes
start from the task's own reset distribution (keys from ``--seed``); the same keys for every
(beta, scale).

    python scripts/explore_colored_noise.py BallInCup --out ballincup-exploration.md

This is how the exploration beta for BallInCup's PPO training was chosen (see README).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("env", help="a Playground DM-Control task, e.g. BallInCup")
    p.add_argument("--betas", default="0,0.5,1,2", help="comma-separated noise exponents in [0, 2]")
    p.add_argument("--scales", default="0.5,1,2", help="comma-separated noise scales (std before clipping)")
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--squash", choices=("clip", "tanh"), default="clip",
                   help="clip(scale * eps, -1, 1), or tanh(scale * eps) as PPO's tanh-normal policy with mean 0 and std scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the table (Markdown) and a .json beside it")
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from mujoco_playground import registry

    from dynsparse.policies import noise

    jax.config.update("jax_enable_x64", False)
    env = registry.load(args.env, config_overrides={"impl": "jax"})
    nu, n, T = env.action_size, args.episodes, args.steps
    reset = jax.jit(jax.vmap(env.reset))
    keys = jax.random.split(jax.random.PRNGKey(args.seed), n)

    @jax.jit
    def rollout(actions: jax.Array) -> jax.Array:
        """actions (T, n, nu) -> rewards (T, n)."""
        def step(state, a):
            nxt = jax.vmap(env.step)(state, a)
            return nxt, nxt.reward
        return jax.lax.scan(step, reset(keys), actions)[1]

    rows = []
    t0 = time.time()
    for beta in [float(b) for b in args.betas.split(",")]:
        eps = noise.colored_noise_jax(jax.random.PRNGKey(args.seed + 1), beta, T, n * nu).reshape(T, n, nu)
        for scale in [float(s) for s in args.scales.split(",")]:
            actions = jnp.clip(scale * eps, -1.0, 1.0) if args.squash == "clip" else jnp.tanh(scale * eps)
            r = np.asarray(rollout(actions))
            hit = (r > 0).any(axis=0)
            first = [int(np.argmax(r[:, i] > 0)) for i in range(n) if hit[i]]
            rows.append({"beta": beta, "scale": scale, "episodes": n, "steps": T, "reached": float(hit.mean()),
                         "first_step_median": float(np.median(first)) if first else None,
                         "squash": args.squash, "return_mean": float(r.sum(axis=0).mean()), "return_max": float(r.sum(axis=0).max())})
            print(f"beta {beta:g} scale {scale:g}: reached in {hit.sum():3d}/{n} episodes, "
                  f"mean return {rows[-1]['return_mean']:7.2f} ({time.time() - t0:.0f} s)", flush=True)
    form = "clip(scale * eps, -1, 1)" if args.squash == "clip" else "tanh(scale * eps)"
    lines = [f"{args.env}: open-loop colored-noise actions {form}, {n} episodes x {T} steps, seed {args.seed}",
             "", "| beta | scale | episodes with reward > 0 | median first rewarded step | mean return | max return |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        first = "-" if row["first_step_median"] is None else f"{row['first_step_median']:.0f}"
        lines.append(f"| {row['beta']:g} | {row['scale']:g} | {row['reached'] * n:.0f}/{n} | {first} | "
                     f"{row['return_mean']:.1f} | {row['return_max']:.1f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).write_text(table)
        Path(args.out).with_suffix(".json").write_text(json.dumps({"env": args.env, "seed": args.seed, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
