"""What the finite_diff backend's solver diagnostics cost (``jacobians.native_solver``).

For each environment: ``T`` states along one native random-action trajectory (the model's own
solver, warm start carried), then, on those steps, in the same process and run:

- **baseline**: ``FiniteDiffBackend.batch``, the batched FD Jacobians alone (``mujoco.rollout``
  on all cores), what every finite_diff collection computed before the diagnostics existed;
- the replay alone (``NativeSolverDiagnostics.batch``, one thread and two);
- ``native_solver.measure``: both, the replay on a second thread beside the batched FD (what
  ``collect`` runs now).

Prints seconds, the ratios against the baseline, and what the diagnostics found (steps with a
truncated substep, the largest residual) at the converged definition.

usage: python benchmarks/fd_solver_diagnostics.py [--envs gymnasium:HalfCheetah-v5
       dm_control:walker-walk gymnasium:Humanoid-v5] [--steps 1000]
"""

from __future__ import annotations

import argparse
import time

import mujoco
import numpy as np

from dynsparse import envs
from dynsparse.jacobians import finite_diff, native_solver


def visited(model: mujoco.MjModel, substeps: int, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``StepInputs`` fields ``(steps, ...)`` along a native uniform-random-action trajectory."""
    d = mujoco.MjData(model)
    rng = np.random.default_rng(seed)
    low, high = envs.action_bounds(model)
    low, high = np.where(np.isfinite(low), low, -1.0), np.where(np.isfinite(high), high, 1.0)  # unlimited: [-1, 1]
    mujoco.mj_forward(model, d)
    rows = []
    for _ in range(steps):
        d.ctrl[:] = rng.uniform(low, high)
        rows.append(finite_diff.StepInputs(d.qpos.copy(), d.qvel.copy(), d.qacc_warmstart.copy(), d.ctrl.copy(),
                                           d.act.copy(), d.mocap_pos.copy(), d.mocap_quat.copy(), float(d.time)))
        for _ in range(substeps):
            mujoco.mj_step(model, d)
    return {name: np.stack([np.asarray(getattr(r, name)) for r in rows]) for name in rows[0].__dataclass_fields__}


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["gymnasium:HalfCheetah-v5", "dm_control:walker-walk", "gymnasium:Humanoid-v5"])
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    print(f"{'env':28s} {'steps':>5s} {'FD alone (baseline) s':>22s} {'replay 1 thread':>16s} {'replay 2 threads':>17s} "
          f"{'measure (both) s':>17s} {'ratio':>6s}  found")
    for name in args.envs:
        spec = envs.load(name, native=True)
        model, n = spec.mj_model, spec.n_substeps
        arrays = visited(model, n, args.steps)
        fd = finite_diff.FiniteDiffBackend(model, n)
        one = native_solver.NativeSolverDiagnostics(model, n, threads=0)
        two = native_solver.NativeSolverDiagnostics(model, n, threads=2)
        t_fd, _ = timed(fd.batch, arrays)
        t_one, out = timed(one.batch, arrays)
        t_two, _ = timed(two.batch, arrays)
        t_both, _ = timed(native_solver.measure, fd, one, arrays)
        found = f"{int((out['solver_truncated'] > 0).sum())} steps truncated, residual max {out['solver_residual'].max():.2g}"
        print(f"{name:28s} {args.steps:5d} {t_fd:22.2f} {t_one:10.2f} ({t_one / t_fd:.2f}x) {t_two:10.2f} ({t_two / t_fd:.2f}x) "
              f"{t_both:17.2f} {t_both / t_fd:5.2f}x  {found}")


if __name__ == "__main__":
    main()
