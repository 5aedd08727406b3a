"""Benchmark: world-model training time per epoch for each loss, and the Jacobian-loss overhead.

Prints seconds per epoch (after a compile epoch) for every loss variant on one dataset and the
ratio to plain ``mse`` measured in the same run.

    python benchmarks/learn.py DATASET [--epochs 3] [--hidden 512,512] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from dynsparse.learn import data as data_lib
from dynsparse.learn import model, run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", default="512,512")
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()
    tr, info = data_lib.load(args.dataset)
    train, _, _, _ = data_lib.split_by_episode(tr, 0.2, 0)
    _, arrays = run._prepare(train, residual=False, true_threshold=1e-12)
    data = arrays(train)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    print(f"{info['env']}: {len(train)} training steps, inputs {data['x'].shape[1]}, outputs {data['y'].shape[1]}, "
          f"network {hidden}, batch {args.batch_size}")
    base = None
    for loss in model.LOSSES:
        opts = model.TrainOptions(epochs=1, batch_size=args.batch_size, hidden=hidden)
        t0 = time.perf_counter()
        model.train(loss, data, opts, seed=0)  # compile + 1 epoch
        first = time.perf_counter() - t0
        opts = dataclasses.replace(opts, epochs=args.epochs)
        model.train(loss, data, opts, seed=0)  # compile again for this epoch count
        t0 = time.perf_counter()
        model.train(loss, data, opts, seed=1)
        per_epoch = (time.perf_counter() - t0) / args.epochs
        base = per_epoch if loss == "mse" else base
        print(f"{loss:10s} {per_epoch:8.3f} s/epoch  x{per_epoch / base:5.1f} vs mse   (first call incl. compile {first:6.1f} s)")


if __name__ == "__main__":
    main()
