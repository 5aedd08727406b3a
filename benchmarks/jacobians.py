"""Control-step Jacobians per second on one environment, per definition, method, batch size and
thread count.

Every row is printed as a ratio against the baseline, a plain single-thread Python loop over
native ``mujoco.mjd_transitionFD`` (centred, chained over substeps, one reused ``MjData``, the
model's own solver settings) on the same states, measured in the same run (best of
``--repeat``): the strongest simple way to get these Jacobians' size and sparsity pattern
(it holds the warm start at every substep, so its values are neither definition's). The native rows run in a subprocess in
which JAX never ran: after a computation XLA's worker threads keep spinning for a while, and on
this machine's two SMT siblings that slowed a native loop in the same process by up to 1.8x
(measured: 1475-1679 vs 2543-2701 CheetahRun Jacobians/s), which would flatter every ratio.
Rows:

- native finite differences, thread-parallel (``mjd_transitionFD`` releases the GIL);
- dynsparse's ``finite_diff`` backend: one step at a time (``NativeStep``, the old loop) and
  batched (``BatchedFD``: ``mujoco.rollout``, on 1 thread and on each ``--threads`` count);
- the old default path (before named definitions: forward mode through every solver iteration
  of ``mjx.step`` per substep, the warm start held at every substep), for the speed comparison;
- the autodiff methods (``dynsparse.jacobians.autodiff``) of each definition at each batch size: compile seconds
  (compiled with ``dynsparse.xla.compiler_options()``, as collection does; compile seconds of the
  first call; near zero once the JAX persistent cache at ``$DYNSPARSE_JAX_CACHE`` is warm,
  ``--jax-cache off`` to measure cold), and XLA's temporary memory per Jacobian;
- the autodiff default compiled with XLA's default options (dynsparse turns the CPU fusion
  emitters off, see ``dynsparse.xla``), and split over two CPU devices (``--devices 2``);
- one batched control step without Jacobians (the primal): the last column expresses each
  path's cost in primal MJX steps, against the theoretical ``2 nv + nu`` tangent directions.

The correctness guard compares, per definition, every method with ``reference`` on the largest
batch's states: identical zero decisions at the default threshold (1e-12) and values within
1e-6 relative; the script exits 1 if it fails.

usage: python benchmarks/jacobians.py [--env CheetahRun] [--batches 16 64 256] [--states 256]
       [--methods substep reference] [--definitions converged as-run] [--threads 2] [--devices 2]
       [--cores N] [--repeat 3] [--jax-cache off] [--no-old]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import mujoco
import numpy as np

from dynsparse.jacobians import finite_diff

# ----------------------------------------------------------------------------- native (no JAX)


def plain_fd_loop(spec: Any, inputs: list[finite_diff.StepInputs], model: mujoco.MjModel | None = None) -> float:
    """Baseline: seconds for a plain loop of chained mjd_transitionFD over ``inputs``.

    ``spec`` needs ``n_substeps`` and ``mj_model`` (an ``EnvSpec`` or a namespace).
    """
    if model is None:
        model = copy.deepcopy(spec.mj_model)  # the model's own solver settings
    m = model
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


def threaded_fd(spec: Any, inputs: list[finite_diff.StepInputs], threads: int) -> float:
    """Seconds for the same loop split over ``threads`` threads (one MjData each)."""
    model = copy.deepcopy(spec.mj_model)
    parts = [inputs[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda part: plain_fd_loop(spec, part, model), parts))
        return time.perf_counter() - t0


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    """Smallest wall time of ``repeat`` calls of ``fn()`` (which blocks until done)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def native_rates(spec: Any, inputs: list[finite_diff.StepInputs], threads: list[int], repeat: int) -> dict[str, float]:
    """Jacobians per second of the baseline, the threaded loops and the ``finite_diff`` backend."""
    n = len(inputs)
    plain_fd_loop(spec, inputs)  # warm-up (page in MuJoCo, allocate, let the clock settle)
    fd = finite_diff.FiniteDiffBackend(spec.mj_model, spec.n_substeps, threads=0)
    arrays = {f: np.stack([np.asarray(getattr(x, f)) for x in inputs]) for f in finite_diff.StepInputs.__dataclass_fields__}
    batched = {t: finite_diff.BatchedFD(spec.mj_model, spec.n_substeps, threads=0 if t == 1 else t) for t in sorted({1, *threads})}
    rates = {"baseline": 0.0, "finite_diff": 0.0, **{f"threads{t}": 0.0 for t in threads},
             **{f"batched{t}": 0.0 for t in batched}}
    for _ in range(repeat):  # interleaved, best of each: drifts of the machine hit all rows alike
        rates["baseline"] = max(rates["baseline"], n / plain_fd_loop(spec, inputs))
        for t in threads:
            rates[f"threads{t}"] = max(rates[f"threads{t}"], n / threaded_fd(spec, inputs, t))
        rates["finite_diff"] = max(rates["finite_diff"], n / best_of(lambda: [fd(x) for x in inputs], 1))
        for t, b in batched.items():
            rates[f"batched{t}"] = max(rates[f"batched{t}"], n / best_of(lambda: b.jacobians(arrays), 1))
    return rates


def native_worker(folder: Path) -> None:
    """Subprocess entry: read the model and inputs written by ``run_native``, print rates as JSON."""
    import types

    job = json.loads((folder / "job.json").read_text())
    spec = types.SimpleNamespace(mj_model=mujoco.MjModel.from_binary_path(str(folder / "model.mjb")), n_substeps=job["n_substeps"])
    arrays = dict(np.load(folder / "inputs.npz"))
    inputs = [finite_diff.StepInputs.from_arrays(arrays, (i,)) for i in range(len(arrays["qpos"]))]
    print(json.dumps(native_rates(spec, inputs, job["threads"], job["repeat"])))


def run_native(spec: Any, inputs: list[finite_diff.StepInputs], threads: list[int], repeat: int) -> dict[str, float]:
    """``native_rates`` in a fresh subprocess (pinned to this process's cores, no JAX)."""
    time.sleep(1.0)  # let this process's XLA worker threads stop spinning (they share the cores)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mujoco.mj_saveModel(spec.mj_model, str(folder / "model.mjb"), None)
        fields = [f for f in finite_diff.StepInputs.__dataclass_fields__]
        np.savez(folder / "inputs.npz", **{f: np.stack([np.asarray(getattr(x, f)) for x in inputs]) for f in fields})
        (folder / "job.json").write_text(json.dumps({"n_substeps": spec.n_substeps, "threads": threads, "repeat": repeat}))
        out = subprocess.run([sys.executable, __file__, "--native-worker", str(folder)], check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- autodiff (JAX)


def sample_states(spec: Any, n: int, steps: int = 50, seed: int = 0):
    """``n`` batched mjx.Data states after ``steps`` uniform random actions, and next actions."""
    import jax

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


def native_inputs(data: Any, actions: Any, i: int) -> finite_diff.StepInputs:
    take = lambda x: np.asarray(x[i])  # noqa: E731
    return finite_diff.StepInputs(
        qpos=take(data.qpos), qvel=take(data.qvel), warmstart=take(data.qacc_warmstart), ctrl=take(actions),
        act=take(data.act), mocap_pos=take(data.mocap_pos), mocap_quat=take(data.mocap_quat), time=float(data.time[i]),
    )


def temp_bytes(compiled: Any) -> float:
    """XLA's temporary buffer bytes of a compiled function (NaN if not reported)."""
    try:
        return float(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        return float("nan")


def old_default_fn(spec: Any) -> Callable[[Any, Any], tuple[Any, Any]]:
    """The default path before named definitions (kept here only to measure against): per
    substep, ``jacfwd`` through ``mjx.step`` (every solver iteration) with the warm start held,
    ``q`` and ``(v, a)`` directions apart, chained. Unbatched ``(data, a) -> (J_s, J_a)``."""
    import jax
    import jax.numpy as jnp
    from mujoco import mjx

    from dynsparse import tangent
    from dynsparse.jacobians import autodiff, definitions

    model = definitions.mjx_model(spec, "as-run")
    c, n = spec.charts, spec.state_size

    def sub(d: Any, a: Any) -> tuple[Any, Any, Any]:
        warm = jax.lax.stop_gradient(d.qacc_warmstart)

        def g(q: Any, v: Any, a_: Any) -> tuple[Any, Any]:
            d_next = mjx.step(model, d.replace(qpos=q, qvel=v, ctrl=a_, qacc_warmstart=warm))
            return autodiff.tangent_state(c, d_next.qpos, d_next.qvel), d_next

        dq0 = jnp.zeros((c.nv,), d.qpos.dtype)
        j_q, d_next = jax.jacfwd(lambda dq: g(tangent.retract(c, d.qpos, dq), d.qvel, a), has_aux=True)(dq0)
        j_v, j_a = jax.jacfwd(lambda v, a_: g(d.qpos, v, a_)[0], argnums=(0, 1))(d.qvel, a)
        return d_next, jnp.concatenate([j_q, j_v], axis=1), j_a

    def jac(data: Any, a: Any) -> tuple[Any, Any]:
        def body(carry: Any, _: None) -> tuple[Any, None]:
            d, a_tot, b_tot = carry
            d_next, a_k, b_k = sub(d, a)
            return (d_next, a_k @ a_tot, a_k @ b_tot + b_k), None

        init = (data, jnp.eye(n, dtype=data.qpos.dtype), jnp.zeros((n, a.shape[0]), data.qpos.dtype))
        (_, j_s, j_a), _ = jax.lax.scan(body, init, None, length=spec.n_substeps)
        return j_s, j_a

    return jac


def main(args: argparse.Namespace) -> None:
    import jax

    from dynsparse import envs, jaxcache, xla
    from dynsparse.jacobians import autodiff, compare, definitions

    if args.jax_cache != "off":
        jaxcache.enable(args.jax_cache)
    for m in args.methods:
        autodiff.check_method(m)
    for d in args.definitions:
        definitions.check_definition(d)
    spec = envs.load(args.env)
    bmax = max(args.batches)
    data, actions = sample_states(spec, max(args.states, bmax))
    inputs = [native_inputs(data, actions, i) for i in range(args.states)]
    native = run_native(spec, inputs, args.threads, args.repeat)
    base_rate = native["baseline"]
    rows: list[tuple[str, object, float, float, float]] = [
        *((f"native mjd_transitionFD, {t} threads", "-", native[f"threads{t}"], float("nan"), float("nan")) for t in args.threads),
        ("finite_diff one step at a time (converged, 1 thread)", "-", native["finite_diff"], float("nan"), float("nan")),
        *((f"finite_diff backend, batched (converged, {t} thread{'s' if t > 1 else ''})", "-", native[f"batched{t}"], float("nan"), float("nan"))
          for t in sorted({1, *args.threads})),
    ]

    def measure(name: str, fn: Callable[..., Any], b: int) -> Any:
        sub = jax.tree_util.tree_map(lambda x: x[:b], data)
        act = actions[:b]
        t0 = time.perf_counter()
        compiled = jax.jit(fn, compiler_options=xla.compiler_options()).lower(sub, act).compile()
        out = jax.block_until_ready(compiled(sub, act))
        compile_s = time.perf_counter() - t0
        rate = b / best_of(lambda: jax.block_until_ready(compiled(sub, act)), args.repeat)
        rows.append((name, b, rate, compile_s, temp_bytes(compiled) / b / 2**20))
        return out

    if not args.no_old:
        for b in args.batches:
            measure("old default (unrolled, warm start held)", jax.vmap(old_default_fn(spec)), b)
    results: dict[str, dict[str, np.ndarray]] = {}
    for definition in args.definitions:
        for method in args.methods:
            fn = jax.vmap(autodiff.make_jacobian_fn(spec, method, definition))
            for b in args.batches:
                out = measure(f"{definition} {method}", fn, b)
                if b == bmax:
                    results.setdefault(definition, {})[method] = np.concatenate([np.asarray(out[0]), np.asarray(out[1])], axis=-1)

    default_fn = jax.vmap(autodiff.make_jacobian_fn(spec))
    sub = jax.tree_util.tree_map(lambda x: x[:bmax], data)
    extra = []
    if xla.compiler_options():  # the same path compiled with XLA's default options
        extra.append((f"{definitions.DEFAULT_DEFINITION} {autodiff.DEFAULT_METHOD}, XLA defaults", jax.jit(default_fn), (sub, actions[:bmax])))
    n_dev = min(args.devices, jax.local_device_count())
    if n_dev > 1 and bmax % n_dev == 0:  # the batch split over CPU devices (one program each)
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        sharding = NamedSharding(Mesh(np.array(jax.devices()[:n_dev]), ("batch",)), PartitionSpec("batch"))
        split = jax.device_put((sub, actions[:bmax]), sharding)
        extra.append((f"{definitions.DEFAULT_DEFINITION} {autodiff.DEFAULT_METHOD}, {n_dev} CPU devices",
                      jax.jit(default_fn, compiler_options=xla.compiler_options()), split))
    for name, f, f_args in extra:
        t0 = time.perf_counter()
        jax.block_until_ready(f(*f_args))
        compile_s = time.perf_counter() - t0
        rate = bmax / best_of(lambda: jax.block_until_ready(f(*f_args)), args.repeat)  # noqa: B023
        rows.append((name, bmax, rate, compile_s, float("nan")))

    step = definitions.make_primal_control_step(spec, "as-run")
    primal = jax.jit(jax.vmap(lambda d, a: step(d, envs.state_of(d), a)[0]), compiler_options=xla.compiler_options())
    jax.block_until_ready(primal(sub, actions[:bmax]))
    primal_rate = bmax / best_of(lambda: jax.block_until_ready(primal(sub, actions[:bmax])), args.repeat)

    cores = len(os.sched_getaffinity(0))
    print(f"\n{args.env}: control-step Jacobians per second (n_substeps={spec.n_substeps}, nv={spec.nv}, nu={spec.nu}: "
          f"2nv+nu = {2 * spec.nv + spec.nu} tangent directions), {cores} core(s), {jax.default_backend()}")
    print(f"{'path':<44}{'batch':>6}{'jac/s':>11}{'vs baseline':>13}{'compile s':>11}{'MiB/jac':>9}{'primal steps/jac':>18}")
    print(f"{'plain mjd_transitionFD loop (baseline)':<44}{'-':>6}{base_rate:>11.1f}{1.0:>12.2f}x{'':>11}{'':>9}"
          f"{primal_rate / base_rate:>18.1f}")
    for name, b, rate, comp, mib in rows:
        comp_s = f"{comp:>11.1f}" if np.isfinite(comp) else f"{'':>11}"
        mib_s = f"{mib:>9.2f}" if np.isfinite(mib) else f"{'':>9}"
        print(f"{name:<44}{b!s:>6}{rate:>11.1f}{rate / base_rate:>12.2f}x{comp_s}{mib_s}{primal_rate / rate:>18.1f}")
    print(f"{'primal control step (as-run, no Jacobian)':<44}{bmax:>6}{primal_rate:>11.1f}{primal_rate / base_rate:>12.2f}x")
    failed = False
    for definition, by_method in results.items():
        if "reference" not in by_method:
            continue
        for method, jac in by_method.items():
            if method == "reference":
                continue
            agree = compare.method_agreement(by_method["reference"], jac)
            verdict = "PASS" if agree.passes() else "FAIL"
            failed |= not agree.passes()
            print(f"guard {definition} {method} vs reference on {bmax} states: zero-decision mismatches {agree.zero_mismatch} "
                  f"of {agree.entries}, max relative difference {agree.max_rel_err:.2e} (<= {compare.GUARD_RTOL:g}): {verdict}")
    if failed:
        sys.exit(1)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--env", default="CheetahRun")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--states", type=int, default=256, help="states of the native rows")
    p.add_argument("--methods", nargs="+", default=["substep", "reference"])
    p.add_argument("--definitions", nargs="+", default=["converged", "as-run"])
    p.add_argument("--no-old", action="store_true", help="skip the old default path's rows")
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="thread counts of the parallel native row")
    p.add_argument("--devices", type=int, default=2, help="CPU devices of the split row (1: no such row)")
    p.add_argument("--cores", type=int, default=None, help="pin this process (JAX included) to the first N cores")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--jax-cache", default=None, help="'off', or a folder (default: dynsparse's cache)")
    p.add_argument("--native-worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    ARGS = _parse()
    if ARGS.native_worker:
        native_worker(Path(ARGS.native_worker))
        sys.exit(0)
    if ARGS.cores:  # before JAX starts its thread pools; the native subprocess inherits it
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: ARGS.cores]))
    if ARGS.devices > 1:  # before JAX starts
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={ARGS.devices}"
    main(ARGS)
