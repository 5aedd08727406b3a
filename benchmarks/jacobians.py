"""Control-step Jacobians per second on one environment, per backend and batch size.

Every row is printed beside a plain single-thread loop over native ``mujoco.mjd_transitionFD``
(centred, tolerance 0, chained over substeps) measured in the same run on the same states, as a
ratio (>1: faster than that baseline). Compile time is reported separately and excluded.

usage: python benchmarks/jacobians.py [--env CheetahRun] [--batches 1 64 256] [--states 256]
"""

from __future__ import annotations

import argparse
import copy
import time

import jax
import mujoco
import numpy as np

from dynsparse import envs
from dynsparse.jacobians import autodiff, finite_diff


def sample_states(spec: envs.EnvSpec, n: int, steps: int = 50, seed: int = 0):
    """``n`` batched mjx.Data states after ``steps`` uniform random actions, and next actions."""
    env = spec.env
    keys = jax.random.split(jax.random.PRNGKey(seed), n)

    @jax.jit
    def roll(keys):
        def one(key):
            state = env.reset(key)
            acts = jax.random.uniform(key, (steps + 1, spec.nu), minval=-1, maxval=1)
            state, _ = jax.lax.scan(lambda s, a: (env.step(s, a), None), state, acts[:-1])
            return state.data, acts[-1]
        return jax.vmap(one)(keys)

    return roll(keys)


def native_inputs(data, actions, i: int) -> finite_diff.StepInputs:
    take = lambda x: np.asarray(x[i])  # noqa: E731
    return finite_diff.StepInputs(
        qpos=take(data.qpos), qvel=take(data.qvel), warmstart=take(data.qacc_warmstart), ctrl=take(actions),
        act=take(data.act), mocap_pos=take(data.mocap_pos), mocap_quat=take(data.mocap_quat), time=float(data.time[i]),
    )


def plain_fd_loop(spec: envs.EnvSpec, inputs: list[finite_diff.StepInputs]) -> float:
    """Baseline: seconds for a plain loop of chained mjd_transitionFD over ``inputs``."""
    m = copy.deepcopy(spec.mj_model)
    m.opt.tolerance = 0.0
    d = mujoco.MjData(m)
    nx = 2 * m.nv + m.na
    a_k, b_k = np.zeros((nx, nx)), np.zeros((nx, m.nu))
    t0 = time.perf_counter()
    for x in inputs:
        d.qpos[:], d.qvel[:], d.qacc_warmstart[:], d.ctrl[:] = x.qpos, x.qvel, x.warmstart, x.ctrl
        d.time = x.time
        if m.nmocap:
            d.mocap_pos[:], d.mocap_quat[:] = x.mocap_pos, x.mocap_quat
        a, b = np.eye(nx), np.zeros((nx, m.nu))
        for _ in range(spec.n_substeps):
            mujoco.mjd_transitionFD(m, d, 1e-6, True, a_k, b_k, None, None)
            a, b = a_k @ a, a_k @ b + b_k
            mujoco.mj_step(m, d)
    return time.perf_counter() - t0


def timed(fn, *args, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--env", default="CheetahRun")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--states", type=int, default=256)
    args = p.parse_args()
    spec = envs.load(args.env)
    n = max(args.states, max(args.batches))
    data, actions = sample_states(spec, n)
    inputs = [native_inputs(data, actions, i) for i in range(n)]

    plain_fd_loop(spec, inputs[:16])  # warm-up (page in MuJoCo, allocate)
    base_s = min(plain_fd_loop(spec, inputs) for _ in range(2))
    base_rate = n / base_s
    rows = [("plain mjd_transitionFD loop (baseline)", "-", base_rate, 1.0, 0.0)]

    fd = finite_diff.FiniteDiffBackend(spec.mj_model, spec.n_substeps)
    for x in inputs[:16]:
        fd(x)  # warm-up
    for b in args.batches:
        t0 = time.perf_counter()
        for x in inputs[:b]:
            fd(x)
        rate = b / (time.perf_counter() - t0)
        rows.append(("finite_diff (dynsparse)", b, rate, rate / base_rate, 0.0))

    jac = autodiff.make_jacobian_fn(spec)
    batched = jax.jit(jax.vmap(jac))
    for b in args.batches:
        sub = jax.tree_util.tree_map(lambda x: x[:b], data)
        act = actions[:b]
        t0 = time.perf_counter()
        jax.block_until_ready(batched(sub, act))
        compile_s = time.perf_counter() - t0
        rate = b / timed(batched, sub, act)
        rows.append(("autodiff (jit(vmap(jacfwd)))", b, rate, rate / base_rate, compile_s))

    print(f"\n{args.env}: control-step Jacobians per second (n_substeps={spec.n_substeps}, "
          f"state {spec.state_size}, action {spec.nu}), {jax.device_count()} {jax.default_backend()} device(s)")
    print(f"{'backend':<42}{'batch':>6}{'jac/s':>12}{'vs baseline':>13}{'compile s':>11}")
    for name, b, rate, ratio, comp in rows:
        print(f"{name:<42}{b!s:>6}{rate:>12.1f}{ratio:>12.2f}x{comp:>11.1f}")


if __name__ == "__main__":
    main()
