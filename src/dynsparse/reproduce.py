"""``reproduce``: the whole study in one command — collect, analyse and report the eight
DM-Control tasks of the paper this tool follows.

Output folder::

    study.json             the study configuration (a folder of another configuration is refused)
    data/<ENV>.zarr        one dataset per environment (resumable like ``collect``)
    analysis/<ENV>/        one analysis per environment (whole or absent)
    report/index.html      the self-contained report
    timing.json            wall seconds per (environment, stage) of the last run

Every stage is resumable: rerunning the same command skips finished datasets and analyses and
continues an interrupted collection where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from dynsparse import analysis, collect, errors, files, locks

STUDY_ENVS = ("BallInCup", "CartpoleBalance", "CheetahRun", "ReacherHard", "FingerSpin", "FingerTurnEasy",
              "WalkerRun", "SwimmerSwimmer6")
DEFAULT_POLICY = {"name": "random"}
STUDY_FILE = "study.json"


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The study: which environments, how much data, which policy.

    ``full()`` is the paper scale (10 episodes x 1000 steps per environment); ``quick()`` a small
    version (2 x 300: the smallest size whose Table-1 global zeros equal the paper scale's on all
    eight tasks, measured with ``benchmarks/quick_size.py``; at 2 x 100 CartpoleBalance's slider
    has not yet reached its joint limit and shows 3 spurious zeros).
    """

    envs: tuple[str, ...] = STUDY_ENVS
    episodes: int = 10
    steps: int = 1000
    policy: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_POLICY))
    seed: int = 0
    #: a folder of ``train-policy`` checkpoints, one per task (``DIR/CheetahRun``, ...): collect
    #: with those PPO policies instead of ``policy``
    policies: str | None = None
    #: PPO exploration noise: exponent (``None``: each policy's trained beta) and sigma scale
    noise_beta: float | None = None
    noise_scale: float | None = None
    check_every: int = 50
    jacobian: str = "converged"
    batch_size: int = 10
    chunk_steps: int = 100
    max_points: int = 3000

    @classmethod
    def full(cls, **kw: Any) -> "StudyConfig":
        return cls(**kw)

    @classmethod
    def quick(cls, **kw: Any) -> "StudyConfig":
        return cls(**{"episodes": 2, "steps": 300, "check_every": 25, "batch_size": 2, "max_points": 200, **kw})

    def policy_for(self, env: str) -> dict[str, Any]:
        """The policy configuration of one task: ``policy``, or its PPO checkpoint under ``policies``."""
        if self.policies is None:
            return dict(self.policy)
        policy: dict[str, Any] = {"name": "ppo", "checkpoint": str(Path(self.policies).resolve() / env)}
        if self.noise_beta is not None:
            policy["beta"] = self.noise_beta
        if self.noise_scale is not None:
            policy["scale"] = self.noise_scale
        return policy

    def collect_config(self, env: str) -> collect.CollectConfig:
        return collect.CollectConfig(
            env=env, episodes=self.episodes, steps=self.steps, policy=self.policy_for(env), seed=self.seed,
            check_every=self.check_every, batch_size=self.batch_size, chunk_steps=self.chunk_steps,
            jacobian=self.jacobian,
        ).validated()

    def analyze_options(self) -> analysis.AnalyzeOptions:
        return analysis.AnalyzeOptions(max_points=self.max_points, seed=self.seed)

    def identity(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.policies is not None:
            d["policies"] = str(Path(self.policies).resolve())
        return json.loads(json.dumps(d))


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


def _check_study(out: Path, config: StudyConfig) -> None:
    files.claim(out, STUDY_FILE, config.identity(), "study",
                hint="choose another --out (e.g. one for --quick and one for the full study)")


def _timed_analyze(store: Path, folder: Path, options: analysis.AnalyzeOptions) -> float:
    """``analysis.analyze``; returns its wall seconds (in the process that ran it)."""
    t0 = time.perf_counter()
    analysis.analyze(store, folder, options)
    return round(time.perf_counter() - t0, 3)


@contextlib.contextmanager
def _analysis_pool(pipeline: bool) -> Iterator[Any]:
    """One spawned worker process for analyses (or None: analyse in this process)."""
    if not pipeline:
        yield None
        return
    import concurrent.futures
    import multiprocessing

    pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def preflight(out: str | Path, config: StudyConfig) -> tuple[dict[str, collect.CollectConfig], analysis.AnalyzeOptions]:
    """Every check ``reproduce`` makes before it touches anything: names, checkpoints, options, ``out``.

    Returns:
      The validated collection configuration of each environment and the analysis options.

    Raises:
      UserError: the first problem, named.
    """
    from dynsparse import envs as envs_lib

    out = Path(out)
    for env in config.envs:
        envs_lib.check_name(env)
    if config.policies is not None:
        missing = [env for env in config.envs if not (Path(config.policies) / env / "policy.json").is_file()]
        if missing:
            raise errors.UserError(
                f"--policies {config.policies} has no checkpoint for {', '.join(missing)} (expected "
                f"{Path(config.policies) / missing[0] / 'policy.json'}); train them with `dynsparse train-policy ENV --out DIR/ENV`"
            )
    configs = {env: config.collect_config(env) for env in config.envs}
    options = config.analyze_options().validated()
    _check_study(out, config)
    return configs, options


def _policy_sentence(config: StudyConfig, configs: dict[str, collect.CollectConfig]) -> str:
    """How the data was generated, for the report's introduction (HTML)."""
    if config.policies is None:
        return f"policy <code>{html.escape(json.dumps(config.policy), quote=False)}</code>"
    parts = []
    for env, c in configs.items():
        p = c.policy
        ret = p.get("eval_return")
        parts.append(f"{env} {'-' if ret is None else f'{ret:.1f}'}")
    p0 = next(iter(configs.values())).policy
    return (
        f"PPO policies from <code>{html.escape(str(config.policies))}</code> acting with colored exploration noise "
        f"(beta {'as trained' if config.noise_beta is None else p0['beta']}, sigma scale {p0['scale']}; "
        f"evaluation returns when trained: {html.escape(', '.join(parts))})"
    )


@locks.writes("out")
def reproduce(out: str | Path, config: StudyConfig = StudyConfig(),
              on_stage: Callable[[StageEvent], None] | None = None,
              on_collect_progress: Callable[[collect.Progress], None] | None = None,
              pipeline: bool = True) -> Path:
    """Run (or resume) the study into ``out``; return the report's HTML path.

    Args:
      pipeline: analyse each environment in a worker process while the next one is collected
        (False: one after the other, in this process).

    Raises:
      UserError: a bad configuration (checked for every environment before anything runs) or an
        ``out`` folder of another study.
    """
    from dynsparse.report import build

    out = Path(out)
    configs, options = preflight(out, config)
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / STUDY_FILE, config.identity())
    emit = on_stage or (lambda _e: None)
    total = 2 * len(config.envs) + 1
    timing: dict[str, dict[str, float]] = {env: {} for env in config.envs}
    done = [0]
    folders = [out / "analysis" / env for env in config.envs]
    (out / "data").mkdir(exist_ok=True)
    # Analyses run in one worker process while the next environment is collected: collection
    # (JIT compile, then XLA) and analysis (numpy, t-SNE, matplotlib) then share the cores.
    with _analysis_pool(pipeline) as pool:
        pending: dict[Any, str] = {}

        def finished(block: bool) -> None:
            for future in list(pending):
                if block or future.done():
                    env = pending.pop(future)
                    timing[env]["analyze"] = future.result()  # re-raises the worker's error
                    done[0] += 1
                    emit(StageEvent(env, "analyze", done[0], total, True, timing[env]["analyze"]))

        for env, folder in zip(config.envs, folders):
            store = out / "data" / f"{env}.zarr"
            emit(StageEvent(env, "collect", done[0], total, False))
            t0 = time.perf_counter()
            collect.collect(configs[env], store, on_progress=on_collect_progress)
            timing[env]["collect"] = round(time.perf_counter() - t0, 3)
            done[0] += 1
            emit(StageEvent(env, "collect", done[0], total, True, timing[env]["collect"]))
            finished(block=False)
            emit(StageEvent(env, "analyze", done[0], total, False))
            if pool is None:
                timing[env]["analyze"] = _timed_analyze(store, folder, options)
                done[0] += 1
                emit(StageEvent(env, "analyze", done[0], total, True, timing[env]["analyze"]))
            else:
                pending[pool.submit(_timed_analyze, store, folder, options)] = env
        finished(block=True)
    index = done[0]
    emit(StageEvent(None, "report", index, total, False))
    t0 = time.perf_counter()
    scale = f"{config.episodes} episodes x {config.steps} steps per environment"
    intro = (
        f"<p>The study of {len(config.envs)} DM-Control tasks: {scale}, {_policy_sentence(config, configs)}, seed {config.seed}, "
        f"Jacobians by MJX autodiff (definition <code>{html.escape(config.jacobian)}</code>), certified against finite "
        f"differences of the same function every {config.check_every} steps. "
        "Every number below rests on this policy and this much data.</p>"
    )
    page = build.build(folders, out / "report", title="dynsparse: how sparse are the true dynamics?", intro=intro)
    timing["report"] = {"report": round(time.perf_counter() - t0, 3)}
    emit(StageEvent(None, "report", total, total, True, timing["report"]["report"]))
    (out / "timing.json").write_text(json.dumps(timing, indent=1))
    return page
