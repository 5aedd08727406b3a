"""JAX's persistent compilation cache, so a compiled control-step Jacobian is reused across runs.

Compiling ``jacfwd`` through a control step takes tens of seconds on CPU per (env, batch shape);
with the cache a second process (a resumed collection, the next test session) loads it instead.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "DYNSPARSE_JAX_CACHE"
_current: Path | None = None


def current() -> Path | None:
    """The folder ``enable`` turned on in this process (None: off). ``exported`` keeps its
    serialized programs in ``<folder>/exported``."""
    return _current


def default_dir() -> Path:
    """``$DYNSPARSE_JAX_CACHE``, else ``$XDG_CACHE_HOME/dynsparse/jax`` (``~/.cache/...``)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dynsparse" / "jax"


def enable(path: str | Path | None = None) -> Path | None:
    """Turn the cache on at ``path`` (default ``default_dir()``); ``"off"`` leaves it off."""
    import jax

    global _current
    target = Path(path) if path is not None else default_dir()
    if str(target) == "off":
        _current = None
        return None
    target.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _current = target
    return target
