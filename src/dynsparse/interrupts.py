"""Ctrl-C that is never lost.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT arrives;
inside a library's wait on a worker thread (Zarr's asyncio loop, Dask's client) it can be
swallowed, and the run went on to exit 0. ``install`` makes SIGINT also set a flag, and the long
loops call ``check`` at every safe point (after each committed unit, analysis stage, trained
model, finished sweep job), so an interrupt stops the run at the next such point at the latest.
Whoever catches the interrupt and exits with its own status calls ``handled`` first.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

_interrupted = threading.Event()


def _handler(signum: int, frame: Any) -> None:
    del signum, frame
    _interrupted.set()
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT through the flag (main thread only; elsewhere a no-op). Clears the flag."""
    _interrupted.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)


def check() -> None:
    """Raise ``KeyboardInterrupt`` if SIGINT arrived since ``install`` (even if it was swallowed)."""
    if _interrupted.is_set():
        raise KeyboardInterrupt


def handled() -> None:
    """Declare a caught ``KeyboardInterrupt`` handled, so that the process exits with the status
    its caller returns (the CLI's 130), not by SIGINT.

    CPython (3.11, 3.12) records a ``KeyboardInterrupt`` that escapes code compiled from a string
    (``exec``/``eval`` of a string: ``run_eval_code_obj``, behind every dataclass and namedtuple
    created during a lazy import) in a process-wide flag, even where a caller catches it, and
    ``python -m`` then ends the process by SIGINT (returncode -2) after it finalised with the
    program's own exit status. Measured: 1 in about 10 ``python -m dynsparse sweep`` runs
    interrupted within 0.4 s of their builder's start (``strace``: the process sends itself
    SIGINT after finalising). Every string-compiled evaluation clears that flag first and sets it
    only when a ``KeyboardInterrupt`` escapes it, so evaluating an empty string clears it.
    """
    exec("pass", {})  # noqa: S102 - a constant: it clears CPython's unhandled-interrupt flag


def end_with_parent(parent: int) -> None:
    """Have the kernel end this process (SIGTERM) when its parent dies: Linux ``PR_SET_PDEATHSIG``,
    for the helper processes a collection or sweep spawns (the build-ahead builder, the analysis
    worker), which a parent killed with SIGKILL cannot stop itself. Exits at once if the parent
    ``parent`` (its process id) is already gone. Elsewhere a no-op: the builder then checks its
    parent between runs only. Call it first thing in the child (a ``multiprocessing`` target or
    pool ``initializer``); the kernel ties the signal to the thread that started the child, which
    for both helpers is the one that waits for them.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(0)
