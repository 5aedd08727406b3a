#!/usr/bin/env python
"""Train PPO policies for the study's eight tasks in parallel, within a wall-clock deadline.

Each task runs ``python -m dynsparse train-policy ENV --out OUT/ENV --timesteps N --set num_evals=K``
in its own process (their JIT compiles overlap on the CPU cores; their kernels share the GPU), with
its output in ``OUT/ENV.log``. At the deadline a training still running gets SIGINT, then SIGKILL
after a grace period: its checkpoint holds its last evaluated policy, marked ``"complete": false``
(checkpoints are replaced atomically after every evaluation). Finally ``OUT/summary.md`` tabulates
env, steps trained, budget, evaluation return and wall time.

This is the script the committed ``policies/`` were made with (see the README for the command,
the machine and the budgets). On a CPU use tiny budgets: PPO there is only a smoke test.

    python scripts/train_study_policies.py --out policies --deadline 480
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STUDY_ENVS = ("BallInCup", "CartpoleBalance", "CheetahRun", "ReacherHard", "FingerSpin", "FingerTurnEasy",
              "WalkerRun", "SwimmerSwimmer6")
#: environment steps per task for one ~6-minute share of one GPU (Playground publishes 60M, 100M
#: for WalkerRun and Swimmer): what fits, not what converges; a training stopped at the deadline
#: keeps its last evaluated checkpoint
DEFAULT_BUDGETS = {"BallInCup": 20_000_000, "CartpoleBalance": 20_000_000, "CheetahRun": 30_000_000,
                   "ReacherHard": 20_000_000, "FingerSpin": 20_000_000, "FingerTurnEasy": 20_000_000,
                   "WalkerRun": 30_000_000, "SwimmerSwimmer6": 30_000_000}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the checkpoints (OUT/ENV), logs and summary.md")
    p.add_argument("--deadline", type=float, default=480.0, help="seconds after which running trainings are stopped")
    p.add_argument("--envs", default=",".join(STUDY_ENVS), help="comma-separated tasks")
    p.add_argument("--budget", action="append", default=[], metavar="ENV=STEPS", help="override a task's step budget")
    p.add_argument("--num-evals", type=int, default=20, help="evaluations (and checkpoint updates) per training")
    p.add_argument("--noise-beta", type=float, default=None, help="exploration noise exponent (default train-policy's)")
    p.add_argument("--extra", default="", help="extra train-policy arguments, e.g. '--set num_envs=64'")
    args = p.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budgets = dict(DEFAULT_BUDGETS)
    for item in args.budget:
        env, _, steps = item.partition("=")
        budgets[env] = int(float(steps))
    envs = [e for e in args.envs.split(",") if e]
    start = time.time()
    procs: dict[str, subprocess.Popen] = {}
    child_env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1"}
    for env in envs:
        cmd = [sys.executable, "-m", "dynsparse", "--jax-cache", "off", "train-policy", env, "--out", str(out / env),
               "--timesteps", str(budgets.get(env, 10_000_000)), "--set", f"num_evals={args.num_evals}"]
        if args.noise_beta is not None:
            cmd += ["--noise-beta", str(args.noise_beta)]
        cmd += args.extra.split()
        with open(out / f"{env}.log", "w") as log:  # the child keeps its own descriptor
            procs[env] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env)
        print(f"[{time.time() - start:5.0f}s] started {env}: {' '.join(cmd[1:])}", flush=True)

    stopped: set[str] = set()
    while any(pr.poll() is None for pr in procs.values()):
        elapsed = time.time() - start
        if elapsed > args.deadline:
            for env, pr in procs.items():
                if pr.poll() is None and env not in stopped:
                    pr.send_signal(signal.SIGINT)
                    stopped.add(env)
            if elapsed > args.deadline + 20:
                for pr in procs.values():
                    if pr.poll() is None:
                        pr.kill()
        time.sleep(5)
        if int(elapsed) // 30 != int(time.time() - start) // 30:
            print(f"[{time.time() - start:5.0f}s] " + ", ".join(f"{e}: {_status(out / e, procs[e])}" for e in envs), flush=True)

    rows = ["| env | steps trained | budget | eval return (mean +- std) | train wall s | complete | exit |",
            "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for env in envs:
        meta = _meta(out / env)
        code = procs[env].returncode
        if meta is None:
            rows.append(f"| {env} | - | {budgets.get(env)} | no checkpoint | - | - | {code} |")
            tail = (out / f"{env}.log").read_text(errors="replace")[-1500:]
            print(f"--- {env} failed (exit {code}); log tail:\n{tail}", flush=True)
            continue
        ev = meta.get("evaluation") or {}
        tr = meta["training"]
        rows.append(f"| {env} | {tr['steps_done']:,} | {tr['budget_timesteps']:,} | "
                    f"{ev.get('return_mean', float('nan')):.1f} +- {ev.get('return_std', float('nan')):.1f} | "
                    f"{tr.get('wall_s') or 0:.0f} | {meta['complete']} | {code} |")
    summary = "\n".join(rows) + "\n"
    (out / "summary.md").write_text(summary)
    print(summary, flush=True)
    return 0


def _meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "policy.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _status(folder: Path, proc: subprocess.Popen) -> str:
    meta = _meta(folder)
    state = "running" if proc.poll() is None else f"exit {proc.returncode}"
    if meta is None or not meta.get("evaluation"):
        return state
    return f"{state} {meta['evaluation']['steps'] / 1e6:.1f}M {meta['evaluation']['return_mean']:.0f}"


if __name__ == "__main__":
    sys.exit(main())
