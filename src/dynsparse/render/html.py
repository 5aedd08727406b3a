"""Self-contained HTML (images embedded as data URIs, no external resources): the per-env page of
``analyze`` and the cross-env report of ``report``."""

from __future__ import annotations

import base64
import html
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


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.3g}"
        return f"{x:.3f}".rstrip("0").rstrip(".") if abs(x) < 1 else f"{x:.2f}"
    return html.escape(str(x))


def _num(x: Any, spec: str) -> str:
    """A number formatted with ``spec``; anything else (a damaged summary) escaped as text."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return format(x, spec)
    return _fmt(x)


def anchor(i: int, env: Any) -> str:
    """The id of the ``i``-th section: ``env-I-NAME``, the name reduced to ``[A-Za-z0-9_-]``."""
    return f"env-{i}-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(env))


def _cell(row: dict[str, Any], key: str, extra: str | None) -> str:
    if key == "certificates":
        if not row.get("checked_steps"):
            return "not checked"
        return " / ".join(_fmt(row.get(f) or 0) for f in CERTIFICATE_FIELDS) + f" ({_fmt(row.get('checked_steps'))})"
    text = _fmt(row.get(key))
    if extra is not None:
        value = row.get(extra)
        text += f" ({_fmt(value)}{'%' if extra.endswith('pct') and value is not None else ''})"
    return text


def cross_env_table(rows: Sequence[dict[str, Any]], anchors: Sequence[str] | None = None, cls: str = "cross-env") -> str:
    """HTML table with one row per analysis (the ``table`` entries of summaries)."""
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in TABLE_COLUMNS)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for key, _, extra in TABLE_COLUMNS:
            text = _cell(row, key, extra)
            if key == "env" and anchors:
                text = f'<a href="#{html.escape(anchors[i])}">{text}</a>'
            cells.append(f"<td>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _img(path: Path, kind: str, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img data-kind="{kind}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def figure_block(path: Path, kind: str, title: str) -> str:
    """One embedded PNG figure with its caption."""
    return f"<figure>{_img(path, kind, f'{title}: {kind}')}<figcaption>{html.escape(CAPTIONS[kind])}</figcaption></figure>"


def _rows_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], cls: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def section(summary: "results.AnalysisSummary", folder: Path, anchor: str, extra_figures: str = "") -> str:
    """The HTML section of one analysis (figures read from ``folder/figures``)."""
    env = _fmt(summary.env)
    d, g, opts = summary.data, summary.global_, summary.options
    parts = [f'<section id="{html.escape(anchor)}" class="env"><h2>{env} &mdash; {_fmt(summary.policy_label)}, seed {_fmt(summary.seed)}</h2>']
    parts.append(
        f"<p>Data: {_fmt(d.episodes)} episodes &times; {_fmt(d.steps_per_episode)} steps, {_fmt(d.counted_steps)} steps counted "
        f"(of {_fmt(d.valid_steps)} valid). Policy: <code>{html.escape(json.dumps(summary.policy))}</code>. "
        f"Jacobians by {html.escape(str(summary.backend))}; state dim {_fmt(summary.dims.state)}, action dim "
        f"{_fmt(summary.dims.action)}, {_fmt(summary.dims.n_substeps)} substeps of the solver with "
        f"{_fmt(summary.dims.solver_iterations)} iteration(s). Zero rule: {_fmt(opts['kind'])} threshold {_num(opts['threshold'], 'g')}. "
        f"Source: <code>{html.escape(str(summary.source or ''))}</code>.</p>"
    )
    parts.append(cross_env_table([summary.table], cls="env-summary"))
    parts.append(check_paragraph(summary))
    cov = summary.coverage
    for name in ("J_s", "J_a"):
        last = cov["last_change"].get(name)
        if last is not None and cov["n_steps"] and last > cov["n_steps"] / 2:
            parts.append(
                f'<p class="warn">The {name} global-zero count last changed after {_fmt(last)} of {_fmt(cov["n_steps"])} pooled steps: '
                "it has not saturated, so some of its global zeros may only be states this data never visited.</p>"
            )
    parts.append(inactive_paragraph(summary))
    files = summary.figures
    title = f"{summary.env} ({summary.policy_label})"
    for kind in figures_lib.KINDS:
        if kind in files:
            parts.append(figure_block(folder / "figures" / f"{kind}.png", kind, title))
        elif kind == "embedding":
            parts.append(f"<p>t-SNE: {html.escape(summary.embedding.get('note', ''))}</p>")
    parts.append(extra_figures)
    levels = sorted(summary.local["levels"]["both"], key=lambda r: -r["share"])
    parts.append(
        f"<p>Per-sample sparsity of [J_s | J_a] takes {_fmt(summary.local['n_levels']['both'])} distinct value(s); the most "
        "common: " + ", ".join(f"{_num(r['sparsity'], '.3f')} ({_num(100 * r['share'], '.1f')}% of steps)" for r in levels[:5]) + ".</p>"
    )
    clus = summary.temporal["clustering"]
    runs = summary.temporal["runs"]
    parts.append("<h3>Temporal structure</h3>")
    parts.append(
        f"<p>{_fmt(runs['switching_pairs'])} (episode, entry) pairs switch at least once; "
        f"{_fmt(runs['constant_pairs']['zero'])} are zero and {_fmt(runs['constant_pairs']['nonzero'])} non-zero throughout their episode "
        f"(excluded from run lengths). Zero runs: {_fmt(runs['zero_runs']['runs'])}, mean {_fmt(runs['zero_runs']['mean'])} steps "
        f"(uncensored {_fmt(runs['zero_runs']['uncensored_mean'])}); non-zero runs: {_fmt(runs['nonzero_runs']['runs'])}, mean "
        f"{_fmt(runs['nonzero_runs']['mean'])} (uncensored {_fmt(runs['nonzero_runs']['uncensored_mean'])}).</p>"
        f"<p>Switch clustering: {_fmt(clus['event_steps'])} of {_fmt(clus['candidate_steps'])} steps have a switch; burstiness of the "
        f"gaps between them {_fmt(clus['observed']['burstiness'])} against {_fmt(clus['shuffled']['burstiness_mean'])} "
        f"(90% band {_fmt(clus['shuffled']['burstiness_q05'])} .. {_fmt(clus['shuffled']['burstiness_q95'])}) for the same number "
        f"of switch steps placed at random; p = {_fmt(clus['p_value'])} ({_fmt(clus['n_shuffles'])} shuffles).</p>"
    )
    parts.append("<h3>Contacts</h3>")
    parts.append(f"<p>Contact definition: {html.escape(str(summary.contact_definition))}</p>")
    parts.append(_rows_table(summary.contacts["by_count"], ["n_contacts", "steps", "share", "J_s_mean", "J_a_mean", "both_mean", "both_std"], "by-contacts"))
    parts.append(_rows_table(summary.contacts["alignment"], ["k", "switch_steps", "near_switch_steps", "observed", "entry_weighted", "chance", "lift", "p_value", "contact_changes"], "alignment"))
    top = summary.contacts["top_switching"]
    parts.append("<p>Variables whose rows / columns switch most: " + "; ".join(
        f"{kind.replace('_', ' ')}: " + ", ".join(f"{_fmt(r['variable'])} ({_fmt(r['switches'])})" for r in top[kind][:5])
        for kind in ("rows", "state_columns", "action_columns")) + "</p>")
    parts.append("<h3>Global zeros (named)</h3>")
    risky: dict[str, list[str]] = {}
    for c in (g.get("inactive") or {}).get("constraints", []):
        for e in c.get("zeros", []):
            risky.setdefault(e, []).append(f"{c['name']} {c['kind']}")
    for name in ("J_s", "J_a"):
        entries = g[name]["entries"]
        items = "".join(
            f"<li>{_fmt(e)}" + (f" <em>(may be unvisited: {_fmt(', '.join(risky[e]))} never active)</em>" if e in risky else "") + "</li>"
            for e in entries
        )
        parts.append(f"<details><summary>{name}: {len(entries)} entries zero at every counted step</summary><ul>{items}</ul></details>")
    parts.append("</section>")
    return "\n".join(parts)


def inactive_paragraph(summary: "results.AnalysisSummary", limit: int = 8) -> str:
    """The constraints never active in the data and the global zeros they may hide
    (``metrics.constraints``); empty for summaries written before it existed."""
    inactive = summary.global_.get("inactive")
    if not inactive:
        return ""
    note = f" {_fmt(inactive['note'])}." if inactive.get("note") else ""
    cons = inactive["constraints"]
    risky = [c for c in cons if c.get("zeros")]
    if not risky:
        return (f"<p>Constraints never active in the {_fmt(inactive['steps'])} counted steps: {_fmt(len(cons))}; none of them "
                f"acts on a variable with a global zero.{note}</p>")
    items = "".join(
        f"<li>{_fmt(c['name'])} {_fmt(c['kind'])} never active in {_fmt(inactive['steps'])} steps: {_fmt(len(c['zeros']))} zeros in "
        f"column(s) {_fmt(', '.join(sorted({e.split(' <- ', 1)[1] for e in c['zeros']})))} may be unvisited</li>"
        for c in risky[:limit]
    )
    more = f"<li>... and {_fmt(len(risky) - limit)} more</li>" if len(risky) > limit else ""
    return (
        f'<div class="warn"><p>{_fmt(inactive["zeros_at_risk"])} global zero(s) may only mean that the data never activated a '
        f"constraint that acts on their input variable ({_fmt(len(cons))} constraint(s) never active, {_fmt(len(risky))} of them "
        f"touching global zeros; a flag, not a proof).{note}</p><ul>{items}{more}</ul></div>"
    )


def check_paragraph(summary: "results.AnalysisSummary") -> str:
    """What the certificates (``collect --check-every``) say about this analysis's Jacobians."""
    g = summary.global_
    chk = g.get("check", {})
    definition = html.escape(str(g.get("jacobian")))
    if not chk.get("checked_steps"):
        return (f"<p class=\"warn\">Jacobian definition <code>{definition}</code>. The Jacobians were not certified "
                "against finite differences (collect --check-every K).</p>")
    classes = chk["classes"]
    shares = ", ".join(f"{_fmt(name)} {_fmt(count)} ({_num(100 * chk['shares'][name], '.1f')}%)" for name, count in classes.items())
    text = (
        f"Jacobian definition <code>{definition}</code>. Certificates at {_fmt(chk['checked_steps'])} steps against finite "
        f"differences of the same function (MJX and native MuJoCo, eps 1e-5 to 1e-7): {shares}; largest scaled error "
        f"{_fmt(chk.get('max_err'))}. <em>kink</em>: finite differences change across eps (a contact or friction "
        "switch within eps: no derivative at that scale); <em>native-differs</em>: native MuJoCo does not reproduce "
        "MJX's step there; <em>wrong</em>: the stored Jacobian disagrees with stable finite differences."
    )
    solver = g.get("solver")
    if solver and solver.get("steps_truncated"):
        text += (f" The {definition} solve stopped at its iteration cap at {_fmt(solver['steps_truncated'])} of "
                 f"{_fmt(solver['steps'])} steps (largest residual {_fmt(solver.get('max_residual'))}).")
    cls = ' class="warn"' if classes.get("wrong") else ""
    return f"<p{cls}>{text}</p>"


def learn_section(folder: Path) -> str:
    """The learnability section of one ``dynsparse learn`` folder: both figures, the mean table
    per (environment, loss) and the paired tests against ``mse``."""
    rows = results.read_learn_runs(folder)
    summary = results.read_learn(folder) or {}
    tests = summary.get("tests", [])
    opts = summary.get("options", {})
    means = results.learn_mean_table(rows)
    cols = ["env", "loss", "seeds", "mse_norm", "relative_sparsity", "zero_precision", "zero_recall", "shd",
            "sparsity_model", "sparsity_true", "s_per_epoch"]
    figs = "".join(
        f"<figure>{_img(folder / 'figures' / f'{stem}.png', f'learn_{stem}', caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"
        for stem, caption in (("mse", ("Normalised next-state test MSE per loss variant (boxes over environments, "
                                        "mean over seeds; grey: the untrained networks).")),
                              ("sparsity", ("Model Jacobian sparsity relative to the ground truth (1, dashed) per loss "
                                            "variant; grey: the untrained networks.")))
    )
    model_thr, true_thr = opts.get("model_threshold"), opts.get("true_threshold")
    return (
        f'<section class="learn"><h2>Learnability &mdash; {html.escape(str(folder))}</h2>'
        f"<p>MLP world models trained on the datasets' transitions (split by episode), evaluated on held-out "
        f"episodes. Model Jacobian entries count as zero below {_fmt(model_thr)}, ground-truth entries below "
        f"{_fmt(true_thr)}. Paired two-sided Wilcoxon signed-rank tests of each Jacobian-loss variant against "
        f"<code>mse</code> over (environment, seed) pairs.</p>{figs}"
        f"<h3>Means over seeds</h3>{_rows_table(means, cols, 'learn-table')}"
        f"<h3>Tests against mse</h3>{_rows_table(tests, ['loss', 'metric', 'pairs', 'median_difference', 'p_value'], 'learn-tests')}"
        "</section>"
    )


def page(title: str, analyses: Sequence[tuple["results.AnalysisSummary", Path]], intro: str = "",
         extra: dict[int, str] | None = None, appendix: str = "") -> str:
    """A whole self-contained HTML document: the cross-env table, then one section per analysis.

    Args:
      analyses: ``(summary, folder)`` pairs.
      intro: HTML put under the title.
      extra: analysis index -> extra HTML put in its section (e.g. an overlay figure).
      appendix: HTML put after the sections (the learnability sections).
    """
    anchors = [anchor(i, a[0].env) for i, a in enumerate(analyses)]
    sections = [section(s, f, anchors[i], (extra or {}).get(i, "")) for i, (s, f) in enumerate(analyses)]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{intro}"
        f"<h2>All environments</h2>{cross_env_table([s.table for s, _ in analyses], anchors)}"
        + "\n".join(sections) + appendix + "</body></html>\n"
    )
