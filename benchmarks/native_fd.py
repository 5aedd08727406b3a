"""What a ``--backend finite_diff`` collection waits for, with the trajectories simulated natively
(``--rollout native``) against in MJX (``--rollout mjx``, every finite_diff run before), issue 16.

For each environment, four ``dynsparse collect ENV --backend finite_diff --episodes E --steps T``
commands, each a fresh process: ``mjx`` cold (a new JAX cache: the reset and rollout chunk are
traced and compiled), ``mjx`` warm (the same cache again: their executables load; the strongest
earlier path, **baseline**), ``native`` cold (a new cache) and ``native`` warm. Beside them, in a
process without JAX, the simple baselines a user would write with MuJoCo alone, one thread, the
same number of random-action episodes stepped natively: centred differences of the whole control
step at every step (the function dynsparse's finite differences compute; the **plain FD loop**),
and chained per-substep ``mjd_transitionFD`` (MuJoCo's own, cheaper per Jacobian, but another
derivative: the warm start held per substep; not for RK4). Their timings exclude imports and
model loading (printed beside). A model MJX cannot build (``gymnasium:Humanoid-v5``, PGS) has native rows only.

Prints wall seconds, ratios against the mjx-warm row and against the plain loop, and the global
zeros of ``J_s``/``J_a`` at ``|J| < 1e-8`` (finite differences' resolution) of the mjx and native
datasets, and how many differ (the two trajectories agree step by step to round-off, not bit for
bit, see ``dynsparse.native_rollout``; an entry whose finite differences sit at the threshold can
flip between them).

usage: python benchmarks/native_fd.py [--envs gymnasium:HalfCheetah-v5 gymnasium:Hopper-v5
       dm_control:walker-walk gymnasium:Humanoid-v5] [--episodes 16] [--steps 250]
"""

from __future__ import annotations

import argparse
import importlib.util
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
    spec = importlib.util.spec_from_file_location("bench_startup", Path(__file__).resolve().parent / "startup.py")
    startup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(startup)  # type: ignore[union-attr]
    return startup.timed([sys.executable, "-m", "dynsparse", "collect", env, "--backend", "finite_diff", "--rollout", rollout,
                          "--episodes", str(episodes), "--steps", str(steps), "--out", str(out)],
                         {**os.environ, "DYNSPARSE_JAX_CACHE": str(cache)})


def plain_worker(env: str, episodes: int, steps: int) -> None:
    """Subprocess entry (no JAX imported): the plain single-thread native loops; prints their seconds.

    ``fd_loop_s``: random-action episodes stepped natively, at every step centred differences of
    the whole control step (``mj_step`` x substeps per perturbation, ``mj_integratePos`` for
    positions; the model's own solver, the incoming warm start restored): the function dynsparse's
    ``as-run`` finite differences compute, written as a user would. ``transition_fd_s``: the same
    episodes with chained per-substep ``mjd_transitionFD`` (MuJoCo's own, faster; the warm start
    held per substep, another derivative; ``None`` for RK4, which it does not support).
    """
    t_import = time.perf_counter()
    import mujoco

    from dynsparse import sources

    recipe = sources.load(env)
    m, n_sub = recipe.model, recipe.n_substeps
    loaded = time.perf_counter() - t_import
    low, high = m.actuator_ctrlrange[:, 0], m.actuator_ctrlrange[:, 1]
    nv, nu, eps = m.nv, m.nu, 1e-6
    spec = int(mujoco.mjtState.mjSTATE_INTEGRATION)

    def episodes_of(jacobian) -> float:
        rng = np.random.default_rng(0)
        d = mujoco.MjData(m)
        t0 = time.perf_counter()
        for _ in range(episodes):
            mujoco.mj_resetData(m, d)
            d.qpos[:] += rng.uniform(-0.1, 0.1, m.nq)
            for _ in range(steps):
                d.ctrl[:] = low + rng.uniform(0, 1, nu) * (high - low)
                jacobian(d)
                for _ in range(n_sub):
                    mujoco.mj_step(m, d)
        return time.perf_counter() - t0

    e = mujoco.MjData(m)
    saved = np.zeros(mujoco.mj_stateSize(m, spec))

    def whole_step_fd(d: mujoco.MjData) -> np.ndarray:
        mujoco.mj_getState(m, d, saved, spec)
        cols = np.zeros((2 * nv, 2 * nv + nu))
        ref = None
        for j in [-1, *range(2 * nv + nu)]:
            outs = []
            for sign in ((0.0,) if j < 0 else (eps, -eps)):
                mujoco.mj_setState(m, e, saved, spec)
                if 0 <= j < nv:
                    dq = np.zeros(nv)
                    dq[j] = sign
                    mujoco.mj_integratePos(m, e.qpos, dq, 1.0)
                elif nv <= j < 2 * nv:
                    e.qvel[j - nv] += sign
                elif j >= 2 * nv:
                    e.ctrl[j - 2 * nv] += sign
                for _ in range(n_sub):
                    mujoco.mj_step(m, e)
                dq = np.zeros(nv)
                if ref is not None:
                    mujoco.mj_differentiatePos(m, dq, 1.0, ref[:m.nq], e.qpos)
                outs.append(np.concatenate([dq, e.qvel - (ref[m.nq:] if ref is not None else 0.0)]))
                if j < 0:
                    ref = np.concatenate([e.qpos, e.qvel])
            if j >= 0:
                cols[:, j] = (outs[0] - outs[1]) / (2 * eps)
        return cols

    nx = 2 * nv + m.na
    a_k, b_k = np.zeros((nx, nx)), np.zeros((nx, nu))

    f = mujoco.MjData(m)

    def chained_transition_fd(d: mujoco.MjData) -> None:
        mujoco.mj_getState(m, d, saved, spec)
        mujoco.mj_setState(m, f, saved, spec)
        a, b = np.eye(nx), np.zeros((nx, nu))
        for _ in range(n_sub):
            mujoco.mjd_transitionFD(m, f, eps, True, a_k, b_k, None, None)
            a, b = a_k @ a, a_k @ b + b_k
            mujoco.mj_step(m, f)

    rk4 = m.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    print(json.dumps({"fd_loop_s": episodes_of(whole_step_fd), "load_s": loaded,
                      "transition_fd_s": None if rk4 else episodes_of(chained_transition_fd)}))


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
        times["plain FD loop"] = loop["fd_loop_s"]
        if loop["transition_fd_s"] is not None:
            times["transitionFD"] = loop["transition_fd_s"]
        print(f"{env:<28}{'plain loops':<14}{loop['fd_loop_s']:8.1f} s, mjd_transitionFD chained {loop['transition_fd_s']} s "
              f"(+ {loop['load_s']:.1f} s loading the model)", flush=True)
        same = None
        if "mjx" in stores:  # (zeros of mjx, of native, in one only)
            (zs_m, za_m), (zs_n, za_n) = zeros(stores["mjx"]), zeros(stores["native"])
            same = (len(zs_m | za_m), len(zs_n | za_n), len((zs_m ^ zs_n) | (za_m ^ za_n)))
        table.append((env, times, same))
    n = args.episodes * args.steps
    print(f"\n{args.episodes} episodes x {args.steps} steps ({n} Jacobians) per run, one fresh process each, this machine:")
    cols = ("mjx cold", "mjx warm", "native cold", "native warm", "plain FD loop", "transitionFD")
    print(f"{'env':<28}" + "".join(f"{c:>15}" for c in cols) + f"{'mjx warm / native warm':>24}{'plain FD loop / native warm':>29}"
          f"{'zeros mjx/native/differ':>25}")
    for env, times, same in table:
        cells = "".join(f"{times[c]:>14.1f}s" if c in times else f"{'-':>15}" for c in cols)
        speed = f"{times['mjx warm'] / times['native warm']:.2f}x" if "mjx warm" in times else "-"
        zeros_text = "-" if same is None else "/".join(map(str, same))
        print(f"{env:<28}{cells}{speed:>24}{times['plain FD loop'] / times['native warm']:>28.2f}x{zeros_text:>25}")
    print("(zeros at |J| < 1e-8: finite differences' round-off there grows with |x| along a trajectory, so entries near the "
          "threshold, e.g. of a translation-invariant x column, flip between the two rollouts' trajectories)")


if __name__ == "__main__":
    main()
