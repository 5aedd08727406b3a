"""Every output format of the stages after collection, in one place: what an analysis folder and a
``learn`` folder hold, how they are read and written, and the cross-environment table row.

Producers (``analysis``, ``learn``) write through this module; consumers (``report``, ``sweep``,
``reproduce``, the CLI) read through it and never import the producers' internals. It imports no
stage above ``dataset``, so data flows forward only:

    dataset -> metrics -> analysis / learn -> results (files) -> report, sweep, reproduce, cli

``AnalysisSummary`` is the typed view of ``summary.json``: its sections are fields (the nested
metric records inside them stay JSON mappings, documented in the README's metrics section);
``summary.json`` itself is unchanged, so folders written before this module read the same.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from dynsparse import dataset

#: an analysis folder's record (and marker: a folder with a readable one is a finished analysis)
SUMMARY = "summary.json"
#: a ``learn`` folder's record and marker
LEARN_MARKER = "learn.json"
#: the per-run metrics of a ``learn`` folder (``runs.csv``), in table order
LEARN_METRICS = ("mse_norm", "relative_sparsity", "zero_precision", "zero_recall", "shd")
#: loss variants in table order (``untrained`` first: the initial networks)
LOSS_ORDER = ("untrained", "mse", "mse+mse_j", "mse+mae_j", "mse+l1_j", "mse+sae_j")


@dataclasses.dataclass(frozen=True)
class Dims:
    """Sizes of the analysed system: Jacobian columns (``state``, ``action``), MuJoCo's
    ``nq``/``nv``/``nu``, substeps, control step ``dt`` (s) and the solver's iteration cap."""

    state: int
    action: int
    nq: int | None = None
    nv: int | None = None
    nu: int | None = None
    n_substeps: int | None = None
    dt: float | None = None
    solver_iterations: int | None = None


@dataclasses.dataclass(frozen=True)
class DataSize:
    """How much data the analysis read: episodes x steps, valid steps, and the steps counted
    (valid, finite Jacobians, in the analysed episode selection)."""

    episodes: int
    steps_per_episode: int
    valid_steps: int
    counted_steps: int


@dataclasses.dataclass(frozen=True)
class AnalysisSummary:
    """``summary.json`` of one analysis folder (see ``analysis`` for how each part is computed).

    ``global_`` is the JSON key ``global`` (Q1); ``local`` (Q2), ``temporal`` (Q3), ``contacts``,
    ``coverage``, ``thresholds`` and ``embedding`` hold the metric records; ``table`` the
    cross-environment row (``table_row``); ``identity`` what makes the folder up to date (the
    dataset and the options); ``figures`` kind -> file names.
    """

    env: str
    policy: Mapping[str, Any]
    policy_label: str
    seed: int | None
    backend: str | None
    dims: Dims
    data: DataSize
    options: Mapping[str, Any]
    contact_definition: str | None
    global_: Mapping[str, Any]
    local: Mapping[str, Any]
    temporal: Mapping[str, Any]
    contacts: Mapping[str, Any]
    coverage: Mapping[str, Any]
    thresholds: Any
    embedding: Mapping[str, Any]
    timeseries_episode: int | None
    figures: Mapping[str, Any]
    timing_s: Mapping[str, float]
    versions: Mapping[str, Any]
    table: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    identity: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: str | None = None
    #: keys of the record this class does not name (kept, and written back unchanged)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "AnalysisSummary":
        """From the ``summary.json`` record (``KeyError``/``TypeError`` if a section is missing)."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        named = {("global_" if k == "global" else k): v for k, v in record.items()}
        values = {k: v for k, v in named.items() if k in fields}
        values["extra"] = {("global" if k == "global_" else k): v for k, v in named.items() if k not in fields}
        values["dims"] = Dims(**record["dims"])
        values["data"] = DataSize(**record["data"])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The ``summary.json`` record."""
        out = {("global" if f.name == "global_" else f.name): getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["dims"], out["data"] = dataclasses.asdict(self.dims), dataclasses.asdict(self.data)
        return {**out, **self.extra}


def read_analysis(folder: str | Path) -> AnalysisSummary | None:
    """The summary of a finished analysis folder, or ``None`` (none, unreadable or incomplete)."""
    try:
        return AnalysisSummary.from_json(json.loads((Path(folder) / SUMMARY).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_analysis_identity(folder: str | Path) -> Any:
    """Only the ``identity`` recorded in an analysis folder's summary (``None`` if unreadable)."""
    try:
        return json.loads((Path(folder) / SUMMARY).read_text()).get("identity")
    except (OSError, ValueError, AttributeError):
        return None


def write_analysis(folder: Path, summary: AnalysisSummary) -> None:
    """Write ``summary.json`` into ``folder`` (NumPy scalars as plain numbers)."""
    (Path(folder) / SUMMARY).write_text(json.dumps(summary.to_json(), indent=1, default=json_default))


def json_default(x: Any) -> Any:
    """JSON for NumPy scalars and arrays (``json.dumps(default=...)``)."""
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def table_row(summary: AnalysisSummary) -> dict[str, Any]:
    """The cross-environment table row of one analysis (one line of the report's table, of
    ``table.csv`` and of a sweep's ``summary.csv``)."""
    g, runs = summary.global_, summary.temporal["runs"]
    align = {row["k"]: row for row in summary.contacts["alignment"]}
    a1 = align.get(1) or next(iter(align.values()))
    hist = summary.local["histogram"]
    cov = summary.coverage
    clustering = summary.temporal["clustering"]
    return {
        "env": summary.env,
        "policy": summary.policy_label,
        "seed": summary.seed,
        "episodes": summary.data.episodes,
        "counted_steps": summary.data.counted_steps,
        "state_dim": summary.dims.state,
        "action_dim": summary.dims.action,
        "J_s_global_zeros": g["J_s"]["zeros"],
        "J_s_entries": g["J_s"]["total"],
        "J_s_global_zero_pct": g["J_s"]["percent"],
        "J_a_global_zeros": g["J_a"]["zeros"],
        "J_a_entries": g["J_a"]["total"],
        "J_a_global_zero_pct": g["J_a"]["percent"],
        "mean_sparsity_J_s": hist["J_s"]["mean"],
        "mean_sparsity_J_a": hist["J_a"]["mean"],
        "mean_sparsity_both": hist["both"]["mean"],
        "mean_zero_run": runs["zero_runs"]["mean"],
        "mean_nonzero_run": runs["nonzero_runs"]["mean"],
        "switch_burstiness": clustering["observed"]["burstiness"],
        "switch_burstiness_shuffled": clustering["shuffled"]["burstiness_mean"],
        "switch_clustering_p": clustering["p_value"],
        "contact_k": a1["k"],
        "switch_near_contact_change": a1["observed"],
        "chance": a1["chance"],
        "lift": a1["lift"],
        "contact_p": a1["p_value"],
        "jacobian": g.get("jacobian"),
        "checked_steps": g["check"].get("checked_steps", 0),
        **{f"check_{name.replace('-', '_')}": g["check"].get("classes", {}).get(name) for name in dataset.CHECK_CLASSES},
        "check_pattern_mismatch_steps": g["check"].get("steps_pattern_mismatch"),
        "solver_truncated_steps": (g.get("solver") or {}).get("steps_truncated"),
        "solver_start_returned_steps": (g.get("solver") or {}).get("steps_start_returned"),
        "J_s_zeros_last_changed_at": cov["last_change"].get("J_s"),
        "J_a_zeros_last_changed_at": cov["last_change"].get("J_a"),
    }


def read_learn(folder: str | Path) -> dict[str, Any] | None:
    """``learn.json`` of a finished ``learn`` folder, else ``None``."""
    try:
        record = json.loads((Path(folder) / LEARN_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_learn_runs(folder: str | Path) -> list[dict[str, Any]]:
    """The per-run rows (``runs.csv``) of a ``learn`` folder."""
    import pandas as pd

    return pd.read_csv(Path(folder) / "runs.csv").to_dict("records")


def learn_mean_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (env, loss): mean over seeds of every metric and of the seconds per epoch (NaN where
    no seed has a finite value)."""
    import numpy as np

    def order(loss: str) -> int:
        return LOSS_ORDER.index(loss) if loss in LOSS_ORDER else len(LOSS_ORDER)

    keys = sorted({(r["env"], r["loss"]) for r in rows}, key=lambda k: (k[0], order(k[1]), k[1]))
    out = []
    for env, loss in keys:
        sel = [r for r in rows if r["env"] == env and r["loss"] == loss]
        row: dict[str, Any] = {"env": env, "loss": loss, "seeds": len(sel)}
        for m in (*LEARN_METRICS, "sparsity_model", "sparsity_true", "s_per_epoch"):
            vals = np.array([r[m] for r in sel], float)
            row[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
        out.append(row)
    return out
