"""Files and output folders: the one place that writes atomically and decides whose a folder is.

- ``write_atomic``: one file, all or nothing.
- ``claim``: before anything is written, what an output folder is: free (missing or empty), this
  command's own earlier output (same identity: up to date or resumable), or refused (a file,
  someone else's folder, or a folder of another configuration), in one line naming why.
- ``publish``: build a whole output folder under a temporary sibling and rename it into place, so
  a reader (or an interrupted run) sees the old folder or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from dynsparse import errors

#: ``claim``'s identity for folders that are rewritten whatever they held (e.g. a report).
ANY = object()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing: a synced temporary sibling, then ``os.replace``.
    A reader (or an interrupted writer) sees the previous file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any, indent: int | None = 1) -> None:
    """``write_atomic`` of ``payload`` as JSON (``default=str`` for paths and the like)."""
    write_atomic(Path(path), json.dumps(payload, indent=indent, default=str).encode())


def refuse_file_as_folder(out: Path) -> None:
    """Raise ``UserError`` when an output folder ``out`` names an existing non-directory."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise errors.UserError(f"output folder {str(out)!r} exists and is a file, not a folder; nothing was changed: choose another --out")


def claim(
    out: Path, marker: str, identity: Any, what: str,
    read: Callable[[dict[str, Any]], Any] = lambda record: record,
    hint: str = "choose another --out or remove it",
    owned: tuple[str, ...] | None = None,
) -> Literal["new", "same"]:
    """Decide what the output folder ``out`` is, before anything is written to it.

    Args:
      out: the folder.
      marker: the JSON file (in ``out``) that makes a folder this command's own.
      identity: what the marker must record (through ``read``) for ``out`` to be "the same run";
        ``None``: any non-empty folder is refused; ``ANY``: any folder holding the marker is ours.
      what: the kind of folder, for messages ("analysis", "sweep", ...).
      read: the identity inside a marker's record (default: the whole record).
      hint: what the user should do, ending each refusal.
      owned: for a folder that will be replaced whole (``publish(replace=True)``): the only
        entries it may hold; anything else in it (the user's files, an input folder) is refused
        rather than deleted.

    Returns:
      ``"new"``: ``out`` is missing or empty. ``"same"``: it holds ``marker`` with this identity.

    Raises:
      UserError: ``out`` is a file; non-empty without a readable marker; or (``identity`` not
        ``ANY``) a marker of another identity, naming the keys that differ.
    """
    out = Path(out)
    refuse_file_as_folder(out)
    if not out.exists() or not any(out.iterdir()):
        return "new"
    if identity is None:
        raise errors.UserError(f"{str(out)!r} already exists and is not empty; nothing was changed: {hint}")
    path = out / marker
    if not path.exists():
        raise errors.UserError(f"{str(out)!r} already exists and is not a dynsparse {what} folder (no {marker}); nothing was changed: {hint}")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise errors.UserError(f"{str(path)!r} is unreadable ({type(exc).__name__}); nothing was changed: {hint}") from None
    if owned is not None:
        others = sorted(p.name for p in out.iterdir() if p.name not in owned and not p.name.startswith(f".{marker}"))
        if others:
            raise errors.UserError(
                f"{str(out)!r} holds a {what} and other entries ({', '.join(others[:5])}) that rewriting it would delete; "
                f"nothing was changed: {hint}"
            )
    if identity is ANY:
        return "same"
    prior = read(record) if isinstance(record, dict) else None
    if prior == identity:
        return "same"
    raise errors.UserError(
        f"{str(out)!r} already exists and holds a {what} with another configuration ({differences(prior, identity)}); nothing was changed: {hint}"
    )


def differences(stored: Any, wanted: Any, limit: int = 4) -> str:
    """``"k: stored a, requested b; ..."`` for the top-level keys whose values differ (nested
    dicts are named by their path, e.g. ``options.shuffles``)."""
    found: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k), b.get(k), f"{prefix}{k}.")
        elif a != b:
            found.append(f"{prefix[:-1] or 'record'}: stored {a!r}, requested {b!r}")

    walk(stored if isinstance(stored, dict) else {"record": stored}, wanted if isinstance(wanted, dict) else {"record": wanted}, "")
    shown = [f[:160] for f in found[:limit]]
    more = f"; and {len(found) - limit} more" if len(found) > limit else ""
    return "; ".join(shown) + more if shown else "unreadable record"


@contextlib.contextmanager
def publish(out: Path, replace: bool = False) -> Iterator[Path]:
    """Build the folder ``out`` all or nothing.

    Yields a new temporary sibling folder (``.<name>.partial-<id>``); when the block ends without
    an exception it is renamed to ``out``; on any exception (Ctrl-C included) it is removed and
    ``out`` is as it was. Partial folders of earlier interrupted runs of ``out`` are removed first
    (writers of one ``out`` are serialised by ``locks.writes``).

    Args:
      out: the folder to publish. It must be missing or empty, unless ``replace``.
      replace: swap out an existing ``out`` (e.g. a report rebuilt): the old folder is moved
        aside, the new one renamed in, then the old one deleted.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if out.exists() and replace:
            old = out.parent / f".{out.name}.partial-old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
