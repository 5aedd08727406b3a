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

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from dynsparse import analysis, collect, errors

STUDY_ENVS = ("BallInCup", "CartpoleBalance", "CheetahRun", "ReacherHard", "FingerSpin", "FingerTurnEasy",
              "WalkerRun", "SwimmerSwimmer6")
DEFAULT_POLICY = {"name": "random"}
STUDY_FILE = "study.json"


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The study: which environments, how much data, which policy.

    ``full()`` is the paper scale (10 episodes x 1000 steps per environment); ``quick()`` a small
    version for smoke tests (2 x 100).
    """

    envs: tuple[str, ...] = STUDY_ENVS
    episodes: int = 10
    steps: int = 1000
    policy: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_POLICY))
    seed: int = 0
    check_every: int = 50
    batch_size: int = 10
    chunk_steps: int = 100
    max_points: int = 3000

    @classmethod
    def full(cls, **kw: Any) -> "StudyConfig":
        return cls(**kw)

    @classmethod
    def quick(cls, **kw: Any) -> "StudyConfig":
        return cls(**{"episodes": 2, "steps": 100, "check_every": 25, "batch_size": 2, "max_points": 200, **kw})

    def collect_config(self, env: str) -> collect.CollectConfig:
        return collect.CollectConfig(
            env=env, episodes=self.episodes, steps=self.steps, policy=dict(self.policy), seed=self.seed,
            check_every=self.check_every, batch_size=self.batch_size, chunk_steps=self.chunk_steps,
        ).validated()

    def analyze_options(self) -> analysis.AnalyzeOptions:
        return analysis.AnalyzeOptions(max_points=self.max_points, seed=self.seed)

    def identity(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


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
    skipped: bool = False


def _check_study(out: Path, config: StudyConfig) -> None:
    path = out / STUDY_FILE
    if path.exists():
        try:
            prior = json.loads(path.read_text())
        except ValueError:
            raise errors.UserError(f"{str(path)!r} is unreadable; nothing was changed: remove it or choose another --out") from None
        if prior != config.identity():
            diff = sorted(k for k in config.identity() if prior.get(k) != config.identity()[k])
            raise errors.UserError(
                f"{str(out)!r} holds a study with another configuration (differs in {', '.join(diff)}); "
                "nothing was changed: choose another --out (e.g. one for --quick and one for the full study)"
            )
    elif out.exists() and any(out.iterdir()):
        raise errors.UserError(f"{str(out)!r} exists and is not a dynsparse study folder; nothing was changed: choose another --out")


def reproduce(out: str | Path, config: StudyConfig = StudyConfig(),
              on_stage: Callable[[StageEvent], None] | None = None,
              on_collect_progress: Callable[[collect.Progress], None] | None = None) -> Path:
    """Run (or resume) the study into ``out``; return the report's HTML path.

    Raises:
      UserError: a bad configuration (checked for every environment before anything runs) or an
        ``out`` folder of another study.
    """
    from dynsparse import envs as envs_lib
    from dynsparse.report import build

    out = Path(out)
    for env in config.envs:
        envs_lib.check_name(env)
    configs = {env: config.collect_config(env) for env in config.envs}
    options = config.analyze_options().validated()
    _check_study(out, config)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{STUDY_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(config.identity(), indent=1))
    tmp.replace(out / STUDY_FILE)
    emit = on_stage or (lambda _e: None)
    total = 2 * len(config.envs) + 1
    timing: dict[str, dict[str, float]] = {}
    index = 0
    folders = []
    for env in config.envs:
        timing[env] = {}
        store = out / "data" / f"{env}.zarr"
        (out / "data").mkdir(exist_ok=True)
        emit(StageEvent(env, "collect", index, total, False))
        t0 = time.perf_counter()
        collect.collect(configs[env], store, on_progress=on_collect_progress)
        timing[env]["collect"] = round(time.perf_counter() - t0, 3)
        index += 1
        emit(StageEvent(env, "collect", index, total, True, timing[env]["collect"]))
        folder = out / "analysis" / env
        skipped = analysis.existing_summary(folder) is not None
        emit(StageEvent(env, "analyze", index, total, False))
        t0 = time.perf_counter()
        analysis.analyze(store, folder, options)
        timing[env]["analyze"] = round(time.perf_counter() - t0, 3)
        index += 1
        emit(StageEvent(env, "analyze", index, total, True, timing[env]["analyze"], skipped))
        folders.append(folder)
    emit(StageEvent(None, "report", index, total, False))
    t0 = time.perf_counter()
    scale = f"{config.episodes} episodes x {config.steps} steps per environment"
    intro = (
        f"<p>The study of {len(config.envs)} DM-Control tasks: {scale}, policy "
        f"<code>{json.dumps(config.policy)}</code> (the default until trained policies exist), seed {config.seed}, "
        f"Jacobians by MJX autodiff, checked against native finite differences every {config.check_every} steps. "
        "Every number below rests on this policy and this much data.</p>"
    )
    page = build.build(folders, out / "report", title="dynsparse: how sparse are the true dynamics?", intro=intro)
    timing["report"] = {"report": round(time.perf_counter() - t0, 3)}
    emit(StageEvent(None, "report", total, total, True, timing["report"]["report"]))
    (out / "timing.json").write_text(json.dumps(timing, indent=1))
    return page
