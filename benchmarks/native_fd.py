"""What a ``--backend finite_diff`` collection waits for, with the trajectories simulated natively
(``--rollout native``) against in MJX (``--rollout mjx``, every finite_diff run before), issue 16.

For each environment, four ``dynsparse collect ENV --backend finite_diff --episodes E --steps T``
commands, each a fresh process: ``mjx`` cold (a new JAX cache: the reset and rollout chunk are
traced and compiled), ``mjx`` warm (the same cache again: their executables load; the strongest
earlier path, **baseline**), ``native`` cold (a new cache) and ``native`` warm. Beside them, in a
process without JAX, the strongest simple baseline a user would write with MuJoCo alone: one
thread stepping the same number of random-action episodes natively and taking chained centred
``mjd_transitionFD`` Jacobians over the substeps at every step (the model's own solver settings;
the warm start held per substep, a slightly different derivative, so it is a cost reference, not a
value reference). A model MJX cannot build (``gymnasium:Humanoid-v5``, PGS) has native rows only.

Prints wall seconds, ratios against the mjx-warm row and against the plain loop, and the global
zeros of ``J_s``/``J_a`` at ``|J| < 1e-8`` (finite differences' resolution) of the mjx and native
datasets, which must be the same sets (the trajectories agree step by step to round-off, not
bit for bit: see ``dynsparse.native_rollout``).

usage: python benchmarks/native_fd.py [--envs gymnasium:HalfCheetah-v5 gymnasium:Hopper-v5
       dm_control:walker-walk gymnasium:Humanoid-v5] [--episodes 16] [--steps 250]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def collect(env: str, episodes: int, steps: int, rollout: str, cache: Path, out: Path) -> float:
    """Wall seconds of one ``dynsparse collect`` in a fresh process."""
    environ = {**os.environ, "DYNSPARSE_JAX_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "dynsparse", "collect", env, "--backend", "finite_diff", "--rollout", rollout,
           "--episodes", str(episodes), "--steps", str(steps), "--out", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=environ, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return dt


def plain_worker(env: str, episodes: int, steps: int) -> None:
    """Subprocess entry (no JAX imported): the plain single-thread native loop; prints its seconds."""
    t_import = time.perf_counter()
    import mujoco

    from dynsparse import sources

    recipe = sources.load(env)
    m, n_sub = recipe.model, recipe.n_substeps
    loaded = time.perf_counter() - t_import
    d = mujoco.MjData(m)
    nx = 2 * m.nv + m.na
    a_k, b_k = np.zeros((nx, nx)), np.zeros((nx, m.nu))
    low, high = m.actuator_ctrlrange[:, 0], m.actuator_ctrlrange[:, 1]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(episodes):
        mujoco.mj_resetData(m, d)
        d.qpos[:] += rng.uniform(-0.1, 0.1, m.nq)
        for _ in range(steps):
            d.ctrl[:] = low + rng.uniform(0, 1, m.nu) * (high - low)
            a, b = np.eye(nx), np.zeros((nx, m.nu))
            for _ in range(n_sub):
                mujoco.mjd_transitionFD(m, d, 1e-6, True, a_k, b_k, None, None)
                a, b = a_k @ a, a_k @ b + b_k
                mujoco.mj_step(m, d)
    print(json.dumps({"loop_s": time.perf_counter() - t0, "load_s": loaded}))


def plain(env: str, episodes: int, steps: int) -> dict[str, float]:
    """The plain loop in a fresh process without JAX: ``{"loop_s", "load_s"}``."""
    r = subprocess.run([sys.executable, __file__, "--plain", env, str(episodes), str(steps)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def zeros(store: Path) -> tuple[set, set]:
    """Global zeros of ``J_s`` and ``J_a`` at ``|J| < 1e-8`` (entry names)."""
    from dynsparse import dataset
    from dynsparse.metrics import structure

    result = structure.global_structure(dataset.open_dataset(store), 1e-8)
    return set(result["J_s"]["entries"]), set(result["J_a"]["entries"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", nargs="+", default=["gymnasium:HalfCheetah-v5", "gymnasium:Hopper-v5", "dm_control:walker-walk",
                                                  "gymnasium:Humanoid-v5"])
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--plain", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain:
        plain_worker(args.plain[0], int(args.plain[1]), int(args.plain[2]))
        return
    from dynsparse import envs, sources

    tmp = Path(tempfile.mkdtemp(prefix="dynsparse-native-fd-"))
    table = []
    for env in args.envs:
        try:
            envs.load(env)
            rollouts = ("mjx", "native")
        except sources.MJXCannotBuild:
            rollouts = ("native",)
        times: dict[str, float] = {}
        stores: dict[str, Path] = {}
        for rollout in rollouts:
            cache = tmp / f"cache-{env.replace(':', '_')}-{rollout}"
            for state in ("cold", "warm"):
                out = tmp / f"{env.replace(':', '_')}-{rollout}-{state}.zarr"
                times[f"{rollout} {state}"] = collect(env, args.episodes, args.steps, rollout, cache, out)
                stores[rollout] = out
                print(f"{env:<28}{rollout + ' ' + state:<14}{times[f'{rollout} {state}']:8.1f} s", flush=True)
        loop = plain(env, args.episodes, args.steps)
        times["plain loop"] = loop["loop_s"]
        print(f"{env:<28}{'plain loop':<14}{loop['loop_s']:8.1f} s (+ {loop['load_s']:.1f} s loading the model)", flush=True)
        same = None
        if "mjx" in stores:
            same = zeros(stores["mjx"]) == zeros(stores["native"])
        table.append((env, times, same))
    n = args.episodes * args.steps
    print(f"\n{args.episodes} episodes x {args.steps} steps ({n} Jacobians) per run, one fresh process each, this machine:")
    cols = ("mjx cold", "mjx warm", "native cold", "native warm", "plain loop")
    print(f"{'env':<28}" + "".join(f"{c:>13}" for c in cols) + f"{'native warm / mjx warm':>25}{'vs plain loop':>15}{'same zeros':>12}")
    for env, times, same in table:
        cells = "".join(f"{times[c]:>12.1f}s" if c in times else f"{'-':>13}" for c in cols)
        speed = f"{times['mjx warm'] / times['native warm']:.2f}x" if "mjx warm" in times else "-"
        print(f"{env:<28}{cells}{speed:>25}{times['plain loop'] / times['native warm']:>14.2f}x{str(same if same is not None else '-'):>12}")
    if any(same is False for _, _, same in table):
        raise SystemExit("the native and mjx datasets have different global zeros")


if __name__ == "__main__":
    main()
