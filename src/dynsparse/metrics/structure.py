"""Q1: global structure (entries zero at every sample) and per-element zero frequency.

Only steps that exist (``valid``) and whose Jacobians are finite are counted; steps with NaN/Inf
Jacobians are reported, never silently pooled. A zero at every sampled step is an upper bound on
true causal absence: it may only mean the data never visited states where the entry is non-zero.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from dynsparse import dataset
from dynsparse.metrics import sparsity

MATRICES = (("J_s", "state_in"), ("J_a", "action_in"))


@dataclasses.dataclass
class ZeroCounts:
    """Per-entry zero counts over the counted steps.

    Attributes:
      counts: matrix name -> ``(n_out, n_in)`` int array, steps at which the entry is zero.
      n_steps: steps counted (valid and finite).
      n_valid: steps that exist.
      n_nonfinite: valid steps excluded because a Jacobian had NaN/Inf.
    """

    counts: dict[str, np.ndarray]
    n_steps: int
    n_valid: int
    n_nonfinite: int


def zero_counts(ds: Any, threshold: float = sparsity.DEFAULT_THRESHOLD, kind: str = "absolute") -> ZeroCounts:
    """Count zeros per entry over all valid, finite steps, one episode block at a time."""
    sparsity.check_threshold(threshold, kind)
    counts = {name: np.zeros((ds.sizes["out"], ds.sizes[dim]), np.int64) for name, dim in MATRICES}
    n_steps = n_valid = n_nonfinite = 0
    for block in dataset.iter_episode_blocks(ds, ("valid", "finite", "J_s", "J_a")):
        valid = np.asarray(block["valid"].values, bool)
        finite = np.asarray(block["finite"].values, bool) & valid
        n_valid += int(valid.sum())
        n_nonfinite += int((valid & ~finite).sum())
        n_steps += int(finite.sum())
        for name, _ in MATRICES:
            jac = np.asarray(block[name].values)[finite]
            counts[name] += sparsity.zero_mask(jac, threshold, kind).sum(axis=0)
    return ZeroCounts(counts, n_steps, n_valid, n_nonfinite)


def zero_frequency(ds: Any, threshold: float = sparsity.DEFAULT_THRESHOLD, kind: str = "absolute") -> dict[str, Any]:
    """Per-element zero frequency: % of counted steps at which each entry is zero.

    Returns:
      ``{"J_s": DataArray (out, state_in), "J_a": DataArray (out, action_in)}`` in percent (NaN
      if no step was counted), with the named coordinates.
    """
    import xarray as xr

    zc = zero_counts(ds, threshold, kind)
    out = {}
    for name, dim in MATRICES:
        pct = 100.0 * zc.counts[name] / zc.n_steps if zc.n_steps else np.full(zc.counts[name].shape, np.nan)
        out[name] = xr.DataArray(pct, dims=("out", dim), coords={"out": ds["out"].values, dim: ds[dim].values},
                                 name=f"{name}_zero_frequency", attrs={"units": "percent of steps", "threshold": threshold, "threshold_kind": kind})
    return out


def global_structure(ds: Any, threshold: float = sparsity.DEFAULT_THRESHOLD, kind: str = "absolute") -> dict[str, Any]:
    """The Q1 table of a dataset as a JSON-serialisable dict.

    Returns:
      ``{"env", "backend", "policy", "threshold": {"value", "kind"}, "steps": {...},
      "J_s": {"zeros", "total", "percent", "entries": ["out <- in", ...]}, "J_a": {...},
      "check": {...}, "solver_start_returned": int}``. With no counted step, ``zeros`` is
      ``None`` (nothing can be said).
    """
    zc = zero_counts(ds, threshold, kind)
    result: dict[str, Any] = {
        "env": ds.attrs.get("env"),
        "backend": ds.attrs.get("backend"),
        "policy": json.loads(ds.attrs.get("policy", "null")),
        "seed": ds.attrs.get("seed"),
        "threshold": {"value": threshold, "kind": kind},
        "steps": {
            "counted": zc.n_steps, "valid": zc.n_valid, "nonfinite": zc.n_nonfinite,
            "expected": int(ds.sizes["episode"] * ds.sizes["step"]),
            "episodes": int(ds.sizes["episode"]),
        },
    }
    for name, dim in MATRICES:
        counts = zc.counts[name]
        total = int(counts.size)
        if zc.n_steps == 0:
            result[name] = {"zeros": None, "total": total, "percent": None, "entries": []}
            continue
        always = counts == zc.n_steps
        outs, ins = ds["out"].values, ds[dim].values
        entries = [f"{outs[i]} <- {ins[j]}" for i, j in zip(*np.nonzero(always))]
        zeros = int(always.sum())
        result[name] = {"zeros": zeros, "total": total, "percent": 100.0 * zeros / total, "entries": entries}
    small = dataset.load(ds, ("valid", "solver_start_returned", "fd_max_rel_err", "fd_max_abs_err", "fd_disagree", "fd_pattern_mismatch"))
    small.attrs = ds.attrs
    result["check"] = check_summary(small)
    flags = np.asarray(small["solver_start_returned"].values)
    valid = np.asarray(small["valid"].values, bool)
    result["solver_start_returned"] = int(np.sum((flags == 1) & valid)) if ds.attrs.get("backend") == "autodiff" else None
    return result


def check_summary(ds: Any) -> dict[str, Any]:
    """Summary of the stored autodiff-vs-finite-difference checks (``collect --check-every``)."""
    mismatch = np.asarray(ds["fd_pattern_mismatch"].values)
    valid = np.asarray(ds["valid"].values, bool)
    checked = valid & (mismatch >= 0)
    n = int(checked.sum())
    if n == 0:
        return {"checked_steps": 0}
    rel = np.where(checked, np.asarray(ds["fd_max_rel_err"].values, np.float64), np.nan)
    abs_err = np.where(checked, np.asarray(ds["fd_max_abs_err"].values, np.float64), np.nan)
    disagree = np.asarray(ds["fd_disagree"].values)
    finite = np.isfinite(rel)
    worst = np.unravel_index(np.argmax(np.where(finite, rel, -np.inf)), rel.shape)
    return {
        "checked_steps": n,
        "max_rel_err": float(np.nanmax(rel)) if finite.any() else None,
        "median_rel_err": float(np.nanmedian(rel)) if finite.any() else None,
        "max_abs_err": float(np.nanmax(abs_err)) if finite.any() else None,
        "steps_disagree": int(np.sum(checked & (disagree > 0))),
        "steps_pattern_mismatch": int(np.sum(checked & (mismatch > 0))),
        "worst": {"episode": int(worst[0]), "step": int(worst[1]), "rel_err": float(rel[worst])},
        "definition": ds.attrs.get("check_definition", ""),
    }


def format_table(result: dict[str, Any]) -> str:
    """Human-readable Q1 table."""
    th = result["threshold"]
    st = result["steps"]
    lines = [
        f"{result['env']}  backend={result['backend']}  policy={json.dumps(result['policy'])}  seed={result['seed']}",
        f"threshold: {th['kind']} {th['value']:g}   steps counted: {st['counted']} of {st['expected']} "
        f"({st['episodes']} episodes; {st['nonfinite']} non-finite excluded)",
        "",
        f"{'matrix':<8}{'global zeros':>14}{'entries':>10}{'percent':>10}",
    ]
    for name, _ in MATRICES:
        m = result[name]
        if m["zeros"] is None:
            lines.append(f"{name:<8}{'n/a':>14}{m['total']:>10}{'n/a':>10}")
        else:
            lines.append(f"{name:<8}{m['zeros']:>14}{m['total']:>10}{m['percent']:>9.1f}%")
    for name, _ in MATRICES:
        entries = result[name]["entries"]
        if entries:
            lines += ["", f"{name} entries zero at every counted step ({len(entries)}):"]
            lines += [f"  {e}" for e in entries]
    chk = result["check"]
    lines.append("")
    if result.get("backend") == "finite_diff" and th["kind"] == "absolute" and th["value"] < 1e-8:
        lines.append(
            "note: finite differences (eps 1e-6) carry ~1e-10 of round-off where the true entry is 0, "
            "so they undercount zeros at this threshold; --threshold 1e-8 matches their resolution"
        )
    if chk["checked_steps"] and chk["max_rel_err"] is None:
        lines.append(f"autodiff vs finite_diff at {chk['checked_steps']} checked steps: every one had NaN/Inf")
    elif chk["checked_steps"]:
        lines.append(
            f"autodiff vs finite_diff at {chk['checked_steps']} checked steps: max rel err {chk['max_rel_err']:.3g} "
            f"(median {chk['median_rel_err']:.3g}, worst at episode {chk['worst']['episode']} step "
            f"{chk['worst']['step']}), max abs err {chk['max_abs_err']:.3g}; {chk['steps_disagree']} steps "
            f"disagree beyond 1e-5 relative + 1e-8 absolute; {chk['steps_pattern_mismatch']} steps with "
            "differing zero patterns"
        )
    else:
        lines.append("autodiff vs finite_diff: not checked (collect --check-every K)")
    if result.get("solver_start_returned") is not None:
        lines.append(
            f"steps where the constraint solver returned its start point (autodiff may miss constraint "
            f"sensitivity there): {result['solver_start_returned']}"
        )
    return "\n".join(lines)
