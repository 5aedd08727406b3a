"""Build ahead: a second process compiles the next runs' programs while this one collects.

A cold study spends most of its time tracing and compiling each environment's programs (the
reset, the rollout chunk, the certificate's finite differences), one environment after another on
one core at a time. The pipeline executor (``sweep``, what ``reproduce`` runs) therefore starts
one builder process beside it: the builder takes the runs from the last one back and, for each,
builds the programs that run will use (``collect.prepare``: kept as executables in the JAX cache's
``exported/`` folder) while the main process collects from the first run on. When the main process
reaches a run, it loads that run's executables instead of building them; a program the other
process is building meanwhile is waited for, not built twice (``exported``'s per-program lock).

The builder stops at the first run whose dataset exists (the main process has reached it: that
run and every one before it are the main process's), when the main process ends its collections
or is interrupted, and when it dies (killed: on Linux the kernel ends the builder with it). It
never writes anything but programs, and a marker per run it prepared (``exported/prepared/``,
keyed by the run's collection settings and everything a program's key holds besides its
arguments; the pipeline marks the runs it collected too), so that a warm study starts no builder
at all; a marker whose programs have since been pruned only costs the main process the build it
would have done anyway. Its log (what it built, in how many seconds) is ``OUT/build-ahead.log``.

Only the pipeline uses it, with at least two runs to collect, two usable cores, and the JAX cache
(with ``exported``) on. ``DYNSPARSE_BUILD_AHEAD=0`` turns it off (the serial baseline of
``benchmarks/reproduce.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dynsparse import errors, interrupts

log = logging.getLogger(__name__)

#: ``DYNSPARSE_BUILD_AHEAD=0`` turns the builder off; ``1`` (the default) on
ENV_VAR = "DYNSPARSE_BUILD_AHEAD"
LOG_FILE = "build-ahead.log"

#: one run for the builder: ``collect.CollectConfig`` keywords and the path of its dataset
Item = tuple[dict[str, Any], str]


def enabled() -> bool:
    """``$DYNSPARSE_BUILD_AHEAD`` (unset: on).

    Raises:
      UserError: a value other than 0 or 1, named.
    """
    value = os.environ.get(ENV_VAR, "").strip() or "1"
    if value not in ("0", "1"):
        raise errors.UserError(f"{ENV_VAR} {value!r} is not allowed; allowed: 0 (off) or 1 (on)")
    return value == "1"


def wanted(n_runs: int, jax_cache: str | None) -> bool:
    """Whether a pipeline collecting ``n_runs`` runs with the JAX cache ``jax_cache`` (None: the
    default folder, ``"off"``: none) should start a builder: enabled, two or more runs, two or
    more usable cores, the cache and ``exported`` on."""
    from dynsparse import exported

    return (enabled() and n_runs >= 2 and len(os.sched_getaffinity(0)) >= 2 and str(jax_cache) != "off"
            and os.environ.get(exported.OFF_VAR) != "off")


def marker(kwargs: dict[str, Any]) -> Path | None:
    """The file saying that this machine's cache holds the programs of the run ``kwargs``
    (``collect.CollectConfig`` keywords), or ``None`` with the cache (or ``exported``) off. Its name is a digest of
    the run's settings, of everything a program's key holds besides its arguments (versions,
    dynsparse's sources, devices, XLA flags) and of this CPU."""
    from dynsparse import exported, jaxcache

    folder = jaxcache.current()
    if folder is None or os.environ.get(exported.OFF_VAR) == "off":
        return None
    record = {"run": kwargs, "environment": exported.program_environment(), "machine": exported.machine_tag()}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:40]
    return Path(folder) / "exported" / "prepared" / f"{digest}.json"


def mark(kwargs: dict[str, Any], details: dict[str, Any]) -> None:
    """Write the run ``kwargs``' marker (``marker``; nothing with the cache off): its programs are
    kept on this machine. The builder marks what it prepared, the pipeline what it collected."""
    from dynsparse import files

    done = marker(kwargs)
    if done is None:
        return
    try:
        done.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(done, {"run": kwargs, **details})
    except OSError as exc:  # housekeeping (a read-only cache): never fails the collection
        log.debug("could not mark %s: %s", done, exc)


def marked(kwargs: dict[str, Any]) -> bool:
    """Whether the run ``kwargs``' marker exists (its programs were kept on this machine)."""
    done = marker(kwargs)
    return done is not None and done.is_file()


def build_runs(items: Sequence[Item], parent: int | None = None) -> list[str]:
    """Prepare the runs ``items`` in order (``collect.prepare``), stopping at the first whose dataset
    exists or once process ``parent`` is no longer this process's parent; returns a line per run
    (also logged): ``built RUN (programs) in S s``, ``skipped RUN (marked)``, ``failed RUN: error``
    or ``stopped at RUN (...)``. A failure is left to the main process's own collection to report."""
    from dynsparse import collect

    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        log.info("%s", line)

    for kwargs, store in items:
        name = Path(store).parent.name or kwargs.get("env", "?")
        if parent is not None and os.getppid() != parent:
            say(f"stopped at {name} (the collecting process is gone)")
            break
        if Path(store).exists():
            say(f"stopped at {name} (being collected)")
            break
        if marked(kwargs):
            say(f"skipped {name} (marked: its programs were built before)")
            continue
        t0 = time.perf_counter()
        try:
            built = collect.prepare(collect.CollectConfig(**kwargs))
        except Exception as exc:  # noqa: BLE001 - the main process's collection reports it
            say(f"failed {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        seconds = time.perf_counter() - t0
        if "traced" not in built.values():
            mark(kwargs, {"programs": built, "seconds": seconds, "by": "build-ahead"})
        say(f"built {name} ({', '.join(f'{k}: {v}' for k, v in built.items())}) in {seconds:.1f} s")
    return lines


def _main(items: list[Item], jax_cache: str | None, devices: int, log_file: str, parent: int) -> None:
    """The builder process: its output to ``log_file``, the devices and cache of its parent, then
    ``build_runs``. Ctrl-C is the parent's to handle (it stops this process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    interrupts.end_with_parent(parent)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s build-ahead (process %(process)d): %(message)s", force=True)
    log.setLevel(logging.INFO)
    from dynsparse import upstream, xla

    xla.use_cpu_cores(devices)
    upstream.mjx_without_warp()
    from dynsparse import jaxcache

    jaxcache.enable(jax_cache)
    build_runs(items, parent)


@contextlib.contextmanager
def builder(items: Sequence[Item], jax_cache: str | None, out: Path) -> Iterator[Any]:
    """Run a builder process for ``items`` (the runs to collect, in collection order) during the
    ``with`` block; it works from the last run back. Yields the process, or ``None`` when none was
    started: not ``wanted``, or nothing for it to do (every run not yet started but the first one
    is marked: a warm study). The process is stopped when the block ends (normally, on an error
    or on Ctrl-C)."""
    from dynsparse import jaxcache

    items = [item for item in items if not Path(item[1]).exists()]  # started runs are the collection's
    if not wanted(len(items), jax_cache):
        yield None
        return
    if jaxcache.current() is None:
        jaxcache.enable(jax_cache)  # what the first collection does anyway (sweep.collect_task)
    if all(marked(kwargs) for kwargs, _ in items[1:]):
        yield None
        return
    import multiprocessing

    import jax

    devices = jax.local_device_count()
    process = multiprocessing.get_context("spawn").Process(
        target=_main, args=(list(reversed(items)), jax_cache, devices, str(out / LOG_FILE), os.getpid()),
        name="dynsparse-build-ahead", daemon=True)
    process.start()
    try:
        yield process
    finally:
        process.terminate()
        process.join(10)
