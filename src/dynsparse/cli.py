"""The ``dynsparse`` command line: parses, calls the API, prints."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
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
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("envs", help="list the environments with their state and action sizes")

    c = sub.add_parser("collect", help="roll out a policy and store Jacobians along the trajectories")
    c.add_argument("env", help="Playground registry name, e.g. CheetahRun")
    c.add_argument("--episodes", type=_positive_int, default=2)
    c.add_argument("--steps", type=_positive_int, default=300, help="control steps per episode")
    c.add_argument("--policy", default="random", help="random | colored")
    c.add_argument("--beta", type=float, default=1.0, help="colored-noise exponent in [0, 2] (0 white, 1 pink, 2 red)")
    c.add_argument("--noise-scale", type=float, default=1.0, help="colored noise std as a fraction of the action half-range")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--backend", default="autodiff", help="autodiff | finite_diff")
    c.add_argument("--dtype", default="float64", help="float64 (float32 is not supported yet)")
    c.add_argument("--check-every", type=_nonneg_int, default=0, metavar="K",
                   help="also compute finite-difference Jacobians at every K-th step and store the disagreement")
    c.add_argument("--batch-size", type=_positive_int, default=16, help="episodes simulated together")
    c.add_argument("--chunk-steps", type=_positive_int, default=100, help="steps per compiled chunk and per stored chunk")
    c.add_argument("--out", required=True, help="output Zarr store; rerun the same command to resume")

    s = sub.add_parser("structure", help="print the global-structure (Q1) table of a dataset")
    s.add_argument("path")
    s.add_argument("--threshold", type=_positive_float, default=1e-12, help="zero threshold (default 1e-12)")
    s.add_argument("--relative", action="store_true", help="scale the threshold by each row's L2 norm")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--frequency", action="store_true",
                   help="also give the per-element zero frequency (%% of counted steps each entry is zero)")

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
    q.add_argument("--quick", action="store_true", help="a small version (2 episodes x 100 steps) for smoke tests")
    q.add_argument("--envs", default=None, help="comma-separated subset of the eight tasks (default: all eight)")
    q.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _route_mujoco_warnings()
    try:
        return _COMMANDS[args.command](args)
    except errors.UserError as exc:
        print(f"dynsparse: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("dynsparse: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def _route_mujoco_warnings() -> None:
    """Send MuJoCo's C-level warnings (e.g. deprecated XML attributes in Playground's models) to
    logging instead of stdout, where they would interleave with the command's output."""
    import mujoco

    mujoco.set_mju_user_warning(lambda msg: logging.getLogger("mujoco").info("%s", msg.strip()))


def _cmd_envs(args: argparse.Namespace) -> int:
    from dynsparse import envs

    print(f"{'environment':<24}{'nq':>4}{'nv':>4}{'state':>7}{'action':>8}{'substeps':>10}{'dt':>8}  note")
    for name in envs.dm_control_names():
        info = envs.static_info(name)
        note = "" if info["nq"] == info["nv"] else "free/ball joints: not supported yet"
        print(f"{name:<24}{info['nq']:>4}{info['nv']:>4}{info['nq'] + info['nv']:>7}{info['nu']:>8}{info['n_substeps']:>10}{info['dt']:>8.4g}  {note}")
    others = envs.other_names()
    if others:
        print(f"\nlocomotion/manipulation ({len(others)}): need mujoco_menagerie at {envs.menagerie_path()}: {', '.join(others)}")
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from dynsparse import collect, jaxcache

    if args.policy == "colored":
        policy = {"name": "colored", "beta": args.beta, "scale": args.noise_scale}
    else:
        policy = {"name": args.policy}
    config = collect.CollectConfig(
        env=args.env, episodes=args.episodes, steps=args.steps, policy=policy, seed=args.seed,
        backend=args.backend, dtype=args.dtype, check_every=args.check_every,
        batch_size=args.batch_size, chunk_steps=args.chunk_steps,
    ).validated()
    jaxcache.enable(args.jax_cache)
    bar = _ProgressBar(f"collect {args.env}")
    try:
        path = collect.collect(config, args.out, on_progress=bar.update)
    finally:
        bar.close()
    print(f"wrote {path} ({config.episodes} episodes x {config.steps} steps, backend {config.backend})")
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

    from dynsparse import analysis

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
    print(f"wrote {out / 'index.html'} (metrics in {out / analysis.SUMMARY} and {out / 'tables'}, figures in {out / 'figures'})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from dynsparse.report import build

    page = build.build(args.folders, args.out, title=args.title)
    print(f"wrote {page}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dynsparse import jaxcache, reproduce

    kw = {"seed": args.seed}
    if args.envs:
        names = tuple(x.strip() for x in args.envs.split(",") if x.strip())
        unknown = [x for x in names if x not in reproduce.STUDY_ENVS]
        if unknown:
            raise errors.UserError(f"--envs {unknown[0]!r} is not one of the study's tasks; allowed: {', '.join(reproduce.STUDY_ENVS)}")
        kw["envs"] = names
    config = reproduce.StudyConfig.quick(**kw) if args.quick else reproduce.StudyConfig.full(**kw)
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
    "envs": _cmd_envs, "collect": _cmd_collect, "structure": _cmd_structure, "validate": _cmd_validate,
    "analyze": _cmd_analyze, "report": _cmd_report, "reproduce": _cmd_reproduce,
}


if __name__ == "__main__":
    sys.exit(main())
