"""Installed package versions, recorded in datasets and checkpoints (no heavy imports)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """``{name: installed version or "not installed"}``."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
