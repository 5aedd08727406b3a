"""``analyze`` and ``report`` end to end on a small real dataset (a ball hopping over a floor)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from helpers import rerecord_checksums

from dynsparse import analysis, cli, errors
from dynsparse.metrics import sparsity, structure
from dynsparse.render import figures
from dynsparse.report import build


def test_analysis_writes_every_metric_table_and_figure(bouncer_analysis):
    out = bouncer_analysis
    summary = json.loads((out / "summary.json").read_text())
    for kind in figures.KINDS:
        for fmt in ("png", "svg"):
            path = out / "figures" / f"{kind}.{fmt}"
            assert path.stat().st_size > 1000, path
    assert summary["figures"]["embedding"] == ["embedding.png", "embedding.svg"]
    for table in ("per_step", "zero_frequency_J_s", "zero_frequency_J_a", "zero_frequency_J_s_per_episode", "runs",
                  "sparsity_levels", "histogram", "sparsity_by_contacts", "contact_alignment", "switches_by_variable",
                  "coverage", "thresholds", "embedding"):
        assert len(pd.read_csv(out / "tables" / f"{table}.csv")) > 0, table
    assert (out / "index.html").read_text().count('data-kind="') == len(figures.KINDS)
    assert set(summary["timing_s"]) == set(analysis.STAGES)
    assert summary["data"] == {"episodes": 3, "steps_per_episode": 80, "valid_steps": 240, "counted_steps": 240}


def test_analysis_agrees_with_an_independent_reading_of_the_dataset(bouncer_store, bouncer_analysis):
    summary = json.loads((bouncer_analysis / "summary.json").read_text())
    ds = xr.open_zarr(bouncer_store)
    js, ja = ds["J_s"].values, ds["J_a"].values
    zs, za = np.abs(js) < 1e-12, np.abs(ja) < 1e-12
    per_step = pd.read_csv(bouncer_analysis / "tables" / "per_step.csv")
    np.testing.assert_allclose(per_step["sparsity_J_s"], zs.mean(axis=(2, 3)).ravel())
    np.testing.assert_allclose(per_step["sparsity_both"], (zs.sum(axis=(2, 3)) + za.sum(axis=(2, 3))).ravel() / 24)
    switching = (zs[:, 1:] != zs[:, :-1]).sum(axis=(2, 3)) + (za[:, 1:] != za[:, :-1]).sum(axis=(2, 3))
    np.testing.assert_array_equal(per_step["switching_entries"].to_numpy().reshape(3, 80)[:, 1:], switching)
    q1 = structure.global_structure(xr.open_zarr(bouncer_store), 1e-12)
    assert summary["table"]["J_s_global_zeros"] == q1["J_s"]["zeros"] == int(zs.all(axis=(0, 1)).sum())
    freq = pd.read_csv(bouncer_analysis / "tables" / "zero_frequency_J_s.csv", index_col=0)
    np.testing.assert_allclose(freq.to_numpy(), 100 * zs.mean(axis=(0, 1)))
    assert list(freq.columns) == ["qpos:x", "qpos:z", "qvel:x", "qvel:z"]


def test_contact_pairs_are_stored_by_name(bouncer_store):
    ds = xr.open_zarr(bouncer_store)
    assert list(ds["contact_pair"].values) == ["floor|ball"]
    np.testing.assert_array_equal(ds["contact_pairs"].values[..., 0], ds["n_contacts"].values > 0)
    assert 0 < ds["contact_pairs"].values.mean() < 1


def test_bouncer_physics_known_answers(bouncer_analysis):
    """Facts true of the model on paper: the floor is invariant along x, so qpos:x influences
    only itself; in flight x and z are decoupled, so steps without contact are sparser; and the
    entries that switch do so when contacts come and go."""
    summary = json.loads((bouncer_analysis / "summary.json").read_text())
    entries = set(summary["global"]["J_s"]["entries"])
    assert {"qpos:z <- qpos:x", "qvel:x <- qpos:x", "qvel:z <- qpos:x"} <= entries
    by_count = {row["n_contacts"]: row for row in summary["contacts"]["by_count"]}
    assert by_count[0]["steps"] > 0 and by_count[1]["steps"] > 0
    assert by_count[0]["both_mean"] > by_count[1]["both_mean"]
    k1 = next(row for row in summary["contacts"]["alignment"] if row["k"] == 1)
    assert k1["lift"] > 1.5 and k1["p_value"] < 0.01
    assert summary["global"]["check"]["checked_steps"] == 24


def test_analysis_is_never_overwritten(bouncer_store, bouncer_analysis, tmp_path):
    before = (bouncer_analysis / "summary.json").stat().st_mtime_ns
    # same dataset and options: up to date, untouched
    assert analysis.analyze(bouncer_store, bouncer_analysis, analysis.AnalyzeOptions(shuffles=50)) == bouncer_analysis
    assert (bouncer_analysis / "summary.json").stat().st_mtime_ns == before
    with pytest.raises(errors.UserError, match="already exists"):
        analysis.analyze(bouncer_store, bouncer_analysis, analysis.AnalyzeOptions(shuffles=51))
    assert (bouncer_analysis / "summary.json").stat().st_mtime_ns == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(errors.UserError, match="already exists"):
        analysis.analyze(bouncer_store, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_interrupted_analysis_leaves_nothing(bouncer_store, tmp_path):
    def stop(stage):
        if stage == "figures":
            raise KeyboardInterrupt

    out = tmp_path / "a"
    with pytest.raises(KeyboardInterrupt):
        analysis.analyze(bouncer_store, out, analysis.AnalyzeOptions(tsne=False, shuffles=5), on_stage=stop)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field, value, match", [
    ("bin_width", 0.3, "bin width"), ("perplexity", 0.0, "perplexity"), ("max_points", 2, "max-points"),
    ("shuffles", 0, "shuffles"), ("windows", (-1,), "windows"), ("formats", ("png", "jpg"), "jpg"),
    ("threshold", -1.0, "threshold"), ("kind", "log", "kind"),
])
def test_bad_options_are_refused_before_reading(field, value, match, tmp_path):
    with pytest.raises(errors.UserError, match=match):
        analysis.analyze(tmp_path / "missing.zarr", tmp_path / "out", analysis.AnalyzeOptions(**{field: value}))


def test_relative_threshold_and_pdf_and_episode(bouncer_store, tmp_path):
    out = analysis.analyze(bouncer_store, tmp_path / "rel", analysis.AnalyzeOptions(
        threshold=1e-6, kind="relative", tsne=False, shuffles=5, episode=1, formats=("pdf",)))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timeseries_episode"] == 1 and "embedding" not in summary["figures"]
    assert (out / "figures" / "histogram.pdf").read_bytes()[:4] == b"%PDF"
    masks = sparsity.masks_of(xr.open_zarr(bouncer_store), 1e-6, "relative")
    assert summary["local"]["histogram"]["J_s"]["mean"] == pytest.approx(masks.J_s.mean())
    with pytest.raises(errors.UserError, match="episode 7 does not exist"):
        analysis.analyze(bouncer_store, tmp_path / "e7", analysis.AnalyzeOptions(tsne=False, shuffles=5, episode=7))


def test_report_combines_analyses_and_overlays_policies(bouncer_analysis, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(bouncer_analysis, other)
    summary = json.loads((other / "summary.json").read_text())
    summary["policy_label"] = "random"
    summary["table"]["policy"] = "random"
    (other / "summary.json").write_text(json.dumps(summary))
    page = build.build([bouncer_analysis, other], tmp_path / "report", title="t")
    text = page.read_text()
    assert text.count('<section id="env-') == 2
    assert text.count("<tr>") >= 3 and 'class="cross-env"' in text
    assert text.count('data-kind="coverage"') == 3  # one per analysis + the overlay of both policies
    assert (tmp_path / "report" / "figures" / "coverage_Bouncer.png").exists()
    assert len(pd.read_csv(tmp_path / "report" / "table.csv")) == 2
    assert "src=\"http" not in text and "href=\"http" not in text  # self-contained
    build.build([bouncer_analysis], tmp_path / "report")  # an earlier report folder is rewritten
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("keep")
    with pytest.raises(errors.UserError, match="not a dynsparse report"):
        build.build([bouncer_analysis], foreign)
    with pytest.raises(errors.UserError, match="not a finished analysis"):
        build.build([tmp_path], tmp_path / "r2")


def test_cli_analyze_and_report(bouncer_store, tmp_path, capsys):
    out = tmp_path / "a"
    assert cli.main(["analyze", str(bouncer_store), "--out", str(out), "--no-tsne", "--shuffles", "5"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert cli.main(["report", str(out), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").exists()
    assert cli.main(["analyze", str(bouncer_store), "--out", str(tmp_path / "b"), "--bin-width", "0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bin width 0.3" in err
    assert cli.main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r3")]) == 2
    assert "not a finished analysis" in capsys.readouterr().err


def test_report_in_headless_chromium(bouncer_analysis, tmp_path):
    import browser

    browser.require_chromium()
    page = build.build([bouncer_analysis], tmp_path / "report", title="dynsparse test report")
    shot = browser.screenshot_path(tmp_path, "report.png")
    info = browser.inspect(page, shot)
    assert info["title"] == "dynsparse test report"
    assert sorted(i["kind"] for i in info["images"]) == sorted(figures.KINDS)
    broken = [i for i in info["images"] if not (i["complete"] and i["width"] > 100 and i["height"] > 100)]
    assert broken == []
    assert info["rows"] == 1 and info["sections"] == 1
    assert {"cross-env", "by-contacts", "alignment"} <= set(info["tables"])
    assert info["overflow_x"] <= 0, "the report scrolls sideways in a 1400-px window"
    assert shot.stat().st_size > 10_000


def test_validate_catches_contact_pairs_that_contradict_the_count(bouncer_store, tmp_path):
    import zarr

    from dynsparse import dataset

    copy = tmp_path / "copy.zarr"
    shutil.copytree(bouncer_store, copy)
    assert dataset.validate(copy)[0] == []
    group = zarr.open_group(str(copy), mode="r+", zarr_format=2)
    pairs = group["contact_pairs"][:]
    pairs[0, 0, 0] = not pairs[0, 0, 0]
    group["contact_pairs"][:] = pairs
    rerecord_checksums(copy)  # as if the writer itself had stored the contradiction
    problems, _ = dataset.validate(copy)
    assert any("'contact_pairs' and 'n_contacts' disagree" in p for p in problems)


def test_certificate_cell_counts_each_class_of_the_checked_steps():
    from dynsparse.render import html as html_lib

    row = {"checked_steps": 200, "check_certified": 196, "check_kink": 4, "check_native_differs": 0, "check_wrong": None}
    assert html_lib._cell(row, "certificates", None) == "196 / 4 / 0 / 0 (200)"
    assert html_lib._cell({"checked_steps": 0}, "certificates", None) == "not checked"
