"""Model sources beyond MuJoCo Playground, one naming scheme.

=============================  ==========================================================
name                           model
=============================  ==========================================================
``CheetahRun``                 MuJoCo Playground registry name (``dynsparse.envs``)
``gymnasium:HalfCheetah-v5``   the installed ``gymnasium`` package's MuJoCo v5 task: its own
                               XML (``MjModel`` exactly as the Gymnasium env builds it),
                               ``frame_skip`` substeps, the action written to ``data.ctrl``
                               and held (``MujocoEnv.do_simulation``), initial states drawn
                               as the task's ``reset_model`` draws them
``mjcf:path/to/model.xml``     any MJCF file (``--substeps N`` physics steps per control
                               step, default 1; action = ``ctrl``)
=============================  ==========================================================

The state is always the full ``[qpos, qvel]``, never a task's observation (Gymnasium's
observations drop e.g. the x position of HalfCheetah). Episodes are not cut by Gymnasium's
health checks (``terminate_when_unhealthy``) or time limit: a rollout runs its ``--steps``.

Everything dynsparse computes runs in MJX; a model that MJX cannot build (the PGS solver of
Gymnasium's Humanoid tasks, the fully implicit integrator, some geom types) is refused in one
line naming the feature.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from pathlib import Path
from typing import Any

import mujoco
import numpy as np

from dynsparse import errors

GYMNASIUM = "gymnasium:"
MJCF = "mjcf:"
PREFIXES = (GYMNASIUM, MJCF)

#: How Gymnasium's v5 ``reset_model`` draws initial states (``envs.RESET_KINDS``), by task
#: family; every other family draws ``qpos`` and ``qvel`` uniformly with ``reset_noise_scale``.
_GYMNASIUM_RESET = {
    "HalfCheetah": "uniform-normal", "Ant": "uniform-normal", "InvertedDoublePendulum": "uniform-normal",
    "Reacher": "reacher", "Pusher": "pusher",
}


def kind(name: str) -> str:
    """``"gymnasium"``, ``"mjcf"`` or ``"playground"`` (no prefix)."""
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return prefix[:-1]
    return "playground"


def gymnasium_ids() -> tuple[str, ...]:
    """The MuJoCo v5 task ids of the installed ``gymnasium`` package (empty if not installed)."""
    try:
        import gymnasium
    except ImportError:
        return ()
    return tuple(
        i for i, s in gymnasium.registry.items()
        if i.endswith("-v5") and "gymnasium.envs.mujoco" in str(s.entry_point)
    )


def check(name: str) -> None:
    """Raise ``UserError`` unless a prefixed ``name`` names an available model (cheap: the
    model is not built)."""
    if name.startswith(GYMNASIUM):
        task = name[len(GYMNASIUM):]
        ids = gymnasium_ids()
        if not ids:
            raise errors.UserError(f"environment {name!r} needs the gymnasium package, which is not installed; pip install 'gymnasium>=1.2' imageio")
        if task not in ids:
            close = difflib.get_close_matches(task, ids, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(GYMNASIUM + c for c in close)}?" if close else f"allowed: {', '.join(GYMNASIUM + i for i in ids)}"
            raise errors.UserError(f"unknown Gymnasium MuJoCo task {task!r}; {hint}")
    elif name.startswith(MJCF):
        mjcf_path(name)


def mjcf_path(name: str) -> Path:
    """The file of an ``mjcf:PATH`` name; ``UserError`` if it is not an existing file."""
    raw = name[len(MJCF):]
    path = Path(raw).expanduser()
    if not raw or not path.is_file():
        raise errors.UserError(f"mjcf model {raw!r} is not an existing file; allowed: mjcf:PATH with PATH an MJCF (.xml) file")
    return path


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_substeps(name: str, substeps: int | None) -> None:
    """``--substeps`` applies to ``mjcf:`` models only (the others define their own)."""
    if substeps is None:
        return
    if isinstance(substeps, bool) or not isinstance(substeps, (int, np.integer)) or substeps <= 0:
        raise errors.UserError(f"substeps must be an integer > 0, got {substeps!r}")
    if kind(name) != "mjcf":
        raise errors.UserError(
            f"--substeps {substeps} applies to mjcf: models only; {name!r} defines its own substeps (leave --substeps out)"
        )


def build_error(name: str, exc: Exception) -> errors.UserError:
    """The one-line error for a model that MJX cannot build (``NotImplementedError`` of
    ``mjx.put_model`` names the feature)."""
    import importlib.metadata

    feature = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    hint = ""
    if "PGS" in feature:
        hint = " (MJX implements the CG and Newton solvers; a copy of the XML with <option solver=\"Newton\"/> run as mjcf:PATH is a different solver, hence a different model)"
    version = importlib.metadata.version("mujoco-mjx")
    return errors.UserError(
        f"{name}: MJX (mujoco-mjx {version}) cannot simulate this model: {feature} is not implemented{hint}; "
        "dynsparse rolls out and differentiates in MJX, so this model is not supported"
    )


def model_record(name: str, substeps: int | None = None) -> dict[str, Any]:
    """What identifies a non-Playground model's files, for the dataset's attrs (empty for
    Playground names): ``model_file`` (absolute path) and ``model_sha256`` of the main XML."""
    if kind(name) == "gymnasium":
        env = _gymnasium_env(name[len(GYMNASIUM):])
        path = Path(env.fullpath)
        import gymnasium

        return {"model_file": str(path), "model_sha256": file_sha256(path), "gymnasium_version": gymnasium.__version__}
    if kind(name) == "mjcf":
        path = mjcf_path(name).resolve()
        return {"model_file": str(path), "model_sha256": file_sha256(path), "substeps": substeps or 1}
    return {}


def _gymnasium_env(task: str) -> Any:
    import gymnasium

    env = gymnasium.make(task, disable_env_checker=True).unwrapped
    env.close()
    return env


def load(name: str, substeps: int | None = None) -> Any:
    """Build a prefixed model (``check`` first) as an ``envs.MjcfEnv``; ``substeps`` for
    ``mjcf:`` (default 1).

    Raises:
      UserError: unknown task, missing file, an XML MuJoCo cannot compile, or a model MJX cannot build.
    """
    from dynsparse import envs

    check(name)
    check_substeps(name, substeps)
    if name.startswith(GYMNASIUM):
        task = name[len(GYMNASIUM):]
        genv = _gymnasium_env(task)
        family = task.split("-v")[0]
        reset_kind = _GYMNASIUM_RESET.get(family, "uniform")
        noise = float(getattr(genv, "_reset_noise_scale", 0.1))
        try:
            return envs.MjcfEnv(genv.model, int(genv.frame_skip), noise, reset_kind, genv.init_qpos, genv.init_qvel)
        except NotImplementedError as exc:
            raise build_error(name, exc) from exc
    path = mjcf_path(name)
    try:
        model = mujoco.MjModel.from_xml_path(os.fspath(path))
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise errors.UserError(f"{name}: MuJoCo cannot compile this MJCF file ({first})") from exc
    try:
        return envs.MjcfEnv(model, substeps or 1)
    except NotImplementedError as exc:
        raise build_error(name, exc) from exc
