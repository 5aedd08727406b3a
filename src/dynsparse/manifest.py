"""Checksums of every file a store's writer put there, so a damaged store is never read as data.

Zarr reads a missing chunk as the array's fill value (NaN, or 0 for integers and booleans) and
reads metadata through the consolidated ``.zmetadata`` only, so a deleted chunk or a garbled
``.zarray`` would otherwise pass silently. The writer records (``MANIFEST_DIR`` inside the store):

- ``created.json``: the SHA-256 of every file the empty store was created with (metadata and
  coordinate chunks), written before the store is renamed into place;
- ``unit-NNNNNN.json`` per collection unit: for each data variable, the SHA-256 of the unit's
  chunk file, or ``null`` where Zarr wrote no file (the chunk equals the fill value). Written after
  the unit's chunks and before the checkpoint that commits the unit, atomically.

``problems`` checks the created files and every committed unit (``< checkpoint.next_unit``):
a missing, altered or unexpected chunk file, a missing unit record, and per-array metadata files
that disagree with the consolidated metadata.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from dynsparse import files

MANIFEST_DIR = "dynsparse-manifest"
CREATED = "created.json"
#: files in a store root that are not Zarr's and not recorded at creation
OWN_FILES = ("dynsparse-checkpoint.npz",)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unit_file(store: Path, unit: int) -> Path:
    return Path(store) / MANIFEST_DIR / f"unit-{unit:06d}.json"


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(exist_ok=True)
    files.write_atomic(path, json.dumps(payload, sort_keys=True).encode())


def record_creation(store: Path) -> None:
    """Record the checksum of every file in a freshly created (not yet renamed) store."""
    store = Path(store)
    entries = {}
    for p in sorted(store.rglob("*")):
        rel = p.relative_to(store).as_posix()
        if p.is_file() and rel not in OWN_FILES and not rel.startswith(MANIFEST_DIR + "/"):
            entries[rel] = sha256(p)
    _write_json(store / MANIFEST_DIR / CREATED, {"files": entries})


def chunk_key(episode_chunk: int, step_chunk: int, ndim: int) -> str:
    """The Zarr v2 chunk file name (separator '.') of an ``(episode, step, ...)`` array's chunk
    whose trailing dims are one chunk each."""
    return ".".join([str(episode_chunk), str(step_chunk)] + ["0"] * (ndim - 2))


def unit_chunks(names_ndim: Iterable[tuple[str, int]], episode_chunk: int, step_chunk: int) -> dict[str, str]:
    """``{variable: relative chunk path}`` of one unit."""
    return {name: f"{name}/{chunk_key(episode_chunk, step_chunk, ndim)}" for name, ndim in names_ndim}


def record_unit(store: Path, unit: int, chunks: dict[str, str]) -> None:
    """Record the checksums of one written unit's chunk files (``chunks`` from ``unit_chunks``)."""
    store = Path(store)
    entries = {rel: (sha256(store / rel) if (store / rel).exists() else None) for rel in chunks.values()}
    _write_json(unit_file(store, unit), {"unit": unit, "files": entries})


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None
    except (OSError, ValueError):
        return None


def _check_files(store: Path, entries: dict[str, str | None], where: str) -> list[str]:
    out = []
    for rel, digest in entries.items():
        p = store / rel
        if digest is None:
            if p.exists():
                out.append(f"chunk {rel} ({where}) exists but was never written (the unit stored the fill value there)")
        elif not p.is_file():
            out.append(f"chunk {rel} ({where}) is missing")
        elif sha256(p) != digest:
            out.append(f"file {rel} ({where}) was altered (checksum differs from the one recorded when it was written)")
    return out


def metadata_problems(store: Path) -> list[str]:
    """Per-array/group metadata files (``.zarray``, ``.zattrs``, ``.zgroup``) that disagree with
    the consolidated ``.zmetadata`` that readers use (or that are unreadable)."""
    store = Path(store)
    try:
        consolidated = json.loads((store / ".zmetadata").read_text())["metadata"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f".zmetadata is unreadable: {type(exc).__name__}: {exc}"]
    out = []
    for key, meta in consolidated.items():
        p = store / key
        try:
            on_disk = json.loads(p.read_text())
        except FileNotFoundError:
            out.append(f"metadata file {key} is missing")
            continue
        except (OSError, ValueError) as exc:
            out.append(f"metadata file {key} is unreadable ({type(exc).__name__})")
            continue
        if on_disk != meta:
            out.append(f"metadata file {key} differs from the consolidated metadata")
    return out


def created_problems(store: Path) -> list[str]:
    """Problems of the files the store was created with (metadata, coordinates)."""
    store = Path(store)
    created = _read_record(store / MANIFEST_DIR / CREATED)
    if created is None:
        return [f"{MANIFEST_DIR}/{CREATED} is missing or unreadable: the store's checksums are lost (or it was "
                "written by a dynsparse without them); collect it again"]
    return metadata_problems(store) + _check_files(store, created["files"], "written at creation")


def unit_problems(store: Path, unit: int, chunks: dict[str, str], where: str) -> list[str]:
    """Problems of one committed unit: ``chunks`` as ``unit_chunks`` returns, ``where`` a human
    description of the unit ("episodes 0-1, steps 20-39")."""
    store = Path(store)
    record = _read_record(unit_file(store, unit))
    if record is None:
        return [f"{MANIFEST_DIR}/unit-{unit:06d}.json ({where}) is missing or unreadable: its chunks cannot be checked"]
    if set(record["files"]) != set(chunks.values()):
        return [f"{MANIFEST_DIR}/unit-{unit:06d}.json ({where}) lists other chunks than the store's layout implies"]
    return _check_files(store, record["files"], where)


def problems(store: Path, committed: Iterable[tuple[int, dict[str, str], str]]) -> list[str]:
    """Everything that contradicts the recorded checksums: ``created_problems`` and
    ``unit_problems`` of each ``(unit, chunks, where)`` the checkpoint says is written.

    Returns:
      one line per problem (empty: the store is what its writer wrote).
    """
    out = created_problems(store)
    for unit, chunks, where in committed:
        out += unit_problems(store, unit, chunks, where)
    return out
