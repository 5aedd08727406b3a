"""The ``dynsparse`` command line: parses, calls the API, prints."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from dynsparse import errors, options

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): ``dynsparse: error: ... (see --help)``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"dynsparse: error: {message} (see `{self.prog} --help`)\n")


#: subcommand -> one-line help (the listing ``dynsparse --help`` prints without importing anything)
_HELP = {
    "envs": "list the environments with their state and action sizes",
    "collect": "roll out a policy and store Jacobians along the trajectories",
    "sweep": "a grid of (env, policy, seed, threshold) jobs on local processes or a Dask cluster",
    "train-policy": "train a PPO policy (brax, Playground's published hyper-parameters); resumable",
    "learn": "train MLP world models (5 losses x seeds) and compare their Jacobian sparsity with the truth",
    "structure": "print the global-structure (Q1) table of a dataset",
    "graphs": "export the ground-truth causal graphs (global and per step) of a dataset",
    "score": "score a learned graph (mask or edge scores, .npz) against a dataset's truth",
    "validate": "check a dataset and say exactly what is wrong",
    "analyze": "every metric, the seven figures and an HTML page of one dataset",
    "report": "one self-contained HTML report of several analyses",
    "reproduce": "the whole study: collect, analyse and report the eight DM-Control tasks",
}
#: global options that take a value (skipped when finding the subcommand in argv)
_GLOBAL_VALUES = ("--jax-cache", "--menagerie")


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (None if there is none)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _GLOBAL_VALUES:
            skip = True
        elif not word.startswith("-"):
            return word if word in _HELP else None
    return None


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s own options are added (each command's options are declared
    with its configuration dataclass, whose module is imported here only for that command)."""
    p = _Parser(prog="dynsparse", description="How sparse are the true dynamics of MuJoCo Playground environments?")
    p.add_argument("--jax-cache", default=None, help="JAX compilation cache directory, or 'off' (default: $DYNSPARSE_JAX_CACHE or ~/.cache/dynsparse/jax)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    p.add_argument("--menagerie", default=None, metavar="PATH",
                   help="local mujoco_menagerie checkout for the locomotion/manipulation environments "
                        "(default: $DYNSPARSE_MENAGERIE, else Playground's own location)")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in _HELP.items():
        parser = sub.add_parser(name, help=text)
        if name == command:
            _ARGUMENTS[name](parser)
    return p


def _menagerie(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--menagerie", default=argparse.SUPPRESS, metavar="PATH", help="as the global --menagerie")


def _zero_rule(parser: argparse.ArgumentParser) -> None:
    from dynsparse.analysis import AnalyzeOptions

    options.add_argument(parser, AnalyzeOptions, "threshold")
    options.add_argument(parser, AnalyzeOptions, "kind", flag="--relative", const="relative",
                         help="scale the threshold by each row's L2 norm")


def _args_envs(parser: argparse.ArgumentParser) -> None:
    pass


def _args_collect(c: argparse.ArgumentParser) -> None:
    from dynsparse.collect import CollectConfig as C

    c.add_argument("env", help=options.field_of(C, "env").metadata[options.HELP])
    options.add_argument(c, C, "episodes")
    options.add_argument(c, C, "steps")
    options.add_argument(c, C, "substeps", metavar="N")
    c.add_argument("--from", dest="from_file", default=None, metavar="FILE",
                   help="take the Jacobians at recorded states and actions instead of rolling out a policy: an .npz with "
                        "qpos, qvel, action (episodes x steps x dim) and optional valid (README: Your own trajectories)")
    c.add_argument("--policy", dest="policy_text", default=None, metavar="POLICY", help="random (default) | colored | ppo:DIR (a train-policy checkpoint)")
    c.add_argument("--noise-beta", "--beta", dest="beta", type=float, default=None,
                   help="colored-noise exponent in [0, 2] (0 white, 1 pink, 2 red); default 1 for colored, "
                        "the trained beta for ppo")
    c.add_argument("--noise-scale", type=float, default=None,
                   help="colored: noise std as a fraction of the action half-range; ppo: multiplies the policy's "
                        "sigma (0 = deterministic); default 1")
    options.add_argument(c, C, "seed")
    options.add_argument(c, C, "backend")
    options.add_argument(c, C, "rollout")
    options.add_argument(c, C, "dtype")
    options.add_argument(c, C, "check_every", metavar="K")
    options.add_argument(c, C, "jacobian", metavar="DEFINITION")
    options.add_argument(c, C, "compare_definitions")
    options.add_argument(c, C, "batch_size")
    options.add_argument(c, C, "chunk_steps")
    c.add_argument("--out", required=True, help="output Zarr store; rerun the same command to resume")
    _menagerie(c)


def _args_sweep(w: argparse.ArgumentParser) -> None:
    from dynsparse import sweep

    w.add_argument("config", help="sweep configuration (.toml or .json): envs, policies, seeds, thresholds, collection settings")
    w.add_argument("--out", required=True, help="sweep folder; rerun the same command to run what is not done")
    w.add_argument("--executor", default=None, type=options.one_of(*sweep.EXECUTORS).from_text,
                   help=f"{' | '.join(sweep.EXECUTORS)}: Dask (default), or pipelined in this process (collect run "
                        "after run on all cores, analyse in one worker process alongside)")
    w.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler (e.g. tcp://host:8786; --out on a shared file system); "
                        "default: a local cluster of worker processes")
    w.add_argument("--workers", type=options.integer(1).from_text, default=None,
                   help="local worker processes (default: cores, at most the runs)")
    w.add_argument("--only", action="append", default=[], metavar="JOB", help="run only this job (repeatable); ids as in summary.csv")
    _menagerie(w)


def _args_train_policy(t: argparse.ArgumentParser) -> None:
    from dynsparse.policies.ppo_train import TrainConfig as T

    t.add_argument("env", help=options.field_of(T, "env").metadata[options.HELP])
    t.add_argument("--out", required=True,
                   help="checkpoint folder (new, or with --resume one this command wrote); rewritten after every evaluation")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out from its last evaluation (options default to the saved run's; "
                        "options given must equal them)")
    t.add_argument("--time-limit", type=options.number(0.0).from_text, default=None, metavar="SECONDS",
                   help="stop before an iteration that would end after this many seconds (resume it later with --resume)")
    for name in ("timesteps", "budget_scale", "noise_beta", "exploration_scale", "seed", "policy_hidden", "value_hidden"):
        options.add_argument(t, T, name)
    t.add_argument("--set", dest="set_items", action="append", default=[], metavar="KEY=VALUE",
                   help="override a brax ppo.train keyword, e.g. --set num_envs=256 (repeatable)")


def _args_learn(lp: argparse.ArgumentParser) -> None:
    from dynsparse.learn.model import TrainOptions as T
    from dynsparse.learn.run import LearnOptions as L

    lp.add_argument("datasets", nargs="+", help="datasets from `dynsparse collect` (pooled per environment)")
    lp.add_argument("--out", required=True, help="output folder (written whole; never overwritten)")
    options.add_argument(lp, L, "losses")
    options.add_argument(lp, L, "seeds")
    lp.add_argument("--quick", action="store_true", help="30 epochs, 128x128 network (smoke tests)")
    for name in ("epochs", "batch_size", "hidden", "lr", "jac_weight"):
        options.add_argument(lp, T, name)
    for name in ("residual", "per_env", "model_threshold", "true_threshold", "test_fraction"):
        options.add_argument(lp, L, name)


def _args_structure(s: argparse.ArgumentParser) -> None:
    s.add_argument("path")
    _zero_rule(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--frequency", action="store_true",
                   help="also give the per-element zero frequency (%% of counted steps each entry is zero)")


def _args_graphs(g: argparse.ArgumentParser) -> None:
    g.add_argument("path")
    g.add_argument("--out", required=True, help="FILE.npz (masks with names); the edge list goes to FILE.parquet")
    _zero_rule(g)
    g.add_argument("--no-samples", action="store_true", help="only the global graph (no per-step masks)")


def _args_score(sc: argparse.ArgumentParser) -> None:
    sc.add_argument("path")
    sc.add_argument("prediction", help=".npz with out_names, in_names and global and/or samples (see README)")
    _zero_rule(sc)
    sc.add_argument("--json", default=None, metavar="FILE", help="also write the scores as JSON to FILE")


def _args_validate(v: argparse.ArgumentParser) -> None:
    v.add_argument("path")


def _args_analyze(a: argparse.ArgumentParser) -> None:
    from dynsparse.analysis import AnalyzeOptions as A

    a.add_argument("path")
    a.add_argument("--out", required=True, help="output folder (written whole or not at all; never overwritten)")
    _zero_rule(a)
    options.add_argument(a, A, "bin_width")
    options.add_argument(a, A, "tsne", flag="--no-tsne", const=False, help="skip the t-SNE embedding (the slowest metric)")
    for name in ("perplexity", "max_points", "shuffles", "episode"):
        options.add_argument(a, A, name)
    options.add_argument(a, A, "formats", flag="--pdf", const=("png", "svg", "pdf"), help="also write PDF figures (PNG and SVG always)")
    options.add_argument(a, A, "seed")


def _args_report(r: argparse.ArgumentParser) -> None:
    from dynsparse.report import build

    r.add_argument("folders", nargs="+", help="folders written by `dynsparse analyze`")
    r.add_argument("--out", required=True, help="report folder (index.html, table.csv)")
    options.add_parameter(r, build.build, "title", help="the report's title")


def _args_reproduce(q: argparse.ArgumentParser) -> None:
    from dynsparse import reproduce
    from dynsparse.collect import CollectConfig

    q.add_argument("--out", required=True, help="study folder; rerun the same command to resume")
    q.add_argument("--quick", action="store_true",
                   help=f"a small version ({reproduce.QUICK['episodes']} episodes x {reproduce.QUICK['steps']} steps; its "
                        "Table-1 counts equal the paper scale's)")
    q.add_argument("--envs", default=None, help="comma-separated subset of the eight tasks (default: all eight)")
    options.add_parameter(q, reproduce.preset, "seed", check=options.seed(), help="collection and analysis seed")
    options.add_argument(q, CollectConfig, "jacobian", metavar="DEFINITION")
    options.add_parameter(q, reproduce.preset, "policies", metavar="DIR",
                          help="collect with the PPO checkpoints DIR/ENV (train-policy) instead of random actions")
    options.add_parameter(q, reproduce.preset, "noise_beta", check=options.via(_beta, "0 <= beta <= 2", float),
                          help="with --policies: exploration noise exponent (default: as trained)")
    options.add_parameter(q, reproduce.preset, "noise_scale", check=options.number(None),
                          help="with --policies: multiplies each policy's sigma (default 1)")


def _beta(value: float) -> float:
    from dynsparse.policies import noise

    return noise.check_beta(value)


_ARGUMENTS = {
    "envs": _args_envs, "collect": _args_collect, "sweep": _args_sweep, "train-policy": _args_train_policy,
    "learn": _args_learn, "structure": _args_structure, "graphs": _args_graphs, "score": _args_score,
    "validate": _args_validate, "analyze": _args_analyze, "report": _args_report, "reproduce": _args_reproduce,
}


#: Commands that simulate with MJX, which they import without its Warp backend (``upstream``).
_SIMULATING = frozenset({"collect", "sweep", "reproduce", "envs"})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    if command in _SIMULATING:
        from dynsparse import upstream

        upstream.mjx_without_warp()  # 2.8 s less start-up (MJX's unused GPU backend)
    try:
        args = _parser(command).parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a refused flag value (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _route_mujoco_warnings()
    from dynsparse import interrupts

    interrupts.install()
    try:
        if args.menagerie is not None:
            from dynsparse import envs

            envs.use_menagerie(args.menagerie)
        return _COMMANDS[args.command](args)
    except errors.UserError as exc:
        print(f"dynsparse: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        interrupts.handled()
        print("dynsparse: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # the file system refused (read-only, full, permissions): the user's to fix
        where = f" {exc.filename!r}" if exc.filename else ""
        print(f"dynsparse: error: cannot access{where}: {exc.strerror or exc}; nothing already written was changed", file=sys.stderr)
        return EXIT_USER_ERROR


def _route_mujoco_warnings() -> None:
    from dynsparse import sources

    sources.route_mujoco_warnings()


def _cmd_envs(args: argparse.Namespace) -> int:
    from dynsparse import envs

    print(f"{'environment':<24}{'nq':>4}{'nv':>4}{'state':>7}{'action':>8}{'substeps':>10}{'dt':>8}  note")
    for name in envs.dm_control_names():
        info = envs.static_info(name)
        note = "" if info["nq"] == info["nv"] else "free/ball joints: state is the tangent space (2 nv)"
        print(f"{name:<24}{info['nq']:>4}{info['nv']:>4}{2 * info['nv']:>7}{info['nu']:>8}{info['n_substeps']:>10}{info['dt']:>8.4g}  {note}")
    others = envs.other_names()
    if others:
        print(f"\nlocomotion/manipulation ({len(others)}): need mujoco_menagerie at {envs.menagerie_path()}: {', '.join(others)}")
    from dynsparse import sources

    gym_ids = sources.gymnasium_ids()
    if gym_ids:
        print(f"\nGymnasium MuJoCo tasks ({len(gym_ids)}), state [qpos, qvel] (not the observation):")
        for task in gym_ids:
            _print_env_row(sources.GYMNASIUM + task)
    else:
        print("\nGymnasium MuJoCo tasks: install gymnasium (pip install gymnasium imageio) for gymnasium:TASK-v5")
    dm_tasks = sources.dm_control_tasks()
    if dm_tasks:
        print(f"\ndm_control suite tasks ({len(dm_tasks)}), the original models (not Playground's ports):")
        for task in dm_tasks:
            _print_env_row(sources.DM_CONTROL + task)
    print("\nany MJCF file: mjcf:PATH (with --substeps N, the action written to ctrl)")
    return 0


def _short_feature(feature: str) -> str:
    """``MJXCannotBuild.feature`` in a few words for the ``envs`` table:
    ``mjtSolver.mjSOL_PGS is not implemented`` -> ``the PGS solver``,
    ``(mjtGeom.mjGEOM_ELLIPSOID, mjtGeom.mjGEOM_BOX) collisions not implemented`` ->
    ``ellipsoid-box collisions``; other texts unchanged but for the trailing "not implemented"."""
    import re

    text = re.sub(r"mjtSolver\.mjSOL_(\w+)", r"the \1 solver", feature)
    text = re.sub(r"mjtGeom\.mjGEOM_(\w+)", lambda g: g.group(1).lower(), text)
    text = re.sub(r"\((\w+), (\w+)\) collisions", r"\1-\2 collisions", text)
    return re.sub(r"\s*(is |are )?not implemented$", "", text) or feature


def _print_env_row(name: str) -> None:
    """One ``envs`` row of a prefixed source; for a model MJX cannot build, what it lacks (such a
    model is measured by ``--backend finite_diff`` alone, natively)."""
    from dynsparse import envs, sources

    note = ""
    try:
        info = envs.static_info(name)
    except sources.MJXCannotBuild as exc:
        info = envs.static_info(name, native=True)
        note = f"  finite_diff only (MJX lacks {_short_feature(exc.feature)})"
    except errors.UserError as exc:
        print(f"{name:<40}  not supported: {str(exc).split(': ', 1)[1].split(';')[0]}")
        return
    print(f"{name:<40}{info['nq']:>4}{info['nv']:>4}{2 * info['nv']:>7}{info['nu']:>8}{info['n_substeps']:>10}{info['dt']:>8.4g}{note}")


def _cmd_collect(args: argparse.Namespace) -> int:
    from dynsparse import collect, jaxcache, policies, xla

    fixed: dict = {}
    if args.from_file is not None:
        from dynsparse.policies import replay

        if args.policy_text is not None or args.beta is not None or args.noise_scale is not None:
            raise errors.UserError("--from replays recorded actions: leave out --policy, --noise-beta and --noise-scale")
        source = replay.ReplayPolicy(args.from_file)
        fixed["policy"] = source.config()
        fixed["episodes"] = source.episodes if args.episodes is None else args.episodes
        fixed["steps"] = source.steps if args.steps is None else args.steps
    elif args.policy_text is not None or args.beta is not None or args.noise_scale is not None:
        text = args.policy_text or options.default(collect.CollectConfig, "policy")["name"]
        fixed["policy"] = policies.config_from_text(text, args.beta, args.noise_scale)
    if args.batch_size is None:  # a resumed run keeps its own batch size
        fixed["batch_size"] = collect.stored_batch_size(Path(args.out))
    config = options.from_args(collect.CollectConfig, args, **fixed).validated()
    xla.use_cpu_cores()
    jaxcache.enable(args.jax_cache)
    bar = _ProgressBar(f"collect {args.env}")
    try:
        path = collect.collect(config, args.out, on_progress=bar.update)
    finally:
        bar.close()
    print(f"wrote {path} ({config.episodes} episodes x {config.steps} steps, backend {config.backend}, "
          f"Jacobian definition {config.jacobian})")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dynsparse import sweep

    if not args.verbose:  # Dask's scheduler/nanny chatter (worker start/stop) only with -v
        logging.getLogger("distributed").setLevel(logging.ERROR)
    config = sweep.load_config(args.config)
    jobs = config.jobs()
    print(f"sweep: {len(jobs)} jobs ({len(config.runs())} collections) -> {args.out}", flush=True)

    def on_event(state: str, job: "sweep.Job", payload: dict) -> None:
        if state not in ("done", "failed"):
            return
        extra = f": {payload.get('error')}" if state == "failed" else f" ({payload.get('seconds', 0):.0f} s analysis)"
        print(f"  {state:<6} {job.id}{extra}", flush=True)

    # each worker uses --jax-cache, else its own default ($DYNSPARSE_JAX_CACHE or ~/.cache/dynsparse/jax)
    outcomes = sweep.run_sweep(config, args.out, scheduler=args.scheduler, workers=args.workers, only=args.only,
                               jax_cache=args.jax_cache, on_event=on_event, executor=args.executor or "dask")
    rows = sweep.summary_rows(Path(args.out), config)
    print(sweep.format_table(rows))
    counts = {state: sum(o.state == state for o in outcomes) for state in ("done", "skipped", "failed", "not run")}
    print(f"{counts['done']} done now, {counts['skipped']} done before, {counts['failed']} failed, "
          f"{counts['not run']} not selected; summary: {args.out}/{sweep.SUMMARY_FILE}")
    if counts["failed"]:
        print("re-run a failed job alone with --only JOB (after fixing its cause), or rerun the command", file=sys.stderr)
        return 1
    return 0


def _cmd_train_policy(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from tqdm import tqdm

    from dynsparse import jaxcache
    from dynsparse.policies import ppo_train

    overrides = []
    for item in args.set_items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise errors.UserError(f"--set {item!r} must be KEY=VALUE, e.g. num_envs=256")
        overrides.append((key.strip(), value.strip()))
    given = {k: v for k, v in options.given(ppo_train.TrainConfig, args).items() if k != "env"}
    if overrides:
        given["overrides"] = tuple(overrides)
    if args.resume:
        saved = ppo_train.config_from_saved(args.out)
        if saved.env != args.env:
            raise errors.UserError(f"cannot resume {args.out}: it trains {saved.env}, not {args.env}")
        config = dataclasses.replace(saved, **given)  # given options must equal the saved ones (checked by train)
    else:
        config = ppo_train.TrainConfig(env=args.env, **given)
    config = config.validated()
    jaxcache.enable(args.jax_cache)
    bar = None

    def on_eval(point: object, total: int) -> None:
        nonlocal bar
        if bar is None:
            # starts at the first evaluation's steps (a resumed run's), so the rate counts only this run's steps
            bar = tqdm(total=total, initial=point.steps, desc=f"train {args.env}", unit="step", unit_scale=True, file=sys.stderr)
        bar.update(max(0, point.steps - bar.n))
        bar.set_postfix_str(f"return {point.return_mean:.1f} +- {point.return_std:.1f}")

    budget = ppo_train.Budget(None if args.time_limit is None else time.time() + args.time_limit)
    try:
        meta = ppo_train.train(config, args.out, on_eval=on_eval, resume=args.resume, budget=budget)
    except KeyboardInterrupt:
        from dynsparse import interrupts

        interrupts.handled()
        print(f"dynsparse: interrupted; {args.out} holds the run up to its last evaluation (\"complete\": false); "
              f"continue it with: dynsparse train-policy {args.env} --out {args.out} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if bar is not None:
            bar.close()
    ev = meta["evaluation"] or {}
    state = "complete" if meta["complete"] else "paused at the time limit (continue with --resume)"
    print(f"wrote {args.out}: {args.env}, {meta['training']['steps_done']} of {meta['training']['budget_timesteps']} steps, "
          f"{state}, evaluation return {ev.get('return_mean', float('nan')):.1f} +- {ev.get('return_std', float('nan')):.1f} "
          f"({meta['training']['wall_s']:.0f} s on {meta['training']['device']})")
    return 0


def _cmd_learn(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dynsparse.learn import model, run

    base = run.LearnOptions.quick() if args.quick else run.LearnOptions()
    train = options.from_args(model.TrainOptions, args, base=base.train)
    learn_options = options.from_args(run.LearnOptions, args, base=base, train=train).validated()
    bar = None

    def on_event(event: object) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=event.total, desc="learn", unit="model", file=sys.stderr)
        bar.update(event.done - bar.n)
        if event.loss:
            bar.set_postfix_str(f"{event.env} {event.loss} seed {event.seed}")

    try:
        out = run.learn(args.datasets, args.out, learn_options, on_event=on_event)
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {out} (runs.csv, tests.csv, figures/mse.png, figures/sparsity.png)")
    return 0


class _ProgressBar:
    """tqdm bar over steps, created at the first progress report (it knows where a resume starts)."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def update(self, progress: object) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=progress.steps_total, initial=progress.steps_done, desc=self.desc, unit="step", file=sys.stderr)
        else:
            self.bar.update(progress.steps_done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _zero_rule_of(args: argparse.Namespace) -> "AnalyzeOptions":
    """The zero rule (threshold, kind) given by ``_zero_rule``'s flags, defaults from ``AnalyzeOptions``."""
    from dynsparse.analysis import AnalyzeOptions

    return options.from_args(AnalyzeOptions, args).validated()


def _cmd_graphs(args: argparse.Namespace) -> int:
    from dynsparse import dataset, graphs

    rule = _zero_rule_of(args)
    ds = dataset.open_dataset(args.path)
    npz, table = graphs.export(ds, args.out, rule.threshold, rule.kind, samples=not args.no_samples)
    print(f"wrote {npz} and {table}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from dynsparse import dataset, files, graphs

    if args.json is not None and Path(args.json).exists():
        raise errors.UserError(f"--json {args.json!r} already exists; nothing was overwritten: choose another file")
    rule = _zero_rule_of(args)
    ds = dataset.open_dataset(args.path)
    result = graphs.score(ds, args.prediction, rule.threshold, rule.kind)
    print(graphs.format_scores(result))
    if args.json is not None:
        files.write_atomic(Path(args.json), json.dumps(result, indent=1).encode())
    return 0


def _cmd_structure(args: argparse.Namespace) -> int:
    from dynsparse import dataset
    from dynsparse.metrics import structure

    rule = _zero_rule_of(args)
    ds = dataset.open_dataset(args.path)
    result = structure.global_structure(ds, rule.threshold, rule.kind)
    result["path"] = str(args.path)
    freq = structure.zero_frequency(ds, rule.threshold, rule.kind) if args.frequency else None
    if args.json:
        if freq is not None:
            result["zero_frequency"] = {
                name: {"out": [str(x) for x in da["out"].values], "in": [str(x) for x in da[da.dims[1]].values],
                       "percent": da.values.tolist()}
                for name, da in freq.items()
            }
        print(json.dumps(result, indent=2))
        return 0
    print(structure.format_table(result))
    if freq is not None:
        for name, da in freq.items():
            print(f"\n{name} zero frequency (% of counted steps):")
            print(da.to_pandas().round(1).to_string())
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from dynsparse import dataset

    problems, notes = dataset.validate(args.path)
    for note in notes:
        print(f"note: {note}")
    if problems:
        for problem in problems:
            print(f"problem: {problem}")
        print(f"{args.path}: {len(problems)} problem(s)")
        return 1
    print(f"{args.path}: ok")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dynsparse import analysis, results

    analyze_options = options.from_args(analysis.AnalyzeOptions, args).validated()
    bar = tqdm(total=len(analysis.STAGES), desc=f"analyze {args.path}", unit="stage", file=sys.stderr)

    def stage(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(analysis.STAGES.index(name) - bar.n)

    try:
        out = analysis.analyze(args.path, args.out, analyze_options, on_stage=stage)
        bar.update(len(analysis.STAGES) - bar.n)
    finally:
        bar.close()
    print(f"wrote {out / 'index.html'} (metrics in {out / results.SUMMARY} and {out / 'tables'}, figures in {out / 'figures'})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from dynsparse.report import build

    page = build.build(args.folders, args.out, **({} if args.title is None else {'title': args.title}))
    print(f"wrote {page}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dynsparse import jaxcache, reproduce, xla

    kw = {k: getattr(args, k) for k in ("seed", "jacobian", "policies", "noise_beta", "noise_scale") if getattr(args, k) is not None}
    if args.envs:
        kw["envs"] = tuple(x.strip() for x in args.envs.split(",") if x.strip())
    config = reproduce.preflight(args.out, reproduce.quick(**kw) if args.quick else reproduce.full(**kw))  # refused before any progress bar
    xla.use_cpu_cores()
    jaxcache.enable(args.jax_cache)
    total = 2 * len(config.envs) + 1
    stages = tqdm(total=total, desc="study", unit="stage", file=sys.stderr, position=0)
    collect_bar: list[_ProgressBar] = []

    def on_stage(event: object) -> None:
        if event.done:
            stages.update(event.index - stages.n)
            if event.stage == "collect" and collect_bar:
                collect_bar.pop().close()
        else:
            stages.set_postfix_str(f"{event.stage} {event.env or ''}".strip())
            if event.stage == "collect":
                collect_bar.append(_ProgressBar(f"collect {event.env}"))

    def on_collect(progress: object) -> None:
        if collect_bar:
            collect_bar[-1].update(progress)

    try:
        page = reproduce.reproduce(args.out, config, on_stage=on_stage, on_collect_progress=on_collect)
    finally:
        for bar in collect_bar:
            bar.close()
        stages.close()
    print(f"wrote {page} (study of {len(config.envs)} environments, {config.episodes} episodes x {config.steps} steps each)")
    return 0


_COMMANDS = {
    "train-policy": _cmd_train_policy, "learn": _cmd_learn,
    "envs": _cmd_envs, "collect": _cmd_collect, "structure": _cmd_structure, "validate": _cmd_validate,
    "graphs": _cmd_graphs, "score": _cmd_score,
    "analyze": _cmd_analyze, "report": _cmd_report, "reproduce": _cmd_reproduce, "sweep": _cmd_sweep,
}


if __name__ == "__main__":
    sys.exit(main())
