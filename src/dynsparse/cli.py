"""The ``dynsparse`` command line: parses, calls the API, prints."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

from dynsparse import errors

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum``, with a one-line message naming the bad value."""
    allowed = "an integer > 0" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; allowed: {allowed}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: {allowed}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; allowed: a finite number > 0") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: a finite number > 0")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): ``dynsparse: error: ... (see --help)``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"dynsparse: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dynsparse", description="How sparse are the true dynamics of MuJoCo Playground environments?")
    p.add_argument("--jax-cache", default=None, help="JAX compilation cache directory, or 'off' (default: $DYNSPARSE_JAX_CACHE or ~/.cache/dynsparse/jax)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    p.add_argument("--menagerie", default=None, metavar="PATH",
                   help="local mujoco_menagerie checkout for the locomotion/manipulation environments "
                        "(default: $DYNSPARSE_MENAGERIE, else Playground's own location)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("envs", help="list the environments with their state and action sizes")

    c = sub.add_parser("collect", help="roll out a policy and store Jacobians along the trajectories")
    c.add_argument("env", help="Playground registry name (CheetahRun), gymnasium:TASK-v5 (gymnasium:HalfCheetah-v5), "
                               "dm_control:DOMAIN-TASK (dm_control:cheetah-run) or mjcf:PATH (any MJCF file); "
                               "`dynsparse envs` lists them")
    c.add_argument("--episodes", type=_positive_int, default=None, help="default 2 (with --from: the file's)")
    c.add_argument("--steps", type=_positive_int, default=None, help="control steps per episode; default 300 (with --from: the file's)")
    c.add_argument("--substeps", type=_positive_int, default=None, metavar="N",
                   help="mjcf: models only: physics steps per control step, the action held (default 1)")
    c.add_argument("--from", dest="from_file", default=None, metavar="FILE",
                   help="take the Jacobians at recorded states and actions instead of rolling out a policy: an .npz with "
                        "qpos, qvel, action (episodes x steps x dim) and optional valid (README: Your own trajectories)")
    c.add_argument("--policy", default="random", help="random | colored | ppo:DIR (a train-policy checkpoint)")
    c.add_argument("--noise-beta", "--beta", dest="beta", type=float, default=None,
                   help="colored-noise exponent in [0, 2] (0 white, 1 pink, 2 red); default 1 for colored, "
                        "the trained beta for ppo")
    c.add_argument("--noise-scale", type=float, default=None,
                   help="colored: noise std as a fraction of the action half-range; ppo: multiplies the policy's "
                        "sigma (0 = deterministic); default 1")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--backend", default="autodiff", help="autodiff | finite_diff")
    c.add_argument("--dtype", default="float64", help="float64 (float32 is not supported yet)")
    c.add_argument("--check-every", type=_nonneg_int, default=0, metavar="K",
                   help="certify the Jacobians at every K-th step of each episode against finite differences of the "
                        "same function (MJX and native MuJoCo); stores a class per checked step")
    c.add_argument("--jacobian", default="converged", metavar="DEFINITION",
                   help="converged (default: every substep's constraint problem solved exactly, the physics' "
                        "Jacobian) | as-run (the step exactly as the environment runs it)")
    c.add_argument("--compare-definitions", action="store_true",
                   help="also compute the other definition at every step and store how it differs")
    c.add_argument("--batch-size", type=_positive_int, default=None,
                   help="episodes simulated together (default: at most 64, equal batches; a resumed run keeps its own)")
    c.add_argument("--chunk-steps", type=_positive_int, default=100, help="steps per compiled chunk and per stored chunk")
    c.add_argument("--out", required=True, help="output Zarr store; rerun the same command to resume")
    c.add_argument("--menagerie", default=argparse.SUPPRESS, metavar="PATH", help="as the global --menagerie")

    w = sub.add_parser("sweep", help="a grid of (env, policy, seed, threshold) jobs on local processes or a Dask cluster")
    w.add_argument("config", help="sweep configuration (.toml or .json): envs, policies, seeds, thresholds, collection settings")
    w.add_argument("--out", required=True, help="sweep folder; rerun the same command to run what is not done")
    w.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler (e.g. tcp://host:8786; --out on a shared file system); "
                        "default: a local cluster of worker processes")
    w.add_argument("--workers", type=_positive_int, default=None, help="local worker processes (default: cores, at most the runs)")
    w.add_argument("--only", action="append", default=[], metavar="JOB", help="run only this job (repeatable); ids as in summary.csv")
    w.add_argument("--menagerie", default=argparse.SUPPRESS, metavar="PATH", help="as the global --menagerie")

    t = sub.add_parser("train-policy", help="train a PPO policy (brax, Playground's published hyper-parameters); resumable")
    t.add_argument("env", help="a DM-Control suite name in Playground, e.g. CheetahRun")
    t.add_argument("--out", required=True,
                   help="checkpoint folder (new, or with --resume one this command wrote); rewritten after every evaluation")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out from its last evaluation (options default to the saved run's; "
                        "options given must equal them)")
    t.add_argument("--time-limit", type=_positive_float, default=None, metavar="SECONDS",
                   help="stop before an iteration that would end after this many seconds (resume it later with --resume)")
    t.add_argument("--timesteps", type=_positive_int, default=None, help="environment steps (default: the published budget)")
    t.add_argument("--budget-scale", type=_positive_float, default=None,
                   help="fraction of the published step budget, when --timesteps is not given (default 1)")
    t.add_argument("--noise-beta", type=float, default=None,
                   help="exploration colored-noise exponent in [0, 2] (default 0.5; 0 = brax's white noise)")
    t.add_argument("--exploration-scale", type=_positive_float, default=None,
                   help="multiply the policy's standard deviation (brax's var_scale; default 1)")
    t.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a brax ppo.train keyword, e.g. --set num_envs=256 (repeatable)")
    t.add_argument("--policy-hidden", default=None, help="policy MLP widths (default brax's 32,32,32,32)")
    t.add_argument("--value-hidden", default=None, help="value MLP widths (default 256,256,256,256,256)")

    lp = sub.add_parser("learn", help="train MLP world models (5 losses x seeds) and compare their Jacobian sparsity with the truth")
    lp.add_argument("datasets", nargs="+", help="datasets from `dynsparse collect` (pooled per environment)")
    lp.add_argument("--out", required=True, help="output folder (written whole; never overwritten)")
    lp.add_argument("--losses", default="all", help="all, or comma-separated: mse, mse+mse_j, mse+mae_j, mse+l1_j, mse+sae_j")
    lp.add_argument("--seeds", type=_positive_int, default=3, help="seeds per loss (default 3)")
    lp.add_argument("--quick", action="store_true", help="30 epochs, 128x128 network (smoke tests)")
    lp.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (default 100; 30 with --quick)")
    lp.add_argument("--batch-size", type=_positive_int, default=256)
    lp.add_argument("--hidden", default=None, help="hidden widths (default 512,512; 128,128 with --quick)")
    lp.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate, cosine-decayed to 1e-3 of it")
    lp.add_argument("--jac-weight", type=_positive_float, default=1.0, help="weight of the Jacobian term (default 1)")
    lp.add_argument("--residual", action="store_true", help="predict s' - s instead of s'")
    lp.add_argument("--per-env", action="store_true",
                    help="datasets of several environments: one comparison per environment, tests and figures across them")
    lp.add_argument("--model-threshold", type=_positive_float, default=1e-6, help="model Jacobian entry is zero below this")
    lp.add_argument("--true-threshold", type=_positive_float, default=1e-12, help="ground-truth entry is zero below this")
    lp.add_argument("--test-fraction", type=float, default=0.2, help="share of episodes held out (default 0.2, at least 1)")

    s = sub.add_parser("structure", help="print the global-structure (Q1) table of a dataset")
    s.add_argument("path")
    s.add_argument("--threshold", type=_positive_float, default=1e-12, help="zero threshold (default 1e-12)")
    s.add_argument("--relative", action="store_true", help="scale the threshold by each row's L2 norm")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--frequency", action="store_true",
                   help="also give the per-element zero frequency (%% of counted steps each entry is zero)")

    g = sub.add_parser("graphs", help="export the ground-truth causal graphs (global and per step) of a dataset")
    g.add_argument("path")
    g.add_argument("--out", required=True, help="FILE.npz (masks with names); the edge list goes to FILE.parquet")
    g.add_argument("--threshold", type=_positive_float, default=1e-12, help="zero threshold (default 1e-12)")
    g.add_argument("--relative", action="store_true", help="scale the threshold by each row's L2 norm")
    g.add_argument("--no-samples", action="store_true", help="only the global graph (no per-step masks)")

    sc = sub.add_parser("score", help="score a learned graph (mask or edge scores, .npz) against a dataset's truth")
    sc.add_argument("path")
    sc.add_argument("prediction", help=".npz with out_names, in_names and global and/or samples (see README)")
    sc.add_argument("--threshold", type=_positive_float, default=1e-12, help="zero threshold of the truth (default 1e-12)")
    sc.add_argument("--relative", action="store_true", help="scale the threshold by each row's L2 norm")
    sc.add_argument("--json", default=None, metavar="FILE", help="also write the scores as JSON to FILE")

    v = sub.add_parser("validate", help="check a dataset and say exactly what is wrong")
    v.add_argument("path")

    a = sub.add_parser("analyze", help="every metric, the seven figures and an HTML page of one dataset")
    a.add_argument("path")
    a.add_argument("--out", required=True, help="output folder (written whole or not at all; never overwritten)")
    a.add_argument("--threshold", type=_positive_float, default=1e-12, help="zero threshold (default 1e-12)")
    a.add_argument("--relative", action="store_true", help="scale the threshold by each row's L2 norm")
    a.add_argument("--bin-width", type=_positive_float, default=0.1, help="histogram bin width, 1/n (default 0.1)")
    a.add_argument("--no-tsne", action="store_true", help="skip the t-SNE embedding (the slowest metric)")
    a.add_argument("--perplexity", type=_positive_float, default=50.0, help="t-SNE perplexity (default 50)")
    a.add_argument("--max-points", type=_int_at_least(4), default=3000, help="t-SNE subsample size (default 3000)")
    a.add_argument("--shuffles", type=_positive_int, default=200, help="draws of the shuffled-time baseline (default 200)")
    a.add_argument("--episode", type=_nonneg_int, default=None, help="episode of the time-series figure (default: most switching)")
    a.add_argument("--pdf", action="store_true", help="also write PDF figures (PNG and SVG always)")
    a.add_argument("--seed", type=int, default=0, help="seed of subsampling, t-SNE and shuffles")

    r = sub.add_parser("report", help="one self-contained HTML report of several analyses")
    r.add_argument("folders", nargs="+", help="folders written by `dynsparse analyze`")
    r.add_argument("--out", required=True, help="report folder (index.html, table.csv)")
    r.add_argument("--title", default="dynsparse report")

    q = sub.add_parser("reproduce", help="the whole study: collect, analyse and report the eight DM-Control tasks")
    q.add_argument("--out", required=True, help="study folder; rerun the same command to resume")
    q.add_argument("--quick", action="store_true", help="a small version (2 episodes x 300 steps; its Table-1 counts equal the paper scale's)")
    q.add_argument("--envs", default=None, help="comma-separated subset of the eight tasks (default: all eight)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--jacobian", default="converged", metavar="DEFINITION", help="converged (default) | as-run, as in collect")
    q.add_argument("--policies", default=None, metavar="DIR",
                   help="collect with the PPO checkpoints DIR/ENV (train-policy) instead of random actions")
    q.add_argument("--noise-beta", type=float, default=None, help="with --policies: exploration noise exponent (default: as trained)")
    q.add_argument("--noise-scale", type=float, default=None, help="with --policies: multiplies each policy's sigma (default 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
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


def _print_env_row(name: str) -> None:
    """One ``envs`` row of a prefixed source, or why MJX cannot run it."""
    from dynsparse import envs

    try:
        info = envs.static_info(name)
    except errors.UserError as exc:
        print(f"{name:<40}  not supported: {str(exc).split(': ', 1)[1].split(';')[0]}")
        return
    print(f"{name:<40}{info['nq']:>4}{info['nv']:>4}{2 * info['nv']:>7}{info['nu']:>8}{info['n_substeps']:>10}{info['dt']:>8.4g}")


def _cmd_collect(args: argparse.Namespace) -> int:
    from dynsparse import collect, jaxcache, policies, xla

    episodes, steps = args.episodes, args.steps
    if args.from_file is not None:
        from dynsparse.policies import replay

        if args.policy != "random" or args.beta is not None or args.noise_scale is not None:
            raise errors.UserError("--from replays recorded actions: leave out --policy, --noise-beta and --noise-scale")
        source = replay.ReplayPolicy(args.from_file)
        policy = source.config()
        episodes = source.episodes if episodes is None else episodes
        steps = source.steps if steps is None else steps
    else:
        policy = policies.config_from_text(args.policy, args.beta, args.noise_scale)
    config = collect.CollectConfig(
        env=args.env, episodes=2 if episodes is None else episodes, steps=300 if steps is None else steps,
        policy=policy, seed=args.seed, backend=args.backend, dtype=args.dtype, check_every=args.check_every,
        batch_size=collect.stored_batch_size(Path(args.out)) if args.batch_size is None else args.batch_size,
        chunk_steps=args.chunk_steps, jacobian=args.jacobian,
        compare_definitions=args.compare_definitions, substeps=args.substeps,
    ).validated()
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
        extra = f": {payload.get('error')}" if state == "failed" else f" ({payload.get('seconds', 0):.0f} s analysis)"
        print(f"  {state:<6} {job.id}{extra}", flush=True)

    # each worker uses --jax-cache, else its own default ($DYNSPARSE_JAX_CACHE or ~/.cache/dynsparse/jax)
    outcomes = sweep.run_sweep(config, args.out, scheduler=args.scheduler, workers=args.workers, only=args.only,
                               jax_cache=args.jax_cache, on_event=on_event)
    rows = sweep.summary_rows(Path(args.out), config)
    print(sweep.format_table(rows))
    counts = {state: sum(o.state == state for o in outcomes) for state in ("done", "skipped", "failed", "not run")}
    print(f"{counts['done']} done now, {counts['skipped']} done before, {counts['failed']} failed, "
          f"{counts['not run']} not selected; summary: {args.out}/{sweep.SUMMARY_FILE}")
    if counts["failed"]:
        print("re-run a failed job alone with --only JOB (after fixing its cause), or rerun the command", file=sys.stderr)
        return 1
    return 0


def _widths(flag: str, text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise errors.UserError(f"{flag} {text!r} must be comma-separated integers, e.g. 32,32") from None
    return widths


def _cmd_train_policy(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from tqdm import tqdm

    from dynsparse import jaxcache
    from dynsparse.policies import ppo_train

    overrides = []
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise errors.UserError(f"--set {item!r} must be KEY=VALUE, e.g. num_envs=256")
        overrides.append((key.strip(), value.strip()))
    given = {
        "timesteps": args.timesteps, "budget_scale": args.budget_scale, "noise_beta": args.noise_beta, "seed": args.seed,
        "exploration_scale": args.exploration_scale,
        "overrides": tuple(overrides) or None,
        "policy_hidden": None if args.policy_hidden is None else _widths("--policy-hidden", args.policy_hidden),
        "value_hidden": None if args.value_hidden is None else _widths("--value-hidden", args.value_hidden),
    }
    given = {k: v for k, v in given.items() if v is not None}
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
    import dataclasses

    from tqdm import tqdm

    from dynsparse.learn import model, run

    losses = model.check_losses([x.strip() for x in args.losses.split(",") if x.strip()])
    base = run.LearnOptions.quick() if args.quick else run.LearnOptions()
    train = base.train
    if args.hidden is not None:
        train = dataclasses.replace(train, hidden=_widths("--hidden", args.hidden))
    if args.epochs is not None:
        train = dataclasses.replace(train, epochs=args.epochs)
    train = dataclasses.replace(train, batch_size=args.batch_size, lr=args.lr, jac_weight=args.jac_weight)
    options = dataclasses.replace(
        base, losses=losses, seeds=args.seeds, residual=args.residual, per_env=args.per_env, model_threshold=args.model_threshold,
        true_threshold=args.true_threshold, test_fraction=args.test_fraction, train=train,
    ).validated()
    bar = None

    def on_event(event: object) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=event.total, desc="learn", unit="model", file=sys.stderr)
        bar.update(event.done - bar.n)
        if event.loss:
            bar.set_postfix_str(f"{event.env} {event.loss} seed {event.seed}")

    try:
        out = run.learn(args.datasets, args.out, options, on_event=on_event)
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


def _cmd_graphs(args: argparse.Namespace) -> int:
    from dynsparse import dataset, graphs

    ds = dataset.open_dataset(args.path)
    npz, table = graphs.export(ds, args.out, args.threshold, "relative" if args.relative else "absolute",
                               samples=not args.no_samples)
    print(f"wrote {npz} and {table}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from dynsparse import dataset, files, graphs

    if args.json is not None and Path(args.json).exists():
        raise errors.UserError(f"--json {args.json!r} already exists; nothing was overwritten: choose another file")
    ds = dataset.open_dataset(args.path)
    result = graphs.score(ds, args.prediction, args.threshold, "relative" if args.relative else "absolute")
    print(graphs.format_scores(result))
    if args.json is not None:
        files.write_atomic(Path(args.json), json.dumps(result, indent=1).encode())
    return 0


def _cmd_structure(args: argparse.Namespace) -> int:
    from dynsparse import dataset
    from dynsparse.metrics import structure

    ds = dataset.open_dataset(args.path)
    kind = "relative" if args.relative else "absolute"
    result = structure.global_structure(ds, args.threshold, kind)
    result["path"] = str(args.path)
    freq = structure.zero_frequency(ds, args.threshold, kind) if args.frequency else None
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

    options = analysis.AnalyzeOptions(
        threshold=args.threshold, kind="relative" if args.relative else "absolute", bin_width=args.bin_width,
        tsne=not args.no_tsne, perplexity=args.perplexity, max_points=args.max_points, shuffles=args.shuffles,
        episode=args.episode, formats=("png", "svg", "pdf") if args.pdf else ("png", "svg"), seed=args.seed,
    ).validated()
    bar = tqdm(total=len(analysis.STAGES), desc=f"analyze {args.path}", unit="stage", file=sys.stderr)

    def stage(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(analysis.STAGES.index(name) - bar.n)

    try:
        out = analysis.analyze(args.path, args.out, options, on_stage=stage)
        bar.update(len(analysis.STAGES) - bar.n)
    finally:
        bar.close()
    print(f"wrote {out / 'index.html'} (metrics in {out / results.SUMMARY} and {out / 'tables'}, figures in {out / 'figures'})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from dynsparse.report import build

    page = build.build(args.folders, args.out, title=args.title)
    print(f"wrote {page}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dynsparse import jaxcache, reproduce, xla

    kw: dict = {"seed": args.seed, "jacobian": args.jacobian}
    if args.policies is not None:
        kw.update(policies=args.policies, noise_beta=args.noise_beta, noise_scale=args.noise_scale)
    elif args.noise_beta is not None or args.noise_scale is not None:
        raise errors.UserError("--noise-beta and --noise-scale apply to --policies (PPO) studies")
    if args.envs:
        names = tuple(x.strip() for x in args.envs.split(",") if x.strip())
        unknown = [x for x in names if x not in reproduce.STUDY_ENVS]
        if unknown:
            raise errors.UserError(f"--envs {unknown[0]!r} is not one of the study's tasks; allowed: {', '.join(reproduce.STUDY_ENVS)}")
        kw["envs"] = names
    config = reproduce.StudyConfig.quick(**kw) if args.quick else reproduce.StudyConfig.full(**kw)
    reproduce.preflight(args.out, config)  # refuse a bad study before any progress bar
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
