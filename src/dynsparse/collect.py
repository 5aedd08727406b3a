"""Collection: roll out a policy, take Jacobians at every step, write a resumable dataset.

``collect(config, out)`` is the API behind ``dynsparse collect``. Work proceeds in units of
(episode batch, step chunk); after each unit the store holds its arrays and an atomic
checkpoint, so an interrupted run (Ctrl-C, kill -9) continues where it stopped when the same
command is run again, and the result is identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dynsparse import dataset, envs, errors, interrupts, locks, native_rollout, options, policies, sources
from dynsparse.jacobians import autodiff, certify, definitions, finite_diff, native_solver
from dynsparse.jacobians import compare as compare_lib

log = logging.getLogger(__name__)

BACKENDS = ("autodiff", "finite_diff")
#: where trajectories are simulated (``CollectConfig.rollout``; ``auto`` is resolved before a run)
ROLLOUTS = ("auto", "native", "mjx")

#: the most episodes the default (automatic) batch size puts in one batch. Measured
#: (benchmarks/steady_state.py, 2-core CPU): batch 64 computes 1.5-1.75x as many Jacobians per
#: second as batch 16 on CheetahRun, WalkerRun and SwimmerSwimmer6.
AUTO_BATCH = 64


def auto_batch_size(episodes: int) -> int:
    """The default batch size for ``episodes``: as few batches of at most ``AUTO_BATCH`` as
    possible, equally filled (100 episodes: 2 x 50, not 64 + 36 padded to 128)."""
    n_batches = -(-episodes // AUTO_BATCH)
    return -(-episodes // n_batches)


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """Everything that defines a collection run (stored in the dataset's attrs).

    Each field's help text below is also its ``dynsparse collect`` flag's help (``options``).
    ``policy`` is a configuration dict, e.g. ``{"name": "colored", "beta": 1.0, "scale": 1.0}``;
    ``{"name": "from-file", "file": PATH}`` replays recorded trajectories (``policies.replay``;
    then ``episodes``/``steps`` must be the file's). ``seed`` seeds initial states
    (``fold_in(PRNGKey(seed), episode)``) and policy noise. ``batch_size=None`` is
    ``auto_batch_size(episodes)``; the CLI's default is the stored batch size when resuming.
    """

    env: str = options.option(
        help="Playground registry name (CheetahRun), gymnasium:TASK-v5 (gymnasium:HalfCheetah-v5), dm_control:DOMAIN-TASK "
             "(dm_control:cheetah-run) or mjcf:PATH (any MJCF file); `dynsparse envs` lists them")
    episodes: int = options.option(2, help="episodes (with --from: the file's)", check=options.integer(1))
    steps: int = options.option(300, help="control steps per episode (with --from: the file's)", check=options.integer(1))
    policy: dict[str, Any] = options.option(factory=lambda: {"name": "random"}, help="policy configuration")
    seed: int = options.option(0, help="seed of initial states and policy noise", check=options.seed())
    backend: str = options.option("autodiff", help="autodiff (MJX forward-mode, exact) | finite_diff (native centred differences)",
                                  check=options.one_of(*BACKENDS))
    rollout: str = options.option(
        "auto", help="where the trajectories are simulated: native (MuJoCo's C library, no rollout program to trace or "
                     "compile; the finite_diff backend on mjcf:, gymnasium: and dm_control: models with the random or "
                     "colored policy, and the only one for models MJX cannot build) | mjx (the environment's MJX step) | "
                     "auto (native where it can run; a resumed run keeps its own)",
        check=options.one_of(*ROLLOUTS))
    dtype: str = options.option("float64", help="float64 (float32 is not supported yet)", check=options.via(envs.check_dtype, "float64"))
    check_every: int = options.option(
        0, help="certify the Jacobians at every K-th step of each episode (steps 0, K, 2K, ...) against finite differences "
                "of the same function (MJX and native MuJoCo); stores a class per checked step; 0 = never",
        check=options.integer(0))
    batch_size: int | None = options.option(
        None, help="episodes simulated together (default: at most 64, equal batches; a resumed run keeps its own)",
        check=options.optional(options.integer(1)))
    chunk_steps: int = options.option(100, help="steps per compiled chunk and per stored chunk", check=options.integer(1))
    fd_eps: float = options.option(finite_diff.DEFAULT_EPS, help="centred finite-difference step of the finite_diff backend",
                                   check=options.number(0.0))
    jacobian: str = options.option(
        definitions.DEFAULT_DEFINITION,
        help="converged: every substep's constraint problem solved exactly, the physics' Jacobian | as-run: the step "
             "exactly as the environment runs it (jacobians.definitions)",
        check=options.via(definitions.check_definition, ", ".join(definitions.DEFINITIONS)))
    compare_definitions: bool = options.option(
        False, help="also compute the other definition at every step and store how it differs", check=options.boolean())
    substeps: int | None = options.option(
        None, help="mjcf: models only: physics steps per control step, the action held (default 1)",
        check=options.optional(options.integer(1)))

    def validated(self) -> "CollectConfig":
        """Check every field; return a copy with batch/chunk sizes clipped to the run size.

        Raises:
          UserError: the first bad value, named, with what is allowed.
        """
        return options.validate(self)

    def _cross_check(self) -> "CollectConfig":
        """Checks across fields (after each field's own), the resolved policy, clipped sizes."""
        batch_size = auto_batch_size(self.episodes) if self.batch_size is None else self.batch_size
        if self.check_every and self.backend != "autodiff":
            raise errors.UserError("check-every certifies autodiff Jacobians against finite differences: it needs --backend autodiff")
        if self.compare_definitions and self.backend != "autodiff":
            raise errors.UserError("compare-definitions computes both exact definitions: it needs --backend autodiff")
        if self.rollout == "native" and self.backend != "finite_diff":
            raise errors.UserError("rollout 'native' simulates with native MuJoCo, whose Jacobians are finite differences: it needs --backend finite_diff")
        sources.check_substeps(self.env, self.substeps)
        # Raises on a bad policy; the policy's own configuration is what the dataset records
        # (a PPO checkpoint resolved to its absolute path, parameter digest and noise beta; a
        # trajectory file's absolute path and SHA-256).
        built = policies.from_config(self.policy)
        policy = built.config()
        if policy["name"] == "from-file":
            if self.jacobian != "converged":
                raise errors.UserError(
                    f"--from: Jacobian definition {self.jacobian!r} depends on the solver's warm start, which recorded "
                    "trajectories do not hold; allowed: converged"
                )
            if self.compare_definitions:
                raise errors.UserError("--from: --compare-definitions needs the as-run definition, which depends on the solver's warm start that recorded trajectories do not hold")
            shape = (built.episodes, built.steps)  # type: ignore[attr-defined]
            if (self.episodes, self.steps) != shape:
                raise errors.UserError(
                    f"--from {policy['file']!r} holds {shape[0]} episodes x {shape[1]} steps; --episodes {self.episodes} "
                    f"--steps {self.steps} differ (leave them out)"
                )
        return dataclasses.replace(
            self, policy=policy, batch_size=min(batch_size, self.episodes), chunk_steps=min(self.chunk_steps, self.steps)
        )

    def identity(self) -> dict[str, Any]:
        """The fields that must match to resume (JSON-normalised)."""
        return json.loads(json.dumps({k: getattr(self, k) for k in dataset.IDENTITY_KEYS}))


@dataclasses.dataclass
class Progress:
    """What a progress callback receives after each unit."""

    unit: int
    n_units: int
    steps_done: int
    steps_total: int


@locks.writes("out")
def collect(
    config: CollectConfig,
    out: str | Path,
    on_progress: Callable[[Progress], None] | None = None,
    spec: envs.EnvSpec | None = None,
) -> Path:
    """Run (or resume) a collection into the store ``out``.

    Args:
      config: the run; validated here before anything is touched.
      out: store path. Missing: created. A store of the same configuration: resumed (or left as it
        is when complete). Anything else: refused, untouched.
      on_progress: called after every written unit (and once at start).
      spec: an explicit environment (e.g. ``envs.from_mjcf``) instead of loading ``config.env``
        from the Playground registry; ``config.env`` must equal ``spec.name``.

    Returns:
      The store path.

    Raises:
      UserError: bad configuration, unknown environment, or an ``out`` that holds something else.
    """
    out = Path(out)
    if config.batch_size is None:
        config = dataclasses.replace(config, batch_size=stored_batch_size(out))
    if config.rollout == "auto" and _stored(out, "rollout") is not None:  # a resumed run keeps its own
        config = dataclasses.replace(config, rollout=_stored(out, "rollout"))
    config = config.validated()
    if spec is None:
        envs.check_name(config.env)
    elif spec.name != config.env:
        raise errors.UserError(f"config.env {config.env!r} does not name the given spec {spec.name!r}")
    existing = _existing_checkpoint(out, config)
    if spec is None:
        spec = envs.load(config.env, config.dtype, config.substeps, native=_may_run_natively(config))
    policy = policies.from_config(config.policy)
    config = dataclasses.replace(config, rollout=resolve_rollout(config, spec, policy))
    record = sources.model_record(config.env, config.substeps) if spec.name == config.env and sources.kind(config.env) != "playground" else {}
    if existing is not None and record:
        stored = dataset.open_dataset(out).attrs.get("model_sha256")
        if stored != record["model_sha256"]:
            raise errors.UserError(
                f"{config.env}: the model file {record['model_file']!r} changed since {str(out)!r} was started "
                f"(SHA-256 {record['model_sha256'][:12]}..., recorded {str(stored)[:12]}...); restore it or choose another --out"
            )
    policy.check_env(spec)
    if config.policy["name"] == "random" and not (np.isfinite(spec.action_low).all() and np.isfinite(spec.action_high).all()):
        raise errors.UserError(f"policy 'random' needs finite action bounds; {config.env} has unlimited actuators: use --policy colored")
    layout = dataset.Layout(
        config.episodes, config.steps, spec.state_names, spec.action_names, config.batch_size,
        config.chunk_steps, config.dtype, envs.contact_pairs(spec)[0], spec.qstate_names,
    )
    if existing is not None and existing.complete:  # nothing to compute: no programs to load
        if on_progress:
            on_progress(Progress(existing.next_unit, layout.n_units, _steps_done(layout, existing.next_unit), config.episodes * config.steps))
        return out
    if existing is not None:
        _check_same_function(out, config, spec)
    # made first: its compiled programs start loading in the background (exported.Cached.prefetch)
    # while the store is created
    runner = _Runner(config, spec, policy, layout, out)
    if existing is None:
        attrs = _attrs(config, spec) | record
        if config.policy["name"] == "from-file":
            attrs |= _replay_attrs(policy, spec)
        dataset.create(out, layout, attrs)
        checkpoint = dataset.Checkpoint(0, layout.n_units, None)
    else:
        checkpoint = existing
        removed = dataset.remove_partial_files(out)
        if removed:
            log.info("removed %d partial chunk file(s) left by an interrupted write", removed)
    total = config.episodes * config.steps
    if on_progress:
        on_progress(Progress(checkpoint.next_unit, layout.n_units, _steps_done(layout, checkpoint.next_unit), total))
    if checkpoint.complete:
        return out
    runner.run(checkpoint, on_progress)
    return out


def prepare(config: CollectConfig, spec: envs.EnvSpec | None = None) -> dict[str, str]:
    """Build ahead the compiled programs a new run of ``config`` uses (the reset, the chunk and,
    with ``check_every``, the certificate's MJX finite differences), so that ``collect(config,
    out)`` later loads their executables instead of tracing and compiling them. What the
    pipeline's build-ahead process runs for the runs after the current one (``sweep``).

    Only the JAX cache's ``exported/`` folder is written (``exported.Cached.ensure``, under each
    program's lock); the chunk is not run, the reset is, once (its output is the chunk's
    argument). The programs are those of the run's first unit, which every unit shares.

    Returns:
      ``{program: state}``, state as ``exported.Cached.ensure`` returns it (the reset's: how its
      call obtained it, ``exported.Cached.sources``); empty for a native rollout (``rollout``),
      which compiles nothing but its initial draws.

    Raises:
      UserError: as ``collect`` (a bad configuration or environment).
    """
    config = config.validated()
    if spec is None:
        envs.check_name(config.env)
        spec = envs.load(config.env, config.dtype, config.substeps, native=_may_run_natively(config))
    policy = policies.from_config(config.policy)
    config = dataclasses.replace(config, rollout=resolve_rollout(config, spec, policy))
    if config.rollout == "native":  # no program to build
        return {}
    policy.check_env(spec)
    layout = dataset.Layout(
        config.episodes, config.steps, spec.state_names, spec.action_names, config.batch_size,
        config.chunk_steps, config.dtype, envs.contact_pairs(spec)[0], spec.qstate_names,
    )
    return _Runner(config, spec, policy, layout, None, prefetch=False).prepare()


def stored_batch_size(out: Path) -> int | None:
    """The batch size of the run stored at ``out`` (resuming it with the default batch size),
    or ``None`` when there is no readable store there."""
    value = _stored(out, "batch_size")
    return value if isinstance(value, int) else None


def _stored(out: Path, key: str) -> Any:
    """The configuration value ``key`` of the run stored at ``out`` (``dataset.IDENTITY_DEFAULTS``
    for a store made before the key existed), or ``None`` when there is no readable store there."""
    if not (out.exists() and dataset.is_store(out)):
        return None
    try:
        stored = json.loads(dataset.open_dataset(out, verify=False).attrs["config"])
    except (errors.UserError, KeyError, ValueError):
        return None
    return stored.get(key, dataset.IDENTITY_DEFAULTS.get(key)) if isinstance(stored, dict) else None


def _may_run_natively(config: CollectConfig) -> bool:
    """Whether ``config`` may simulate natively (then a model MJX cannot build is loaded natively)."""
    return config.backend == "finite_diff" and config.rollout != "mjx"


def resolve_rollout(config: CollectConfig, spec: envs.EnvSpec, policy: policies.Policy | None = None) -> str:
    """The rollout a run of ``config`` in ``spec`` uses: ``config.rollout``, or for ``auto``
    ``native`` where it can run (``native_rollout.why_not``) with the ``finite_diff`` backend and
    ``mjx`` elsewhere. ``policy``: ``config.policy`` built (default: built here).

    Raises:
      UserError: ``native`` where it cannot run, or a rollout in MJX of a model MJX cannot build
        (the message names what MJX lacks).
    """
    reason = native_rollout.why_not(spec, policy if policy is not None else policies.from_config(config.policy))
    if config.backend != "finite_diff":
        reason = f"the {config.backend} backend differentiates the MJX step"
    rollout = config.rollout
    if rollout == "auto":
        rollout = "native" if reason is None else "mjx"
    if rollout == "native" and reason is not None:
        raise errors.UserError(f"rollout 'native' is not allowed here: {reason}; allowed: mjx (or auto)")
    if rollout == "mjx" and spec.native_only:
        detail = "" if reason is None else f" (and a native rollout cannot run: {reason})"
        raise errors.UserError(spec.env.unsupported + detail)
    return rollout


def _existing_checkpoint(out: Path, config: CollectConfig) -> dataset.Checkpoint | None:
    """``None`` if ``out`` is free; the checkpoint if it is a resumable store of this config."""
    if not out.exists():
        return None
    if not dataset.is_store(out):
        raise errors.UserError(
            f"output path {str(out)!r} exists and is not a dynsparse dataset; choose another --out"
        )
    ds = dataset.open_dataset(out)  # refuses another format version and a damaged store
    try:
        stored = json.loads(ds.attrs["config"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise errors.UserError(f"dataset {str(out)!r} has no readable run configuration in its attrs") from exc
    wanted = config.identity()
    was, now = stored.get("policy") or {}, wanted["policy"]
    if was.get("name") == now.get("name") == "from-file" and was.get("file") == now.get("file") and was.get("sha256") != now.get("sha256"):
        raise errors.UserError(
            f"--from {now['file']!r} changed since the run in {str(out)!r} started (SHA-256 {now['sha256'][:12]}..., "
            f"recorded {str(was.get('sha256'))[:12]}...); restore it or choose another --out"
        )
    diffs = [f"{k}: stored {stored.get(k, dataset.IDENTITY_DEFAULTS.get(k))!r}, requested {wanted[k]!r}"
             for k in dataset.IDENTITY_KEYS if stored.get(k, dataset.IDENTITY_DEFAULTS.get(k)) != wanted[k]]
    if diffs:
        raise errors.UserError(
            f"{str(out)!r} holds a run with a different configuration ({'; '.join(diffs)}); "
            "choose another --out or repeat the original command to resume"
        )
    checkpoint = dataset.read_checkpoint(out)
    layout = dataset.layout_of(stored, ds)
    for problem in checkpoint.problems(layout):
        raise errors.UserError(f"{str(out)!r}: {problem}; run `dynsparse validate {out}`")
    return checkpoint


def _check_same_function(out: Path, config: CollectConfig, spec: envs.EnvSpec) -> None:
    """Refuse to resume a store whose compiled model (``envs.model_digest``) or definition attrs
    (``definition_texts``) differ from this run's: its steps and the new ones would be values of
    different functions. (Stores made before an attr existed are not checked on it.)"""
    attrs = dataset.open_dataset(out).attrs
    stored, digest = attrs.get("model_compiled_sha256"), envs.model_digest(spec.mj_model)
    if stored is not None and stored != digest:
        raise errors.UserError(
            f"{config.env}: the compiled model differs from the one the unfinished run in {str(out)!r} was started with "
            f"(SHA-256 {digest[:12]}..., recorded {str(stored)[:12]}...): a file it reads (an included XML, a mesh, a "
            "texture) or the package that builds it changed; restore it or choose another --out"
        )
    for key, text in definition_texts(config, spec).items():
        if attrs.get(key, text) != text:
            raise errors.UserError(
                f"{str(out)!r} holds an unfinished run started by a dynsparse whose {key} differs from this one's (its "
                "stored values were computed or recorded otherwise, and the store would mix the two); choose another "
                "--out, or collect it again"
            )


def _replay_attrs(policy: policies.Policy, spec: envs.EnvSpec) -> dict[str, Any]:
    """Attrs of a ``--from`` run: the file, its SHA-256 and how well its rows follow the model."""
    from dynsparse.policies import replay

    assert isinstance(policy, replay.ReplayPolicy)
    mismatch = replay.next_state_mismatch(policy.arrays, spec.mj_model, spec.n_substeps)
    if mismatch is not None and mismatch > 1e-3:
        log.warning(
            "--from %s: the file's next rows differ from %s's own step by %.3g (median relative, native MuJoCo): "
            "the trajectories may come from another model, frame skip or action convention", policy.file, spec.name, mismatch,
        )
    return {
        "source_file": policy.file, "source_sha256": policy.sha256,
        "source_next_state_mismatch": float("nan") if mismatch is None else mismatch,
        "source_definition": (
            "Jacobians at recorded (qpos, qvel, action) rows of source_file: the simulator is set to each valid row's "
            "state (mjx.forward), the recorded action applied; next_state is the model's own step from there, not the "
            "file's next row; source_next_state_mismatch = median over up to 50 valid row pairs of max |s'_model - "
            "s_next_file| / max(|s_next_file|, 1) with native MuJoCo (the model's solver, cold warm start)"
        ),
    }


def _steps_done(layout: dataset.Layout, next_unit: int) -> int:
    done = 0
    for unit in range(min(next_unit, layout.n_units)):
        es, ts = layout.unit_slices(unit)
        done += (es.stop - es.start) * (ts.stop - ts.start)
    return done


def _devices(batch_size: int) -> int:
    """How many devices each compiled chunk's episode batch is split over."""
    from dynsparse import rollout

    sharding = rollout.batch_sharding(batch_size)
    return 1 if sharding is None else len(sharding.device_set)


def definition_texts(config: CollectConfig, spec: envs.EnvSpec) -> dict[str, str]:
    """The attrs that define what a run's values are (the Jacobian's definition, the solver
    diagnostics'): an unfinished stored run whose texts differ was made by a dynsparse that
    computed another function, and is not resumed (``_check_same_function``)."""
    return {
        "jacobian_definition": definitions.description(config.jacobian, spec.mj_model),
        "solver_diagnostics": native_solver.DEFINITION_TEXT if config.backend == "finite_diff" else (
            "of the definition's own constraint solves (one per substep; four per substep with RK4): solver_residual = "
            "max over the solves of |r| / trace(M) at the returned qacc (r = M qacc - qfrc_smooth - qfrc_constraint, the "
            "cost gradient); solver_truncated = solves stopped at the iteration cap with that residual >= the tolerance; "
            "solver_start_returned = solves whose start point already passed the gradient test while a constraint was active"
        ),
    }


def _attrs(config: CollectConfig, spec: envs.EnvSpec) -> dict[str, Any]:
    versions = dataset.package_versions()
    return {
        "format": dataset.FORMAT,
        "format_version": dataset.FORMAT_VERSION,
        "env": config.env,
        "backend": config.backend,
        "dtype": config.dtype,
        "seed": config.seed,
        "policy": json.dumps(config.policy),
        # exploration noise of the colored and PPO policies (also inside "policy"), NaN for random
        "noise_beta": float(config.policy.get("beta", float("nan"))),
        "noise_scale": float(config.policy.get("scale", float("nan"))),
        "episodes": config.episodes,
        "steps": config.steps,
        "n_substeps": spec.n_substeps,
        "dt": spec.dt,
        "sim_dt": spec.sim_dt,
        "nq": spec.nq,
        "nv": spec.nv,
        "nu": spec.nu,
        "solver_iterations": int(spec.mj_model.opt.iterations),
        "solver_ls_iterations": int(spec.mj_model.opt.ls_iterations),
        "solver_tolerance": float(spec.mj_model.opt.tolerance),
        # the model as compiled (MJB): covers the files the main XML includes or reads
        "model_compiled_sha256": envs.model_digest(spec.mj_model),
        "jacobian": config.jacobian,
        **definition_texts(config, spec),
        "jacobian_coordinates": definitions.COORDINATES,
        "converged_solver": json.dumps(dataclasses.asdict(definitions.CONVERGED)),
        # episodes are split over this many CPU devices (round-off differs from one device); a
        # native rollout simulates each episode alone (threads change nothing)
        "devices": 1 if config.rollout == "native" else _devices(config.batch_size),
        "rollout": config.rollout,
        "rollout_definition": native_rollout.DEFINITIONS[config.rollout],
        "jacobian_method": (
            autodiff.METHOD_DESCRIPTIONS[autodiff.DEFAULT_METHOD] if config.backend == "autodiff"
            else f"native MuJoCo centred finite differences of the whole control step (finite_diff.NativeStep), eps={config.fd_eps}; "
                 "an action within eps of its ctrlrange bound is differenced one-sided from inside the range (second order)"
        ),
        "contact_definition": envs.CONTACT_DEFINITION,
        "check_definition": certify.DEFINITION_TEXT + f"; checked steps: 0, K, 2K, ... of every episode, K = {config.check_every}",
        "check_classes": json.dumps(list(certify.CLASSES)),
        "compare_definitions": int(config.compare_definitions),
        "definition_comparison": (
            "definition_rel_diff = max_ij |J_conv - J_run| / max(|J_conv|, |J_run|, 1e-3 m_i) over [J_s | J_a] "
            "(m_i the row's largest magnitude); definition_pattern_diff = entries whose zero decision (|J| < 1e-12) "
            "differs; definition_state_diff = max over [qpos, qvel] of |s'_conv - s'_run| / max(|s'_run|, 1)"
        ),
        "versions": json.dumps(versions),
        "config": json.dumps(dataclasses.asdict(config)),
    }


class _Runner:
    """Computes units in order, writing each and checkpointing after it."""

    def __init__(self, config: CollectConfig, spec: envs.EnvSpec, policy: policies.Policy, layout: dataset.Layout,
                 out: Path | None, prefetch: bool = True):
        """``out=None``, ``prefetch=False``: a runner that only ``prepare`` s (builds programs ahead)."""
        from dynsparse import rollout

        self.config, self.spec, self.policy, self.layout, self.out = config, spec, policy, layout, out
        self.native = None
        if config.rollout == "native":
            self.native = native_rollout.NativeRollout(spec, policy)
            self.chunk_fn: Any = self._native_chunk
        else:
            self.reset_fn = rollout.make_reset_fn(spec)
            self.chunk_fn = rollout.make_chunk_fn(
                spec, policy, with_jacobians=config.backend == "autodiff", definition=config.jacobian,
                compare_definitions=config.compare_definitions,
            )
            if prefetch:
                self.reset_fn.prefetch()
                self.chunk_fn.prefetch()
        self.fd = None
        if config.backend == "finite_diff":
            self.fd = finite_diff.FiniteDiffBackend(spec.mj_model, spec.n_substeps, config.fd_eps, config.jacobian)
            self.fd_solver = native_solver.NativeSolverDiagnostics(spec.mj_model, spec.n_substeps, config.jacobian, threads=0)
        self.checker = certify.StepChecker(spec, config.jacobian, prefetch=prefetch) if config.check_every else None
        self._rollout = rollout
        self._sharding = None if self.native is not None else rollout.batch_sharding(layout.batch_size)

    def _native_chunk(self, states: Any, alive: Any, noise: np.ndarray) -> tuple[Any, Any, dict[str, np.ndarray]]:
        """The native rollout's chunk with the MJX chunk's signature (``rollout.make_chunk_fn``)."""
        (states, alive), outputs = self.native.chunk((np.asarray(states), np.asarray(alive)), noise)
        return states, alive, outputs

    def _put(self, tree: Any) -> Any:
        """``tree`` on the devices the chunk splits its episodes over (unchanged on one device)."""
        return tree if self._sharding is None else self._rollout.put_sharded(tree, self._sharding)

    def prepare(self) -> dict[str, str]:
        """Build the programs of this run's units without running a chunk (``collect.prepare``)."""
        carry = self._initial_carry(0)
        built = {"reset": list(self.reset_fn.sources.values())[-1] if self.reset_fn.sources else "off"}
        noise = self._batch_noise(0)[:, :self.layout.chunk_steps]
        built["chunk"] = self.chunk_fn.ensure(self._put(carry[0]), self._put(carry[1]), self._put(noise))
        if self.checker is not None:
            built["certify-fd"] = self.checker.prepare()
        return built

    def run(self, checkpoint: dataset.Checkpoint, on_progress: Callable[[Progress], None] | None) -> None:
        import jax

        layout = self.layout
        carry = None
        if checkpoint.carry is not None:
            template = self._initial_carry(checkpoint.next_unit // layout.n_chunks)
            treedef = jax.tree_util.tree_structure(template)
            carry = jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(x) for x in checkpoint.carry])
        # Pipelined: unit k+1 is dispatched (JAX runs it asynchronously) before unit k's outputs
        # are fetched, post-processed and written, so writing overlaps computing. Unit k's
        # checkpoint still holds the carry after unit k: an interruption loses at most the unit
        # in flight, which a resume recomputes.
        try:
            self._units(checkpoint, carry, on_progress)
        finally:
            if self.native is not None:
                self.native.close()

    def _units(self, checkpoint: dataset.Checkpoint, carry: Any, on_progress: Callable[[Progress], None] | None) -> None:
        """Compute, write and checkpoint the units from ``checkpoint.next_unit`` on (``run``)."""
        layout, put, noise = self.layout, self._put, None
        pending: tuple[int, Any, Any] | None = None
        for unit in [*range(checkpoint.next_unit, layout.n_units), None]:
            dispatched = None
            if unit is not None:
                b, c = divmod(unit, layout.n_chunks)
                if noise is None or c == 0:
                    noise = self._batch_noise(b)
                if c == 0:
                    carry = self._initial_carry(b)
                elif carry is None:  # excluded by _existing_checkpoint
                    raise RuntimeError(f"no simulator state to continue unit {unit}")
                t0 = c * layout.chunk_steps
                states, alive, outputs = self.chunk_fn(put(carry[0]), put(carry[1]), put(noise[:, t0:t0 + layout.chunk_steps]))
                carry = (states, alive)
                dispatched = (unit, outputs, carry)
            if pending is not None:
                self._finish(*pending, on_progress)
            pending = dispatched

    def _finish(self, unit: int, outputs: Any, carry: Any, on_progress: Callable[[Progress], None] | None) -> None:
        """Fetch unit ``unit``'s outputs, write them and the checkpoint after it; report progress."""
        import jax

        layout = self.layout
        arrays = self._unit_arrays(unit, jax.device_get(outputs))
        dataset.write_unit(self.out, layout, unit, arrays)
        last_of_batch = unit % layout.n_chunks == layout.n_chunks - 1
        leaves = None if last_of_batch else [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(carry))]
        dataset.write_checkpoint(self.out, unit + 1, layout.n_units, leaves)
        interrupts.check()
        if on_progress:
            on_progress(Progress(unit + 1, layout.n_units, _steps_done(layout, unit + 1), layout.episodes * layout.steps))

    def _batch_episodes(self, b: int) -> np.ndarray:
        """Episode indices of batch ``b``, padded past ``episodes`` to a full batch (discarded)."""
        return np.arange(b * self.layout.batch_size, (b + 1) * self.layout.batch_size)

    def _batch_noise(self, b: int) -> np.ndarray:
        padded_steps = self.layout.n_chunks * self.layout.chunk_steps
        noise = self.policy.batch_noise(self.config.seed, self._batch_episodes(b), self.config.steps, self.spec.nu)
        if padded_steps > self.config.steps:
            noise = np.concatenate([noise, np.zeros((noise.shape[0], padded_steps - self.config.steps, noise.shape[-1]))], axis=1)
        return noise.astype(self.config.dtype)

    def _initial_carry(self, b: int) -> tuple[Any, Any]:
        import jax.numpy as jnp

        keys = self._rollout.episode_keys(self.config.seed, self._batch_episodes(b))
        if self.native is not None:
            return self.native.initial_carry(keys)
        states = self.reset_fn(keys)
        return states, jnp.ones((self.layout.batch_size,), bool)

    def _unit_arrays(self, unit: int, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Trim a unit's outputs to the store, add Jacobians (FD backend), certificates, comparisons."""
        es, ts = self.layout.unit_slices(unit)
        ne, nt = es.stop - es.start, ts.stop - ts.start
        o = {k: np.asarray(v)[:ne, :nt] for k, v in outputs.items()}
        valid = o["valid"].astype(bool)
        n = self.spec.state_size
        if self.config.backend == "finite_diff":
            o["J_s"] = np.full((ne, nt, n, n), np.nan)
            o["J_a"] = np.full((ne, nt, n, self.spec.nu), np.nan)
            # a step into a non-finite state has no derivative (native MuJoCo would differentiate
            # the reset it makes there)
            where = np.nonzero(valid & np.isfinite(o["next_state"]).all(axis=-1))
            o["solver_residual"] = np.full((ne, nt), np.nan)
            o["solver_truncated"], o["solver_start_returned"] = np.full((ne, nt), -1), np.full((ne, nt), -1)
            if where[0].size:
                inputs = {f.name: o[f.name][where] for f in dataclasses.fields(finite_diff.StepInputs)}
                o["J_s"][where], o["J_a"][where], diag = native_solver.measure(self.fd, self.fd_solver, inputs)
                for name, values in diag.items():
                    o[name][where] = values
        else:
            o["J_s"] = np.where(valid[..., None, None], o["J_s"], np.nan)
            o["J_a"] = np.where(valid[..., None, None], o["J_a"], np.nan)
        extra = self._certificates(o, valid, ts) | self._definition_differences(o, valid)
        finite = np.isfinite(o["J_s"]).all(axis=(-2, -1)) & np.isfinite(o["J_a"]).all(axis=(-2, -1)) & valid
        dtype = self.config.dtype
        return {
            "state": o["state"].astype(dtype), "action": o["action"].astype(dtype),
            "next_state": o["next_state"].astype(dtype), "J_s": o["J_s"].astype(dtype),
            "J_a": o["J_a"].astype(dtype), "n_contacts": o["n_contacts"].astype(np.int32),
            "contact_pairs": o["contact_pairs"].astype(bool) & valid[..., None],
            "reward": o["reward"].astype(dtype), "warmstart": o["warmstart"].astype(dtype),
            "finite": finite,
            "solver_residual": np.where(valid, o["solver_residual"], np.nan).astype(np.float64),
            "solver_truncated": np.where(valid, o["solver_truncated"], -1).astype(np.int16),
            "solver_start_returned": np.where(valid, o["solver_start_returned"], -1).astype(np.int16),
            **extra, "valid": valid,
        }

    def _certificates(self, o: dict[str, np.ndarray], valid: np.ndarray, ts: slice) -> dict[str, np.ndarray]:
        """The ``check_*`` arrays of a unit (certificates at every ``check_every``-th step)."""
        shape = valid.shape
        out: dict[str, np.ndarray] = {"check_class": np.full(shape, certify.NOT_CHECKED, np.int8)}
        for name in certify.DATASET_FIELDS:
            out[name] = np.full(shape, -1, np.int32) if name == "check_pattern_mismatch" else np.full(shape, np.nan)
        if self.checker is None:
            return out
        steps = np.arange(ts.start, ts.stop)
        where = np.nonzero(valid & (steps % self.config.check_every == 0)[None, :])
        if not where[0].size:
            return out
        inputs = {f.name: o[f.name][where] for f in dataclasses.fields(finite_diff.StepInputs)}
        jac = np.concatenate([o["J_s"][where], o["J_a"][where]], axis=-1)
        for k, cert in enumerate(self.checker(inputs, jac)):
            idx = (where[0][k], where[1][k])
            out["check_class"][idx] = cert.code
            for name, attr in certify.DATASET_FIELDS.items():
                out[name][idx] = getattr(cert, attr)
        return out

    def _definition_differences(self, o: dict[str, np.ndarray], valid: np.ndarray) -> dict[str, np.ndarray]:
        """The ``definition_*`` arrays of a unit (``compare_definitions``)."""
        shape = valid.shape
        out = {
            "definition_rel_diff": np.full(shape, np.nan), "definition_pattern_diff": np.full(shape, -1, np.int32),
            "definition_state_diff": np.full(shape, np.nan),
        }
        if not self.config.compare_definitions:
            return out
        for i, t in zip(*np.nonzero(valid)):
            mine = np.concatenate([o["J_s"][i, t], o["J_a"][i, t]], axis=-1)
            other = np.concatenate([o["J_s_other"][i, t], o["J_a_other"][i, t]], axis=-1)
            out["definition_rel_diff"][i, t], out["definition_pattern_diff"][i, t] = compare_lib.definition_difference(mine, other)
            a, b = o["next_state_definition"][i, t], o["next_state_other"][i, t]
            run = b if self.config.jacobian == "converged" else a
            out["definition_state_diff"][i, t] = float(np.max(np.abs(a - b) / np.maximum(np.abs(run), 1.0)))
        return out
