"""exported.Cached: programs kept on disk are bit-identical to traced ones, keyed by everything they
depend on, loaded in fresh processes (LAPACK initialised), and never reused across a change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynsparse import exported, jaxcache

HERE = Path(__file__).resolve().parent


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(jaxcache, "_current", tmp_path / "jc")
    monkeypatch.delenv(exported.OFF_VAR, raising=False)
    return tmp_path / "jc" / "exported"


def _fn(x: jax.Array, d: dict) -> tuple[jax.Array, dict]:
    return jnp.linalg.cholesky(x @ x.T + jnp.eye(x.shape[0])), {"s": d["a"].sum() * x, "t": d["b"] + 1}


def _args(n: int = 3) -> tuple:
    x = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)))
    return x, {"a": jnp.arange(float(n)), "b": jnp.ones(2, jnp.int32)}


def _equal(a, b) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.array_equal(np.asarray(x), np.asarray(y)) and np.asarray(x).dtype == np.asarray(y).dtype
                            for x, y in zip(la, lb))


def test_export_then_load_equal_the_traced_program_bit_for_bit(cache):
    jitted = jax.jit(_fn)
    ref = jitted(*_args())
    first = exported.Cached(jitted, "t", {"id": 1})
    assert _equal(first(*_args()), ref) and list(first.sources.values()) == ["exported"]
    files = sorted(cache.glob("t-*.bin"))
    assert len(files) == 1
    (executable,) = cache.glob("t-*.xla")  # the compiled program, for this machine
    again = exported.Cached(jitted, "t", {"id": 1})  # a new process would start here
    assert _equal(again(*_args()), ref) and list(again.sources.values()) == ["compiled"]
    assert _equal(again(*_args()), ref) and len(again.sources) == 1  # in memory from now on
    assert sorted(cache.glob("t-*.bin")) == files
    executable.unlink()  # e.g. another jaxlib build or CPU: the exported module is compiled again
    loaded = exported.Cached(jitted, "t", {"id": 1})
    assert _equal(loaded(*_args()), ref) and list(loaded.sources.values()) == ["loaded"]
    assert executable.is_file()


def test_compiled_programs_are_kept_per_machine_and_unreadable_ones_replaced(cache, monkeypatch):
    jitted = jax.jit(_fn)
    ref = jitted(*_args())
    exported.Cached(jitted, "t", {"id": 1})(*_args())
    (executable,) = cache.glob("t-*.xla")
    with monkeypatch.context() as m:
        m.setattr(exported, "_machine_tag", lambda: "othercpu")
        elsewhere = exported.Cached(jitted, "t", {"id": 1})
        assert _equal(elsewhere(*_args()), ref) and list(elsewhere.sources.values()) == ["loaded"]
    assert len(list(cache.glob("t-*.xla"))) == 2 and len(list(cache.glob("t-*othercpu.xla"))) == 1
    executable.write_bytes(b"garbage")
    fresh = exported.Cached(jitted, "t", {"id": 1})
    with pytest.warns(UserWarning, match="ignoring the unreadable compiled program"):
        assert _equal(fresh(*_args()), ref)
    assert list(fresh.sources.values()) == ["loaded"] and executable.read_bytes() != b"garbage"


def test_prefetch_loads_the_last_used_executable_in_the_background(cache, monkeypatch):
    jitted = jax.jit(_fn)
    ref, ref4 = jitted(*_args()), jitted(*_args(4))
    assert exported.Cached(jitted, "t", {"id": 1}).prefetch() is None  # nothing kept yet
    exported.Cached(jitted, "t", {"id": 1})(*_args())
    (executable,) = cache.glob("t-*.xla")
    fresh = exported.Cached(jitted, "t", {"id": 1})  # a new process would start here
    assert fresh.prefetch() == executable and executable in fresh._prefetched
    assert _equal(fresh(*_args()), ref) and list(fresh.sources.values()) == ["compiled"] and not fresh._prefetched
    assert exported.Cached(jitted, "t", {"id": 2}).prefetch() is None  # another identity: not its file
    # other shapes: the prefetched executable is not theirs; they get their own file, which is now the last used
    other = exported.Cached(jitted, "t", {"id": 1})
    other.prefetch()
    assert _equal(other(*_args(4)), ref4) and list(other.sources.values()) == ["exported"] and not other._prefetched
    assert other.prefetch() is None  # called already: it has its programs
    newest = exported.Cached(jitted, "t", {"id": 1}).prefetch()
    assert newest != executable and newest in set(cache.glob("t-*.xla"))
    # a damaged file fails in the background and is handled at the call like any unreadable one
    newest.write_bytes(b"garbage")
    damaged = exported.Cached(jitted, "t", {"id": 1})
    assert damaged.prefetch() == newest
    with pytest.warns(UserWarning, match="ignoring the unreadable compiled program"):
        assert _equal(damaged(*_args(4)), ref4)
    monkeypatch.setenv(exported.OFF_VAR, "off")
    assert exported.Cached(jitted, "t", {"id": 1}).prefetch() is None


def test_the_collector_is_paused_while_a_program_is_exported_and_restored_after(cache, monkeypatch):
    import gc

    seen = []
    export = jax.export.export

    def spy(*a, **k):
        seen.append(gc.isenabled())
        return export(*a, **k)

    monkeypatch.setattr(jax.export, "export", spy)
    assert gc.isenabled()
    exported.Cached(jax.jit(_fn), "gc", {"case": "gc"})(*_args())
    assert seen == [False] and gc.isenabled()
    # left as it was, also when the block raises, and a collector the caller turned off stays off
    with pytest.raises(RuntimeError):
        with exported.collector_paused():
            raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with exported.collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_every_change_gets_its_own_file(cache, monkeypatch):
    jitted = jax.jit(_fn)
    exported.Cached(jitted, "t", {"id": 1})(*_args())
    other_identity = exported.Cached(jitted, "t", {"id": 2})
    other_identity(*_args())
    other_shape = exported.Cached(jitted, "t", {"id": 1})
    other_shape(*_args(4))
    x, d = _args()
    other_dtype = exported.Cached(jitted, "t", {"id": 1})
    other_dtype(x, {"a": d["a"], "b": d["b"].astype(jnp.int16)})
    monkeypatch.setattr(exported, "source_digest", lambda: "edited dynsparse")
    other_source = exported.Cached(jitted, "t", {"id": 1})
    other_source(*_args())
    for c in (other_identity, other_shape, other_dtype, other_source):
        assert list(c.sources.values()) == ["exported"]
    assert len(list(cache.glob("t-*.bin"))) == 5


def test_unreadable_file_is_ignored_and_rewritten_and_off_switches(cache, monkeypatch, tmp_path):
    jitted = jax.jit(_fn)
    ref = jitted(*_args())
    exported.Cached(jitted, "t", {"id": 1})(*_args())
    (path,) = cache.glob("t-*.bin")
    path.write_bytes(b"garbage")
    for executable in cache.glob("t-*.xla"):
        executable.unlink()
    fresh = exported.Cached(jitted, "t", {"id": 1})
    with pytest.warns(UserWarning, match="ignoring the unreadable exported program"):
        assert _equal(fresh(*_args()), ref)
    assert list(fresh.sources.values()) == ["exported"] and path.read_bytes() != b"garbage"
    monkeypatch.setenv(exported.OFF_VAR, "off")
    off = exported.Cached(jitted, "t", {"id": 3})
    assert _equal(off(*_args()), ref) and not off.sources
    monkeypatch.delenv(exported.OFF_VAR)
    monkeypatch.setattr(jaxcache, "_current", None)  # --jax-cache off
    none = exported.Cached(jitted, "t", {"id": 4})
    assert _equal(none(*_args()), ref) and not none.sources
    assert len(list(cache.glob("t-*.bin"))) == 1


def test_an_own_environments_initial_draws_are_part_of_its_programs_key(cache):
    """Two ``mjcf`` environments of one model and name that draw initial states differently get
    different reset programs (the reset closes over its noise; an earlier key without it handed
    the second one the first one's initial states)."""
    from models import FREE_SLIDER

    from dynsparse import envs, rollout

    a, b = (envs.from_mjcf(FREE_SLIDER, name="slider", init_noise=s) for s in (0.1, 0.5))
    assert exported.env_identity(a) != exported.env_identity(b)
    keys = rollout.episode_keys(0, np.arange(2))
    qa, qb = (np.asarray(rollout.make_reset_fn(s)(keys).data.qpos) for s in (a, b))
    np.testing.assert_allclose(qb, 5 * qa, rtol=1e-12)  # U(-s, s) from the same keys


def test_static_data_is_keyed_by_content_not_address():
    a = jax.tree_util.tree_structure((np.float64(1.0), {"k": 2}))
    assert exported._treedef_digest(a) == exported._treedef_digest(jax.tree_util.tree_structure((np.float64(3.0), {"k": 5})))
    assert exported._canonical(np.array([1, 2])) != exported._canonical(np.array([1, 3]))
    with pytest.raises(ValueError, match="no stable description"):
        exported._canonical(object())


@pytest.mark.parametrize("devices", [1, 2])
def test_a_fresh_process_loads_a_lapack_program_with_static_array_data(tmp_path, devices):
    """Later processes load (no tracing) and run a program holding LAPACK calls, as a compiled
    executable and as an exported module; before LAPACK was initialised for loaded programs this
    crashed with a segmentation fault."""
    folder = tmp_path / "jc"

    # with 2 CPU devices the program's arguments still live on one: its executable must be loaded
    # onto that device only (loaded onto both, it refused its arguments: "expected 2 shards")
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}

    def run() -> dict:
        r = subprocess.run([sys.executable, str(HERE / "exported_program.py"), str(folder)], capture_output=True, text=True,
                           timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    for executable in (folder / "exported").glob("test-*.xla"):
        executable.unlink()
    third = run()  # the exported module again, compiled in a fresh process
    assert first["sources"] == ["exported"] and second["sources"] == ["compiled"] and third["sources"] == ["loaded"]
    for other in (second, third):
        assert {k: v for k, v in first.items() if k != "sources"} == {k: v for k, v in other.items() if k != "sources"}
    assert len(list((folder / "exported").glob("test-*.bin"))) == 1
    assert any(t.startswith("lapack_") for t in second["targets"]), second["targets"]
    sys.path.insert(0, str(HERE))
    try:
        import exported_program
    finally:
        sys.path.remove(str(HERE))
    ref_box, ref = exported_program.program(exported_program.Box(jnp.asarray(np.arange(16.0).reshape(4, 4) / 7.0), jnp.ones(3),
                                                                 exported_program.Static(np.array([1, 2, 3]))), jnp.arange(4.0))
    assert np.array_equal(np.asarray(ref_box.x), np.asarray(second["chol"])) and np.array_equal(np.asarray(ref["sol"]), second["sol"])


def test_an_executable_is_kept_even_where_jax_cache_holds_its_compile(tmp_path):
    """An executable JAX's persistent cache hands back re-serializes into a copy that fails at run
    time ("Function wrapped_iota not found", jaxlib 0.8.2). So the executable to keep is compiled
    with that cache bypassed: after the module is exported again (e.g. dynsparse upgraded) while
    XLA's cache still holds its compile, the next process keeps a working executable anyway.
    Without the bypass (EXPORTED_PROGRAM_NO_BYPASS) the same run is a cache hit and keeps none."""
    folder = tmp_path / "jc"
    env = {**os.environ, "EXPORTED_PROGRAM_CACHE_ALL": "1", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}

    def run(**extra: str) -> dict:
        r = subprocess.run([sys.executable, str(HERE / "exported_program.py"), str(folder)], capture_output=True, text=True,
                           timeout=300, env={**env, **extra})
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    def forget_programs() -> None:  # e.g. dynsparse upgraded: the module is exported again
        for f in (folder / "exported").iterdir():
            f.unlink()

    first = run(EXPORTED_PROGRAM_NO_BYPASS="1")  # compiled through XLA's cache (fills it), kept
    assert first["sources"] == ["exported"] and len(list((folder / "exported").glob("*.xla"))) == 1
    forget_programs()
    unbypassed = run(EXPORTED_PROGRAM_NO_BYPASS="1")  # the guard: now a cache hit, nothing kept
    assert unbypassed["sources"] == ["exported", "xla-cache-hit"] and not list((folder / "exported").glob("*.xla"))
    forget_programs()
    second = run()  # bypassed: a fresh compile, kept although XLA's cache holds it
    assert second["sources"] == ["exported"] and len(list((folder / "exported").glob("*.xla"))) == 1
    third = run()
    assert third["sources"] == ["compiled"], third["sources"]  # the kept executable, loaded
    for other in (unbypassed, second, third):
        assert {k: v for k, v in first.items() if k != "sources"} == {k: v for k, v in other.items() if k != "sources"}


def test_processes_sharing_the_cache_build_a_program_once(tmp_path):
    """Two processes needing the same new program at once: one traces, exports and compiles it
    while holding its lock, the other waits and loads the executable it kept (tracing is slowed
    to 6 s, so that both start before either finishes)."""
    folder = tmp_path / "jc"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "EXPORTED_PROGRAM_TRACE_SLEEP": "6"}
    procs = [subprocess.Popen([sys.executable, str(HERE / "exported_program.py"), str(folder)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results, errs = [], []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
        errs.append(err)
    assert sorted(r["sources"][0] for r in results) == ["compiled", "exported"], [r["sources"] for r in results]
    assert {k: v for k, v in results[0].items() if k != "sources"} == {k: v for k, v in results[1].items() if k != "sources"}
    assert not list((folder / "exported").glob("*.lock"))
    # the waiting process said so on stderr (a warning, seen without --verbose), naming the builder
    builder, waiter = sorted(range(2), key=lambda i: results[i]["sources"][0] != "exported")
    assert f"waiting for process {procs[builder].pid}, which is building the" in errs[waiter]
    assert "waiting for process" not in errs[builder]



def test_waiting_for_the_own_build_ahead_child_is_no_warning(tmp_path, caplog):
    """A study's builder is its own ``multiprocessing`` child: waiting for the program it is
    building is expected (a log line, not the warning a user saw mid-progress-bar); waiting for
    any other process stays a warning."""
    import logging
    import multiprocessing

    import helpers

    folder, stem = tmp_path / "exported", "chunk-x"
    folder.mkdir()
    program = exported.Cached(jax.jit(_fn), "chunk", {"id": 1})
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=helpers.hold_lock, args=(str(folder / f"{stem}.lock"), ready, 1.0))
    child.start()
    try:
        assert ready.wait(60)
        with caplog.at_level(logging.INFO, logger="dynsparse.exported"), program._lock(folder, stem) as waited:
            assert waited
    finally:
        child.join(30)
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "waiting for" in r.getMessage()]
    assert said == [(logging.INFO, f"waiting for this process's build-ahead process {child.pid}, which is building "
                                   f"the chunk program {stem}")]
    assert exported._own_child(str(child.pid)) is False  # ended: no longer a live child (not a cached answer)
    assert exported._own_child(str(os.getpid())) is False and exported._own_child("?") is False

def test_prune_deletes_the_least_recently_used_programs_beyond_the_limit(tmp_path, monkeypatch):
    folder = tmp_path / "exported"
    folder.mkdir()
    # three programs (module + executable each), an old-style one, a writer's temporary file
    names = {"chunk-f1-aaa": 0, "chunk-f1-bbb": 2, "reset-f1-ccc": 4, "chunk-oldkey": 1}
    for stem, age in names.items():
        for name in (f"{stem}.bin", f"{stem}-cpu0.xla"):
            (folder / name).write_bytes(b"x" * 1000)
            os.utime(folder / name, (1000 + age, 1000 + age))
    os.utime(folder / "chunk-f1-aaa-cpu0.xla", (1003, 1003))  # its executable was used more recently than its module
    (folder / "chunk-f1-zzz.bin.tmp-1").write_bytes(b"x" * 5000)
    monkeypatch.setattr(exported, "_IN_USE", {"chunk-f1-bbb"})  # what this process uses is kept even if old
    assert exported.prune(folder, limit=None) == []
    assert exported.prune(folder, limit=8000) == []  # 8000 bytes of programs (the temporary file does not count)
    assert exported.prune(folder, limit=6000) == ["chunk-oldkey"]  # the least recently used
    assert exported.prune(folder, limit=4000) == ["chunk-f1-aaa"]  # bbb was used before aaa, but this process uses it
    left = sorted(p.name for p in folder.iterdir())
    assert left == ["chunk-f1-bbb-cpu0.xla", "chunk-f1-bbb.bin", "chunk-f1-zzz.bin.tmp-1", "reset-f1-ccc-cpu0.xla", "reset-f1-ccc.bin"]


def test_prune_removes_what_killed_processes_left_and_nothing_in_use(tmp_path):
    """A lock file no process holds and an old temporary file of a process that has ended are
    removed (whatever the size limit); a held lock, a running writer's temporary file, a recent
    one of an ended process and the programs themselves stay."""
    import time

    folder = tmp_path / "exported"
    folder.mkdir()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    old = time.time() - 2 * exported.RECENT_S
    for name, age in {"chunk-f1-aaa.bin": old, f".chunk-f1-bbb.bin.tmp-{ended.pid}": old,
                      f".reset-f1-ccc.bin.tmp-{ended.pid}": time.time(), f".chunk-f1-ddd.bin.tmp-{os.getpid()}": old,
                      "chunk-f1-eee.lock": old}.items():
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (age, age))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dynsparse import locks\n"
         "with locks.wait(sys.argv[1]):\n print('held', flush=True); time.sleep(60)", str(folder / "chunk-f1-fff.lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert exported.prune(folder, limit=None) == []
        assert sorted(p.name for p in folder.iterdir()) == [
            f".chunk-f1-ddd.bin.tmp-{os.getpid()}", f".reset-f1-ccc.bin.tmp-{ended.pid}", "chunk-f1-aaa.bin", "chunk-f1-fff.lock",
        ]
        assert exported.remove_leftovers(folder) == []
    finally:
        holder.kill()
        holder.wait()
    assert exported.remove_leftovers(folder) == ["chunk-f1-fff.lock"]  # its holder was killed


def test_the_size_limit_comes_from_the_environment_and_a_bad_one_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv(exported.MAX_MB_VAR, raising=False)
    assert exported.max_bytes() == exported.DEFAULT_MAX_MB * 2**20
    monkeypatch.setenv(exported.MAX_MB_VAR, "0.5")
    assert exported.max_bytes() == 2**19
    monkeypatch.setenv(exported.MAX_MB_VAR, "0")
    assert exported.max_bytes() is None
    for bad in ("lots", "-1", "nan", "inf"):
        monkeypatch.setenv(exported.MAX_MB_VAR, bad)
        with pytest.raises(Exception, match=rf"DYNSPARSE_EXPORTED_MAX_MB '{bad}' is not allowed; allowed: a number of megabytes >= 0"):
            exported.max_bytes()
    (tmp_path / "p.bin").write_bytes(b"x")
    with pytest.warns(UserWarning, match="'inf' is not allowed.*nothing pruned"):
        assert exported.prune(tmp_path) == []
    assert (tmp_path / "p.bin").exists()


def test_a_new_program_prunes_old_ones_but_not_its_own(cache, monkeypatch):
    jitted = jax.jit(_fn)
    exported.Cached(jitted, "t", {"id": 1})(*_args())
    first = sorted(p.name for p in cache.iterdir())
    for p in cache.iterdir():
        os.utime(p, (1000, 1000))  # long unused
    monkeypatch.setattr(exported, "_IN_USE", set())  # as in a new process
    monkeypatch.setenv(exported.MAX_MB_VAR, str(1e-6))  # a limit below any one program
    assert _equal(exported.Cached(jitted, "t", {"id": 2})(*_args()), jitted(*_args()))
    left = sorted(p.name for p in cache.iterdir())
    assert len(left) == 2 and not set(left) & set(first)  # the old program deleted, the new one kept


def test_a_prefetched_program_survives_pruning_and_a_vanished_file_is_no_error(cache, monkeypatch):
    import warnings

    jitted = jax.jit(_fn)
    ref = jitted(*_args())
    exported.Cached(jitted, "t", {"id": 1})(*_args())
    monkeypatch.setattr(exported, "_IN_USE", set())  # as in a new process
    fresh = exported.Cached(jitted, "t", {"id": 1})
    path = fresh.prefetch()
    assert exported._stem(path) in exported._IN_USE  # this process will not prune it
    fresh._prefetched[path].result()
    for p in cache.iterdir():
        p.unlink()  # pruned by another process after the load
    assert _equal(fresh(*_args()), ref) and list(fresh.sources.values()) == ["compiled"]
    # a file that vanishes before the background load reads it: handled as a missing file (no warning)
    exported.Cached(jitted, "t", {"id": 1})(*_args())  # kept again
    monkeypatch.setattr(exported, "_read_compiled", lambda p: (_ for _ in ()).throw(FileNotFoundError(2, "gone", str(p))))
    late = exported.Cached(jitted, "t", {"id": 1})
    assert late.prefetch() is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _equal(late(*_args()), ref) and list(late.sources.values()) == ["loaded"]


def test_prune_keeps_what_another_process_used_recently(tmp_path, monkeypatch):
    monkeypatch.setattr(exported, "_IN_USE", set())
    (tmp_path / "chunk-f-recent.bin").write_bytes(b"x" * 100)  # just written or loaded by someone
    (tmp_path / "chunk-f-old.bin").write_bytes(b"x" * 100)
    old = 1000.0
    os.utime(tmp_path / "chunk-f-old.bin", (old, old))
    assert exported.prune(tmp_path, limit=0) == ["chunk-f-old"]
    assert [p.name for p in tmp_path.iterdir()] == ["chunk-f-recent.bin"]
