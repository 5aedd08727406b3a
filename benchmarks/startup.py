"""What a user waits for before a collection computes: start-up of `dynsparse collect` (issue 16).

Runs the same small collection (default CheetahRun, 16 episodes x 100 steps: one compiled chunk of
~0.5 s of computing, so the wall time is start-up) four times, each in a fresh process, on one
fresh cache folder:

1. traced, cold (``DYNSPARSE_EXPORTED=off``, empty XLA cache): what a first run cost before;
2. traced, warm XLA cache: the strongest baseline before ``exported`` (XLA compile cached, Python
   tracing and lowering of the reset and the chunk paid again);
3. exported, cold: traces, exports, compiles the exported program once (its XLA entry differs
   from the traced one) and keeps the executable;
4. exported, warm: loads the compiled executables (no tracing, lowering or compiling);
5. exported, executables deleted (as after a lost or foreign ``.xla`` file): deserializes the
   modules and compiles them afresh with XLA's cache bypassed, keeping the executables again;
6. the run after that: loads the executables row 5 kept.

Prints wall seconds and the ratio of each to row 2, and checks that rows 2, 4, 5 and 6 wrote
identical Jacobians.

usage: python benchmarks/startup.py [--env CheetahRun] [--episodes 16] [--steps 100]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr


def run(env: str, episodes: int, steps: int, cache: Path, out: Path, exported: bool) -> float:
    """Wall seconds of one ``dynsparse collect`` in a fresh process."""
    environ = {**os.environ, "DYNSPARSE_JAX_CACHE": str(cache), "DYNSPARSE_EXPORTED": "on" if exported else "off"}
    return timed([sys.executable, "-m", "dynsparse", "collect", env, "--episodes", str(episodes), "--steps", str(steps),
                  "--check-every", "0", "--out", str(out)], environ)


def timed(cmd: list[str], environ: dict[str, str]) -> float:
    """Wall seconds of the command ``cmd`` in a fresh process (its failure ends the benchmark)."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=environ, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return dt


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--env", default="CheetahRun")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dynsparse-startup-"))
    cache = tmp / "cache"
    rows = []
    for name, exported in (("traced, cold", False), ("traced, warm XLA cache (baseline)", False),
                           ("exported, cold (export + compile)", True), ("exported, warm (compiled executables)", True),
                           ("exported, executables deleted", True), ("exported, the next run", True)):
        if name.endswith("executables deleted"):  # the exported modules, compiled afresh (XLA cache bypassed)
            for f in (cache / "exported").glob("*.xla"):
                f.unlink()
        out = tmp / f"run{len(rows)}.zarr"
        rows.append((name, run(args.env, args.episodes, args.steps, cache, out, exported), out))
        print(f"{name:<40}{rows[-1][1]:8.1f} s", flush=True)
    base = rows[1][1]
    print(f"\n{args.env}, {args.episodes} x {args.steps} steps, one process per run (import, env load, compile, compute):")
    print(f"{'run':<40}{'wall s':>8}{'vs baseline':>13}")
    for name, dt, _ in rows:
        print(f"{name:<40}{dt:8.1f}{base / dt:12.2f}x")
    a = xr.open_zarr(rows[1][2])
    same = True
    for k in (3, 4, 5):
        b = xr.open_zarr(rows[k][2])
        same &= np.array_equal(a.J_s.values, b.J_s.values, equal_nan=True) and np.array_equal(a.J_a.values, b.J_a.values, equal_nan=True)
    print(f"Jacobians of the warm traced run and the warm exported runs identical: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
