"""Ctrl-C that is never lost.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT arrives;
inside a library's wait on a worker thread (Zarr's asyncio loop, Dask's client) it can be
swallowed, and the run went on to exit 0. ``install`` makes SIGINT also set a flag, and the long
loops call ``check`` at every safe point (after each committed unit, analysis stage, trained
model, finished sweep job), so an interrupt stops the run at the next such point at the latest.
"""

from __future__ import annotations

import signal
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
