"""Build ahead (``dynsparse.buildahead``): the programs one process prepares are exactly those a
later collection loads (it builds nothing); the pipeline's builder works from the last run back,
stops where the collection is, skips runs it prepared before, and leaves no process behind."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import models
import pytest
from helpers import alive, children

from dynsparse import buildahead, collect, envs, errors, exported, jaxcache, rollout
from dynsparse.jacobians import certify
from dynsparse.policies import from_config


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty ``exported/`` folder for this test (the XLA cache stays the session's)."""
    monkeypatch.setattr(jaxcache, "_current", tmp_path / "jc")
    monkeypatch.delenv(exported.OFF_VAR, raising=False)
    return tmp_path / "jc" / "exported"


def _model(tmp_path: Path, name: str, xml: str) -> str:
    path = tmp_path / f"{name}.xml"
    path.write_text(xml)
    return f"mjcf:{path}"


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir() if p.suffix in (".bin", ".xla")}


def test_prepare_builds_every_program_a_collection_then_loads(fresh_cache, tmp_path):
    """``collect.prepare`` builds the reset, the chunk with Jacobians and the certificate's MJX
    finite differences without running the chunk; the collection after it writes no program and
    loads every one from its executable; preparing again builds nothing."""
    config = collect.CollectConfig(env=_model(tmp_path, "slider", models.FREE_SLIDER), episodes=2, steps=20,
                                   chunk_steps=10, check_every=5)
    built = collect.prepare(config)
    assert built == {"reset": "exported", "chunk": "built", "certify-fd": "built"}
    kept = _files(fresh_cache)
    assert len([n for n in kept if n.endswith(".xla")]) == 3
    assert collect.prepare(config) == {"reset": "exported", "chunk": "kept", "certify-fd": "kept"}
    collect.collect(config, tmp_path / "data.zarr")
    assert _files(fresh_cache) == kept  # nothing built by the collection
    spec = envs.load(config.env, "float64", None)
    assert list(rollout.make_chunk_fn(spec, from_config({"name": "random"}), True).sources.values()) == ["compiled"]
    assert list(certify._batched_mjx_fd(spec, "converged").sources.values()) == ["compiled"]


def test_builder_works_back_to_the_collected_run_and_skips_what_it_prepared(fresh_cache, tmp_path, monkeypatch):
    a = collect.CollectConfig(env=_model(tmp_path, "pend", models.TWO_PENDULUMS), episodes=1, steps=10, backend="finite_diff", rollout="mjx")
    b = collect.CollectConfig(env=_model(tmp_path, "slider", models.FREE_SLIDER), episodes=1, steps=10, backend="finite_diff", rollout="mjx")
    store_a, store_b = tmp_path / "runs" / "a" / "data.zarr", tmp_path / "runs" / "b" / "data.zarr"
    store_a.mkdir(parents=True)  # the collection has reached run a
    items = [(dataclasses.asdict(b), str(store_b)), (dataclasses.asdict(a), str(store_a))]
    lines = buildahead.build_runs(items)
    assert re.fullmatch(r"built b \(reset: exported, chunk: built\) in [0-9.]+ s", lines[0]), lines
    assert lines[1:] == ["stopped at a (being collected)"]
    marker = buildahead.marker(items[0][0])
    assert marker is not None and marker.is_file() and json.loads(marker.read_text())["programs"]["chunk"] == "built"
    assert buildahead.build_runs(items) == ["skipped b (marked: its programs were built before)", "stopped at a (being collected)"]
    kept = _files(fresh_cache)
    collect.collect(b, store_b)
    assert _files(fresh_cache) == kept
    # a builder whose parent process is gone stops before building anything more
    assert buildahead.build_runs(items[1:], parent=-1) == ["stopped at a (the collecting process is gone)"]
    # a different run (another seed) has another marker
    assert buildahead.marker({**items[0][0], "seed": 1}) != marker


def test_no_builder_where_it_has_nothing_to_do(fresh_cache, tmp_path, monkeypatch):
    """A warm study (every run after the first marked) or runs already started start no process."""
    monkeypatch.setenv(buildahead.ENV_VAR, "1")
    monkeypatch.setattr(buildahead, "wanted", lambda n, cache: n >= 2)  # also on a 1-core machine
    runs = [({"env": name, "seed": 0}, str(tmp_path / name / "data.zarr")) for name in ("a", "b", "c")]
    buildahead.mark(runs[1][0], {"by": "test"})
    buildahead.mark(runs[2][0], {"by": "test"})
    with buildahead.builder(runs, None, tmp_path) as process:
        assert process is None
    Path(runs[2][1]).mkdir(parents=True)  # c started; b is marked: nothing left for a builder
    (fresh_cache / "prepared" / buildahead.marker(runs[1][0]).name).unlink()
    with buildahead.builder(runs, None, tmp_path) as process:  # b, unmarked, not the first: one starts
        assert process is not None
    assert not process.is_alive() and not (fresh_cache / "prepared" / buildahead.marker(runs[1][0]).name).exists()
    monkeypatch.setenv(exported.OFF_VAR, "off")
    assert buildahead.marker(runs[1][0]) is None


def test_the_switch_and_when_a_builder_is_wanted(monkeypatch):
    monkeypatch.setenv(buildahead.ENV_VAR, "yes")
    with pytest.raises(errors.UserError) as info:
        buildahead.enabled()
    assert str(info.value) == "DYNSPARSE_BUILD_AHEAD 'yes' is not allowed; allowed: 0 (off) or 1 (on)"
    monkeypatch.setenv(buildahead.ENV_VAR, "0")
    assert not buildahead.wanted(8, None)
    monkeypatch.setenv(buildahead.ENV_VAR, "1")
    two_cores = len(os.sched_getaffinity(0)) >= 2
    assert buildahead.wanted(2, None) == two_cores
    assert not buildahead.wanted(1, None) and not buildahead.wanted(8, "off")
    monkeypatch.setenv(exported.OFF_VAR, "off")
    assert not buildahead.wanted(8, None)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the builder runs only with two or more usable cores")
def test_a_pipelined_sweep_builds_ahead_from_the_last_run_and_leaves_no_process(tmp_path):
    """``dynsparse sweep --executor pipeline`` (what ``reproduce`` runs) with two runs and a new cache:
    the builder starts at the last run, every job is done, and the builder has ended with the sweep."""
    config = {"envs": [_model(tmp_path, "pend", models.TWO_PENDULUMS), _model(tmp_path, "slider", models.FREE_SLIDER)],
              "episodes": 1, "steps": 10, "backend": "finite_diff", "rollout": "mjx"}
    (tmp_path / "sweep.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    env = {**os.environ, buildahead.ENV_VAR: "1", jaxcache.ENV_VAR: str(tmp_path / "jc")}
    r = subprocess.run([sys.executable, "-m", "dynsparse", "sweep", str(tmp_path / "sweep.json"), "--out", str(out),
                        "--executor", "pipeline"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = (out / "summary.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(",done," in row for row in rows), rows
    # both runs are marked (one by the builder, one by the collection): a second study starts no builder
    assert len(list((tmp_path / "jc" / "exported" / "prepared").glob("*.json"))) == 2
    log = (out / buildahead.LOG_FILE).read_text()
    lines = [line for line in log.splitlines() if re.search(r"build-ahead \(process \d+\): (built|stopped|skipped|failed) ", line)]
    assert lines and re.search(r": (built|stopped at) \S*slider", lines[0]), log
    pid = int(re.search(r"build-ahead \(process (\d+)\)", lines[0]).group(1))
    assert pid != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_marker_that_cannot_be_written_fails_nothing(fresh_cache, monkeypatch):
    """Marking is housekeeping: a cache that cannot be written (read-only) leaves the run unmarked."""
    from dynsparse import files

    def refuse(path, payload, indent=1):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(files, "write_json", refuse)
    buildahead.mark({"env": "a", "seed": 0}, {"by": "test"})
    assert not buildahead.marked({"env": "a", "seed": 0})


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the builder runs only with two or more usable cores")
def test_ctrl_c_during_a_pipelined_sweep_stops_its_builder(tmp_path):
    """SIGINT to the collecting process while its builder works: exit 130 with the resume hint,
    and no process of the sweep left running."""
    import signal
    import time

    config = {"envs": [_model(tmp_path, "pend", models.TWO_PENDULUMS), _model(tmp_path, "slider", models.FREE_SLIDER)],
              "episodes": 1, "steps": 10, "backend": "finite_diff", "rollout": "mjx"}
    (tmp_path / "sweep.json").write_text(json.dumps(config))
    env = {**os.environ, buildahead.ENV_VAR: "1", jaxcache.ENV_VAR: str(tmp_path / "jc")}
    proc = subprocess.Popen([sys.executable, "-m", "dynsparse", "sweep", str(tmp_path / "sweep.json"), "--out",
                             str(tmp_path / "out"), "--executor", "pipeline"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    seen: set[int] = set()
    deadline = time.time() + 120
    while not (tmp_path / "out" / buildahead.LOG_FILE).exists() and time.time() < deadline:  # the builder has started
        seen |= children(proc.pid)
        time.sleep(0.2)
    time.sleep(0.5)  # the builder is importing (its first run takes seconds more to build)
    seen |= children(proc.pid)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err.strip().splitlines()[-1]
    assert seen
    deadline = time.time() + 10
    while any(alive(pid) for pid in seen) and time.time() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in seen if alive(pid)]
    # stopped, not waited for: the builder never finished its first run
    assert " built " not in (tmp_path / "out" / buildahead.LOG_FILE).read_text()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not sys.platform.startswith("linux"),
                    reason="the builder runs only with two or more usable cores; the kernel ends it with its parent on Linux")
def test_a_killed_sweep_takes_its_builder_with_it(tmp_path):
    """SIGKILL to the collecting process while its builder compiles (the process cannot stop its
    builder itself): the kernel ends the builder too, mid-build (it does not finish that run)."""
    import signal
    import time

    # the first run (the collecting process's) is the contacting arm: its compile outlasts the builder's start-up
    config = {"envs": [_model(tmp_path, "arm", models.LIMITED_ARM), _model(tmp_path, "slider", models.FREE_SLIDER)],
              "episodes": 1, "steps": 10, "backend": "finite_diff", "rollout": "mjx"}
    (tmp_path / "sweep.json").write_text(json.dumps(config))
    env = {**os.environ, buildahead.ENV_VAR: "1", jaxcache.ENV_VAR: str(tmp_path / "jc")}
    proc = subprocess.Popen([sys.executable, "-m", "dynsparse", "sweep", str(tmp_path / "sweep.json"), "--out",
                             str(tmp_path / "out"), "--executor", "pipeline"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    def building() -> bool:
        """Whether a child of the sweep holds a program's build lock (the builder is compiling)."""
        kids = children(proc.pid)
        for lock in (tmp_path / "jc" / "exported").glob("*.lock"):
            with contextlib.suppress(OSError, ValueError):
                if int(lock.read_text().strip()) in kids:
                    return True
        return False

    deadline = time.time() + 120
    while not building() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    seen = children(proc.pid)
    assert proc.poll() is None and seen, "the sweep ended before its builder was seen building"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.time() + 10
    while any(alive(pid) for pid in seen) and time.time() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in seen if alive(pid)]
    assert " built " not in (tmp_path / "out" / buildahead.LOG_FILE).read_text()
