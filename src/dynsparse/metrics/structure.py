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


def global_structure(
    ds: Any, threshold: float = sparsity.DEFAULT_THRESHOLD, kind: str = "absolute", inactive: bool = True,
) -> dict[str, Any]:
    """The Q1 table of a dataset as a JSON-serialisable dict.

    Args:
      inactive: also list the constraints never active in the data and the global zeros they
        may hide (``constraints.for_dataset``; rebuilds the model from the attrs).

    Returns:
      ``{"env", "backend", "policy", "threshold": {"value", "kind"}, "steps": {...},
      "J_s": {"zeros", "total", "percent", "entries": ["out <- in", ...]}, "J_a": {...},
      "check": {...}, "solver_start_returned": int, "inactive": {...}}``. With no counted step,
      ``zeros`` is ``None`` (nothing can be said).
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
    small = dataset.load(ds, ("valid",) + CHECK_VARIABLES + SOLVER_VARIABLES + DEFINITION_VARIABLES)
    small.attrs = ds.attrs
    result["jacobian"] = ds.attrs.get("jacobian")
    result["check"] = check_summary(small)
    result["solver"] = solver_summary(small)
    result["definitions"] = definition_summary(small)
    if inactive:
        from dynsparse.metrics import constraints

        result["inactive"] = constraints.for_dataset(ds, result)
    return result


CHECK_VARIABLES = ("check_class", "check_err", "check_eps", "check_fd_spread", "check_pattern_mismatch",
                   "check_native_state_err", "check_native_err")
SOLVER_VARIABLES = ("solver_residual", "solver_truncated", "solver_start_returned")
DEFINITION_VARIABLES = ("definition_rel_diff", "definition_pattern_diff", "definition_state_diff")


def check_summary(ds: Any) -> dict[str, Any]:
    """Summary of the stored certificates (``collect --check-every``, ``jacobians.certify``).

    Returns:
      ``{"checked_steps": n}`` alone when nothing was checked; else also ``classes`` (class ->
      steps), ``shares`` (class -> fraction of checked steps), ``max_err``, ``median_err``,
      ``steps_pattern_mismatch``, ``max_native_state_err``, ``worst`` (the checked step with the
      largest error: episode, step, class, err) and ``definition`` (the attrs text).
    """
    classes = np.asarray(ds["check_class"].values)
    valid = np.asarray(ds["valid"].values, bool)
    checked = valid & (classes >= 0)
    n = int(checked.sum())
    if n == 0:
        return {"checked_steps": 0}
    err = np.where(checked, np.asarray(ds["check_err"].values, np.float64), np.nan)
    finite = np.isfinite(err)
    worst = np.unravel_index(np.argmax(np.where(finite, err, -np.inf)), err.shape)
    counts = {name: int(np.sum(checked & (classes == i))) for i, name in enumerate(dataset.CHECK_CLASSES)}
    state_err = np.where(checked, np.asarray(ds["check_native_state_err"].values, np.float64), np.nan)
    return {
        "checked_steps": n,
        "classes": counts,
        "shares": {k: v / n for k, v in counts.items()},
        "max_err": float(np.nanmax(err)) if finite.any() else None,
        "median_err": float(np.nanmedian(err)) if finite.any() else None,
        "steps_pattern_mismatch": int(np.sum(checked & (np.asarray(ds["check_pattern_mismatch"].values) > 0))),
        "max_native_state_err": float(np.nanmax(state_err)) if np.isfinite(state_err).any() else None,
        "worst": {"episode": int(worst[0]), "step": int(worst[1]), "class": dataset.CHECK_CLASSES[int(classes[worst])],
                  "err": float(err[worst])},
        "definition": ds.attrs.get("check_definition", ""),
    }


def solver_summary(ds: Any) -> dict[str, Any] | None:
    """How the definition's constraint solves went over the valid steps (None where nothing was
    recorded: finite_diff datasets made before 2026-12-03): steps with a truncated substep, with a start point returned,
    and the largest and median residual."""
    valid = np.asarray(ds["valid"].values, bool)
    truncated = np.asarray(ds["solver_truncated"].values)
    if not valid.any() or (truncated[valid] < 0).all():
        return None
    residual = np.where(valid, np.asarray(ds["solver_residual"].values, np.float64), np.nan)
    return {
        "steps": int(valid.sum()),
        "steps_truncated": int(np.sum(valid & (truncated > 0))),
        "steps_start_returned": int(np.sum(valid & (np.asarray(ds["solver_start_returned"].values) > 0))),
        "max_residual": float(np.nanmax(residual)),
        "median_residual": float(np.nanmedian(residual)),
    }


def definition_summary(ds: Any) -> dict[str, Any] | None:
    """How the two definitions differ (``collect --compare-definitions``; None otherwise): steps
    compared, steps whose zero patterns differ, and the scaled Jacobian and next-state differences."""
    valid = np.asarray(ds["valid"].values, bool)
    pattern = np.asarray(ds["definition_pattern_diff"].values)
    compared = valid & (pattern >= 0)
    n = int(compared.sum())
    if n == 0:
        return None
    rel = np.asarray(ds["definition_rel_diff"].values, np.float64)[compared]
    state = np.asarray(ds["definition_state_diff"].values, np.float64)[compared]
    return {
        "steps": n,
        "steps_pattern_differs": int(np.sum(pattern[compared] > 0)),
        "entries_pattern_differs": int(pattern[compared].sum()),
        "steps_value_differs": int(np.sum(rel > 1e-5)),
        "max_rel_diff": float(np.nanmax(rel)) if np.isfinite(rel).any() else None,
        "median_rel_diff": float(np.nanmedian(rel)) if np.isfinite(rel).any() else None,
        "max_state_diff": float(np.nanmax(state)) if np.isfinite(state).any() else None,
        "median_state_diff": float(np.nanmedian(state)) if np.isfinite(state).any() else None,
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
    if result.get("inactive"):
        from dynsparse.metrics import constraints

        lines += [""] + constraints.format_lines(result["inactive"])
    lines.append("")
    lines.append(f"Jacobian definition: {result.get('jacobian')}")
    if result.get("backend") == "finite_diff" and th["kind"] == "absolute" and th["value"] < 1e-8:
        lines.append(
            "note: finite differences carry ~1e-10 of round-off where the true entry is 0, "
            "so they undercount zeros at this threshold; --threshold 1e-8 matches their resolution"
        )
    lines += format_checks(result)
    return "\n".join(lines)


def format_checks(result: dict[str, Any]) -> list[str]:
    """The certificate, solver and definition-comparison lines of ``format_table``."""
    lines = []
    chk = result["check"]
    if chk["checked_steps"]:
        shares = ", ".join(f"{name} {count} ({100 * chk['shares'][name]:.1f}%)" for name, count in chk["classes"].items())
        err = "n/a" if chk["max_err"] is None else f"{chk['max_err']:.3g} (median {chk['median_err']:.3g})"
        lines.append(f"certificates at {chk['checked_steps']} checked steps: {shares}")
        lines.append(
            f"  scaled error vs finite differences of the same function: max {err}; worst at episode "
            f"{chk['worst']['episode']} step {chk['worst']['step']} ({chk['worst']['class']}); "
            f"{chk['steps_pattern_mismatch']} steps with a contradicted zero decision"
        )
        if chk["classes"].get("wrong"):
            lines.append(f"  WARNING: {chk['classes']['wrong']} checked steps are 'wrong': the stored Jacobian disagrees with "
                         "stable finite differences of the same function there")
    else:
        lines.append("certificates: none (collect --check-every K)")
    solver = result.get("solver")
    if solver:
        lines.append(
            f"solver ({result.get('jacobian')}): {solver['steps_truncated']} of {solver['steps']} steps had a constraint solve "
            f"stopped at the iteration cap; {solver['steps_start_returned']} a start point returned with a constraint "
            f"active; residual |r|/trace(M) max {solver['max_residual']:.3g}, median {solver['median_residual']:.3g}"
        )
    defs = result.get("definitions")
    if defs:
        max_rel = "n/a" if defs["max_rel_diff"] is None else f"{defs['max_rel_diff']:.3g}"
        lines.append(
            f"converged vs as-run at {defs['steps']} steps: zero patterns differ at {defs['steps_pattern_differs']} "
            f"({defs['entries_pattern_differs']} entries); values differ (> 1e-5 scaled) at {defs['steps_value_differs']}, "
            f"max {max_rel}; next states differ by up to {defs['max_state_diff']:.3g}"
        )
    return lines
