"""dynsparse: how sparse are the true dynamics of robotic RL environments?

The public API is these modules (README, "Python API"); ``import dynsparse`` imports none of them
(JAX and MuJoCo load on first use), ``dynsparse.collect`` or ``from dynsparse import collect``
imports one:

- ``collect`` (``CollectConfig``, ``collect``), ``dataset`` (``open_dataset``), ``envs`` (``load``,
  ``from_mjcf``), ``policies`` (``make``), ``xla`` (``use_cpu_cores``)
- ``jacobians`` (``autodiff``, ``finite_diff``, ``certify``, ``definitions``), ``metrics``
  (``structure``, ``sparsity``, ``local``, ``temporal``, ``contacts``, ``coverage``), ``graphs``
- ``analysis`` (``analyze``, ``AnalyzeOptions``), ``learn``, ``results`` (``read_analysis``,
  ``table_row``), ``report`` (``build``), ``reproduce``, ``sweep``
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["analysis", "collect", "dataset", "envs", "graphs", "jacobians", "learn", "metrics", "policies", "render",
           "report", "reproduce", "results", "sweep", "xla"]


def __getattr__(name: str) -> Any:
    """``dynsparse.collect`` and the like: the public modules, imported on first use."""
    if name in __all__:
        return importlib.import_module(f"dynsparse.{name}")
    raise AttributeError(f"module 'dynsparse' has no attribute {name!r}")
