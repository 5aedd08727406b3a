"""``dynsparse learn``: train every (environment, loss, seed) world model and compare them.

For each environment (its datasets pooled), the episodes are split once (seeded), normalisation is
fitted on the training split, and every loss variant is trained with every seed. Each run is
evaluated on the test split, and so is the untrained model of each seed. Outputs in ``out``:
``runs.csv`` and ``runs.json`` (one row per run), ``tests.csv`` (paired Wilcoxon signed-rank tests
of each Jacobian-loss variant against ``mse`` over (environment, seed) pairs), ``learn.json``
(options, splits, normalisers, tests; its presence marks a finished ``learn`` folder) and two
box-plot figures. ``dynsparse report`` adds a learnability section for such folders.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dynsparse import errors, files, interrupts, locks, options, results
from dynsparse.learn import data as data_lib
from dynsparse.learn import evaluate, model

MARKER = results.LEARN_MARKER
METRICS = results.LEARN_METRICS


@dataclasses.dataclass(frozen=True)
class LearnOptions:
    """Everything that defines a ``learn`` run (each field's help is also its flag's)."""

    losses: tuple[str, ...] = options.option(
        model.LOSSES, help="all, or comma-separated: " + ", ".join(model.LOSSES),
        check=options.via(model.check_losses, "all, " + ", ".join(model.LOSSES),
                          lambda text: tuple(x.strip() for x in text.split(",") if x.strip())))
    seeds: int = options.option(3, help="seeds per loss", check=options.integer(1))
    test_fraction: float = options.option(0.2, help="share of episodes held out (at least one episode)",
                                          check=options.number(0.0, 1.0))
    split_seed: int = options.option(0, help="seed of the train/test split of episodes", check=options.seed())
    residual: bool = options.option(False, help="predict s' - s instead of s'", check=options.boolean())
    per_env: bool = options.option(
        False, help="datasets of several environments: one comparison per environment, tests and figures across them",
        check=options.boolean())
    model_threshold: float = options.option(1e-6, help="model Jacobian entry is zero below this", check=options.number(0.0))
    true_threshold: float = options.option(1e-12, help="ground-truth entry is zero below this", check=options.number(0.0))
    train: model.TrainOptions = options.option(factory=model.TrainOptions, help="optimisation (model.TrainOptions)",
                                               check=options.via(lambda t: t.validated(), "model.TrainOptions"))

    @classmethod
    def quick(cls, **kw: Any) -> "LearnOptions":
        return cls(**{"train": model.TrainOptions(epochs=30, hidden=(128, 128)), **kw})

    def validated(self) -> "LearnOptions":
        """Check every field; raise ``UserError`` naming the first bad value."""
        return options.validate(self)


@dataclasses.dataclass
class Event:
    """Progress: ``done`` of ``total`` runs finished; the current (env, loss, seed)."""

    done: int
    total: int
    env: str
    loss: str
    seed: int


def load_groups(paths: Sequence[str | Path], per_env: bool = False) -> dict[str, tuple[data_lib.Transitions, dict[str, Any]]]:
    """Datasets pooled per environment (episode indices offset so they stay distinct).

    Args:
      per_env: allow datasets of several environments (a separate comparison per environment,
        then across them); without it, datasets of different environments are an error.

    Raises:
      UserError: datasets of different environments without ``per_env``, or two datasets of one
        environment with different state or action variables.
    """
    groups: dict[str, tuple[data_lib.Transitions, dict[str, Any]]] = {}
    for path in paths:
        tr, info = data_lib.load(path)
        env = info["env"]
        if env not in groups:
            groups[env] = (tr, {**info, "paths": [str(path)]})
            continue
        prev, pinfo = groups[env]
        if (pinfo["state_names"], pinfo["action_names"]) != (info["state_names"], info["action_names"]):
            raise errors.UserError(
                f"{path} and {pinfo['paths'][0]} both say env {env!r} but have different state or action variables; "
                "pass datasets of one environment definition"
            )
        shifted = dataclasses.replace(tr, episode=tr.episode + int(prev.episode.max()) + 1)
        pooled = data_lib.Transitions(*(np.concatenate([getattr(prev, f.name), getattr(shifted, f.name)])
                                        for f in dataclasses.fields(data_lib.Transitions)))
        groups[env] = (pooled, {**pinfo, "paths": pinfo["paths"] + [str(path)]})
    if len(groups) > 1 and not per_env:
        listed = ", ".join(f"{env} ({info['paths'][0]})" for env, (_, info) in groups.items())
        raise errors.UserError(
            f"datasets of different environments mixed in one run: {listed}; a world model learns one environment: "
            "pass one environment's datasets, or --per-env to train each environment separately and compare across them"
        )
    return groups


@locks.writes("out")
def learn(paths: Sequence[str | Path], out: str | Path, options: LearnOptions = LearnOptions(),
          on_event: Callable[[Event], None] | None = None) -> Path:
    """Run the comparison; write ``out`` whole (temporary folder, then renamed) or not at all.

    Raises:
      UserError: bad options or datasets (checked before any training), or an existing ``out``.
    """
    options = options.validated()
    out = Path(out)
    files.claim(out, MARKER, None, "learn", hint="choose a new --out")
    groups = load_groups(paths, options.per_env)
    splits = {env: data_lib.split_by_episode(tr, options.test_fraction, options.split_seed) for env, (tr, _) in groups.items()}
    total = len(groups) * len(options.losses) * options.seeds
    with files.publish(out) as tmp:
        rows, summary = _run_all(groups, splits, options, total, on_event)
        _write(tmp, rows, summary, options)
    return out


def _prepare(train: data_lib.Transitions, residual: bool, true_threshold: float) -> tuple[data_lib.Normalizer, Any]:
    x, y = data_lib.inputs(train), data_lib.targets(train, residual)
    norm = data_lib.Normalizer.fit(x, y)
    return norm, lambda tr: _arrays(tr, norm, residual, true_threshold)


def _arrays(tr: data_lib.Transitions, norm: data_lib.Normalizer, residual: bool, true_threshold: float) -> dict[str, np.ndarray]:
    j = data_lib.jacobian_targets(tr, residual)
    return {
        "x": (data_lib.inputs(tr) - norm.x_mean) / norm.x_std,
        "y": (data_lib.targets(tr, residual) - norm.y_mean) / norm.y_std,
        "J": data_lib.normalised_jacobian(j, norm),
        "zero": (np.abs(j) < true_threshold).astype(np.float64),
    }


def _run_all(groups: dict, splits: dict, options: LearnOptions, total: int,
             on_event: Callable[[Event], None] | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"envs": {}}
    done = 0
    for env, (_, info) in groups.items():
        train_tr, test_tr, train_eps, test_eps = splits[env]
        norm, arrays = _prepare(train_tr, options.residual, options.true_threshold)
        train_data, test_data = arrays(train_tr), arrays(test_tr)
        jac_true = np.concatenate([test_tr.J_s, test_tr.J_a], axis=2)
        summary["envs"][env] = {
            "datasets": info["paths"], "train_episodes": train_eps.tolist(), "test_episodes": test_eps.tolist(),
            "train_steps": len(train_tr), "test_steps": len(test_tr), "normalizer": norm.to_dict(),
            "state_names": info["state_names"], "action_names": info["action_names"],
        }
        for loss in options.losses:
            for seed in range(options.seeds):
                interrupts.check()
                if on_event:
                    on_event(Event(done, total, env, loss, seed))
                t0 = time.perf_counter()
                apply, params, history = model.train(loss, train_data, options.train, seed)
                seconds = time.perf_counter() - t0
                row = _evaluate(apply, params, test_data, norm, jac_true, options)
                rows.append({"env": env, "loss": loss, "seed": seed, "trained": True, "train_s": round(seconds, 3),
                             "epochs": options.train.epochs, "s_per_epoch": round(seconds / options.train.epochs, 5),
                             "final_train_loss": history[-1], **row})
                if loss == options.losses[0]:
                    net = model.make_network(train_data["y"].shape[1], tuple(options.train.hidden))
                    untrained = model.init_params(net, train_data["x"].shape[1], seed)
                    row0 = _evaluate(net.apply, untrained, test_data, norm, jac_true, options)
                    rows.append({"env": env, "loss": "untrained", "seed": seed, "trained": False, "train_s": 0.0,
                                 "epochs": 0, "s_per_epoch": float("nan"), "final_train_loss": float("nan"), **row0})
                done += 1
        if on_event:
            on_event(Event(done, total, env, "", -1))
    return rows, summary


def _evaluate(apply: Any, params: Any, test: dict[str, np.ndarray], norm: data_lib.Normalizer,
              jac_true: np.ndarray, options: LearnOptions) -> dict[str, Any]:
    import jax.numpy as jnp

    pred = np.asarray(apply(params, jnp.asarray(test["x"], jnp.float32)), np.float64)
    jac_model = evaluate.raw_jacobian(apply, params, test["x"], norm, options.residual)
    return evaluate.metrics(pred, test["y"], jac_model, jac_true, options.model_threshold, options.true_threshold)


def wilcoxon_tests(rows: list[dict[str, Any]], losses: Sequence[str]) -> list[dict[str, Any]]:
    """Paired two-sided Wilcoxon signed-rank tests of each variant against ``mse`` per metric,
    pairs = (env, seed) runs present for both. p is NaN with fewer than 2 pairs or all differences 0."""
    from scipy import stats

    by = {(r["env"], r["seed"], r["loss"]): r for r in rows if r["trained"]}
    out = []
    for loss in losses:
        if loss == "mse":
            continue
        for metric in METRICS:
            pairs = [(by[(e, s, loss)][metric], by[(e, s, "mse")][metric]) for (e, s, lo) in by
                     if lo == loss and (e, s, "mse") in by]
            pairs = [(a, b) for a, b in pairs if np.isfinite(a) and np.isfinite(b)]
            diff = np.array([a - b for a, b in pairs], float)
            p = float("nan")
            if len(pairs) >= 2 and np.any(diff != 0):
                p = float(stats.wilcoxon([a for a, _ in pairs], [b for _, b in pairs]).pvalue)
            out.append({"loss": loss, "metric": metric, "pairs": len(pairs),
                        "median_difference": float(np.median(diff)) if diff.size else float("nan"), "p_value": p})
    return out


def _write(folder: Path, rows: list[dict[str, Any]], summary: dict[str, Any], options: LearnOptions) -> None:
    import pandas as pd

    from dynsparse.render import learn_figures as figures

    pd.DataFrame(rows).to_csv(folder / "runs.csv", index=False)
    (folder / "runs.json").write_text(json.dumps(rows, indent=1))
    tests = wilcoxon_tests(rows, options.losses)
    pd.DataFrame(tests).to_csv(folder / "tests.csv", index=False)
    summary["options"] = json.loads(json.dumps(dataclasses.asdict(options)))
    summary["tests"] = tests
    (folder / MARKER).write_text(json.dumps(summary, indent=1))
    figures.write(folder, rows, options.losses)


