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
``dm_control:cheetah-run``     the ``dm-control`` package's original suite model of the task
                               (``domain-task``): its XML and assets as the task builds them,
                               its own solver settings and timestep, ``control_timestep /
                               timestep`` substeps, action = ``ctrl``. dm_control's physics
                               wrapper does not run with MuJoCo 4 (``flex_vertedge``), so only
                               the XML and assets are taken from it (its task builds them and
                               hands them to ``Physics.from_xml_string``, which is intercepted)
``mjcf:path/to/model.xml``     any MJCF file (``--substeps N`` physics steps per control
                               step, default 1; action = ``ctrl``)
=============================  ==========================================================

MuJoCo's energy computation (``<flag energy="enable"/>`` in several dm_control models), which
MJX does not implement and which does not act on the dynamics, is switched off for every source.

Initial states of ``dm_control:`` and ``mjcf:`` models are ``qpos0`` (+) U(-0.1, 0.1) per degree
of freedom and ``qvel`` U(-0.1, 0.1) (dm_control's task-specific ``initialize_episode`` needs its
physics wrapper and is not reproduced).

The state is always the full ``[qpos, qvel]``, never a task's observation (Gymnasium's
observations drop e.g. the x position of HalfCheetah). Episodes are not cut by Gymnasium's
health checks (``terminate_when_unhealthy``) or time limit: a rollout runs its ``--steps``.

Exact Jacobians need MJX; a model that MJX cannot build (the PGS solver of Gymnasium's Humanoid
tasks, the fully implicit integrator, some geom types) is refused for them in one line naming the
feature, and measured by the ``finite_diff`` backend with native MuJoCo alone
(``dynsparse.native_rollout``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
from pathlib import Path
from typing import Any

import mujoco
import numpy as np

from dynsparse import errors

GYMNASIUM = "gymnasium:"
DM_CONTROL = "dm_control:"
MJCF = "mjcf:"
PREFIXES = (GYMNASIUM, DM_CONTROL, MJCF)

#: How Gymnasium's v5 ``reset_model`` draws initial states (``envs.RESET_KINDS``), by task
#: family; every other family draws ``qpos`` and ``qvel`` uniformly with ``reset_noise_scale``.
_GYMNASIUM_RESET = {
    "HalfCheetah": "uniform-normal", "Ant": "uniform-normal", "InvertedDoublePendulum": "uniform-normal",
    "Reacher": "reacher", "Pusher": "pusher",
}


def kind(name: str) -> str:
    """``"gymnasium"``, ``"dm_control"``, ``"mjcf"`` or ``"playground"`` (no prefix)."""
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


def route_mujoco_warnings() -> None:
    """Send MuJoCo's C-level warnings (e.g. deprecated XML attributes in Playground's, Gymnasium's
    and dm_control's models) to logging (level INFO, logger ``mujoco``) instead of stdout, where
    they would interleave with the command's output. MuJoCo has one global handler: importing
    dm_control replaces it, so ``dm_control_suite`` calls this again."""
    import logging

    mujoco.set_mju_user_warning(lambda msg: logging.getLogger("mujoco").info("%s", msg.strip()))


def dm_control_suite() -> Any:
    """``dm_control.suite``, imported without an OpenGL context (``MUJOCO_GL=disable`` unless
    set: nothing is rendered) and with MuJoCo's warnings routed as before; ``None`` if
    dm-control is not installed or does not import."""
    import logging
    import warnings

    os.environ.setdefault("MUJOCO_GL", "disable")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from dm_control import suite
    except Exception:  # not installed, or it does not import beside this MuJoCo
        logging.getLogger(__name__).info("dm_control is not importable", exc_info=True)
        return None
    route_mujoco_warnings()
    return suite


def dm_control_tasks() -> tuple[str, ...]:
    """``domain-task`` names of the installed ``dm-control`` suite (empty if not installed)."""
    suite = dm_control_suite()
    return () if suite is None else tuple(f"{d}-{t}" for d, t in suite.ALL_TASKS)


def _check_task(name: str, prefix: str, tasks: tuple[str, ...], package: str, what: str, allowed: str) -> None:
    """``UserError`` unless ``name[len(prefix):]`` is one of ``tasks`` (empty: ``package`` is not
    installed), suggesting close names."""
    task = name[len(prefix):]
    if not tasks:
        raise errors.UserError(f"environment {name!r} needs the {package.split()[0]} package, which is not installed; pip install {package}")
    if task not in tasks:
        close = difflib.get_close_matches(task, tasks, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(prefix + c for c in close)}?" if close else f"allowed: {allowed}"
        raise errors.UserError(f"unknown {what} {task!r}; {hint}")


def check(name: str) -> None:
    """Raise ``UserError`` unless a prefixed ``name`` names an available model (cheap: the
    model is not built)."""
    if name.startswith(GYMNASIUM):
        ids = gymnasium_ids()
        _check_task(name, GYMNASIUM, ids, "gymnasium imageio", "Gymnasium MuJoCo task", ", ".join(GYMNASIUM + i for i in ids))
    elif name.startswith(DM_CONTROL):
        _check_task(name, DM_CONTROL, dm_control_tasks(), "dm-control", "dm_control task",
                    "dm_control:DOMAIN-TASK, e.g. dm_control:cheetah-run (`dynsparse envs` lists them)")
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


class MJXCannotBuild(errors.UserError):
    """MJX cannot build or step this model (the message names the feature): native MuJoCo only.

    Attributes:
      feature: what MJX lacks, e.g. ``mjtSolver.mjSOL_PGS is not implemented``.
    """

    def __init__(self, message: str, feature: str = ""):
        super().__init__(message)
        self.feature = feature


def build_error(name: str, exc: Exception) -> MJXCannotBuild:
    """The one-line error for a model that MJX cannot build (``NotImplementedError`` of
    ``mjx.put_model`` names the feature)."""
    import importlib.metadata

    feature = (str(exc).splitlines()[0] if str(exc) else type(exc).__name__).rstrip(". ")
    if "not implemented" not in feature:
        feature += " is not implemented"
    hint = ""
    if "PGS" in feature:
        hint = " (MJX implements the CG and Newton solvers; a copy of the XML with <option solver=\"Newton\"/> run as mjcf:PATH is a different solver, hence a different model)"
    version = importlib.metadata.version("mujoco-mjx")
    return MJXCannotBuild(
        f"{name}: MJX (mujoco-mjx {version}) cannot simulate this model: {feature}{hint}; "
        "exact Jacobians (--backend autodiff) need MJX: --backend finite_diff measures it with native MuJoCo "
        "(rollout and finite differences)", feature,
    )


def model_record(name: str, substeps: int | None = None) -> dict[str, Any]:
    """What identifies a non-Playground model's files, for the dataset's attrs (empty for
    Playground names): ``model_file`` (absolute path) and ``model_sha256`` of the main XML."""
    if kind(name) == "gymnasium":
        env = _gymnasium_env(name[len(GYMNASIUM):])
        path = Path(env.fullpath)
        import gymnasium

        return {"model_file": str(path), "model_sha256": file_sha256(path), "gymnasium_version": gymnasium.__version__}
    if kind(name) == "dm_control":
        import importlib.metadata

        xml, assets, _ = _dm_control_model(name[len(DM_CONTROL):])
        h = hashlib.sha256(xml if isinstance(xml, bytes) else xml.encode())
        for key in sorted(assets):
            value = assets[key]
            h.update(key.encode() + (value if isinstance(value, bytes) else str(value).encode()))
        return {"model_file": f"dm_control {importlib.metadata.version('dm-control')} suite {name[len(DM_CONTROL):]} (XML as the task builds it, with its assets)",
                "model_sha256": h.hexdigest()}
    if kind(name) == "mjcf":
        path = mjcf_path(name).resolve()
        return {"model_file": str(path), "model_sha256": file_sha256(path), "substeps": substeps or 1}
    return {}


def _gymnasium_env(task: str) -> Any:
    import gymnasium

    env = gymnasium.make(task, disable_env_checker=True).unwrapped
    env.close()
    return env


class _Captured(Exception):
    """Raised by the intercepted ``Physics.from_xml_string`` once it has the model."""


def _dm_control_model(task: str) -> tuple[str, dict[str, Any], int]:
    """``(xml, assets, n_substeps)`` of a ``domain-task`` of the dm_control suite: the task's own
    builder runs and hands its XML and assets to ``Physics.from_xml_string``, which is
    intercepted before dm_control's physics wrapper (which fails with MuJoCo 4) is built;
    ``n_substeps = round(control_timestep / timestep)`` with the domain's ``_CONTROL_TIMESTEP``
    (1 where the domain sets none, as ``control.Environment``)."""
    import importlib

    suite = dm_control_suite()
    from dm_control.mujoco import engine

    domain, _, task_name = task.partition("-")
    captured: dict[str, Any] = {}
    original = engine.Physics.__dict__["from_xml_string"]

    def capture(cls: Any, xml_string: str, assets: dict[str, Any] | None = None) -> Any:
        del cls
        captured.update(xml=xml_string, assets=dict(assets or {}))
        raise _Captured

    engine.Physics.from_xml_string = classmethod(capture)
    try:
        suite.load(domain, task_name)
    except _Captured:
        pass
    finally:
        engine.Physics.from_xml_string = original
    if "xml" not in captured:
        raise errors.UserError(f"dm_control:{task}: its task did not build a model from XML; not supported")
    model = mujoco.MjModel.from_xml_string(captured["xml"], captured["assets"])
    control = getattr(importlib.import_module(f"dm_control.suite.{domain}"), "_CONTROL_TIMESTEP", None)
    n_substeps = 1 if control is None else int(round(control / model.opt.timestep))
    return captured["xml"], captured["assets"], n_substeps


def without_energy(model: mujoco.MjModel) -> mujoco.MjModel:
    """``model`` with MuJoCo's energy computation (``<flag energy="enable"/>``, which MJX does not
    implement) switched off: it only fills ``data.energy`` and does not act on the dynamics
    (Playground's ports of these tasks drop it too)."""
    model.opt.enableflags &= ~int(mujoco.mjtEnableBit.mjENBL_ENERGY)
    return model


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What ``envs.MjcfEnv`` is built from (see its arguments): the native model (energy off),
    physics steps per control step, and how initial states are drawn."""

    model: mujoco.MjModel
    n_substeps: int
    init_noise: float = 0.1
    reset_kind: str = "uniform"
    init_qpos: Any = None
    init_qvel: Any = None


def load(name: str, substeps: int | None = None) -> Recipe:
    """The model of a prefixed name (``check`` first) and how to reset it; ``substeps`` for
    ``mjcf:`` (default 1). ``envs.load`` builds the environment from it.

    Raises:
      UserError: unknown task, missing file or an XML MuJoCo cannot compile.
    """
    check(name)
    check_substeps(name, substeps)
    if name.startswith(GYMNASIUM):
        task = name[len(GYMNASIUM):]
        genv = _gymnasium_env(task)
        family = task.split("-v")[0]
        reset_kind = _GYMNASIUM_RESET.get(family, "uniform")
        noise = float(getattr(genv, "_reset_noise_scale", 0.1))
        return Recipe(without_energy(genv.model), int(genv.frame_skip), noise, reset_kind, genv.init_qpos, genv.init_qvel)
    if name.startswith(DM_CONTROL):
        xml, assets, n_substeps = _dm_control_model(name[len(DM_CONTROL):])
        return Recipe(without_energy(mujoco.MjModel.from_xml_string(xml, assets)), n_substeps)
    path = mjcf_path(name)
    try:
        model = mujoco.MjModel.from_xml_path(os.fspath(path))
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise errors.UserError(f"{name}: MuJoCo cannot compile this MJCF file ({first})") from exc
    return Recipe(without_energy(model), substeps or 1)
