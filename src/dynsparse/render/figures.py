"""The seven figure kinds (matplotlib, headless). Each function takes metric results (never the
dataset) and returns a ``matplotlib.figure.Figure``; ``save`` writes it in the asked formats."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

FORMATS = ("png", "svg", "pdf")
DEFAULT_FORMATS = ("png", "svg")
KINDS = ("zero_frequency", "embedding", "histogram", "timeseries", "run_lengths", "thresholds", "coverage")


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _fontsize(n_labels: int) -> float:
    return float(np.clip(180.0 / max(n_labels, 1), 4.0, 9.0))


def save(fig: Any, stem: Path, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    """Write ``fig`` as ``stem.<format>`` for each format; close it; return the paths."""
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=150)  # every figure uses constrained layout: no second "tight" render
        paths.append(path)
    pyplot().close(fig)
    return paths


def zero_frequency(freq: dict[str, np.ndarray], out: Sequence[str], state_in: Sequence[str],
                   action_in: Sequence[str], title: str) -> Any:
    """Heatmaps of per-element zero frequency (% of counted steps) of J_s and J_a, named axes."""
    plt = pyplot()
    n_out, n_s, n_a = len(out), len(state_in), len(action_in)
    size = max(4.0, 0.22 * n_out + 2.0)
    fig, axes = plt.subplots(1, 2, figsize=(size * (n_s + n_a) / n_out + 3.0, size),
                             gridspec_kw={"width_ratios": [n_s, max(n_a, 1)]}, constrained_layout=True)
    fs = _fontsize(n_out)
    im = None
    for ax, name, cols in ((axes[0], "J_s", state_in), (axes[1], "J_a", action_in)):
        im = ax.imshow(freq[name], vmin=0, vmax=100, cmap="viridis", aspect="equal", interpolation="nearest")
        ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=fs)
        ax.set_yticks(range(n_out), out if name == "J_s" else [""] * n_out, fontsize=fs)
        ax.set_title(f"{name} = ds'/d{'s' if name == 'J_s' else 'a'}")
        ax.set_xlabel("input variable")
    axes[0].set_ylabel("next-state variable")
    fig.colorbar(im, ax=axes, shrink=0.8, label="% of steps where the entry is zero")
    fig.suptitle(title)
    return fig


def embedding(emb: dict[str, Any], title: str) -> Any:
    """t-SNE scatter of (s, a, s') coloured by per-sample sparsity of [J_s | J_a]."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)
    sc = ax.scatter(emb["x"], emb["y"], c=emb["sparsity"], s=6, cmap="viridis", linewidths=0)
    fig.colorbar(sc, ax=ax, label="per-sample sparsity of [J_s | J_a]")
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(f"{title}\n{emb['points']} of {emb['of']} steps, perplexity {emb['perplexity']:.3g}", fontsize=9)
    return fig


def histogram(hist: dict[str, Any], title: str) -> Any:
    """Histograms of per-sample sparsity (J_s, J_a, both) with the mean marked."""
    plt = pyplot()
    edges = np.asarray(hist["edges"])
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3), sharey=True, constrained_layout=True)
    for ax, name in zip(axes, ("J_s", "J_a", "both")):
        h = hist[name]
        total = max(h["steps"], 1)
        ax.bar(edges[:-1], np.asarray(h["counts"]) / total * 100, width=np.diff(edges), align="edge",
               edgecolor="white", color="tab:blue")
        if h["mean"] is not None:
            ax.axvline(h["mean"], color="tab:red", lw=1.5, label=f"mean {h['mean']:.3f}")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"per-sample sparsity of {'[J_s | J_a]' if name == 'both' else name}")
    axes[0].set_ylabel("% of steps")
    fig.suptitle(title)
    return fig


def timeseries(sparsity: dict[str, np.ndarray], n_contacts: np.ndarray, switches: np.ndarray, title: str) -> Any:
    """Sparsity of one episode over time, with active contacts and switching entries on the same
    time axis.

    Args:
      sparsity: ``{"J_s", "J_a", "both"}`` -> ``(step,)`` (NaN where not counted).
      n_contacts, switches: ``(step,)``.
    """
    plt = pyplot()
    steps = np.arange(n_contacts.size)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 4.8), sharex=True, constrained_layout=True,
                                  gridspec_kw={"height_ratios": [2, 1]})
    for name, color in (("J_s", "tab:blue"), ("J_a", "tab:orange"), ("both", "black")):
        ax.plot(steps, sparsity[name], lw=1, color=color, label=name if name != "both" else "[J_s | J_a]")
    ax.set_ylabel("per-sample sparsity")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="upper right", fontsize=8, ncol=3)
    axc = ax.twinx()
    axc.step(steps, np.where(n_contacts >= 0, n_contacts, np.nan), where="mid", color="tab:green", lw=1, alpha=0.8)
    from matplotlib.ticker import MaxNLocator

    axc.yaxis.set_major_locator(MaxNLocator(integer=True))
    axc.set_ylabel("active contacts", color="tab:green")
    axc.tick_params(axis="y", colors="tab:green")
    ax2.bar(steps, switches, width=1.0, color="tab:purple")
    ax2.set_ylabel("entries switching")
    ax2.set_xlabel("step")
    ax.set_title(title)
    return fig


def run_lengths(runs: dict[str, Any], summary: dict[str, Any], title: str) -> Any:
    """Log-log histograms of zero-run and non-zero-run lengths with the means marked."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for ax, is_zero, key, color in ((axes[0], True, "zero_runs", "tab:blue"), (axes[1], False, "nonzero_runs", "tab:orange")):
        lengths = runs["length"][runs["zero"] == is_zero]
        label = "zero" if is_zero else "non-zero"
        if lengths.size:
            values, counts = np.unique(lengths, return_counts=True)
            ax.loglog(values, counts, "o", ms=3, color=color)
            mean = summary[key]["mean"]
            ax.axvline(mean, color="tab:red", lw=1.5, label=f"mean {mean:.1f} steps")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {label} runs\n(no entry switches)", ha="center", va="center", transform=ax.transAxes)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))
        ax.set_xlabel(f"length of a {label} run (steps)")
        ax.set_ylabel("runs")
    fig.suptitle(title)
    return fig


def thresholds(sens: dict[str, Any], default: float, title: str) -> Any:
    """Global-zero percentage and mean per-sample sparsity against absolute and relative thresholds."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for ax, kind in zip(axes, ("absolute", "relative")):
        s = sens[kind]
        t = s["thresholds"]
        for name, color in (("J_s", "tab:blue"), ("J_a", "tab:orange")):
            if s["global_zero_percent"][name] is None:
                continue
            ax.semilogx(t, s["global_zero_percent"][name], "-o", ms=3, color=color, label=f"{name} global zeros")
            ax.semilogx(t, 100 * np.asarray(s["mean_sparsity"][name]), "--s", ms=3, color=color, label=f"{name} mean sparsity")
        if kind == "absolute":
            ax.axvline(default, color="grey", lw=1, ls=":", label=f"default {default:g}")
        ax.set_ylim(-2, 102)
        ax.set_xlabel(f"{kind} threshold" + (" (x row L2 norm)" if kind == "relative" else ""))
        ax.set_ylabel("%")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def coverage(curves: Sequence[tuple[str, dict[str, Any]]], title: str) -> Any:
    """Global-zero count against pooled steps, one line per (label, curve) (e.g. per policy)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for ax, name in zip(axes, ("J_s", "J_a")):
        for label, curve in curves:
            if curve["steps"]:
                ax.semilogx(curve["steps"], curve[name], "-", lw=1.5, label=f"{label} ({curve['n_steps']} steps)")
        ax.set_xlabel("steps pooled (episode-major)")
        ax.set_ylabel(f"global zeros of {name} (of {curves[0][1]['entries'][name]})")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig
