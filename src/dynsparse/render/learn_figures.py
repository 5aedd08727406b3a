"""The two learnability figures: box plots over environments per loss variant.

Each box holds one value per environment (the mean over seeds); points show the environments.
``untrained`` (the initial networks) is drawn as a grey box; the relative-sparsity figure marks the
ground-truth target 1 with a line. Log axes (values of 0 are counted under their box); PNG and SVG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _per_env(rows: list[dict[str, Any]], loss: str, metric: str) -> np.ndarray:
    envs = sorted({r["env"] for r in rows})
    vals = []
    for env in envs:
        v = [r[metric] for r in rows if r["env"] == env and r["loss"] == loss and np.isfinite(r[metric])]
        if v:
            vals.append(float(np.mean(v)))
    return np.asarray(vals, float)


def boxplot(rows: list[dict[str, Any]], losses: Sequence[str], metric: str, ylabel: str, target: float | None) -> Any:
    from dynsparse.render.figures import pyplot

    plt = pyplot()
    labels = ["untrained", *losses]
    data = [_per_env(rows, lab, metric) for lab in labels]
    fig, ax = plt.subplots(figsize=(1.3 * len(labels) + 2, 4.0), layout="constrained")
    positive = [d[d > 0] for d in data]
    bp = ax.boxplot([d if d.size else [np.nan] for d in positive], tick_labels=labels, patch_artist=True, showfliers=False)
    for i, patch in enumerate(bp["boxes"]):
        patch.set_facecolor("0.85" if i == 0 else "C0")
        patch.set_alpha(0.6)
    rng = np.random.default_rng(0)
    for i, d in enumerate(positive):
        ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, d.size), d, s=14, color="k", zorder=3)
        zeros = int(np.sum(data[i] <= 0))
        if zeros:  # a log axis cannot show them: say so under the box
            ax.annotate(f"{zeros} at 0", (i + 1, 0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7, color="C3")
    if target is not None:
        ax.axhline(target, color="C3", ls="--", lw=1.2, label="ground truth")
        ax.legend(loc="best", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    n_env = len({r["env"] for r in rows})
    ax.set_title(f"{ylabel} over {n_env} environment(s), mean over seeds", fontsize=10)
    ax.tick_params(axis="x", labelrotation=20)
    return fig


def write(folder: Path, rows: list[dict[str, Any]], losses: Sequence[str]) -> list[Path]:
    """``mse.png/svg`` and ``sparsity.png/svg`` in ``folder/figures``."""
    from dynsparse.render.figures import save

    figs = folder / "figures"
    figs.mkdir(exist_ok=True)
    written = []
    written += save(boxplot(rows, losses, "mse_norm", "normalised test MSE", None), figs / "mse")
    written += save(boxplot(rows, losses, "relative_sparsity", "Jacobian sparsity relative to the ground truth", 1.0),
                    figs / "sparsity")
    return written
