"""One writer per output: an OS file lock beside each store and output folder.

``hold(path)`` takes an exclusive ``flock`` on the hidden sibling ``.NAME.lock`` (holding the
writer's process id) for as long as the ``with`` block runs. A second writer is refused at once
with "PATH is being written by process N" (exit 2 in the CLI). The operating system releases the
lock when its process dies, so a killed run never blocks its own resume; the lock file is
removed by the holder when it finishes.

``wait(file)`` is the same lock for work that others wait for rather than refuse: the compiled
programs of ``dynsparse.exported`` (one process compiles a program, another needing it waits and
then loads it).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from dynsparse import errors


def lock_path(path: Path) -> Path:
    """The lock file of an output ``path``: ``.NAME.lock`` beside it."""
    path = Path(path).absolute()
    return path.with_name(f".{path.name}.lock")


def _owner(file: Path) -> str:
    try:
        text = file.read_text().strip()
    except OSError:
        return "?"
    return text if text.isdigit() else "?"


@contextlib.contextmanager
def hold(path: Path | str) -> Iterator[None]:
    """Hold the write lock of ``path`` (a store or output folder) for the ``with`` block.

    Raises:
      UserError: another process holds it, or the lock file cannot be created (e.g. a
        read-only file system), naming the path.
    """
    path = Path(path)
    file = lock_path(path)
    made = [p for p in [file.parent, *file.parent.parents] if not p.exists()]
    try:
        fd = _acquire(file, block=False)
    except OSError as exc:
        raise errors.UserError(f"cannot write {str(path)!r}: {exc.strerror or exc} ({str(file.parent)!r})") from exc
    if fd is None:
        raise errors.UserError(
            f"{str(path)!r} is being written by process {_owner(file)}; wait for it to finish or stop it, then rerun"
        )
    try:
        yield
    finally:
        _release(file, fd)
        for folder in made:  # parents created only for the lock and left empty (e.g. refused input)
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def wait(file: Path | str, on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold the lock file ``file`` itself for the ``with`` block, waiting while another process
    holds it (``on_wait(owner pid)`` is called once, before waiting). Yields ``True`` if it had to
    wait: the holder may have made what the caller was about to make.

    Raises:
      OSError: the lock file cannot be created (the caller decides what that means).
    """
    file = Path(file)
    fd = _acquire(file, block=False)
    waited = fd is None
    if fd is None:
        if on_wait is not None:
            on_wait(_holder(file))
        fd = _acquire(file, block=True)
    assert fd is not None
    try:
        yield waited
    finally:
        _release(file, fd)


def _holder(file: Path, patience_s: float = 1.0) -> str:
    """The process id written in a held lock file; a holder writes it just after taking the lock,
    so an empty file is read again for up to ``patience_s`` seconds ("?" if it stays unreadable)."""
    import time

    deadline = time.monotonic() + patience_s
    owner = _owner(file)
    while owner == "?" and time.monotonic() < deadline:
        time.sleep(0.01)
        owner = _owner(file)
    return owner


def remove_if_free(file: Path | str) -> bool:
    """Remove the lock file ``file`` if no process holds it (its holder was killed: the operating
    system released the lock, the file stayed). Returns whether it was removed; a held lock, or
    one that vanished meanwhile, is left alone."""
    file = Path(file)
    if not file.exists():
        return False
    try:
        fd = _acquire(file, block=False)
    except OSError:
        return False
    if fd is None:
        return False
    _release(file, fd)
    return True


def _acquire(file: Path, block: bool) -> int | None:
    """An open descriptor of ``file`` holding its exclusive ``flock`` (our pid written in it), or
    ``None`` when another process holds it and ``block`` is false."""
    while True:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # the holder before us may have removed the file after we opened it: retry on the new one
            same = os.fstat(fd).st_ino == os.stat(file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


def _release(file: Path, fd: int) -> None:
    """Remove the lock file (while still holding it, so no one else holds a removed file) and unlock."""
    with contextlib.suppress(OSError):
        os.unlink(file)
    os.close(fd)


F = TypeVar("F", bound=Callable[..., Any])


#: paths whose lock a ``writes``-decorated call of this process holds
_WRITING: set[str] = set()


def writes(arg: str) -> Callable[[F], F]:
    """Decorator: hold the lock of the function's path argument ``arg`` while it runs.

    Nested calls on the same path in one process (``reproduce`` runs ``run_sweep`` on its own
    folder) share the outer call's lock; a bare ``hold`` of the path still refuses them.
    """

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            path = signature.bind(*args, **kwargs).arguments[arg]
            key = os.path.abspath(path)
            if key in _WRITING:  # a decorated function called by another on the same path
                return fn(*args, **kwargs)
            with hold(path):
                _WRITING.add(key)
                try:
                    return fn(*args, **kwargs)
                finally:
                    _WRITING.discard(key)

        return wrapper  # type: ignore[return-value]

    return decorate
