"""Steady-state Jacobians per second of `dynsparse collect` (the exact path) against native MuJoCo.

For each environment and batch size, one collection runs in a fresh process through the API
(`collect.collect`, the CLI's settings otherwise: autodiff, converged definition, chunks of 100
steps, no certificates, the CPU devices the batch divides). Its first unit (start-up, tracing,
compiling) is excluded: the rate is the Jacobians of the later units over their wall time,
writing to Zarr included. The baselines run in the same script on the states that collection
visited (read back from its dataset):

- plain single-thread loop of native ``mjd_transitionFD`` chained over the substeps (the model's
  own solver settings, one reused ``MjData``), and the same loop on all threads;
- dynsparse's ``finite_diff`` backend batched (``BatchedFD``: ``mujoco.rollout`` on all threads).

Native rows run in a subprocess without JAX (see ``benchmarks/jacobians.py`` for why).

usage: python benchmarks/steady_state.py [--envs CheetahRun WalkerRun SwimmerSwimmer6]
       [--batches 16 64] [--steps 400] [--repeat 3]
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

HERE = Path(__file__).resolve().parent


def _jacobians_module():
    spec = importlib.util.spec_from_file_location("bench_jacobians", HERE / "jacobians.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def worker(env: str, batch: int, steps: int, out: str) -> None:
    """Subprocess entry: one collection; prints JSON with the time of each unit's end."""
    from dynsparse import collect

    marks: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    config = collect.CollectConfig(env=env, episodes=batch, steps=steps, policy={"name": "random"}, batch_size=batch)
    collect.collect(config, out, on_progress=lambda p: marks.append((p.steps_done, time.perf_counter() - t0)))
    print(json.dumps({"marks": marks, "total_s": time.perf_counter() - t0}))


def collect_rate(env: str, batch: int, steps: int, out: Path) -> dict[str, float]:
    """Run ``worker`` in a fresh process; steady rate over units 2..n, and the first unit's time."""
    r = subprocess.run([sys.executable, __file__, "--worker", env, str(batch), str(steps), str(out)],
                       capture_output=True, text=True, check=True)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    marks = result["marks"]  # (steps done, seconds) at start and after each unit
    (s1, t1), (s_end, t_end) = marks[1], marks[-1]
    return {"rate": (s_end - s1) / (t_end - t1), "first_unit_s": t1, "total_s": result["total_s"]}


def visited_inputs(store: Path, limit: int) -> list:
    """``StepInputs`` of up to ``limit`` valid steps of a dataset (time 0: unused by these models)."""
    import xarray as xr

    from dynsparse import envs
    from dynsparse.jacobians import finite_diff

    import mujoco

    ds = xr.open_zarr(store)
    spec = envs.load(ds.attrs["env"])
    nq, nv, m = spec.nq, spec.nv, spec.mj_model
    state = ds["state"].values
    if state.shape[-1] != nq + nv:
        raise SystemExit(f"{spec.name}: stored states are not [qpos, qvel]; pick a model without free/ball joints")
    state = state.reshape(-1, nq + nv)
    action = ds["action"].values.reshape(-1, spec.nu)
    warm = ds["warmstart"].values.reshape(-1, nv)
    idx = np.flatnonzero(ds["valid"].values.reshape(-1))[:limit]
    d = mujoco.MjData(m)  # mocap bodies at their model positions (the tasks here never move them)
    return spec, [finite_diff.StepInputs(state[i, :nq], state[i, nq:], warm[i], action[i], np.zeros(m.na),
                                         d.mocap_pos.copy(), d.mocap_quat.copy(), 0.0) for i in idx]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", nargs="+", default=["CheetahRun", "WalkerRun", "SwimmerSwimmer6"])
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--states", type=int, default=1000, help="visited states the native rows differentiate")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--worker", nargs=4, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        env, batch, steps, out = args.worker
        worker(env, int(batch), int(steps), out)
        return
    bench = _jacobians_module()
    threads = os.cpu_count() or 1
    print(f"{threads} core(s); steady state = units 2.. of a collection of B episodes x {args.steps} steps (chunks of 100)")
    for env in args.envs:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for batch in args.batches:
                out = Path(tmp) / f"b{batch}.zarr"
                rows.append((batch, collect_rate(env, batch, args.steps, out)))
            spec, inputs = visited_inputs(out, args.states)
            native = bench.run_native(spec, inputs, [threads], args.repeat)
        base = native["baseline"]
        print(f"\n{env} (n_substeps={spec.n_substeps}, nv={spec.nv}, nu={spec.nu})")
        print(f"{'path':58s} {'jac/s':>9s} {'vs 1-thread baseline':>21s} {'vs all-thread':>14s}")
        lines = [("native mjd_transitionFD chained, 1 thread (baseline)", base),
                 (f"native mjd_transitionFD chained, {threads} threads", native[f"threads{threads}"]),
                 (f"finite_diff backend batched, {threads} threads", native[f"batched{threads}"])]
        lines += [(f"collect (autodiff, converged), batch {b}, steady", r["rate"]) for b, r in rows]
        for name, rate in lines:
            print(f"{name:58s} {rate:9.0f} {rate / base:20.2f}x {rate / native[f'threads{threads}']:13.2f}x")
        for b, r in rows:
            print(f"  batch {b}: first unit (start-up + compile + 100 steps) {r['first_unit_s']:.1f} s, whole run {r['total_s']:.1f} s")


if __name__ == "__main__":
    main()
