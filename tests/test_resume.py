"""Interrupted collections (a real process, SIGKILLed) resume to exactly the uninterrupted result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynsparse import collect, dataset

from resume_config import CLI_ARGS, CONFIG

HERE = Path(__file__).parent


def _run_killed(out: Path, mode: str, unit: int, expect: int = -9) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(HERE / "killer.py"), str(out), mode, str(unit)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, proc.stderr[-2000:]
    return proc


def _resume_with_cli(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynsparse.cli", *CLI_ARGS, "--out", str(out)],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    collect.collect(CONFIG, out)
    return dataset.open_dataset(out).load()


def _assert_identical(ds, ref):
    for name in ref.data_vars:
        np.testing.assert_array_equal(ds[name].values, ref[name].values, err_msg=name)
    assert ds.attrs["config"] == ref.attrs["config"]


# units: batch 0 = units 0-3, batch 1 = units 4-7. mid_write 5 dies inside unit 5's write with a
# mid-batch carry checkpointed; after_unit 1 dies right after a checkpoint; after_unit 3 at a
# batch boundary (no carry).
@pytest.mark.parametrize("mode,unit", [
    ("mid_write", 5),
    pytest.param("after_unit", 1, marks=pytest.mark.slow),
    pytest.param("after_unit", 3, marks=pytest.mark.slow),
])
def test_killed_collection_resumes_identically(tmp_path, reference, mode, unit):
    out = tmp_path / "run.zarr"
    _run_killed(out, mode, unit)
    # The interrupted store is sound, says it is unfinished, and shows no half-written unit.
    problems, notes = dataset.validate(out)
    assert problems == []
    assert any("unfinished" in n for n in notes)
    partial = dataset.open_dataset(out)
    written = int(np.asarray(partial["valid"].values).sum())
    layout = dataset.layout_of(dataset.read_config(partial), partial)
    done = dataset.read_checkpoint(out).next_unit
    expected = sum((es.stop - es.start) * (ts.stop - ts.start) for es, ts in map(layout.unit_slices, range(done)))
    assert written == expected
    proc = _resume_with_cli(out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_identical(dataset.open_dataset(out), reference)
    assert dataset.validate(out) == ([], [])


def test_rerunning_a_finished_collection_changes_nothing(tmp_path, reference):
    out = tmp_path / "run.zarr"
    collect.collect(CONFIG, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    collect.collect(CONFIG, out)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert before == after
    _assert_identical(dataset.open_dataset(out), reference)


@pytest.mark.slow
def test_ctrl_c_exits_130_and_resumes_identically(tmp_path, reference):
    out = tmp_path / "run.zarr"
    proc = _run_killed(out, "sigint", 6, expect=130)
    assert proc.stderr.strip().splitlines()[-1] == "dynsparse: interrupted; run the same command again to resume"
    assert dataset.read_checkpoint(out).next_unit == 6
    assert dataset.validate(out)[0] == []
    assert _resume_with_cli(out).returncode == 0
    _assert_identical(dataset.open_dataset(out), reference)
