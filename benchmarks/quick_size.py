"""Which quick-study size gives the paper-scale Table-1 counts? (issue 16)

Reads a paper-scale study (``dynsparse reproduce --out DIR``: 10 episodes x 1000 steps per task,
random policy) and recomputes the Q1 global zeros of J_s and J_a on its prefixes: the first E
episodes x the first T steps. With the random policy these prefixes are exactly what a smaller
study with the same seed collects (each episode's reset key and action noise depend only on
(seed, episode), and the noise rows are drawn in step order), so no rerun is needed. A size
"agrees" when its global-zero *set* (not only the count) equals the 10 x 1000 one for both
matrices.

usage: python benchmarks/quick_size.py STUDY_DIR [--episodes 1,2] [--steps 100,200,300,400,500,700,1000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import xarray as xr

from dynsparse.metrics import structure


def zero_sets(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """Boolean ``(out, in)`` masks of the entries zero at every counted step, per matrix."""
    zc = structure.zero_counts(ds)
    return {name: zc.counts[name] == zc.n_steps for name, _ in structure.MATRICES}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("study", help="a paper-scale reproduce folder (runs/ENV__POLICY__seedS/data.zarr)")
    p.add_argument("--episodes", default="1,2")
    p.add_argument("--steps", default="100,200,300,400,500,700,1000")
    args = p.parse_args()
    episodes = [int(x) for x in args.episodes.split(",")]
    steps = [int(x) for x in args.steps.split(",")]
    stores = sorted((Path(args.study) / "runs").glob("*/data.zarr"))
    agree_all = {(e, t): True for e in episodes for t in steps}
    print(f"{'env':<18}{'10 x 1000 J_s / J_a':>22}  " + "  ".join(f"{e}x{t:<5}" for e in episodes for t in steps))
    for store in stores:
        ds = xr.open_zarr(store)
        full = zero_sets(ds)
        row = []
        for e in episodes:
            for t in steps:
                sub = zero_sets(ds.isel(episode=slice(0, e), step=slice(0, t)))
                same = all(np.array_equal(sub[k], full[k]) for k in full)
                agree_all[(e, t)] &= same
                row.append("=" if same else f"{int(sub['J_s'].sum())}/{int(sub['J_a'].sum())}")
        print(f"{store.parent.name.split('__')[0]:<18}{int(full['J_s'].sum()):>12} / {int(full['J_a'].sum()):<7}  " + "  ".join(f"{r:<7}" for r in row))
    ok = [k for k, v in agree_all.items() if v]
    print("sizes agreeing on all tasks (episodes x steps):", ", ".join(f"{e}x{t}" for e, t in ok) or "none")


if __name__ == "__main__":
    main()
