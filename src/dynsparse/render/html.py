"""Self-contained HTML (images embedded as data URIs, no external resources): the per-env page of
``analyze``, the cross-env report of ``report`` and the learnability section of a ``learn``
folder, from the jinja2 templates in ``render/templates`` (autoescaped: every value from a
summary is escaped; only HTML this package builds itself is inserted as is)."""

from __future__ import annotations

import base64
import functools
import json
import re
from pathlib import Path
from typing import Any, Sequence

from dynsparse import results
from dynsparse.render import figures as figures_lib

CAPTIONS = {
    "zero_frequency": "Per-element zero frequency: % of counted steps at which each entry of J_s and J_a is zero "
                      "(100% = zero at every step, a global zero).",
    "embedding": "t-SNE of the standardised (s, a, s') tuples, coloured by the per-sample sparsity of [J_s | J_a].",
    "histogram": "Distribution of per-sample sparsity (zeros / entries per step); the red line marks the mean.",
    "timeseries": "Per-sample sparsity along one episode (top), active contacts on the same time axis (green), "
                  "and the number of entries switching between zero and non-zero at each step (bottom).",
    "run_lengths": "Lengths of runs of consecutive zero (left) and non-zero (right) steps of entries that switch "
                   "within an episode, log-log; the red line marks the mean.",
    "thresholds": "Global-zero percentage (solid) and mean per-sample sparsity (dashed) against the zero threshold, "
                  "absolute (left) and relative to the row's L2 norm (right).",
    "coverage": "Global-zero count against the number of steps pooled: a curve still falling at the right end has "
                "not saturated, and more or different data would lower the count.",
}

LEARN_CAPTIONS = (
    ("mse", "Normalised next-state test MSE per loss variant (boxes over environments, mean over seeds; grey: the "
            "untrained networks)."),
    ("sparsity", "Model Jacobian sparsity relative to the ground truth (1, dashed) per loss variant; grey: the "
                 "untrained networks."),
)

LEARN_COLUMNS = ("env", "loss", "seeds", "mse_norm", "relative_sparsity", "zero_precision", "zero_recall", "shd",
                 "sparsity_model", "sparsity_true", "s_per_epoch")

TABLE_COLUMNS = (
    ("env", "environment", None),
    ("policy", "policy", None),
    ("counted_steps", "steps", None),
    ("state_dim", "d_s", None),
    ("action_dim", "d_a", None),
    ("J_s_global_zeros", "J_s global zeros", "J_s_global_zero_pct"),
    ("J_a_global_zeros", "J_a global zeros", "J_a_global_zero_pct"),
    ("mean_sparsity_J_s", "mean sparsity J_s", None),
    ("mean_sparsity_J_a", "mean sparsity J_a", None),
    ("mean_zero_run", "mean zero run (steps)", None),
    ("mean_nonzero_run", "mean non-zero run (steps)", None),
    ("switch_burstiness", "switch burstiness (shuffled)", "switch_burstiness_shuffled"),
    ("switch_near_contact_change", "switches near contact change (chance)", "chance"),
    ("lift", "lift", None),
    ("contact_p", "p (binomial)", None),
    ("jacobian", "Jacobian definition", None),
    ("certificates", "certified / kink / native differs / wrong (steps checked)", None),
    ("solver_truncated_steps", "steps with a truncated solve", None),
)

#: the row fields the ``certificates`` cell shows, in order
CERTIFICATE_FIELDS = ("check_certified", "check_kink", "check_native_differs", "check_wrong")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.35em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; } .warn { color: #a40; } code { background: #f6f6f6; }
section { border-top: 2px solid #ddd; margin-top: 2em; padding-top: 0.5em; }
"""


def _text(x: Any) -> str:
    """A value as short text (not escaped): ``n/a`` for None, 3 significant digits for floats."""
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.3g}"
        return f"{x:.3f}".rstrip("0").rstrip(".") if abs(x) < 1 else f"{x:.2f}"
    return str(x)


def _num_text(x: Any, spec: str) -> str:
    """A number formatted with ``spec``; anything else (a damaged summary) as ``_text``."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return format(x, spec)
    return _text(x)


@functools.lru_cache(maxsize=1)
def _env() -> Any:
    import jinja2
    import markupsafe

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["fmt"] = _text
    env.filters["num"] = _num_text
    env.filters["raw"] = markupsafe.Markup  # HTML built by this package (sections, paragraphs)
    env.globals["cell"] = _cell
    return env


def _render(template: str, **values: Any) -> str:
    return _env().get_template(template).render(**values)


def anchor(i: int, env: Any) -> str:
    """The id of the ``i``-th section: ``env-I-NAME``, the name reduced to ``[A-Za-z0-9_-]``."""
    return f"env-{i}-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(env))


def _cell(row: dict[str, Any], key: str, extra: str | None) -> str:
    """The text of one cross-env table cell (escaped by the template)."""
    if key == "certificates":
        if not row.get("checked_steps"):
            return "not checked"
        return " / ".join(_text(row.get(f) or 0) for f in CERTIFICATE_FIELDS) + f" ({_text(row.get('checked_steps'))})"
    text = _text(row.get(key))
    if extra is not None:
        value = row.get(extra)
        text += f" ({_text(value)}{'%' if extra.endswith('pct') and value is not None else ''})"
    return text


def cross_env_table(rows: Sequence[dict[str, Any]], anchors: Sequence[str] | None = None, cls: str = "cross-env") -> str:
    """HTML table with one row per analysis (the ``table`` entries of summaries)."""
    module = _env().get_template("macros.html.j2").module
    return str(module.cross_env_table(list(rows), list(anchors) if anchors else None, cls, TABLE_COLUMNS))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure_block(path: Path, kind: str, title: str) -> str:
    """One embedded PNG figure with its caption."""
    module = _env().get_template("macros.html.j2").module
    return str(module.figure(_data_uri(path), kind, f"{title}: {kind}", CAPTIONS[kind]))


def check_paragraph(summary: results.AnalysisSummary) -> str:
    """What the certificates (``collect --check-every``) say about this analysis's Jacobians."""
    return _render("check.html.j2", g=summary.global_)


def inactive_paragraph(summary: results.AnalysisSummary, limit: int = 8) -> str:
    """The constraints never active in the data and the global zeros they may hide
    (``metrics.constraints``); empty for summaries written before it existed."""

    def columns(zeros: Sequence[str]) -> str:
        return ", ".join(sorted({e.split(" <- ", 1)[1] for e in zeros}))

    return _render("inactive.html.j2", inactive=summary.global_.get("inactive"), limit=limit, columns=columns)


def section(summary: results.AnalysisSummary, folder: Path, anchor: str, extra_figures: str = "") -> str:
    """The HTML section of one analysis (figures read from ``folder/figures``)."""
    title = f"{summary.env} ({summary.policy_label})"
    shown = []
    for kind in figures_lib.KINDS:
        if kind in summary.figures:
            shown.append({"uri": _data_uri(folder / "figures" / f"{kind}.png"), "kind": kind, "alt": f"{title}: {kind}",
                          "caption": CAPTIONS[kind]})
        elif kind == "embedding":
            shown.append({"uri": None, "note": summary.embedding.get("note", "")})
    risky: dict[str, list[str]] = {}
    for c in (summary.global_.get("inactive") or {}).get("constraints", []):
        for e in c.get("zeros", []):
            risky.setdefault(e, []).append(f"{c['name']} {c['kind']}")
    return _render(
        "section.html.j2", s=summary, anchor=anchor, columns=TABLE_COLUMNS, policy_json=json.dumps(summary.policy),
        check=check_paragraph(summary), inactive=inactive_paragraph(summary), figures=shown, extra=extra_figures,
        levels=sorted(summary.local["levels"]["both"], key=lambda r: -r["share"])[:5], risky=risky,
    )


def learn_section(folder: Path) -> str:
    """The learnability section of one ``dynsparse learn`` folder: both figures, the mean table
    per (environment, loss) and the paired tests against ``mse``."""
    summary = results.read_learn(folder) or {}
    opts = summary.get("options", {})
    shown = [{"uri": _data_uri(folder / "figures" / f"{stem}.png"), "kind": f"learn_{stem}", "caption": caption}
             for stem, caption in LEARN_CAPTIONS]
    return _render(
        "learn.html.j2", folder=str(folder), model_threshold=opts.get("model_threshold"), true_threshold=opts.get("true_threshold"),
        figures=shown, means=results.learn_mean_table(results.read_learn_runs(folder)), mean_columns=LEARN_COLUMNS,
        tests=summary.get("tests", []),
    )


def page(title: str, analyses: Sequence[tuple[results.AnalysisSummary, Path]], intro: str = "",
         extra: dict[int, str] | None = None, appendix: str = "") -> str:
    """A whole self-contained HTML document: the cross-env table, then one section per analysis.

    Args:
      analyses: ``(summary, folder)`` pairs.
      intro: HTML put under the title (built by dynsparse, inserted as is).
      extra: analysis index -> extra HTML put in its section (e.g. an overlay figure).
      appendix: HTML put after the sections (the learnability sections).
    """
    anchors = [anchor(i, s.env) for i, (s, _) in enumerate(analyses)]
    sections = [section(s, f, anchors[i], (extra or {}).get(i, "")) for i, (s, f) in enumerate(analyses)]
    return _render("page.html.j2", title=title, style=STYLE, intro=intro, sections=sections, appendix=appendix,
                   table=cross_env_table([s.table for s, _ in analyses], anchors))
