"""``report``: analysis folders -> one self-contained HTML report with the cross-env table
(and a learnability section for each ``dynsparse learn`` folder given).

Output folder: ``index.html`` (usable offline: every image is embedded), ``table.csv`` and
``report.json`` (the cross-env table and where each row came from), and ``figures/`` with the
coverage overlays of environments analysed under several policies. A folder that holds an
earlier report (``report.json``, and nothing but the files above) is rebuilt whole and swapped in
(``files.publish``); any other non-empty folder is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from dynsparse import errors, files, locks, results
from dynsparse.render import figures, html

MARKER = "report.json"
#: everything a report folder holds (it is rebuilt whole; a folder holding more is refused)
FILES = ("index.html", "table.csv", MARKER, "figures")


@locks.writes("out")
def build(folders: Sequence[str | Path], out: str | Path, title: str = "dynsparse report", intro: str = "") -> Path:
    """Write the report of the analysis ``folders`` into ``out``; return the HTML path.

    Raises:
      UserError: no folders, a folder that is not a finished analysis, or an ``out`` that is not
        a report folder.
    """
    if not folders:
        raise errors.UserError("no analysis folders given; allowed: one or more folders written by `dynsparse analyze`")
    out = Path(out)
    files.claim(out, MARKER, files.ANY, "report", owned=FILES)
    analyses = []
    learned = []
    for folder in map(Path, folders):
        if results.read_learn(folder) is not None:
            learned.append(folder)
            continue
        summary = results.read_analysis(folder)
        if summary is None:
            raise errors.UserError(
                f"{str(folder)!r} is not a finished analysis (no readable {results.SUMMARY}) nor a `dynsparse learn` "
                f"folder (no {results.LEARN_MARKER}); run `dynsparse analyze` first"
            )
        analyses.append((summary, folder))
    if not analyses:
        raise errors.UserError("no analysis folders given (only learn folders); a report needs at least one `dynsparse analyze` folder")
    with files.publish(out, replace=True) as tmp:
        _write(tmp, title, intro, analyses, learned)
    return out / "index.html"


def _write(out: Path, title: str, intro: str, analyses: list[tuple[results.AnalysisSummary, Path]], learned: list[Path]) -> None:
    """The report's files in the (new, empty) folder ``out``: index.html, figures/, table.csv, the marker."""
    import pandas as pd

    (out / "figures").mkdir()
    extra: dict[int, str] = {}
    by_env: dict[str, list[int]] = {}
    for i, (summary, _) in enumerate(analyses):
        by_env.setdefault(summary.env, []).append(i)
    for env, idx in by_env.items():
        if len(idx) > 1:
            curves = [(f"{analyses[i][0].policy_label}, seed {analyses[i][0].seed}", analyses[i][0].coverage) for i in idx]
            fig = figures.coverage(curves, f"{env}: global zeros vs data pooled, by policy")
            path = figures.save(fig, out / "figures" / f"coverage_{env}", ("png", "svg"))[0]
            extra[idx[0]] = html.figure_block(path, "coverage", env)
    page = html.page(title, analyses, intro, extra, appendix="".join(html.learn_section(f) for f in learned))
    (out / "index.html").write_text(page)
    rows = [s.table for s, _ in analyses]
    pd.DataFrame(rows).to_csv(out / "table.csv", index=False)
    (out / MARKER).write_text(json.dumps({"analyses": [str(f) for _, f in analyses], "learn": [str(f) for f in learned],
                                          "table": rows}, indent=1))
