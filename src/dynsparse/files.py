"""Small file helpers shared by the modules that write outside Zarr."""

from __future__ import annotations

import os
from pathlib import Path

from dynsparse import errors


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing: a synced temporary sibling, then ``os.replace``.
    A reader (or an interrupted writer) sees the previous file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def refuse_file_as_folder(out: Path) -> None:
    """Raise ``UserError`` when an output folder ``out`` names an existing non-directory."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise errors.UserError(f"output folder {str(out)!r} exists and is a file, not a folder; nothing was changed: choose another --out")
