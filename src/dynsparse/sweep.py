"""``sweep``: a grid of (env, policy, seed, threshold) jobs on Dask distributed.

A sweep configuration (TOML or JSON) names lists of environments, policies, seeds and zero
thresholds plus the collection settings shared by all jobs. Every (env, policy, seed) *run*
collects one dataset (``OUT/runs/<run>/data.zarr``, resumable like ``collect``); every job analyses
its run's dataset at its threshold (``OUT/runs/<run>/analysis-<threshold>``). Jobs execute on Dask
distributed: an existing cluster (``scheduler="tcp://host:8786"``; ``OUT`` must then be on a file
system the workers share) or, by default, a local cluster of worker processes; or, with
``executor="pipeline"``, without Dask: runs collected one after another in this process, each
run's analyses in one worker process alongside (``reproduce`` is this module's preset).

Durability and re-runs:

- a job's outcome is written to ``OUT/status/<job>.json`` as soon as it is known (``done`` with its
  table row, or ``failed`` with the error and traceback); a job whose status is ``done`` is never
  recomputed;
- a worker that dies mid-collection loses at most one unit: Dask re-runs the task on another
  worker and the collection resumes from its checkpoint (the status records the unit it resumed
  at);
- running the same command again runs every job that is not done (failed or never finished);
  ``only`` re-runs chosen jobs alone;
- ``OUT/summary.csv`` holds one row per job (status, error, and the metrics of ``analyze``'s
  cross-env table) and is rewritten at the end of every sweep.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dynsparse import buildahead, errors, files, interrupts, locks, options

CONFIG_FILE = "sweep.json"
#: how long to wait for an existing Dask scheduler (``--scheduler``)
CONNECT_TIMEOUT = "20s"
SUMMARY_FILE = "summary.csv"
#: how jobs run: on Dask (a scheduler or a local cluster), or pipelined in this process (``_pipeline``)
EXECUTORS = ("dask", "pipeline")
STATUS_DIR = "status"

#: Config keys that fix what a run's dataset holds: a sweep folder refuses another value.
_COLLECT_KEYS = ("episodes", "steps", "batch_size", "chunk_steps", "check_every", "backend", "jacobian", "rollout")
#: the value of a collection key in a sweep folder made before the key existed
_COLLECT_DEFAULTS = {"rollout": "auto"}


def _grid_axis(key: str, item: Callable[[Any], Any], distinct: Callable[[Any], Any] = lambda v: v) -> Callable[[Any], tuple]:
    """The check of one grid axis: a non-empty list of distinct items, each checked by ``item``."""

    def check(value: Any) -> tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            raise errors.UserError(f"sweep {key} {value!r} is not allowed; allowed: a non-empty list")
        items = tuple(item(v) for v in value)
        if len({json.dumps(distinct(v), sort_keys=True) for v in items}) != len(items):
            raise errors.UserError(f"sweep {key} {list(value)!r} repeat a value; allowed: distinct values")
        return items

    return check


def _env_name(name: Any) -> str:
    from dynsparse import envs

    if not isinstance(name, str):
        raise errors.UserError(f"sweep env {name!r} is not allowed; allowed: Playground names (`dynsparse envs`)")
    envs.check_name(name)
    return name


def _policy_dict(policy: Any) -> dict[str, Any]:
    """A policy in ``collect --policy`` form or as a dict -> its configuration dict. A PPO checkpoint
    path may hold ``{env}`` (one checkpoint per environment: ``ppo:policies/{env}``)."""
    from dynsparse import policies as registry

    if isinstance(policy, str):
        policy = registry.config_from_text(policy)
    elif not (isinstance(policy, dict) and isinstance(policy.get("name"), str)):
        raise errors.UserError(f"sweep policy {policy!r} is not allowed; allowed: 'random', 'colored', 'ppo:DIR' or a dict with a 'name'")
    policy = dict(policy)
    if policy["name"] == "ppo":  # workers may run in another directory
        policy["checkpoint"] = str(Path(str(policy["checkpoint"])).resolve())
    return policy


def _threshold(value: Any) -> float:
    from dynsparse.metrics import sparsity

    return sparsity.check_threshold(value)


def _collect_default(name: str) -> Any:
    from dynsparse import collect

    return options.default(collect.CollectConfig, name)


def _analysis_default(name: str) -> Any:
    from dynsparse import analysis

    return options.default(analysis.AnalyzeOptions, name)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A grid of jobs (see the module docstring); each field is a key of the configuration file."""

    envs: tuple[str, ...] = options.option(
        help="environments (`collect` names)", check=options.via(_grid_axis("envs", _env_name), "a non-empty list"))
    policies: tuple[Any, ...] = options.option(
        ("random",), help="policies in `collect --policy` form (random, colored, ppo:DIR; ppo:DIR/{env}: one checkpoint per "
                          "environment) or as configuration dicts ({name = \"colored\", beta = 2.0})",
        check=options.via(_grid_axis("policies", _policy_dict), "a non-empty list"))
    seeds: tuple[int, ...] = options.option(
        (0,), help="collection seeds", check=options.via(_grid_axis("seeds", lambda v: errors.check_seed(v, "sweep seed")), "a non-empty list"))
    thresholds: tuple[float, ...] = options.option(
        (_analysis_default("threshold"),), help="zero thresholds of the analyses",
        check=options.via(_grid_axis("thresholds", _threshold), "a non-empty list"))
    episodes: int = options.option(4, help="episodes per run", check=options.integer(1))
    steps: int = options.option(100, help="control steps per episode", check=options.integer(1))
    batch_size: int = options.option(4, help="episodes simulated together (at most episodes)", check=options.integer(1))
    chunk_steps: int = options.option(50, help="steps per compiled and stored chunk (at most steps)", check=options.integer(1))
    check_every: int = options.option(_collect_default("check_every"), help="as collect --check-every", check=options.integer(0))
    backend: str = options.option(_collect_default("backend"), help="as collect --backend")
    rollout: str = options.option(_collect_default("rollout"), help="as collect --rollout")
    jacobian: str = options.option(_collect_default("jacobian"), help="as collect --jacobian")
    relative: bool = options.option(False, help="thresholds scale with each row's L2 norm", check=options.boolean())
    tsne: bool = options.option(False, help="compute the t-SNE embedding in each analysis (slow)", check=options.boolean())
    max_points: int = options.option(_analysis_default("max_points"), help="t-SNE subsample size (with tsne)", check=options.integer(4))
    analysis_seed: int = options.option(_analysis_default("seed"), help="seed of the analyses' subsampling, t-SNE and shuffles",
                                        check=options.seed())

    def validated(self) -> SweepConfig:
        """Check every field; raise ``UserError`` naming the first bad value."""
        return options.validate(self)

    def _cross_check(self) -> SweepConfig:
        from dynsparse import collect

        # collection settings and policies (checkpoints), as `collect` checks them; a policy
        # with ``{env}`` names one checkpoint per environment: each is checked
        for policy in self.policies:
            for env in self.envs if "{env}" in json.dumps(policy) else self.envs[:1]:
                run = Run(env, _for_env(policy, env), self.seeds[0])
                collect.CollectConfig(**run.collect_kwargs(self)).validated()
        return self

    def runs(self) -> list[Run]:
        """Every (env, policy, seed), in grid order (``{env}`` in a policy replaced by the env)."""
        return [Run(e, _for_env(p, e), s) for e in self.envs for p in self.policies for s in self.seeds]

    def jobs(self) -> list[Job]:
        """Every (env, policy, seed, threshold), in grid order."""
        return [Job(r, t) for r in self.runs() for t in self.thresholds]

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _for_env(policy: dict[str, Any], env: str) -> dict[str, Any]:
    """``policy`` with ``{env}`` in its strings replaced by ``env``."""
    return {k: v.replace("{env}", env) if isinstance(v, str) else v for k, v in policy.items()}


def load_config(path: str | Path) -> SweepConfig:
    """Read a sweep configuration from a ``.toml`` or ``.json`` file and validate it.

    Raises:
      UserError: unreadable file, unknown key, or a bad value (named).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise errors.UserError(f"sweep config {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        elif path.suffix == ".json":
            raw = json.loads(text)
        else:
            raise errors.UserError(f"sweep config {str(path)!r} has suffix {path.suffix!r}; allowed: .toml, .json")
    except (ValueError, TypeError) as exc:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise errors.UserError(f"sweep config {str(path)!r} is not valid {path.suffix[1:].upper()}: {exc}") from None
    return config_from_dict(raw, str(path))


def config_from_dict(raw: Any, where: str = "sweep config") -> SweepConfig:
    """``SweepConfig`` from a parsed mapping (validated)."""
    if not isinstance(raw, dict):
        raise errors.UserError(f"{where} must be a table/object of settings, not {type(raw).__name__}")
    allowed = [f.name for f in dataclasses.fields(SweepConfig)]
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise errors.UserError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")
    if "envs" not in raw:
        raise errors.UserError(f"{where}: 'envs' is missing; it lists the environments to sweep")
    return SweepConfig(**raw).validated()


@dataclasses.dataclass(frozen=True)
class Run:
    """One collection: (env, policy configuration, seed)."""

    env: str
    policy: dict[str, Any]
    seed: int

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def id(self) -> str:
        return f"{self.env}__{_policy_slug(self.policy)}__seed{self.seed}"

    def collect_kwargs(self, config: SweepConfig) -> dict[str, Any]:
        return {
            "env": self.env, "policy": self.policy, "seed": self.seed,
            **{k: getattr(config, k) for k in _COLLECT_KEYS},
            "batch_size": min(config.batch_size, config.episodes), "chunk_steps": min(config.chunk_steps, config.steps),
        }


@dataclasses.dataclass(frozen=True)
class Job:
    """One analysis: a run at one threshold."""

    run: Run
    threshold: float

    @property
    def id(self) -> str:
        return f"{self.run.id}__thr{self.threshold:g}"

    def analysis_dir(self, out: Path) -> Path:
        return out / "runs" / self.run.id / f"analysis-{self.threshold:g}"


def _policy_slug(policy: dict[str, Any]) -> str:
    name = policy["name"]
    if name == "ppo":
        folder = Path(str(policy["checkpoint"]))
        digest = hashlib.sha1(json.dumps(policy, sort_keys=True).encode()).hexdigest()[:6]
        return f"ppo-{folder.name}-{digest}"
    extras = "-".join(f"{k[0]}{policy[k]:g}" if isinstance(policy[k], (int, float)) else f"{k}" for k in sorted(policy) if k != "name")
    return name + (f"-{extras}" if extras else "")


# ----------------------------------------------------------------------------- tasks (run on workers)


def collect_task(kwargs: dict[str, Any], store: str, jax_cache: str | None,
                 on_progress: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Collect (or resume, or find complete) one run's dataset. Runs on a Dask worker.

    Returns:
      ``{"store": path, "resumed_at_unit": k, "units": n, "seconds": s, "fd_threads": t}`` (``t``:
      the threads of native finite-difference batches on this worker).
    """
    from dynsparse import upstream

    upstream.mjx_without_warp()  # as the CLI: a worker's MJX never runs its Warp backend (2.8 s less start-up)
    from dynsparse import collect, dataset, jaxcache

    jaxcache.enable(jax_cache)
    t0 = time.time()
    config = collect.CollectConfig(**kwargs)
    resumed_at = dataset.read_checkpoint(Path(store)).next_unit if dataset.is_store(Path(store)) else 0
    units = [0]

    def progress(p: Any) -> None:
        units[0] = p.n_units
        if on_progress is not None:
            on_progress(p)

    collect.collect(config, Path(store), on_progress=progress)
    from dynsparse.jacobians import finite_diff

    return {"store": store, "resumed_at_unit": int(resumed_at), "units": int(units[0]), "seconds": time.time() - t0,
            "fd_threads": finite_diff.default_threads()}


def analyze_task(collected: dict[str, Any], out_dir: str, threshold: float, config: SweepConfig) -> dict[str, Any]:
    """Analyse one run's dataset at one threshold. Runs on a Dask worker (or the pipeline's analysis process).

    Returns:
      ``{"row": the analysis table row, "collected": collect_task's result, "seconds": s}``.
    """
    from dynsparse import analysis, results

    t0 = time.time()
    options = analysis.AnalyzeOptions(threshold=threshold, kind="relative" if config.relative else "absolute", tsne=config.tsne,
                                      max_points=config.max_points, seed=config.analysis_seed)
    folder = analysis.analyze(collected["store"], out_dir, options)
    summary = results.read_analysis(Path(folder))
    if summary is None:
        raise RuntimeError(f"analysis {out_dir} wrote no readable summary")
    return {"row": results.table_row(summary), "collected": collected, "seconds": time.time() - t0}


# ----------------------------------------------------------------------------- driver


@dataclasses.dataclass
class Outcome:
    """What happened to one job in this sweep call."""

    job: Job
    state: str  # "done", "failed", "skipped" (done before), "not run" (not selected)
    error: str = ""


def status_path(out: Path, job: Job) -> Path:
    return out / STATUS_DIR / f"{job.id}.json"


def read_status(out: Path, job: Job) -> dict[str, Any] | None:
    """A job's recorded status, or None if it has none (or it is unreadable)."""
    try:
        return json.loads(status_path(out, job).read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json(path, payload)


def _collect_identity(config: SweepConfig | dict[str, Any]) -> dict[str, Any]:
    """What a sweep folder's collections were made with (a sweep configuration or its stored JSON)."""
    get = (lambda k: config.get(k, _COLLECT_DEFAULTS.get(k))) if isinstance(config, dict) else lambda k: getattr(config, k)
    return {k: get(k) for k in _COLLECT_KEYS}


def check_folder(out: Path, config: SweepConfig, hint: str | None = None) -> None:
    """Refuse a folder that is not a sweep, or a sweep whose collections were made differently
    (a sweep folder may grow: other grid axes are allowed). Writes nothing."""
    kw = {} if hint is None else {"hint": hint}
    files.claim(out, CONFIG_FILE, _collect_identity(config), "sweep", read=_collect_identity, **kw)


@locks.writes("out")
def run_sweep(
    config: SweepConfig,
    out: str | Path,
    scheduler: str | None = None,
    workers: int | None = None,
    only: Sequence[str] = (),
    jax_cache: str | None = None,
    on_event: Callable[[str, Job, dict[str, Any]], None] | None = None,
    executor: str = "dask",
    on_collect_progress: Callable[[Any], None] | None = None,
) -> list[Outcome]:
    """Run every job of ``config`` that is not done (or just the ``only`` ones), then write the summary.

    Args:
      config: a validated ``SweepConfig``.
      out: the sweep folder (created; a folder of the same sweep is resumed).
      scheduler: address of an existing Dask scheduler; None starts a local cluster of
        ``workers`` processes (default: usable cores, at most the number of runs).
      only: job ids to run alone (each must be a job of ``config``).
      jax_cache: JAX compilation cache for the workers (None: the default, "off": none).
      on_event: called as ``on_event(state, job, payload)`` when a job finishes or fails (and,
        with the pipeline executor, when a run's collection starts and ends: ``_pipeline``).
      executor: ``dask`` (the scheduler, or a local cluster) or ``pipeline`` (no Dask: collect in
        this process, run after run, and analyse in one worker process alongside; what
        ``reproduce`` uses).
      on_collect_progress: with ``pipeline``, receives ``collect.Progress`` after every unit.

    Returns:
      One ``Outcome`` per job of the grid.

    Raises:
      UserError: bad ``only`` ids or executor, a folder of another sweep, or an unreachable scheduler.
    """
    if executor not in EXECUTORS:
        raise errors.UserError(f"executor {executor!r} is not allowed; allowed: {', '.join(EXECUTORS)}")
    if executor == "pipeline" and (scheduler is not None or workers is not None):
        raise errors.UserError("the pipeline executor runs in this process: leave out --scheduler and --workers")
    out = Path(out).resolve()  # workers may run elsewhere (another cwd): absolute paths only
    jobs = config.jobs()
    known = {j.id for j in jobs}
    bad = [j for j in only if j not in known]
    if bad:
        raise errors.UserError(f"--only {bad[0]!r} is not a job of this sweep; allowed: {', '.join(sorted(known))}")
    check_folder(out, config)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / CONFIG_FILE, config.to_json())

    outcomes: dict[str, Outcome] = {}
    todo: list[Job] = []
    for job in jobs:
        status = read_status(out, job)
        if status is not None and status.get("state") == "done":
            outcomes[job.id] = Outcome(job, "skipped")
        elif only and job.id not in only:
            outcomes[job.id] = Outcome(job, "not run", (status or {}).get("error", ""))
        else:
            todo.append(job)
    if todo:
        done = (_pipeline(todo, config, out, jax_cache, on_event, on_collect_progress) if executor == "pipeline"
                else _execute(todo, config, out, scheduler, workers, jax_cache, on_event))
        for outcome in done:
            outcomes[outcome.job.id] = outcome
    write_summary(out, config)
    return [outcomes[j.id] for j in jobs]


def _execute(todo: list[Job], config: SweepConfig, out: Path, scheduler: str | None, workers: int | None,
             jax_cache: str | None, on_event: Callable[[str, Job, dict[str, Any]], None] | None) -> list[Outcome]:
    from distributed import Client, LocalCluster, as_completed

    runs = list(dict.fromkeys(job.run for job in todo))
    cluster = None
    if scheduler is None:
        cores = len(os.sched_getaffinity(0))
        n = workers or max(1, min(len(runs), cores))
        # each worker's native finite differences on its share of the cores, not on all of them
        share = {"DYNSPARSE_FD_THREADS": str(max(1, cores // n))}
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, env=share)
        address = cluster.scheduler_address
    else:
        address = scheduler
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)  # leave dask.compute in this process alone
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise errors.UserError(f"cannot reach the Dask scheduler at {address!r}: {exc}") from None
    outcomes = []
    try:
        collected = {
            run.id: client.submit(collect_task, run.collect_kwargs(config), str(out / "runs" / run.id / "data.zarr"),
                                  jax_cache, key=f"collect-{run.id}-{time.time_ns()}", pure=False)
            for run in runs
        }
        futures = {}
        for job in todo:
            fut = client.submit(analyze_task, collected[job.run.id], str(job.analysis_dir(out)), job.threshold,
                                config, key=f"analyze-{job.id}-{time.time_ns()}", pure=False)
            futures[fut] = job
        for fut in as_completed(list(futures), loop=client.loop):
            job = futures[fut]
            try:
                result = fut.result()
            except Exception as exc:  # noqa: BLE001 - a job's failure is recorded, not raised
                outcomes.append(_record(out, job, None, exc, on_event))
            else:
                outcomes.append(_record(out, job, result, None, on_event))
            interrupts.check()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return outcomes


def _record(out: Path, job: Job, result: dict[str, Any] | None, exc: BaseException | None,
            on_event: Callable[[str, Job, dict[str, Any]], None] | None) -> Outcome:
    """Write a finished job's status file (``done`` with its result, or ``failed`` with the error) and report it."""
    if exc is not None:
        payload = {
            "state": "failed", "job": job.id, "error": f"{type(exc).__name__}: {exc}".splitlines()[0],
            "traceback": "".join(traceback.format_exception(exc)), "finished": time.time(),
        }
    else:
        payload = {"state": "done", "job": job.id, "finished": time.time(), **(result or {})}
    _write_json(status_path(out, job), payload)
    if on_event:
        on_event(payload["state"], job, payload)
    return Outcome(job, payload["state"], payload.get("error", ""))


#: environment variables that make native thread pools (OpenMP, OpenBLAS, MKL) single-threaded
#: in a library loaded after they are set
ONE_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _analysis_worker_start(parent: int) -> None:
    """The pipeline's analysis worker's first act: end with its parent
    (``interrupts.end_with_parent``), and run every native thread pool on one thread.

    The worker runs beside the collection (one JAX device per core) and the build-ahead process,
    so the cores are taken; scikit-learn's t-SNE then ran its OpenMP threads against them, and
    OpenMP's waiting threads spin. Measured on this 2-core machine with two busy processes beside
    it: t-SNE of 200 points 3.1 s on OpenMP's default threads against 2.2 s on one, of 3000 points
    29.9 s against 23.0 s; alone, 1.5 s against 1.3 s. The embedding is the same to the bit
    either way (its gradient is computed per point)."""
    interrupts.end_with_parent(parent)
    for name in ONE_THREAD_VARS:  # for libraries loaded from here on (scikit-learn's OpenMP)
        os.environ[name] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # for those already loaded (NumPy's BLAS)


@contextlib.contextmanager
def _analysis_process() -> Iterator[Any]:
    """One spawned worker process for the pipeline's analyses (shut down with the pipeline; on
    an interruption its queued analyses are cancelled; on Linux the kernel ends it if this
    process is killed; its native thread pools single-threaded: ``_analysis_worker_start``)."""
    import concurrent.futures
    import multiprocessing

    pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_analysis_worker_start, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _pipeline(todo: list[Job], config: SweepConfig, out: Path, jax_cache: str | None,
              on_event: Callable[[str, Job, dict[str, Any]], None] | None,
              on_collect_progress: Callable[[Any], None] | None) -> list[Outcome]:
    """The ``pipeline`` executor: runs are collected one after another in this process (all its
    cores: one JAX CPU device per core), each run's analyses go to one worker process and run
    while the next run is collected, and a builder process compiles the later runs' programs
    meanwhile (``buildahead``).

    Events besides ``done``/``failed``: ``collecting`` (payload ``{"run": id}``) before a run's
    collection, ``collected`` (``collect_task``'s result) after it, for the run's first job.
    """
    from dynsparse import xla

    xla.use_cpu_cores()
    emit = on_event or (lambda *_: None)
    by_run: dict[str, list[Job]] = {}
    for job in todo:
        by_run.setdefault(job.run.id, []).append(job)
    outcomes: list[Outcome] = []
    ahead = [(jobs[0].run.collect_kwargs(config), str(out / "runs" / jobs[0].run.id / "data.zarr")) for jobs in by_run.values()]
    with _analysis_process() as pool:
        pending: dict[Any, Job] = {}

        def harvest(block: bool) -> None:
            for future in list(pending):
                if block or future.done():
                    job = pending.pop(future)
                    try:
                        result = future.result()
                    except Exception as exc:  # noqa: BLE001 - recorded, not raised
                        outcomes.append(_record(out, job, None, exc, on_event))
                    else:
                        outcomes.append(_record(out, job, result, None, on_event))

        with buildahead.builder(ahead, jax_cache, out):  # later runs' programs built meanwhile
            for (kwargs, store), jobs in zip(ahead, by_run.values()):
                emit("collecting", jobs[0], {"run": jobs[0].run.id})
                try:
                    collected = collect_task(kwargs, store, jax_cache, on_progress=on_collect_progress)
                except Exception as exc:  # noqa: BLE001 - every job of the run fails with it
                    outcomes += [_record(out, job, None, exc, on_event) for job in jobs]
                    continue
                emit("collected", jobs[0], collected)
                buildahead.mark(kwargs, {"by": "collection"})  # its programs are kept: no builder needed for it again
                harvest(block=False)
                for job in jobs:
                    pending[pool.submit(analyze_task, collected, str(job.analysis_dir(out)), job.threshold, config)] = job
                interrupts.check()
        harvest(block=True)
    return outcomes


SUMMARY_KEYS = ("job", "env", "policy", "seed", "threshold", "status", "error")


def write_summary(out: Path, config: SweepConfig) -> Path:
    """Write ``OUT/summary.csv``: one row per job of ``config``, its status and metrics."""
    rows = summary_rows(out, config)
    metric_keys: list[str] = []
    for row in rows:
        metric_keys += [k for k in row if k not in SUMMARY_KEYS and k not in metric_keys]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(SUMMARY_KEYS) + metric_keys, restval="")
    writer.writeheader()
    writer.writerows(rows)
    path = out / SUMMARY_FILE
    files.write_atomic(path, text.getvalue().encode())
    return path


def summary_rows(out: Path, config: SweepConfig) -> list[dict[str, Any]]:
    """One dict per job: ids, ``status`` (done / failed / pending), ``error``, metrics when done."""
    rows = []
    for job in config.jobs():
        status = read_status(out, job) or {}
        row: dict[str, Any] = {
            "job": job.id, "env": job.run.env, "policy": _policy_slug(job.run.policy), "seed": job.run.seed,
            "threshold": job.threshold, "status": status.get("state", "pending"), "error": status.get("error", ""),
        }
        if status.get("state") == "done":
            row.update({k: v for k, v in status["row"].items() if k not in ("env", "policy", "seed")})
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of the summary (job, status, a few metrics or the error)."""
    lines = [f"{'job':<48} {'status':<8} {'steps':>6} {'J_s zero%':>9} {'J_a zero%':>9} {'sparsity':>8}  error"]

    def num(r: dict[str, Any], key: str, fmt: str) -> str:
        v = r.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else "-"

    for r in rows:
        lines.append(
            f"{r['job']:<48} {r['status']:<8} {num(r, 'counted_steps', 'd'):>6} {num(r, 'J_s_global_zero_pct', '.1f'):>9} "
            f"{num(r, 'J_a_global_zero_pct', '.1f'):>9} {num(r, 'mean_sparsity_both', '.3f'):>8}  {r['error']}"
        )
    return "\n".join(lines)
