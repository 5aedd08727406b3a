"""``results``: the typed analysis summary, reading and writing output folders, table rows."""

from __future__ import annotations

import json
import math

from dynsparse import results


def test_summary_round_trips_and_keeps_unknown_keys(bouncer_analysis, tmp_path):
    record = json.loads((bouncer_analysis / results.SUMMARY).read_text())
    summary = results.read_analysis(bouncer_analysis)
    assert summary is not None and summary.env == "Bouncer"
    assert summary.dims.state == record["dims"]["state"] and summary.data.counted_steps == record["data"]["counted_steps"]
    assert summary.global_ is not None and summary.global_ == record["global"]
    assert summary.to_json() == record
    record["added_by_a_later_version"] = {"x": 1}
    again = results.AnalysisSummary.from_json(record)
    assert again.extra == {"added_by_a_later_version": {"x": 1}} and again.to_json() == record
    results.write_analysis(tmp_path, again)
    assert json.loads((tmp_path / results.SUMMARY).read_text()) == record


def test_table_row_is_what_the_analysis_stored(bouncer_analysis):
    summary = results.read_analysis(bouncer_analysis)
    row = results.table_row(summary)
    assert row == json.loads(json.dumps(summary.table))
    assert row["J_s_entries"] == summary.dims.state ** 2 and row["checked_steps"] == 24


def test_unfinished_or_foreign_folders_read_as_none(tmp_path):
    assert results.read_analysis(tmp_path) is None
    (tmp_path / results.SUMMARY).write_text("{not json")
    assert results.read_analysis(tmp_path) is None and results.read_analysis_identity(tmp_path) is None
    (tmp_path / results.SUMMARY).write_text(json.dumps({"env": "X", "identity": {"a": 1}}))  # sections missing
    assert results.read_analysis(tmp_path) is None and results.read_analysis_identity(tmp_path) == {"a": 1}
    assert results.read_learn(tmp_path) is None
    (tmp_path / results.LEARN_MARKER).write_text("[1, 2]")
    assert results.read_learn(tmp_path) is None


def test_learn_mean_table_by_hand():
    def row(env, loss, seed, mse, epoch=1.0):
        base = {m: 1.0 for m in results.LEARN_METRICS} | {"sparsity_model": 0.5, "sparsity_true": 0.25}
        return {**base, "env": env, "loss": loss, "seed": seed, "mse_norm": mse, "s_per_epoch": epoch}

    rows = [row("B", "mse+l1_j", 0, 4.0), row("B", "mse+l1_j", 1, float("nan")), row("A", "mse", 0, 1.0),
            row("A", "mse", 1, 3.0, 3.0), row("A", "untrained", 0, float("nan")), row("B", "mse", 0, 2.0)]
    table = results.learn_mean_table(rows)
    assert [(r["env"], r["loss"], r["seeds"]) for r in table] == [
        ("A", "untrained", 1), ("A", "mse", 2), ("B", "mse", 1), ("B", "mse+l1_j", 2)]
    a_mse = table[1]
    assert a_mse["mse_norm"] == 2.0 and a_mse["s_per_epoch"] == 2.0 and a_mse["sparsity_true"] == 0.25
    assert math.isnan(table[0]["mse_norm"])  # no finite value: NaN, not a warning-laden mean
    assert table[3]["mse_norm"] == 4.0  # NaN seeds are left out of the mean
