"""``analyze``: one dataset -> every metric (JSON and CSV), the seven figures and an HTML page.

Output folder layout::

    summary.json          provenance, options, every scalar result, the cross-env table row
    tables/*.csv          per-step sparsity, zero frequencies, runs, contacts, curves, embedding
    figures/<kind>.png    (and .svg, .pdf on request) for the seven figure kinds
    index.html            self-contained page (images embedded)

The folder is written under a temporary name and renamed when complete, so it is either whole
or absent. An existing folder is never overwritten: if it holds the analysis of the same dataset
with the same options it is left as it is ("up to date"); otherwise the call is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dynsparse import dataset, errors, files, interrupts, locks, options, results
from dynsparse.metrics import contacts, coverage, embedding, local, sparsity, structure, temporal, thresholds

log = logging.getLogger(__name__)

SUMMARY = results.SUMMARY
STAGES = ("structure", "local", "temporal", "contacts", "coverage", "thresholds", "embedding", "tables", "figures")


def _formats(value: Any) -> tuple[str, ...]:
    """Figure formats: PNG always first, then the others once each; ``UserError`` for an unknown one."""
    from dynsparse.render import figures

    bad = [f for f in value if f not in figures.FORMATS]
    if bad:
        raise errors.UserError(f"figure format {bad[0]!r} is not allowed; allowed: {', '.join(figures.FORMATS)}")
    return ("png",) + tuple(f for f in dict.fromkeys(value) if f != "png")


def _bin_width(value: Any) -> float:
    local.check_bin_width(value)
    return float(value)


@dataclasses.dataclass(frozen=True)
class AnalyzeOptions:
    """How to analyse a dataset (each field's help is also its ``dynsparse analyze`` flag's)."""

    threshold: float = options.option(sparsity.DEFAULT_THRESHOLD, help="zero threshold", check=options.number(0.0))
    kind: str = options.option("absolute", help="absolute, or relative: scale the threshold by each row's L2 norm",
                               check=options.one_of(*sparsity.KINDS))
    bin_width: float = options.option(local.DEFAULT_BIN_WIDTH, help="histogram bin width of per-sample sparsity, 1/n",
                                      check=options.via(_bin_width, "1/n for a whole n, e.g. 0.1", float))
    tsne: bool = options.option(True, help="compute the t-SNE embedding (the slowest metric)", check=options.boolean())
    perplexity: float = options.option(embedding.DEFAULT_PERPLEXITY, help="t-SNE perplexity", check=options.number(0.0))
    max_points: int = options.option(embedding.DEFAULT_MAX_POINTS, help="t-SNE subsample size", check=options.integer(4))
    shuffles: int = options.option(temporal.DEFAULT_SHUFFLES, help="draws of the shuffled-time baseline of switch clustering",
                                   check=options.integer(1))
    windows: tuple[int, ...] = options.option(
        contacts.DEFAULT_WINDOWS, help="k values (steps) of the switch / contact-change alignment", check=options.integers(0))
    episode: int | None = options.option(None, help="episode of the time-series figure (default: the one with most switch steps)",
                                         check=options.optional(options.integer(0)))
    formats: tuple[str, ...] = options.option(("png", "svg"), help="figure formats (png always; svg, pdf)",
                                              check=options.via(_formats, "png, svg, pdf"))
    seed: int = options.option(0, help="seed of subsampling, t-SNE and shuffles", check=options.seed())

    def validated(self) -> "AnalyzeOptions":
        """Check every field; raise ``UserError`` naming the first bad value."""
        return options.validate(self)

    def identity(self) -> dict[str, Any]:
        """JSON-normalised options (what must match for an existing analysis to be up to date)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _dataset_identity(ds: Any, path: Path) -> dict[str, Any]:
    valid = np.asarray(dataset.load(ds, ("valid",))["valid"].values, bool)
    return {"path": str(path.resolve()), "config": dataset.read_config(ds), "valid_steps": int(valid.sum())}


@locks.writes("out")
def analyze(path: str | Path, out: str | Path, options: AnalyzeOptions = AnalyzeOptions(),
            on_stage: Callable[[str], None] | None = None) -> Path:
    """Analyse the dataset at ``path`` into the folder ``out`` (see the module docstring).

    Args:
      on_stage: called with each stage name of ``STAGES`` as it starts.

    Returns:
      ``out``.

    Raises:
      UserError: bad options, an unreadable dataset, or ``out`` exists and is not the analysis
        of this dataset with these options.
    """
    options = options.validated()
    path, out = Path(path), Path(out)
    ds = dataset.open_dataset(path)
    if options.episode is not None and not 0 <= options.episode < ds.sizes["episode"]:
        raise errors.UserError(f"episode {options.episode} does not exist; allowed: 0 .. {ds.sizes['episode'] - 1}")
    ident = {"dataset": _dataset_identity(ds, path), "options": options.identity()}
    if files.claim(out, SUMMARY, ident, "analysis", read=lambda summary: summary.get("identity"),
                   hint="choose another --out or remove it") == "same":
        log.info("%s is up to date", out)
        return out
    with files.publish(out) as tmp:
        report_stage = on_stage or (lambda _s: None)

        def stage(name: str) -> None:
            interrupts.check()
            report_stage(name)

        record = _compute(ds, tmp, options, stage)
        record["identity"] = ident
        record["source"] = str(path)
        summary = results.AnalysisSummary.from_json(record)
        results.write_analysis(tmp, summary)
        from dynsparse.render import html

        (tmp / "index.html").write_text(html.page(f"dynsparse: {summary.env}", [(summary, tmp)]))
    return out


def _compute(ds: Any, out: Path, options: AnalyzeOptions, stage: Callable[[str], None]) -> dict[str, Any]:
    """Every metric, table and figure of one dataset; returns the summary dict."""
    sw = _Stopwatch(stage)
    tables, figs = out / "tables", out / "figures"
    tables.mkdir()
    figs.mkdir()
    r: dict[str, Any] = {}
    sw.start("structure")
    r["q1"] = structure.global_structure(ds, options.threshold, options.kind)
    sw.start("local")
    masks = sparsity.masks_of(ds, options.threshold, options.kind)
    r["sp"] = local.per_sample_sparsity(masks)
    r["hist"] = local.histogram(masks, options.bin_width)
    r["levels"] = local.levels(masks)
    r["pooled"] = local.zero_frequency_pooled(masks)
    r["per_episode"] = local.zero_frequency_per_episode(masks)
    r["switch"] = temporal.switches_per_step(masks)
    sw.start("temporal")
    r["runs"] = temporal.run_lengths(masks)
    r["run_summary"] = temporal.run_summary(r["runs"])
    r["clustering"] = temporal.clustering(r["switch"] > 0, masks.counted, options.shuffles, options.seed)
    sw.start("contacts")
    r["by_contacts"] = contacts.sparsity_by_contacts(masks)
    r["alignment"] = contacts.alignment(masks, options.windows)
    r["by_variable"] = contacts.switches_by_variable(masks)
    sw.start("coverage")
    r["coverage"] = coverage.global_zero_curve(masks)
    sw.start("thresholds")
    r["thresholds"] = thresholds.sensitivity(ds)
    sw.start("embedding")
    r["embedding"], r["embedding_note"] = None, "not computed (--no-tsne)"
    if options.tsne and int(masks.counted.sum()) >= 4:
        r["embedding"] = embedding.embed(ds, r["sp"]["both"], options.perplexity, options.max_points, options.seed)
        r["embedding_note"] = None
    elif options.tsne:
        r["embedding_note"] = "not computed: fewer than 4 counted steps"
    sw.start("tables")
    _write_tables(r, masks, tables)
    sw.start("figures")
    policy = json.loads(ds.attrs.get("policy", "null"))
    label = f"{ds.attrs.get('env')} ({_policy_label(policy)}, seed {ds.attrs.get('seed')})"
    episode = _pick_episode(options.episode, r["switch"], masks.counted)
    figure_files = _write_figures(r, masks, options, label, _policy_label(policy), episode, figs)
    sw.stop()
    cand = temporal.candidate_steps(masks.counted)
    emb = r["embedding"]
    summary = {
        "env": str(ds.attrs.get("env")),
        "policy": policy,
        "policy_label": _policy_label(policy),
        "seed": ds.attrs.get("seed"),
        "backend": ds.attrs.get("backend"),
        "dims": {"state": len(masks.state_in), "action": len(masks.action_in), "nq": ds.attrs.get("nq"),
                 "nv": ds.attrs.get("nv"), "nu": ds.attrs.get("nu"), "n_substeps": ds.attrs.get("n_substeps"),
                 "dt": ds.attrs.get("dt"), "solver_iterations": ds.attrs.get("solver_iterations")},
        "data": {"episodes": int(ds.sizes["episode"]), "steps_per_episode": int(ds.sizes["step"]),
                 "valid_steps": int(masks.valid.sum()), "counted_steps": int(masks.counted.sum())},
        "options": options.identity(),
        "contact_definition": ds.attrs.get("contact_definition"),
        "global": r["q1"],
        "local": {"histogram": r["hist"], "levels": {k: v[:50] for k, v in r["levels"].items()},
                  "n_levels": {k: len(v) for k, v in r["levels"].items()}},
        "temporal": {"runs": r["run_summary"], "clustering": r["clustering"],
                     "switches_per_step_mean": float(r["switch"][cand].mean()) if cand.any() else None},
        "contacts": {"by_count": r["by_contacts"], "alignment": r["alignment"],
                     "top_switching": {k: v[:10] for k, v in r["by_variable"].items()}},
        "coverage": r["coverage"],
        "thresholds": r["thresholds"],
        "embedding": {"note": r["embedding_note"]} if emb is None else
                     {k: emb[k] for k in ("perplexity", "requested_perplexity", "points", "of", "seed")},
        "timeseries_episode": episode,
        "figures": figure_files,
        "timing_s": sw.timing,
        "versions": json.loads(ds.attrs.get("versions", "{}")),
    }
    summary["table"] = results.table_row(results.AnalysisSummary.from_json(summary))
    return summary


def _write_tables(r: dict[str, Any], masks: sparsity.Masks, tables: Path) -> None:
    """The CSV tables of the results ``r`` of ``_compute``."""
    import pandas as pd

    sp, switch = r["sp"], r["switch"]
    e_idx, s_idx = np.nonzero(masks.valid)
    pd.DataFrame({
        "episode": e_idx, "step": s_idx, "counted": masks.counted[e_idx, s_idx],
        "n_contacts": masks.n_contacts[e_idx, s_idx], "sparsity_J_s": sp["J_s"][e_idx, s_idx],
        "sparsity_J_a": sp["J_a"][e_idx, s_idx], "sparsity_both": sp["both"][e_idx, s_idx],
        "switching_entries": switch[e_idx, s_idx],
    }).to_csv(tables / "per_step.csv", index=False)
    for name, cols in (("J_s", masks.state_in), ("J_a", masks.action_in)):
        pd.DataFrame(r["pooled"][name], index=pd.Index(masks.out, name="out"), columns=list(cols)).to_csv(
            tables / f"zero_frequency_{name}.csv")
        per = r["per_episode"][name]
        e, o, i = np.meshgrid(np.arange(per.shape[0]), np.arange(len(masks.out)), np.arange(len(cols)), indexing="ij")
        pd.DataFrame({"episode": e.ravel(), "out": np.asarray(masks.out)[o.ravel()], "in": np.asarray(cols)[i.ravel()],
                      "zero_percent": per.ravel()}).to_csv(tables / f"zero_frequency_{name}_per_episode.csv", index=False)
    pd.DataFrame([{"matrix": k, **row} for k in r["levels"] for row in r["levels"][k]]).to_csv(tables / "sparsity_levels.csv", index=False)
    hist = r["hist"]
    pd.DataFrame({"bin_low": hist["edges"][:-1], "bin_high": hist["edges"][1:],
                  **{f"steps_{k}": hist[k]["counts"] for k in local.MATRICES}}).to_csv(tables / "histogram.csv", index=False)
    runs, names = r["runs"], temporal.entry_names(masks)
    pd.DataFrame({
        "episode": runs["episode"], "matrix": [names[j][0] for j in runs["entry"]],
        "out": [names[j][1] for j in runs["entry"]], "in": [names[j][2] for j in runs["entry"]],
        "zero": runs["zero"], "length": runs["length"], "censored": runs["censored"],
    }).to_csv(tables / "runs.csv", index=False)
    pd.DataFrame(r["by_contacts"]).to_csv(tables / "sparsity_by_contacts.csv", index=False)
    pd.DataFrame(r["alignment"]).to_csv(tables / "contact_alignment.csv", index=False)
    pd.DataFrame([{"kind": k, **row} for k in r["by_variable"] for row in r["by_variable"][k]]).to_csv(
        tables / "switches_by_variable.csv", index=False)
    cov = r["coverage"]
    pd.DataFrame({"steps": cov["steps"], "J_s": cov["J_s"], "J_a": cov["J_a"]}).to_csv(tables / "coverage.csv", index=False)
    rows = []
    for kind, s in r["thresholds"].items():
        for i, t in enumerate(s["thresholds"]):
            rows.append({"kind": kind, "threshold": t, **{
                f"{m}_{k}": (s[m][k][i] if s[m][k] is not None else None)
                for m in ("global_zero_percent", "mean_sparsity") for k in ("J_s", "J_a", "both")}})
    pd.DataFrame(rows).to_csv(tables / "thresholds.csv", index=False)
    if r["embedding"] is not None:
        pd.DataFrame({k: r["embedding"][k] for k in ("episode", "step", "x", "y", "sparsity")}).to_csv(
            tables / "embedding.csv", index=False)


def _write_figures(r: dict[str, Any], masks: sparsity.Masks, options: AnalyzeOptions, label: str,
                   policy_label: str, episode: int, figs: Path) -> dict[str, list[str]]:
    """The figures of the results ``r`` of ``_compute``; returns kind -> file names."""
    from dynsparse.render import figures

    sp = r["sp"]
    default = options.threshold if options.kind == "absolute" else sparsity.DEFAULT_THRESHOLD
    makers = {
        "zero_frequency": lambda: figures.zero_frequency(
            r["pooled"], masks.out, masks.state_in, masks.action_in,
            f"{label}: % of {int(masks.counted.sum())} steps each entry is zero"),
        "histogram": lambda: figures.histogram(r["hist"], f"{label}: per-sample sparsity"),
        "timeseries": lambda: figures.timeseries({k: sp[k][episode] for k in local.MATRICES}, masks.n_contacts[episode],
                                                 r["switch"][episode], f"{label}: episode {episode}"),
        "run_lengths": lambda: figures.run_lengths(r["runs"], r["run_summary"], f"{label}: runs of consecutive zero / non-zero steps"),
        "thresholds": lambda: figures.thresholds(r["thresholds"], default, f"{label}: threshold sensitivity"),
        "coverage": lambda: figures.coverage([(policy_label, r["coverage"])], f"{label}: global zeros vs data pooled"),
    }
    if r["embedding"] is not None:
        makers["embedding"] = lambda: figures.embedding(r["embedding"], f"{label}: t-SNE of (s, a, s')")
    return {kind: [p.name for p in figures.save(make(), figs / kind, options.formats)] for kind, make in makers.items()}


class _Stopwatch:
    """Wall time per stage, reporting each stage as it starts."""

    def __init__(self, stage: Callable[[str], None]):
        self.stage, self.timing, self.current, self.t0 = stage, {}, None, 0.0

    def start(self, name: str) -> None:
        self.stop()
        self.current, self.t0 = name, time.perf_counter()
        self.stage(name)

    def stop(self) -> None:
        if self.current is not None:
            self.timing[self.current] = round(time.perf_counter() - self.t0, 3)
            self.current = None


def _pick_episode(requested: int | None, per_step_switch: np.ndarray, counted: np.ndarray) -> int:
    """The time-series episode: the requested one (range-checked in ``analyze``) or the one with
    most switch steps."""
    if requested is not None:
        return int(requested)
    return int(np.argmax((per_step_switch > 0).sum(axis=1)))


def _policy_label(policy: Any) -> str:
    if not isinstance(policy, dict):
        return str(policy)
    if policy.get("name") == "ppo":
        ret = policy.get("eval_return")
        ret_text = "return ?" if ret is None else f"eval return {ret:.1f}"
        return f"ppo ({ret_text}, beta {policy.get('beta')}, scale {policy.get('scale')})"
    extras = ", ".join(f"{k} {v}" for k, v in policy.items() if k != "name")
    return f"{policy.get('name')}" + (f" ({extras})" if extras else "")
