"""``reproduce``: the whole study in one command: a preset ``sweep`` (the eight DM-Control tasks
of the paper this tool follows, one policy, one seed, one threshold) plus ``report``.

The study folder is a sweep folder (``sweep``'s resume logic, status files and summary)::

    sweep.json                                 the sweep configuration (another study's is refused)
    runs/<ENV>__<policy>__seed<S>/data.zarr    one dataset per environment (resumable like ``collect``)
    runs/<...>/analysis-1e-12/                 its analysis (whole or absent)
    status/<job>.json, summary.csv             per-job outcome and the table of all jobs
    report/index.html                          the self-contained report
    timing.json                                wall seconds per (environment, stage), as each job ran

Rerunning the same command skips finished jobs and continues an interrupted collection where it
stopped. The sweep runs with the ``pipeline`` executor: environments are collected one after
another in this process and each is analysed in a worker process while the next is collected.
"""

from __future__ import annotations

import dataclasses
import html
import json
import time
from pathlib import Path
from typing import Any, Callable

from dynsparse import errors, files, locks, options, sweep

STUDY_ENVS = ("BallInCup", "CartpoleBalance", "CheetahRun", "ReacherHard", "FingerSpin", "FingerTurnEasy",
              "WalkerRun", "SwimmerSwimmer6")
DEFAULT_POLICY = {"name": "random"}
STUDY_FILE = sweep.CONFIG_FILE

#: the paper scale: 10 episodes x 1000 steps per environment, every 50th step certified
FULL = {"episodes": 10, "steps": 1000, "check_every": 50, "batch_size": 10, "chunk_steps": 100, "tsne": True,
        "max_points": 3000}
#: the quick study: 2 x 300, the smallest size whose Table-1 global zeros equal the paper scale's
#: on all eight tasks (``benchmarks/quick_size.py``; at 2 x 100 CartpoleBalance's slider has not
#: yet reached its joint limit and shows 3 spurious zeros). Its episodes run one after the other
#: (batch 1): a cold quick study is all building programs, and a batch of one episode is traced
#: unbatched (``rollout.per_episode``), which builds CheetahRun's programs in ~58 s against ~69 s
#: for the two episodes vmapped over two devices (``benchmarks/build_cost.py``); running them costs
#: a second or two more.
QUICK = {**FULL, "episodes": 2, "steps": 300, "check_every": 25, "batch_size": 1, "max_points": 200}


def preset(scale: dict[str, Any], envs: tuple[str, ...] = STUDY_ENVS, seed: int = 0, jacobian: str | None = None,
            policies: str | Path | None = None, noise_beta: float | None = None, noise_scale: float | None = None,
            policy: dict[str, Any] | None = None) -> sweep.SweepConfig:
    """The study as a ``SweepConfig`` (not validated: ``reproduce`` validates it).

    Args:
      envs: a subset of ``STUDY_ENVS``.
      seed: the collection seed, also the analyses' seed.
      jacobian: the Jacobian definition (default: ``collect``'s).
      policies: a folder of ``train-policy`` checkpoints, one per task (``DIR/CheetahRun``, ...):
        collect with those PPO policies (exploration ``noise_beta``, None: as trained, and
        ``noise_scale``) instead of ``policy`` (default random actions).
    """
    unknown = [x for x in envs if x not in STUDY_ENVS]
    if unknown:
        raise errors.UserError(f"--envs {unknown[0]!r} is not one of the study's tasks; allowed: {', '.join(STUDY_ENVS)}")
    if policies is None:
        if noise_beta is not None or noise_scale is not None:
            raise errors.UserError("--noise-beta and --noise-scale apply to --policies (PPO) studies")
        chosen = dict(policy or DEFAULT_POLICY)
    else:
        chosen = {"name": "ppo", "checkpoint": str(Path(policies).resolve() / "{env}")}
        if noise_beta is not None:
            chosen["beta"] = noise_beta
        if noise_scale is not None:
            chosen["scale"] = noise_scale
    return sweep.SweepConfig(
        envs=tuple(envs), policies=(chosen,), seeds=(seed,), analysis_seed=seed,
        jacobian=options.default(sweep.SweepConfig, "jacobian") if jacobian is None else jacobian, **scale,
    )


def full(**kw: Any) -> sweep.SweepConfig:
    """The paper-scale study (``FULL``); keywords as ``preset``."""
    return preset(FULL, **kw)


def quick(**kw: Any) -> sweep.SweepConfig:
    """The quick study (``QUICK``); keywords as ``preset``."""
    return preset(QUICK, **kw)


@dataclasses.dataclass
class StageEvent:
    """What a progress callback receives: ``stage`` is ``collect``, ``analyze`` or ``report``;
    ``done`` is False when it starts and True when it ends (with ``seconds``)."""

    env: str | None
    stage: str
    index: int
    total: int
    done: bool
    seconds: float | None = None


def preflight(out: str | Path, config: sweep.SweepConfig) -> sweep.SweepConfig:
    """Every check ``reproduce`` makes before it touches anything: names, checkpoints, options, ``out``.

    Returns:
      The validated configuration.

    Raises:
      UserError: the first problem, named.
    """
    from dynsparse import envs as envs_lib

    for env in config.envs:
        envs_lib.check_name(env)
    for policy in config.policies:
        if policy.get("name") == "ppo" and "{env}" in str(policy.get("checkpoint")):
            folder = Path(str(policy["checkpoint"])).parent
            missing = [env for env in config.envs if not (folder / env / "policy.json").is_file()]
            if missing:
                raise errors.UserError(
                    f"--policies {folder} has no checkpoint for {', '.join(missing)} (expected "
                    f"{folder / missing[0] / 'policy.json'}); train them with `dynsparse train-policy ENV --out DIR/ENV`"
                )
    config = config.validated()
    sweep.check_folder(Path(out), config, hint="choose another --out (e.g. one for --quick and one for the full study)")
    return config


def _policy_sentence(config: sweep.SweepConfig) -> str:
    """How the data was generated, for the report's introduction (HTML)."""
    from dynsparse import collect

    policy = config.policies[0]
    if policy["name"] != "ppo":
        return f"policy <code>{html.escape(json.dumps(policy), quote=False)}</code>"
    parts, recorded = [], {}
    for run in config.runs():  # each checkpoint's own configuration: evaluation return, trained beta
        recorded = collect.CollectConfig(**run.collect_kwargs(config)).validated().policy
        ret = recorded.get("eval_return")
        parts.append(f"{run.env} {'-' if ret is None else f'{ret:.1f}'}")
    return (
        f"PPO policies from <code>{html.escape(str(Path(policy['checkpoint']).parent))}</code> acting with colored "
        f"exploration noise (beta {'as trained' if 'beta' not in policy else policy['beta']}, sigma scale "
        f"{recorded.get('scale')}; evaluation returns when trained: {html.escape(', '.join(parts))})"
    )


@locks.writes("out")
def reproduce(out: str | Path, config: sweep.SweepConfig | None = None,
              on_stage: Callable[[StageEvent], None] | None = None,
              on_collect_progress: Callable[[Any], None] | None = None) -> Path:
    """Run (or resume) the study ``config`` (default ``full()``) into ``out``; return the report's HTML path.

    Raises:
      UserError: a bad configuration (checked for every environment before anything runs), an
        ``out`` folder of another study, or failed jobs (named, with their status files; the
        report is then not built).
    """
    from dynsparse.report import build

    out = Path(out)
    config = preflight(out, full() if config is None else config)
    emit = on_stage or (lambda _e: None)
    total = 2 * len(config.envs) + 1
    done = [0]
    env_of = {job.id: job.run.env for job in config.jobs()}
    finished_before = [job for job in config.jobs() if (sweep.read_status(out, job) or {}).get("state") == "done"]
    done[0] = 2 * len(finished_before)
    if finished_before:
        emit(StageEvent(None, "analyze", done[0], total, True))

    def on_event(state: str, job: sweep.Job, payload: dict[str, Any]) -> None:
        env = env_of[job.id]
        if state == "collecting":
            emit(StageEvent(env, "collect", done[0], total, False))
        elif state == "collected":
            done[0] += 1
            emit(StageEvent(env, "collect", done[0], total, True, payload.get("seconds")))
            emit(StageEvent(env, "analyze", done[0], total, False))
        else:
            done[0] += 1 if state == "done" else 2
            emit(StageEvent(env, "analyze", done[0], total, True, payload.get("seconds")))

    outcomes = sweep.run_sweep(config, out, executor="pipeline", on_event=on_event, on_collect_progress=on_collect_progress)
    failed = [o for o in outcomes if o.state == "failed"]
    if failed:
        raise errors.UserError(
            f"{len(failed)} of {len(outcomes)} study jobs failed ({failed[0].job.id}: {failed[0].error}); details in "
            f"{sweep.status_path(out, failed[0].job)}; fix the cause and rerun the same command"
        )
    emit(StageEvent(None, "report", done[0], total, False))
    t0 = time.perf_counter()
    scale = f"{config.episodes} episodes x {config.steps} steps per environment"
    intro = (
        f"<p>The study of {len(config.envs)} DM-Control tasks: {scale}, {_policy_sentence(config)}, seed {config.seeds[0]}, "
        f"{_method_sentence(config)}. "
        "Every number below rests on this policy and this much data.</p>"
    )
    folders = [job.analysis_dir(out) for job in config.jobs()]
    page = build.build(folders, out / "report", title="dynsparse: how sparse are the true dynamics?", intro=intro)
    timing = _timing(out, config)
    timing["report"] = {"report": round(time.perf_counter() - t0, 3)}
    emit(StageEvent(None, "report", total, total, True, timing["report"]["report"]))
    files.write_json(out / "timing.json", timing)
    return page


def _method_sentence(config: sweep.SweepConfig) -> str:
    """How the Jacobians were computed and checked, for the report's introduction (HTML)."""
    if config.backend != "autodiff":
        return "Jacobians by native centred finite differences (not certified)"
    checked = (f"certified against finite differences of the same function every {config.check_every} steps"
               if config.check_every else "not certified")
    return f"Jacobians by MJX autodiff (definition <code>{html.escape(config.jacobian)}</code>), {checked}"


def _timing(out: Path, config: sweep.SweepConfig) -> dict[str, dict[str, float]]:
    """``{env: {"collect": s, "analyze": s}}`` from the jobs' status files (the run that made each)."""
    timing: dict[str, dict[str, float]] = {}
    for job in config.jobs():
        status = sweep.read_status(out, job) or {}
        timing[job.run.env] = {"collect": round(float(status.get("collected", {}).get("seconds", 0.0)), 3),
                               "analyze": round(float(status.get("seconds", 0.0)), 3)}
    return timing
