"""PPO checkpoints: a folder with ``policy.json`` and one ``params-<sha>.npz``.

``policy.json`` holds everything needed to rebuild and judge the policy (env name, observation and
action sizes, network configuration, exploration-noise beta, training budget and hyper-parameters,
evaluation returns, package versions) and names its parameter file, whose SHA-256 it records.
``params-<sha>.npz`` holds plain NumPy arrays under ``/``-joined paths:
``normalizer/{mean,std,count,summed_variance}``, ``policy/params/hidden_<i>/{kernel,bias}`` and the
same for ``value``, readable with ``numpy.load`` alone.

Writes are crash-safe: the parameter file is written under a temporary name and renamed, then
``policy.json`` is replaced atomically; an interruption leaves the previous checkpoint readable.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from dynsparse import errors, files

FORMAT = "dynsparse-ppo"
FORMAT_VERSION = 1
META = "policy.json"


def flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested mappings of arrays -> ``{"a/b/c": array}``."""
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(flatten(value, path + "/"))
        else:
            out[path] = np.asarray(value)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of ``flatten``."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez`` of ``arrays`` as bytes (uncompressed)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def save(folder: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write (or replace) the checkpoint in ``folder``.

    Args:
      folder: created if missing.
      meta: JSON-serialisable description; ``format``, ``format_version``, ``params_file`` and
        ``params_sha256`` are set here.
      arrays: flat ``{"normalizer/mean": ..., "policy/params/hidden_0/kernel": ...}``.

    Returns:
      The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = npz_bytes({k: np.asarray(v) for k, v in arrays.items()})
    sha = hashlib.sha256(data).hexdigest()
    params_name = f"params-{sha[:16]}.npz"
    files.write_atomic(folder / params_name, data)
    meta = {**meta, "format": FORMAT, "format_version": FORMAT_VERSION, "params_file": params_name, "params_sha256": sha}
    files.write_atomic(folder / META, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    for old in folder.glob("params-*.npz"):
        if old.name != params_name:
            old.unlink()
    return folder


def read_meta(folder: str | Path) -> dict[str, Any]:
    """``policy.json`` of a checkpoint, checked for format.

    Raises:
      UserError: missing folder or file, invalid JSON, or another format/version.
    """
    folder = Path(folder)
    path = folder / META
    if not folder.is_dir():
        raise errors.UserError(f"no PPO checkpoint at {folder}: not a directory")
    if not path.is_file():
        raise errors.UserError(f"no PPO checkpoint at {folder}: {META} is missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise errors.UserError(f"corrupt PPO checkpoint {folder}: {META} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise errors.UserError(f"{path} is not a dynsparse PPO checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise errors.UserError(f"{path}: checkpoint format version {meta.get('format_version')!r} is not supported; allowed: {FORMAT_VERSION}")
    problem = _meta_problem(meta)
    if problem:
        raise errors.UserError(f"corrupt PPO checkpoint {folder}: {META} {problem}")
    return meta


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


#: policy.json field -> (what it must be, check)
_META_FIELDS: dict[str, tuple[str, Any]] = {
    "env": ("an environment name (string)", lambda x: isinstance(x, str) and bool(x)),
    "obs_size": ("an integer > 0", lambda x: _is_int(x) and x > 0),
    "action_size": ("an integer > 0", lambda x: _is_int(x) and x > 0),
    "params_file": ("a file name (string)", lambda x: isinstance(x, str) and bool(x) and "/" not in x),
    "params_sha256": ("a SHA-256 hex digest", lambda x: isinstance(x, str) and len(x) == 64),
    "network": ("an object with policy_hidden (integers > 0) and activation (string)",
                lambda x: isinstance(x, dict) and isinstance(x.get("activation"), str)
                and isinstance(x.get("policy_hidden"), list) and all(_is_int(h) and h > 0 for h in x["policy_hidden"])
                and isinstance(x.get("min_std", 0.001), (int, float)) and not isinstance(x.get("min_std", 0.001), bool)),
    "noise": ("an object with beta (a number)",
              lambda x: isinstance(x, dict) and isinstance(x.get("beta"), (int, float)) and not isinstance(x.get("beta"), bool)),
}


def _meta_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with a ``policy.json``'s fields (None: nothing)."""
    for key, (what, ok) in _META_FIELDS.items():
        if key not in meta:
            return f"lacks {key!r} ({what})"
        if not ok(meta[key]):
            return f"field {key!r} is {meta[key]!r}; it must be {what}"
    return None


def load(folder: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, flat arrays)`` of a checkpoint, its parameter file verified against its SHA-256.

    Raises:
      UserError: anything missing, corrupt or inconsistent, named.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    params = folder / str(meta.get("params_file", ""))
    if not params.is_file():
        raise errors.UserError(f"corrupt PPO checkpoint {folder}: parameter file {meta.get('params_file')!r} is missing")
    data = params.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha != meta.get("params_sha256"):
        raise errors.UserError(f"corrupt PPO checkpoint {folder}: {params.name} does not match the SHA-256 in {META}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any unreadable npz is one user-facing error
        raise errors.UserError(f"corrupt PPO checkpoint {folder}: {params.name} is unreadable ({e})") from None
    return meta, arrays


def export_policy(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint keeping only what acting needs (normaliser and policy network).

    The value network (most of a checkpoint's size: 256 x 5 for Playground's DM-Control setup)
    is dropped; ``policy.json`` records ``"value_network": "omitted"`` and its source digest.

    Raises:
      UserError: ``src`` is not a valid checkpoint, or ``dst`` exists and is not empty.
    """
    dst = Path(dst)
    files.claim(dst, META, None, "policy", hint="choose another destination")
    meta, arrays = load(src)
    kept = {k: v for k, v in arrays.items() if not k.startswith("value/")}
    source_sha = meta["params_sha256"]
    meta = {k: v for k, v in meta.items() if k not in ("params_file", "params_sha256")}
    meta["value_network"] = "omitted"
    meta["exported_from_sha256"] = source_sha
    with files.publish(dst) as tmp:
        save(tmp, meta, kept)
    return dst
