"""Constraints the data never activated, and the global zeros they could break.

A global zero (an entry zero at every counted step) is an upper bound on causal absence: an entry
that only becomes non-zero while a joint limit or a contact is active looks like a zero when the
data never reach that limit or contact (CartpoleBalance: the slider first reaches its joint limit
at step 275 of a random episode, so 2 x 100 steps show 3 zeros in column ``qpos:slider`` that
1 x 1000 steps do not). The coverage curve cannot see this (the zero set never changes), so this
module lists, per dataset:

- **joint limits** (hinge, slide, ball) never active: at no counted step, before or after it,
  was the joint within its limit margin of a limit (MuJoCo's rule for creating a limit row:
  ``dist < margin`` with ``dist`` the distance to the nearer limit, for a ball joint
  ``range[1] - angle``);
- **tendon limits** never active: the same with the tendon length (native MuJoCo kinematics at
  every counted state);
- **contact pairs** never active: the dataset's ``contact_pairs`` is false at every counted step;

and marks each global zero whose *input* column is a state coordinate the constraint depends on
(a joint limit: ``qpos`` and ``qvel`` of the joint's dofs; a tendon limit: those of the dofs its
Jacobian moves at ``qpos0``; a contact pair: ``qvel`` of every dof of both geoms' bodies and their
ancestors, ``qpos`` of those among them that change the pair's distance at sampled states, so a
planar robot's x position is not flagged by a floor plane), as "may be unvisited". That rule is a flag, not a proof: an active constraint can also create entries in
other columns (through the mass matrix), and a flagged zero may be a true zero.

Equality constraints are active whenever enabled, so they are never listed.
"""

from __future__ import annotations

import json
from typing import Any

import mujoco
import numpy as np

from dynsparse import dataset


def model_of(ds: Any) -> tuple[mujoco.MjModel | None, str]:
    """The native model a dataset was collected with, rebuilt from its attrs (``env`` and, for
    ``mjcf:``, ``substeps``), and a note: ``(model, "")`` or ``(None, why not)``. The rebuilt model
    must have the recorded compiled digest (``model_compiled_sha256``: every file it reads, every
    option; Playground models too), else for older datasets the main XML's ``model_sha256``."""
    from dynsparse import envs, errors, sources

    name = ds.attrs.get("env")
    if sources.kind(str(name)) == "mjcf" and ds.attrs.get("model_file"):
        name = sources.MJCF + str(ds.attrs["model_file"])  # absolute: readable from any working directory
    try:
        config = json.loads(ds.attrs.get("config", "{}"))
        spec = envs.load(str(name), "float64", config.get("substeps"), native=True)
    except (errors.UserError, ValueError, KeyError, TypeError) as exc:
        return None, f"the model of {name!r} could not be rebuilt ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): joint and tendon limits not checked"
    compiled = ds.attrs.get("model_compiled_sha256")
    if compiled and str(compiled) != envs.model_digest(spec.mj_model):
        return None, f"the model of {name!r} changed since collection (its compiled SHA-256): joint and tendon limits not checked"
    if not compiled and ds.attrs.get("model_sha256") and str(ds.attrs.get("model_sha256")) != _digest(str(name), config.get("substeps")):
        # a dataset from before 2026-12-03 records only its main XML's digest
        return None, f"the model file of {name!r} changed since collection: joint and tendon limits not checked"
    if spec.nq != int(ds.attrs.get("nq", spec.nq)) or spec.nv != int(ds.attrs.get("nv", spec.nv)):
        return None, f"the model of {name!r} no longer has the dataset's sizes: joint and tendon limits not checked"
    return spec.mj_model, ""


def _digest(name: str, substeps: int | None) -> str | None:
    from dynsparse import sources

    return sources.model_record(name, substeps).get("model_sha256")


def _chain_dofs(model: mujoco.MjModel, body: int) -> list[int]:
    """Dofs of ``body`` and its ancestors."""
    dofs: list[int] = []
    while body > 0:
        start, n = int(model.body_dofadr[body]), int(model.body_dofnum[body])
        dofs += list(range(start, start + n)) if start >= 0 else []
        body = int(model.body_parentid[body])
    return sorted(set(dofs))


def _touched_columns(dofs: list[int], nv: int, state_names: list[str]) -> list[str]:
    return [state_names[d] for d in dofs] + [state_names[nv + d] for d in dofs]


def _qpos(ds: Any, mask: np.ndarray) -> np.ndarray:
    """``(k, nq)`` qpos of every counted step, before and after it."""
    nq = int(ds.attrs["nq"])
    small = dataset.load(ds, ("state", "next_state"))
    both = np.concatenate([small["state"].values[mask][:, :nq], small["next_state"].values[mask][:, :nq]])
    return both[np.isfinite(both).all(axis=1)]


def _joint_limits(model: mujoco.MjModel, qpos: np.ndarray, state_names: list[str]) -> list[dict[str, Any]]:
    out = []
    for j in np.nonzero(model.jnt_limited)[0]:
        jtype = mujoco.mjtJoint(model.jnt_type[j])
        adr, lo, hi, margin = int(model.jnt_qposadr[j]), *model.jnt_range[j], float(model.jnt_margin[j])
        if jtype in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE):
            q = qpos[:, adr]
            dist = np.minimum(q - lo, hi - q)
            ndof = 1
        elif jtype == mujoco.mjtJoint.mjJNT_BALL:
            quat = qpos[:, adr:adr + 4]
            angle = 2 * np.arctan2(np.linalg.norm(quat[:, 1:], axis=1), np.abs(quat[:, 0]))
            dist = hi - angle
            ndof = 3
        else:
            continue
        if np.any(dist < margin):
            continue
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, int(j)) or f"joint{j}"
        dof = int(model.jnt_dofadr[j])
        closest = float(np.min(dist)) if dist.size else float("nan")
        out.append({"kind": "joint limit", "name": name, "closest": closest,
                    "touches": _touched_columns(list(range(dof, dof + ndof)), model.nv, state_names)})
    return out


def _tendon_limits(model: mujoco.MjModel, qpos: np.ndarray, state_names: list[str]) -> list[dict[str, Any]]:
    limited = np.nonzero(model.tendon_limited)[0]
    if not len(limited):
        return []
    data = mujoco.MjData(model)
    lengths = np.empty((len(qpos), model.ntendon))
    for k, q in enumerate(qpos):
        data.qpos[:] = q
        mujoco.mj_kinematics(model, data)
        mujoco.mj_comPos(model, data)
        mujoco.mj_tendon(model, data)
        lengths[k] = data.ten_length
    data.qpos[:] = model.qpos0
    mujoco.mj_kinematics(model, data)
    mujoco.mj_comPos(model, data)
    mujoco.mj_tendon(model, data)
    ten_j = np.zeros((model.ntendon, model.nv))  # data.ten_J is stored sparse (row t: rownnz entries)
    for t in range(model.ntendon):
        adr, nnz = int(model.ten_J_rowadr[t]), int(model.ten_J_rownnz[t])
        ten_j[t, model.ten_J_colind[adr:adr + nnz]] = data.ten_J[adr:adr + nnz]
    out = []
    for t in limited:
        lo, hi = model.tendon_range[t]
        dist = np.minimum(lengths[:, t] - lo, hi - lengths[:, t])
        if np.any(dist < model.tendon_margin[t]):
            continue
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_TENDON, int(t)) or f"tendon{t}"
        dofs = [int(d) for d in np.nonzero(ten_j[t])[0]]
        out.append({"kind": "tendon limit", "name": name, "closest": float(np.min(dist)) if dist.size else float("nan"),
                    "touches": _touched_columns(dofs, model.nv, state_names)})
    return out


def _geom_id(model: mujoco.MjModel, geom: str) -> int:
    gid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, geom)
    if gid < 0 and geom.startswith("geom") and geom[4:].isdigit():
        gid = int(geom[4:])
    return gid


#: states sampled to find which positions move a contact pair's distance; perturbation (rad or m)
DISTANCE_SAMPLES, DISTANCE_EPS, DISTANCE_TOL = 20, 1e-6, 1e-7


def _distance_dofs(model: mujoco.MjModel, g1: int, g2: int, qpos: np.ndarray) -> set[int]:
    """Dofs whose position changes the signed distance of geoms ``g1``, ``g2`` (central
    differences of ``mj_geomDistance`` over each dof, at up to ``DISTANCE_SAMPLES`` states):
    e.g. a planar robot's x translation does not move it off a floor plane."""
    data = mujoco.MjData(model)
    fromto = np.zeros(6)
    idx = np.linspace(0, len(qpos) - 1, min(DISTANCE_SAMPLES, len(qpos))).astype(int) if len(qpos) else []
    dofs: set[int] = set()

    def dist(q: np.ndarray) -> float:
        data.qpos[:] = q
        mujoco.mj_kinematics(model, data)
        return float(mujoco.mj_geomDistance(model, data, g1, g2, 1e3, fromto))

    for i in idx:
        for k in range(model.nv):
            if k in dofs:
                continue
            dq = np.zeros(model.nv)
            dq[k] = DISTANCE_EPS
            plus, minus = qpos[i].copy(), qpos[i].copy()
            mujoco.mj_integratePos(model, plus, dq, 1.0)
            mujoco.mj_integratePos(model, minus, -dq, 1.0)
            if abs(dist(plus) - dist(minus)) / (2 * DISTANCE_EPS) > DISTANCE_TOL:
                dofs.add(k)
    return dofs


def _contact_pairs(ds: Any, mask: np.ndarray, model: mujoco.MjModel | None, state_names: list[str], qpos: np.ndarray) -> list[dict[str, Any]]:
    """Pairs never in contact. Touched columns: ``qvel`` of every dof moving either geom (the
    contact's rows, friction included), ``qpos`` of the dofs that change the pair's distance."""
    if "contact_pair" not in ds.coords or ds.sizes.get("contact_pair", 0) == 0:
        return []
    active = dataset.load(ds, ("contact_pairs",))["contact_pairs"].values[mask].any(axis=0)
    out = []
    for name, was in zip(ds["contact_pair"].values, active):
        if was:
            continue
        touches: list[str] = []
        ids = [_geom_id(model, g) for g in str(name).split("|")] if model is not None else []
        if model is not None and len(ids) == 2 and min(ids) >= 0:
            chain: set[int] = set()
            for gid in ids:
                chain.update(_chain_dofs(model, int(model.geom_bodyid[gid])))
            moving = _distance_dofs(model, ids[0], ids[1], qpos) & chain
            touches = [state_names[d] for d in sorted(moving)] + [state_names[model.nv + d] for d in sorted(chain)]
        out.append({"kind": "contact pair", "name": str(name), "touches": touches})
    return out


def never_active(ds: Any, counted: np.ndarray, q1: dict[str, Any], model: mujoco.MjModel | None, note: str = "") -> dict[str, Any]:
    """The constraints never active at the counted steps and the global zeros each may hide.

    Args:
      ds: the dataset.
      counted: ``(episode, step)`` bool, the steps the Q1 table counts.
      q1: ``structure.global_structure``'s result (its ``J_s`` entries ``"out <- in"``).
      model: the native model (``model_of``), or ``None`` (then only contact pairs, without the
        variables they touch).
      note: why ``model`` is ``None``.

    Returns:
      ``{"steps": counted steps, "note": str, "constraints": [{"kind", "name", "touches": [state
      names], "zeros": [J_s entries "out <- in" whose input is touched], "closest": nearest
      distance to the limit (limits only)}], "zeros_at_risk": distinct flagged entries}``.
    """
    state_names = [str(x) for x in ds["state_in"].values]
    found: list[dict[str, Any]] = []
    qpos = _qpos(ds, counted) if model is not None and counted.any() else np.zeros((0, 0))
    if model is not None and counted.any():
        found += _joint_limits(model, qpos, state_names)
        found += _tendon_limits(model, qpos, state_names)
    if counted.any():
        found += _contact_pairs(ds, counted, model, state_names, qpos)
    zeros = q1.get("J_s", {}).get("entries", [])
    flagged: set[str] = set()
    for c in found:
        cols = set(c["touches"])
        c["zeros"] = [e for e in zeros if e.split(" <- ", 1)[1] in cols]
        flagged.update(c["zeros"])
    return {"steps": int(counted.sum()), "note": note, "constraints": found, "zeros_at_risk": len(flagged)}


def for_dataset(ds: Any, q1: dict[str, Any]) -> dict[str, Any]:
    """``never_active`` at the steps the Q1 table counts (valid, finite Jacobians), with the model
    rebuilt from the dataset's attrs (``model_of``)."""
    small = dataset.load(ds, ("valid", "finite"))
    counted = np.asarray(small["valid"].values, bool) & np.asarray(small["finite"].values, bool)
    model, note = model_of(ds)
    return never_active(ds, counted, q1, model, note)


def format_lines(result: dict[str, Any], limit: int = 12) -> list[str]:
    """Text lines for ``structure``: one per never-active constraint that flags zeros, then a count
    of the others."""
    if not result:
        return []
    cons = result["constraints"]
    lines = []
    if result.get("note"):
        lines.append(f"note: {result['note']}")
    if not cons:
        lines.append(f"constraints never active in the {result['steps']} counted steps: none")
        return lines
    risky = [c for c in cons if c["zeros"]]
    lines.append(
        f"constraints never active in the {result['steps']} counted steps: {len(cons)} "
        f"({len(risky)} touch global zeros; {result['zeros_at_risk']} zeros may be unvisited)"
    )
    for c in risky[:limit]:
        cols = sorted({e.split(' <- ', 1)[1] for e in c["zeros"]})
        lines.append(f"  {c['name']} {c['kind']} never active: {len(c['zeros'])} zeros in column(s) {', '.join(cols)} may be unvisited")
    if len(risky) > limit:
        lines.append(f"  ... and {len(risky) - limit} more (structure --json lists all)")
    return lines
