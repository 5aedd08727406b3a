"""``files``: atomic writes, claiming an output folder, publishing one whole."""

from __future__ import annotations

import json
import os

import pytest

from dynsparse import errors, files


def test_write_atomic_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    files.write_json(path, {"x": 1})
    files.write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_write_atomic_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        files.write_atomic(path, b"new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_claim_new_same_and_each_refusal(tmp_path):
    out = tmp_path / "out"
    assert files.claim(out, "m.json", {"a": 1}, "thing") == "new"  # missing
    out.mkdir()
    assert files.claim(out, "m.json", {"a": 1}, "thing") == "new"  # empty
    (out / "m.json").write_text(json.dumps({"id": {"a": 1, "b": {"c": 2}}}))
    assert files.claim(out, "m.json", {"a": 1, "b": {"c": 2}}, "thing", read=lambda r: r["id"]) == "same"
    with pytest.raises(errors.UserError, match=r"holds a thing with another configuration \(b\.c: stored 2, requested 3\); nothing was changed"):
        files.claim(out, "m.json", {"a": 1, "b": {"c": 3}}, "thing", read=lambda r: r["id"])
    assert files.claim(out, "m.json", files.ANY, "thing") == "same"
    with pytest.raises(errors.UserError, match="already exists and is not empty; nothing was changed: pick one"):
        files.claim(out, "m.json", None, "thing", hint="pick one")
    (out / "m.json").write_text("{broken")
    with pytest.raises(errors.UserError, match=r"m\.json' is unreadable \(JSONDecodeError\)"):
        files.claim(out, "m.json", {"a": 1}, "thing")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(errors.UserError, match="already exists and is not a dynsparse thing folder \\(no m.json\\)"):
        files.claim(foreign, "m.json", {"a": 1}, "thing")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(errors.UserError, match="is a file, not a folder"):
        files.claim(a_file, "m.json", {"a": 1}, "thing")


def test_claim_refuses_to_replace_a_folder_holding_more_than_its_own_files(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text("{}")
    (out / "index.html").write_text("")
    assert files.claim(out, "report.json", files.ANY, "report", owned=("report.json", "index.html")) == "same"
    (out / "analysis").mkdir()
    with pytest.raises(errors.UserError, match=r"holds a report and other entries \(analysis\) that rewriting it would delete"):
        files.claim(out, "report.json", files.ANY, "report", owned=("report.json", "index.html"))


def test_differences_names_paths_and_cuts_long_lists():
    text = files.differences({"a": 1, "b": {"c": 2}, "d": 4}, {"a": 1, "b": {"c": 3}, "e": 5})
    assert text == "b.c: stored 2, requested 3; d: stored 4, requested None; e: stored None, requested 5"
    many = files.differences({str(i): i for i in range(9)}, {str(i): -i for i in range(1, 9)}, limit=2)
    assert many == "0: stored 0, requested None; 1: stored 1, requested -1; and 7 more"


def test_publish_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "sub" / "out"
    with files.publish(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".out.partial-")
        (tmp / "a.txt").write_text("a")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "a"
    assert [p.name for p in out.parent.iterdir()] == ["out"]
    other = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        with files.publish(other) as tmp:
            (tmp / "half.txt").write_text("half")
            raise KeyboardInterrupt
    assert not other.exists() and [p.name for p in tmp_path.iterdir()] == ["sub"]


def test_publish_into_an_empty_folder_and_replace(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with files.publish(out) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(OSError):  # not empty and not replace: never merged or overwritten
        with files.publish(out) as tmp:
            (tmp / "v2").write_text("2")
    assert [p.name for p in out.iterdir()] == ["v1"]
    with files.publish(out, replace=True) as tmp:
        (tmp / "v2").write_text("2")
    assert [p.name for p in out.iterdir()] == ["v2"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_publish_removes_partials_of_an_interrupted_earlier_run(tmp_path):
    stale = tmp_path / ".out.partial-dead"
    stale.mkdir()
    (stale / "x").write_text("x")
    with files.publish(tmp_path / "out") as tmp:
        (tmp / "y").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
