"""Wall time of ``dynsparse reproduce`` per environment and stage, against a plain per-step loop.

Runs (or resumes) the study into ``--out`` and prints, per environment: collection time split
into the first chunk (JIT trace + compile + one chunk; near zero compile with a warm
JAX cache) and the rest, and the analysis time by stage (t-SNE, figures, ...). The baseline,
measured in the same run on the same recorded states, is a plain single-thread Python loop of
chained native ``mujoco.mjd_transitionFD`` (centred, the model's own solver settings) over ``--baseline-steps`` steps
of each dataset, extrapolated to the study's size; the ratio is baseline / study (> 1: the study
is faster than that loop would be for its Jacobians alone). The baseline runs in a JAX-free
subprocess (see benchmarks/jacobians.py for why).

usage: python benchmarks/reproduce.py [--quick] [--envs A,B] [--out DIR] [--baseline-steps 300]
(paper scale: 8 envs x 10 episodes x 1000 steps; target: under 5 minutes on 2 CPU cores)

The study builds the later runs' programs in a second process while it collects (``buildahead``);
``DYNSPARSE_BUILD_AHEAD=0`` runs it serially, the baseline for that process (cold: each with a new
``DYNSPARSE_JAX_CACHE``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import mujoco
import numpy as np
import xarray as xr

from dynsparse import envs, jaxcache, reproduce, xla
from dynsparse.jacobians import finite_diff

sys.path.insert(0, str(Path(__file__).parent))
from jacobians import run_native  # noqa: E402


def baseline_seconds_per_step(store: Path, n: int) -> float:
    """Seconds per Jacobian of the plain chained-mjd_transitionFD loop on the first ``n`` recorded
    steps (episode-major) of the dataset at ``store``."""
    ds = xr.open_zarr(store)
    spec = envs.load(ds.attrs["env"])
    nq = spec.nq
    state = ds["state"].values.reshape(-1, ds["state"].shape[-1])[:n]  # [qpos, qvel] (qstate dim with free joints)
    action = ds["action"].values.reshape(-1, ds.sizes["action_in"])[:n]
    warm = ds["warmstart"].values.reshape(-1, ds.sizes["dof"])[:n]
    d0 = mujoco.MjData(spec.mj_model)
    inputs = [
        finite_diff.StepInputs(qpos=s[:nq], qvel=s[nq:], warmstart=w, ctrl=a, act=np.zeros(0), mocap_pos=d0.mocap_pos.copy(),
                               mocap_quat=d0.mocap_quat.copy(), time=0.0)
        for s, a, w in zip(state, action, warm)
    ]
    return 1.0 / run_native(spec, inputs, threads=[], repeat=1)["baseline"]  # in a JAX-free subprocess


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="the quick study (reproduce.QUICK) instead of 10 x 1000")
    p.add_argument("--envs", default=None, help="comma-separated subset (default: all eight)")
    p.add_argument("--out", default=None, help="study folder (default: a new temporary folder, so nothing is resumed)")
    p.add_argument("--baseline-steps", type=int, default=300)
    args = p.parse_args()
    kw = {"envs": tuple(args.envs.split(","))} if args.envs else {}
    config = (reproduce.quick(**kw) if args.quick else reproduce.full(**kw)).validated()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="dynsparse-study-"))
    xla.use_cpu_cores()  # as the CLI does
    jaxcache.enable()

    first_chunk: dict[str, float] = {}
    state = {"env": None, "t0": 0.0}

    def on_stage(event: reproduce.StageEvent) -> None:
        if event.stage == "collect" and not event.done:
            state.update(env=event.env, t0=time.perf_counter())
        what = f"done in {event.seconds:.1f} s" if event.done else "start"
        print(f"[{time.strftime('%H:%M:%S')}] {event.stage} {event.env or ''} {what}", flush=True)

    def on_collect(progress) -> None:
        if progress.unit >= 1 and state["env"] not in first_chunk:
            first_chunk[state["env"]] = time.perf_counter() - state["t0"]

    t0 = time.perf_counter()
    reproduce.reproduce(out, config, on_stage=on_stage, on_collect_progress=on_collect)
    wall = time.perf_counter() - t0
    timing = json.loads((out / "timing.json").read_text())

    steps = config.episodes * config.steps
    print(f"\nstudy: {len(config.envs)} envs x {config.episodes} episodes x {config.steps} steps, out {out}")
    print(f"{'env':<18}{'collect':>9}{'1st chunk':>11}{'rest':>8}{'analyze':>9}{'  of which t-SNE, figures':<26}"
          f"{'baseline/step':>15}{'baseline':>10}")
    base_total = 0.0
    for job in config.jobs():
        env = job.run.env
        summary = json.loads((job.analysis_dir(out) / "summary.json").read_text())
        st = summary["timing_s"]
        per_step = baseline_seconds_per_step(out / "runs" / job.run.id / "data.zarr", min(args.baseline_steps, steps))
        base = per_step * steps
        base_total += base
        c = timing[env]["collect"]
        fc = first_chunk.get(env, float("nan"))
        print(f"{env:<18}{c:>8.1f}s{fc:>10.1f}s{c - fc:>7.1f}s{timing[env]['analyze']:>8.1f}s"
              f"{'':2}{st.get('embedding', 0):>6.1f}s, {st.get('figures', 0):>6.1f}s{'':9}"
              f"{per_step * 1e3:>11.3f} ms{base:>9.1f}s")
    print(f"{'report':<18}{timing['report']['report']:>8.1f}s")
    print(f"\nwhole study (wall, this run): {wall:.1f} s; target 300 s -> {'met' if wall <= 300 else 'not met'}")
    print(f"plain chained mjd_transitionFD loop for the same Jacobians (extrapolated): {base_total:.1f} s; "
          f"ratio baseline / study = {base_total / wall:.2f}")


if __name__ == "__main__":
    main()
