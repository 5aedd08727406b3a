#!/usr/bin/env python
"""Advance the study's PPO trainings within one device lease, then install what came back.

A GPU is lent 15 minutes at a time, so each task's training proceeds in pieces: every lease
continues the runs furthest from expert (``train-policy --resume``) and brings their full
checkpoints back. Two steps:

``run`` (on the device machine)::

    python scripts/lease_train.py run --minutes 9 --out $OUT

  reads each study task's current return (the committed inference policy ``policies/ENV`` and
  the full checkpoint ``policy-training/ENV``, whichever is further along), drops the tasks at or
  above ``--target`` (default 500), and trains the ``--tasks`` (default 2) lowest ones **one after
  the other**, each with the GPU to itself for an equal share of the minutes: a task with a saved
  training state (``policy-training/ENV/train_state.npz``) resumes it, a new one starts the
  published budget (Playground's ``brax_ppo_config``) with ``num_resets_per_eval`` 2 and one
  evaluation (and checkpoint) per ~2M steps, and the task's exploration beta and scale
  (:data:`BETAS`, :data:`EXPLORATION_SCALES`).
  ``train-policy --time-limit`` stops each before an iteration that would overrun its share; a
  watchdog sends SIGINT 60 s after the share and SIGKILL 30 s later (the last evaluation is saved
  either way). ``$OUT/ENV/`` receives each task's checkpoint (``policy.json``, ``params-*.npz``,
  ``train_state.npz``: 3 files, under 16 MiB each) and ``$OUT/lease.md`` the log, the per-task
  steps, returns and throughput (steps/s of this segment, compile and evaluations included, and
  of its training epochs alone). That is 7 files for two tasks: the device returns at most 8.

``install`` (here, with the files the device brought back)::

    python scripts/lease_train.py install FILES_AT

  copies ``FILES_AT/ENV`` over ``policy-training/ENV`` (git-ignored: ~3.5 MB a task), exports its
  inference policy to ``policies/ENV`` (value network dropped, ~20 KB, committed) when its return
  beats the committed one, and appends ``FILES_AT/lease.md`` to ``policies/logs/leases.md``.

The device's Python (3.12, JAX 0.11) lacks MuJoCo, MJX, Playground, brax and dynsparse's other
dependencies; carry them as wheels (``../.library/device/README.md``). The lease command then is
``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export
PYTHONPATH=/tmp/site:src && PYTHONUNBUFFERED=1 python3 scripts/lease_train.py run --minutes 9 --out $OUT``
with ``carry: [".whl", "policy-training"]``.

On a CPU (a check of the script, not training) pass tiny settings, e.g.
``--extra "--set num_envs=8 --set batch_size=8 --set num_minibatches=4 ..."`` and ``--timesteps``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

STUDY_ENVS = ("BallInCup", "CartpoleBalance", "CheetahRun", "ReacherHard", "FingerSpin", "FingerTurnEasy",
              "WalkerRun", "SwimmerSwimmer6")
#: exploration beta and policy-std multiplier (brax's var_scale) per task for a new training
#: (default: train-policy's beta 0.5, scale 1). BallInCup: open-loop colored noise never reached
#: the cup at the untrained policy's std (tanh(0.7 eps): 0/128 episodes for every beta), and did
#: most often with beta 0.5-1 at std ~2 (scripts/explore_colored_noise.py; README)
BETAS = {"BallInCup": 1.0}
EXPLORATION_SCALES = {"BallInCup": 3.0}
#: environment steps of one PPO training step with the published settings (1024 x 30 x 32)
STEPS_PER_TRAINING_STEP = 1024 * 30 * 32
RESETS_PER_EVAL = 2
GRACE_S = 60.0


def current_return(*folders: Path) -> tuple[float, str]:
    """The best evaluation return among checkpoint folders (and which); -inf when none has one."""
    best, where = -math.inf, "none"
    for folder in folders:
        try:
            meta = json.loads((folder / "policy.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        ev = meta.get("evaluation") or {}
        if ev.get("return_mean") is not None and ev["return_mean"] > best:
            best, where = float(ev["return_mean"]), str(folder)
    return best, where


def plan(policies: Path, training: Path, envs: list[str], target: float, n_tasks: int) -> list[tuple[str, float]]:
    """The ``n_tasks`` tasks below ``target`` with the lowest current return, lowest first."""
    scored = [(env, current_return(policies / env, training / env)[0]) for env in envs]
    below = sorted((r, i, env) for i, (env, r) in enumerate(scored) if r < target)
    return [(env, r) for r, _, env in below[:n_tasks]]


def train_command(env: str, out: Path, resume: bool, time_limit_s: float, timesteps: int | None, extra: list[str]) -> list[str]:
    """The ``train-policy`` command for one task's share of the lease."""
    cmd = [sys.executable, "-m", "dynsparse", "--jax-cache", "off", "train-policy", env, "--out", str(out),
           "--time-limit", f"{time_limit_s:.0f}"]
    if resume:
        return cmd + ["--resume"]
    from mujoco_playground.config import dm_control_suite_params

    budget = timesteps or int(dm_control_suite_params.brax_ppo_config(env)["num_timesteps"])
    evals = math.ceil(budget / (RESETS_PER_EVAL * STEPS_PER_TRAINING_STEP)) + 1  # one training step per epoch
    cmd += ["--timesteps", str(budget), "--set", f"num_resets_per_eval={RESETS_PER_EVAL}", "--set", f"num_evals={evals}"]
    if env in BETAS:
        cmd += ["--noise-beta", str(BETAS[env])]
    if env in EXPLORATION_SCALES:
        cmd += ["--exploration-scale", str(EXPLORATION_SCALES[env])]
    return cmd + extra


def _run_one(cmd: list[str], share_s: float, log) -> int:
    """Run ``cmd`` with its output in ``log``; SIGINT after ``share_s + GRACE_S``, SIGKILL 30 s later."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1"})
    start, signalled = time.time(), False
    while proc.poll() is None:
        elapsed = time.time() - start
        if elapsed > share_s + GRACE_S and not signalled:
            proc.send_signal(signal.SIGINT)
            signalled = True
        if elapsed > share_s + GRACE_S + 30:
            proc.kill()
        time.sleep(1)
    return proc.returncode


def segment_report(folder: Path) -> dict:
    """Steps, return and throughput of the last training segment in a checkpoint folder."""
    meta = json.loads((folder / "policy.json").read_text())
    tr = meta["training"]
    seg = tr["segments"][-1]
    curve = meta["curve"]
    start = seg["from_steps"]
    mine = [p for p in curve if p["steps"] > start]
    before = [p for p in curve if p["steps"] <= start]
    t0 = before[-1]["elapsed_s"] if before else 0.0
    steps = (mine[-1]["steps"] - start) if mine else 0
    wall = (mine[-1]["elapsed_s"] - t0) if mine else 0.0
    between = [(b["steps"] - a["steps"]) / (b["elapsed_s"] - a["elapsed_s"]) for a, b in zip(mine, mine[1:]) if b["elapsed_s"] > a["elapsed_s"]]
    return {"env": meta["env"], "from_steps": start, "to_steps": tr["steps_done"], "budget": tr["budget_timesteps"],
            "return": (meta.get("evaluation") or {}).get("return_mean"), "complete": meta["complete"],
            "device": tr["device"], "steps_per_s_segment": steps / wall if wall > 0 else None,
            "steps_per_s_between_evals": sorted(between)[len(between) // 2] if between else None}


def cmd_run(args: argparse.Namespace) -> int:
    out, policies, training = Path(args.out), Path(args.policies), Path(args.training)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.minutes * 60.0
    envs = [e for e in args.envs.split(",") if e]
    tasks = plan(policies, training, envs, args.target, args.tasks)
    lines = [f"# lease {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.minutes} min, tasks {tasks}"]
    print(lines[0], flush=True)
    reports = []
    with open(out / "lease.md", "w") as log:
        for i, (env, ret) in enumerate(tasks):
            share = (deadline - time.time()) / (len(tasks) - i) - GRACE_S
            if share < 60:
                lines.append(f"{env}: skipped, {share:.0f} s left")
                break
            src, dst = training / env, out / env
            resume = (src / "train_state.npz").is_file()
            if resume:
                shutil.copytree(src, dst, dirs_exist_ok=True)
            cmd = train_command(env, dst, resume, share, args.timesteps, args.extra.split())
            head = f"## {env} (return {ret:.1f}; {'resume' if resume else 'new'}; share {share:.0f} s)\n$ {' '.join(cmd[1:])}\n"
            log.write(head)
            log.flush()
            print(head, end="", flush=True)
            code = _run_one(cmd, share, log)
            log.flush()
            try:
                if code not in (0, 130):  # 130: stopped by the watchdog's SIGINT after its last evaluation
                    raise OSError(f"train-policy exited with {code}; see its output above")
                rep = {**segment_report(dst), "exit": code}
            except (OSError, KeyError, json.JSONDecodeError, IndexError) as e:
                rep = {"env": env, "exit": code, "error": f"no checkpoint ({e})"}
            reports.append(rep)
            log.write(f"result: {json.dumps(rep)}\n")
            print(f"result: {json.dumps(rep)}", flush=True)
        log.write("\n".join(lines[1:]) + "\n")
        log.write("\n| env | steps from | steps to | budget | return | complete | steps/s (segment) | steps/s (between evals) | device |\n"
                  "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |\n")
        for r in reports:
            if "error" in r:
                log.write(f"| {r['env']} | - | - | - | {r['error']} | - | - | - | - |\n")
                continue
            fmt = lambda x: "-" if x is None else f"{x:,.0f}"  # noqa: E731
            log.write(f"| {r['env']} | {r['from_steps']:,} | {r['to_steps']:,} | {r['budget']:,} | {r['return']:.1f} | "
                      f"{r['complete']} | {fmt(r['steps_per_s_segment'])} | {fmt(r['steps_per_s_between_evals'])} | {r['device']} |\n")
    print((out / "lease.md").read_text().split("\n| env |", 1)[-1], flush=True)
    return 0 if reports and all("error" not in r for r in reports) else 1


def cmd_install(args: argparse.Namespace) -> int:
    from dynsparse.policies import checkpoint

    src, policies, training = Path(args.files), Path(args.policies), Path(args.training)
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and (p / "policy.json").is_file()):
        env = folder.name
        dst = training / env
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(folder, dst)
        new, _ = current_return(dst)
        old, _ = current_return(policies / env)
        if new > old:
            tmp = policies / f".{env}.new"
            if tmp.exists():
                shutil.rmtree(tmp)
            checkpoint.export_policy(dst, tmp)
            if (policies / env).exists():
                shutil.rmtree(policies / env)
            tmp.rename(policies / env)
            print(f"{env}: return {old:.1f} -> {new:.1f}: exported to {policies / env}")
        else:
            print(f"{env}: return {new:.1f} does not beat the committed {old:.1f}; {policies / env} kept (state in {dst})")
    lease = src / "lease.md"
    if lease.is_file():
        (policies / "logs").mkdir(parents=True, exist_ok=True)
        with open(policies / "logs" / "leases.md", "a") as f:
            f.write(lease.read_text() + "\n")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="on the device: train the tasks furthest from expert for the lease's minutes")
    r.add_argument("--minutes", type=float, required=True, help="minutes this command may take (leave the lease's margin)")
    r.add_argument("--out", required=True, help="$OUT: checkpoints OUT/ENV and lease.md come back from here")
    r.add_argument("--tasks", type=int, default=2, help="tasks trained one after the other (default 2)")
    r.add_argument("--target", type=float, default=500.0, help="return at which a task counts as expert (default 500)")
    r.add_argument("--envs", default=",".join(STUDY_ENVS), help="comma-separated candidate tasks")
    r.add_argument("--timesteps", type=int, default=None, help="budget of a new training (default: the published one)")
    r.add_argument("--extra", default="", help="extra train-policy arguments for new trainings (CPU checks: tiny --set values)")
    i = sub.add_parser("install", help="here: take the checkpoints a lease brought back")
    i.add_argument("files", help="the folder the device's files lie in (its OUT)")
    for q in (r, i):
        q.add_argument("--policies", default="policies", help="committed inference policies (default policies)")
        q.add_argument("--training", default="policy-training", help="full checkpoints with training state (git-ignored)")
    args = p.parse_args()
    return cmd_run(args) if args.cmd == "run" else cmd_install(args)


if __name__ == "__main__":
    sys.exit(main())
