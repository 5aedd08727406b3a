"""Where a cold collection's start-up goes: tracing, lowering and compiling each program (issue 16).

For one environment and collection shape, builds the run's programs (``collect.prepare``: the
reset, the chunk and, with ``--check-every``, the certificate's MJX finite differences) on a new,
empty cache folder, in a fresh process per variant, and prints per program the seconds JAX reports
for tracing (``jaxpr_trace_duration``), lowering (``jaxpr_to_mlir_module_duration``) and XLA's
compile (``backend_compile_duration``), and the wall time of each build.

Variants (``--variants``, comma-separated):

- ``current``: the programs as dynsparse builds them (a batch of one episode traced unbatched,
  ``rollout.per_episode``);
- ``vmap``: every episode batch vmapped, as before ``per_episode`` (the **baseline**);
- ``xla-o0``: ``current`` with XLA's backend optimisation level 0 (slower code, cheaper compile?).

The ratio column is each variant's total build seconds over the baseline's (below 1: faster).
This 2-core machine's timings vary ~15% from run to run; compare variants of one invocation.

usage: python benchmarks/build_cost.py [--env CheetahRun] [--episodes 1] [--steps 300]
       [--check-every 25] [--variants current,vmap]
"""

from __future__ import annotations

import argparse
import tempfile

import child

CHILD = r'''
import json, os, sys, time
from dynsparse import upstream, xla
upstream.mjx_without_warp(); xla.use_cpu_cores()
import jax
variant, env, episodes, steps, check_every, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
if variant == "xla-o0":
    base = xla.compiler_options
    xla.compiler_options = lambda: {**base(), "xla_backend_optimization_level": 0}
from dynsparse import collect, exported, jaxcache, rollout
if variant == "vmap":
    rollout.per_episode = lambda f: jax.vmap(f)
current = {"name": None}
seconds = {}
def listen(event, duration, **_):
    key = f"{current['name']}:{event.rsplit('/', 1)[-1]}"
    seconds[key] = seconds.get(key, 0.0) + duration
jax.monitoring.register_event_duration_secs_listener(listen)
build = exported.Cached._build
def timed(self, *args, **kwargs):
    current["name"] = self.name
    t = time.perf_counter()
    try:
        return build(self, *args, **kwargs)
    finally:
        seconds[f"{self.name}:wall"] = seconds.get(f"{self.name}:wall", 0.0) + time.perf_counter() - t
exported.Cached._build = timed
jaxcache.enable(cache)
config = collect.CollectConfig(env=env, episodes=episodes, steps=steps, batch_size=episodes, chunk_steps=min(100, steps),
                               check_every=check_every)
t = time.perf_counter()
collect.prepare(config)
seconds["total"] = time.perf_counter() - t
print("RESULT " + json.dumps(seconds))
'''

STAGES = ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration", "backend_compile_duration", "wall")


def run(variant: str, args: argparse.Namespace) -> dict[str, float]:
    """One variant's build seconds, in a fresh process on a new cache folder."""
    with tempfile.TemporaryDirectory(prefix="build-cost-") as cache:
        return child.run(CHILD, [variant, args.env, str(args.episodes), str(args.steps), str(args.check_every), cache],
                         f"variant {variant}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="CheetahRun")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--check-every", type=int, default=25)
    p.add_argument("--variants", default="current,vmap")
    args = p.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in ("current", "vmap", "xla-o0")]
    if unknown:
        raise SystemExit(f"--variants {unknown[0]!r} is not a variant; allowed: current, vmap, xla-o0")
    results = {v: run(v, args) for v in variants}
    baseline = results.get("vmap", results[variants[0]])["total"]
    print(f"{args.env}, {args.episodes} episode(s) x {args.steps} steps, check every {args.check_every}: "
          "seconds per program (trace / lower / compile / wall of the build)")
    print("| variant | program | trace | lower | compile | wall |")
    print("|---|---|---:|---:|---:|---:|")
    for v, sec in results.items():
        programs = sorted({k.split(":")[0] for k in sec if ":" in k and not k.startswith("None:")})
        for prog in programs:
            cells = [f"{sec.get(f'{prog}:{s}', 0.0):.1f}" for s in STAGES]
            print(f"| {v} | {prog} | " + " | ".join(cells) + " |")
    print()
    print(f"| variant | build total s | vs {'vmap' if 'vmap' in results else variants[0]} (baseline) |")
    print("|---|---:|---:|")
    for v, sec in results.items():
        print(f"| {v} | {sec['total']:.1f} | {sec['total'] / baseline:.2f}x |")


if __name__ == "__main__":
    main()
