"""Ground-truth causal graphs of a dataset, and scores of learned graphs against them.

The graph of one step is the bipartite graph from the inputs ``[s, a]`` to the next state ``s'``:
an edge ``s'_i <- x_j`` where ``[J_s | J_a]_ij`` is not zero under the dataset zero rule
(``metrics.sparsity.zero_mask``: ``|J| < threshold``, absolute or relative to the row's norm).
The **global graph** has an edge wherever some counted step has one (its non-edges are the
global zeros); the **per-sample graphs** are the steps' own masks. Only counted steps (valid,
finite Jacobians) take part.

Files (``export``):

- ``.npz``: ``out_names`` ``(n_out,)``, ``in_names`` ``(n_in,)`` (state names, then action names),
  ``global`` ``(n_out, n_in)`` bool, ``nonzero_share`` ``(n_out, n_in)`` (share of counted steps with
  the edge), ``samples`` ``(N, n_out, n_in)`` bool with ``episode``, ``step`` ``(N,)``, and ``meta``
  (JSON: zero rule, Jacobian definition, source).
- ``.parquet`` beside it: a tidy edge list, one row per edge present: ``scope`` (``global`` or
  ``sample``), ``episode``, ``step`` (-1 for global), ``matrix`` (``J_s``/``J_a``), ``target``,
  ``source``, ``nonzero_share`` (global rows; NaN for sample rows).

Predictions (``score``) are ``.npz`` files in the same layout: ``out_names``, ``in_names`` and
``global`` and/or ``samples`` (+ ``episode``, ``step``). Boolean (or 0/1 integer) arrays are
graphs; float arrays are edge scores (higher = more likely an edge; their graph is ``score >
0.5``, and AUROC/AUPRC are reported). Names are matched by value, in any order, and must be the
dataset's variables exactly.

Metrics per graph: precision, recall, F1 (undefined, NaN, where their denominator is 0) and the
structural Hamming distance, here the number of entries that differ (false positives + false
negatives: the graph's direction is fixed, inputs at t to outputs at t+1, so no reversals).
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from dynsparse import errors
from dynsparse.metrics import sparsity

SCORE_EDGE = 0.5


@dataclasses.dataclass
class Truth:
    """The ground truth of one dataset under one zero rule.

    Attributes:
      samples: ``(N, n_out, n_in)`` bool edge masks of the counted steps (``[J_s | J_a]``).
      episode, step: ``(N,)`` the steps' indices.
      out_names, in_names: variable names (``in_names`` = state names then action names).
      n_state: how many of ``in_names`` are state inputs.
      threshold, kind: the zero rule.
    """

    samples: np.ndarray
    episode: np.ndarray
    step: np.ndarray
    out_names: tuple[str, ...]
    in_names: tuple[str, ...]
    n_state: int
    threshold: float
    kind: str

    @property
    def global_graph(self) -> np.ndarray:
        """``(n_out, n_in)`` bool: an edge wherever any counted step has one."""
        return self.samples.any(axis=0)

    @property
    def nonzero_share(self) -> np.ndarray:
        """``(n_out, n_in)`` share of counted steps with the edge (NaN without counted steps)."""
        if not len(self.samples):
            return np.full(self.samples.shape[1:], np.nan)
        return self.samples.mean(axis=0)


def truth(ds: Any, threshold: float = sparsity.DEFAULT_THRESHOLD, kind: str = "absolute") -> Truth:
    """The ground-truth graphs of an open dataset (``dataset.open_dataset``)."""
    masks = sparsity.masks_of(ds, threshold, kind)
    episode, step = np.nonzero(masks.counted)
    edges = ~masks.both[episode, step]
    return Truth(edges, episode.astype(np.int64), step.astype(np.int64), masks.out, masks.state_in + masks.action_in,
                 len(masks.state_in), masks.threshold, masks.kind)


def export(ds: Any, out: str | Path, threshold: float = sparsity.DEFAULT_THRESHOLD, kind: str = "absolute",
           samples: bool = True) -> tuple[Path, Path]:
    """Write the truth of ``ds`` to ``out`` (``.npz``) and the edge list beside it (``.parquet``).

    Returns:
      ``(npz path, parquet path)``.

    Raises:
      UserError: ``out`` does not end in ``.npz`` or already exists (nothing is overwritten).
    """
    import pandas as pd

    from dynsparse import files

    out = Path(out)
    if out.suffix != ".npz":
        raise errors.UserError(f"--out {str(out)!r} must end in .npz (the edge list is written beside it as .parquet)")
    table = out.with_suffix(".parquet")
    for p in (out, table):
        if p.exists():
            raise errors.UserError(f"{str(p)!r} already exists; nothing was overwritten: choose another --out")
    t = truth(ds, threshold, kind)
    meta = {
        "format": "dynsparse-graphs", "format_version": 1, "threshold": t.threshold, "kind": t.kind,
        "jacobian": ds.attrs.get("jacobian"), "env": ds.attrs.get("env"), "source": ds.encoding.get("source"),
        "counted_steps": int(len(t.samples)),
        "definition": "edge s'_i <- x_j where [J_s | J_a]_ij is not zero (zero rule above) at the step (samples) or at "
                      "any counted step (global)",
    }
    arrays = {
        "out_names": np.asarray(t.out_names, dtype=str), "in_names": np.asarray(t.in_names, dtype=str),
        "global": t.global_graph, "nonzero_share": t.nonzero_share, "meta": np.asarray(json.dumps(meta)),
    }
    if samples:
        arrays.update(samples=t.samples, episode=t.episode, step=t.step)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    files.write_atomic(out, buf.getvalue())
    rows = [_edge_rows(t, t.global_graph[None], "global", np.array([-1]), np.array([-1]), t.nonzero_share)]
    if samples:
        rows.append(_edge_rows(t, t.samples, "sample", t.episode, t.step))
    frame = pd.concat(rows, ignore_index=True)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    files.write_atomic(table, buf.getvalue())
    return out, table


def _edge_rows(t: Truth, graphs: np.ndarray, scope: str, episode: np.ndarray, step: np.ndarray,
               share: np.ndarray | None = None) -> Any:
    """Tidy rows of the edges of ``graphs`` ``(N, n_out, n_in)`` taken at ``episode``, ``step`` ``(N,)``."""
    import pandas as pd

    n, i, j = np.nonzero(graphs)
    return pd.DataFrame({
        "scope": scope, "episode": episode[n].astype(np.int64), "step": step[n].astype(np.int64),
        "matrix": np.where(j < t.n_state, "J_s", "J_a"), "target": np.asarray(t.out_names, dtype=object)[i],
        "source": np.asarray(t.in_names, dtype=object)[j],
        "nonzero_share": share[i, j] if share is not None else np.full(len(i), np.nan),
    })

# ----------------------------------------------------------------------------- scoring


def graph_scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 and SHD of boolean graphs ``pred`` against ``true`` (same shape)."""
    true, pred = np.asarray(true, bool), np.asarray(pred, bool)
    tp = int(np.sum(true & pred))
    fp = int(np.sum(~true & pred))
    fn = int(np.sum(true & ~pred))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1, "shd": fp + fn, "tp": tp, "fp": fp, "fn": fn}


def ranking_scores(true: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC (average precision) of edge scores; NaN where ``true`` has one class only."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = np.asarray(true, bool).ravel(), np.asarray(score, float).ravel()
    if y.all() or not y.any():
        return {"auroc": float("nan"), "auprc": float("nan")}
    return {"auroc": float(roc_auc_score(y, s)), "auprc": float(average_precision_score(y, s))}


def _scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Graph scores, plus ranking scores when ``pred`` holds float edge scores."""
    if pred.dtype.kind == "f":
        return {**graph_scores(true, pred > SCORE_EDGE), **ranking_scores(true, pred)}
    return graph_scores(true, pred.astype(bool))


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys() if rows else ()
    with np.errstate(all="ignore"):
        return {k: float(np.nanmean([r[k] for r in rows])) if any(np.isfinite(r[k]) for r in rows) else float("nan")
                for k in keys}


@dataclasses.dataclass
class Prediction:
    """A learned graph aligned to a dataset's variable order (see the module docstring)."""

    global_graph: np.ndarray | None
    samples: np.ndarray | None
    episode: np.ndarray | None
    step: np.ndarray | None


def read_prediction(path: str | Path, t: Truth) -> Prediction:
    """Read a prediction file and reorder it to ``t``'s variables.

    Raises:
      UserError: unreadable file, missing arrays, wrong shapes, unknown or missing names, NaN, or
        sample steps that are not counted steps of the dataset; one line naming what is wrong.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise errors.UserError(f"prediction {str(path)!r} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one user-facing error
        raise errors.UserError(f"prediction {str(path)!r} is not a readable .npz file ({type(exc).__name__})") from None
    where = f"prediction {str(path)!r}"
    for key in ("out_names", "in_names"):
        if key not in arrays or arrays[key].ndim != 1:
            raise errors.UserError(f"{where} lacks {key!r} (a 1-D array of variable names)")
    if "global" not in arrays and "samples" not in arrays:
        raise errors.UserError(f"{where} has neither 'global' (n_out x n_in) nor 'samples' (N x n_out x n_in)")
    rows = _order(where, "out_names", [str(x) for x in arrays["out_names"]], t.out_names)
    cols = _order(where, "in_names", [str(x) for x in arrays["in_names"]], t.in_names)
    shape = (len(t.out_names), len(t.in_names))
    g = s = ep = st = None
    if "global" in arrays:
        g = _checked(where, "global", arrays["global"], shape)[np.ix_(rows, cols)]
    if "samples" in arrays:
        raw = arrays["samples"]
        if raw.ndim != 3:
            raise errors.UserError(f"{where}: 'samples' has shape {raw.shape}; allowed: (N, {shape[0]}, {shape[1]})")
        s = _checked(where, "samples", raw, (raw.shape[0],) + shape)[:, rows][:, :, cols]
        for key in ("episode", "step"):
            if key not in arrays or arrays[key].shape != (raw.shape[0],) or arrays[key].dtype.kind not in "iu":
                raise errors.UserError(f"{where}: 'samples' needs integer {key!r} of shape ({raw.shape[0]},)")
        ep, st = arrays["episode"].astype(np.int64), arrays["step"].astype(np.int64)
        counted = set(zip(t.episode.tolist(), t.step.tolist()))
        missing = [(e, k) for e, k in zip(ep.tolist(), st.tolist()) if (e, k) not in counted]
        if missing:
            raise errors.UserError(f"{where}: sample (episode {missing[0][0]}, step {missing[0][1]}) is not a counted step of "
                                   f"the dataset ({len(missing)} such samples)")
    return Prediction(g, s, ep, st)


def _order(where: str, key: str, names: list[str], truth_names: tuple[str, ...]) -> np.ndarray:
    unknown = [n for n in names if n not in truth_names]
    if unknown:
        raise errors.UserError(f"{where}: {key} has {unknown[0]!r}, not a variable of the dataset; allowed: {', '.join(truth_names)}")
    if len(set(names)) != len(names):
        raise errors.UserError(f"{where}: {key} repeats a name")
    missing = [n for n in truth_names if n not in names]
    if missing:
        raise errors.UserError(f"{where}: {key} lacks {missing[0]!r} ({len(missing)} of the dataset's variables missing)")
    return np.asarray([names.index(n) for n in truth_names])


def _checked(where: str, key: str, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if a.shape != shape:
        raise errors.UserError(f"{where}: {key!r} has shape {a.shape}; allowed: {shape} (out_names x in_names)")
    if a.dtype.kind == "b":
        return a
    if a.dtype.kind in "iu":
        if not np.isin(a, (0, 1)).all():
            raise errors.UserError(f"{where}: integer {key!r} must be 0/1 (a graph); use floats for edge scores")
        return a.astype(bool)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise errors.UserError(f"{where}: {key!r} has NaN or infinite edge scores")
        return a.astype(np.float64)
    raise errors.UserError(f"{where}: {key!r} has dtype {a.dtype}; allowed: bool, 0/1 integers or float scores")


def score(ds: Any, prediction: str | Path, threshold: float = sparsity.DEFAULT_THRESHOLD, kind: str = "absolute") -> dict[str, Any]:
    """Score a prediction file against the dataset's ground truth.

    Returns:
      ``{"global": {...}}`` (the prediction's global graph, or the union of its samples, against the
      global truth), ``"per_sample_mean"`` (the mean over samples of each sample's scores: the
      prediction's own samples, or its global graph against every counted step), ``"per_sample_pooled"``
      (all sample entries pooled), ``"samples"`` (N), and ``"threshold"``/``"kind"``.
    """
    t = truth(ds, threshold, kind)
    p = read_prediction(prediction, t)
    if p.samples is not None:
        index = {(e, k): n for n, (e, k) in enumerate(zip(t.episode.tolist(), t.step.tolist()))}
        true_s = t.samples[[index[(e, k)] for e, k in zip(p.episode.tolist(), p.step.tolist())]]
        pred_s = p.samples
    else:
        true_s = t.samples
        pred_s = np.broadcast_to(p.global_graph, t.samples.shape)
    pred_g = p.global_graph if p.global_graph is not None else (
        pred_s.max(axis=0) if pred_s.dtype.kind == "f" else pred_s.any(axis=0))
    result: dict[str, Any] = {"threshold": t.threshold, "kind": t.kind, "samples": int(len(true_s)),
                              "global": _scores(t.global_graph, pred_g)}
    if len(true_s):
        result["per_sample_mean"] = _mean([_scores(true_s[n], pred_s[n]) for n in range(len(true_s))])
        result["per_sample_pooled"] = _scores(true_s, pred_s)
    return result


def format_scores(result: dict[str, Any]) -> str:
    """The scores as a small text table."""
    keys = ("precision", "recall", "f1", "shd", "auroc", "auprc")
    lines = [f"{'':<20}" + "".join(f"{k:>11}" for k in keys)]
    for scope in ("global", "per_sample_mean", "per_sample_pooled"):
        if scope in result:
            row = result[scope]
            cells = "".join(f"{row[k]:>11.4g}" if k in row else f"{'-':>11}" for k in keys)
            lines.append(f"{scope.replace('_', ' '):<20}{cells}")
    lines.append(f"({result['samples']} samples; zero rule {result['kind']} {result['threshold']:g})")
    return "\n".join(lines)
