"""Tangent-space coordinates of the MuJoCo state, for models with free and ball joints.

A free joint stores a position and a unit quaternion in ``qpos`` (7 numbers) but has 6 degrees of
freedom; a ball joint stores a quaternion (4) for 3. Jacobians are therefore taken, like MuJoCo's
own ``mjd_transitionFD``, in the ``2 nv``-dimensional tangent space ``x = [dq, dv]``: a state
perturbation ``dq`` (``nv``) moves ``qpos`` by ``mj_integratePos(qpos, dq, 1)`` (translations
add; a quaternion ``q`` becomes ``q * exp(dq/2)``, the rotation ``dq`` in the *local* frame, the
frame MuJoCo's angular ``qvel`` of these joints uses), and an output position ``q'`` is read in
the tangent space at the nominal next position ``q'_0`` by ``mj_differentiatePos(q'_0, q')``
(``log(q'_0^-1 q')`` for quaternions).

Only the derivatives at ``dq = 0`` / ``q' = q'_0`` matter, so ``retract`` and ``local`` below use the
first-order forms of these maps (``exp(w) ~ [1, w/2]``, ``log(q) ~ 2 vec(q)``): they have exactly
the derivative of the exponential and logarithm there and no ``0/0`` in ``jax.jacfwd``. For
models with hinge and slide joints only (``nq == nv``) both maps are the identity and the tangent
state is ``[qpos, qvel]`` itself.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import mujoco
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Charts:
    """Static index sets of a model's ``qpos`` / tangent coordinates.

    Attributes:
      nq, nv: sizes of ``qpos`` and of its tangent space.
      lin_q, lin_v: ``(k,)`` indices of scalar coordinates (hinge, slide, free-joint translation)
        in ``qpos`` and in the tangent space (the two coincide up to the offset).
      quat_q: ``(b, 4)`` ``qpos`` indices of each quaternion (w, x, y, z).
      quat_v: ``(b, 3)`` tangent indices of each quaternion's local rotation vector.
    """

    nq: int
    nv: int
    lin_q: np.ndarray
    lin_v: np.ndarray
    quat_q: np.ndarray
    quat_v: np.ndarray

    @property
    def identity(self) -> bool:
        """True when ``qpos`` is its own tangent space (no free or ball joints)."""
        return self.quat_q.shape[0] == 0


def charts(model: mujoco.MjModel) -> Charts:
    """The ``Charts`` of a native MuJoCo model."""
    lin_q: list[int] = []
    lin_v: list[int] = []
    quat_q: list[list[int]] = []
    quat_v: list[list[int]] = []
    for j in range(model.njnt):
        qa, va = int(model.jnt_qposadr[j]), int(model.jnt_dofadr[j])
        jtype = mujoco.mjtJoint(model.jnt_type[j])
        if jtype == mujoco.mjtJoint.mjJNT_FREE:
            lin_q += [qa, qa + 1, qa + 2]
            lin_v += [va, va + 1, va + 2]
            qa, va = qa + 3, va + 3
        if jtype in (mujoco.mjtJoint.mjJNT_FREE, mujoco.mjtJoint.mjJNT_BALL):
            quat_q.append([qa, qa + 1, qa + 2, qa + 3])
            quat_v.append([va, va + 1, va + 2])
        else:
            lin_q.append(qa)
            lin_v.append(va)
    return Charts(
        nq=int(model.nq), nv=int(model.nv),
        lin_q=np.asarray(lin_q, np.int32), lin_v=np.asarray(lin_v, np.int32),
        quat_q=np.asarray(quat_q, np.int32).reshape(-1, 4), quat_v=np.asarray(quat_v, np.int32).reshape(-1, 3),
    )


def _quat_mul(u: jax.Array, v: jax.Array) -> jax.Array:
    """Hamilton product of ``(..., 4)`` quaternions ``(w, x, y, z)``."""
    w0, x0, y0, z0 = jnp.moveaxis(u, -1, 0)
    w1, x1, y1, z1 = jnp.moveaxis(v, -1, 0)
    return jnp.stack([
        w0 * w1 - x0 * x1 - y0 * y1 - z0 * z1,
        w0 * x1 + x0 * w1 + y0 * z1 - z0 * y1,
        w0 * y1 - x0 * z1 + y0 * w1 + z0 * x1,
        w0 * z1 + x0 * y1 - y0 * x1 + z0 * w1,
    ], axis=-1)


def retract(c: Charts, q: jax.Array, dq: jax.Array) -> jax.Array:
    """``qpos`` moved by the tangent vector ``dq`` (first order, see the module docstring).

    Args:
      c: the model's charts.
      q: ``(nq,)`` base position.
      dq: ``(nv,)`` tangent displacement (rotations in radians, local frame).

    Returns:
      ``(nq,)``; its derivative in ``dq`` at ``dq = 0`` equals ``mj_integratePos``'s.
    """
    if c.identity:
        return q + dq
    out = q.at[c.lin_q].add(dq[c.lin_v])
    half = 0.5 * dq[c.quat_v]
    step = jnp.concatenate([jnp.ones(half.shape[:-1] + (1,), half.dtype), half], axis=-1)
    return out.at[c.quat_q].set(_quat_mul(q[c.quat_q], step))


def normalize_quaternions(c: Charts, q: jax.Array) -> jax.Array:
    """``(nq,)`` ``q`` with every quaternion scaled to unit length."""
    if c.identity:
        return q
    quats = q[c.quat_q]
    return q.at[c.quat_q].set(quats / jnp.linalg.norm(quats, axis=-1, keepdims=True))


def local(c: Charts, q_ref: jax.Array, q: jax.Array) -> jax.Array:
    """``q`` in the tangent coordinates at ``q_ref`` (first order, see the module docstring).

    Args:
      c: the model's charts.
      q_ref: ``(nq,)`` base point (unit quaternions); treat it as a constant.
      q: ``(nq,)`` position.

    Returns:
      ``(nv,)``; its derivative in ``q`` at ``q = q_ref`` equals ``mj_differentiatePos(q_ref, q)``'s.
    """
    if c.identity:
        return q - q_ref
    out = jnp.zeros((c.nv,), q.dtype).at[c.lin_v].set(q[c.lin_q] - q_ref[c.lin_q])
    conj = q_ref[c.quat_q] * jnp.asarray([1.0, -1.0, -1.0, -1.0], q.dtype)
    rel = _quat_mul(conj, q[c.quat_q])
    return out.at[c.quat_v].set(2.0 * rel[..., 1:])


def retract_exact(c: Charts, q: jax.Array, dq: jax.Array) -> jax.Array:
    """``qpos`` moved by a finite tangent vector ``dq`` exactly as ``mj_integratePos(q, dq, 1)``:
    translations add, a quaternion becomes ``q * exp(dq/2)`` (for finite differences; ``retract``
    is the first-order form for derivatives).

    Args:
      c: the model's charts; q: ``(nq,)`` base position (unit quaternions); dq: ``(nv,)``.
    """
    if c.identity:
        return q + dq
    out = q.at[c.lin_q].add(dq[c.lin_v])
    w = dq[c.quat_v]
    angle = jnp.linalg.norm(w, axis=-1, keepdims=True)
    safe = jnp.where(angle > 0, angle, 1.0)
    axis = jnp.where(angle > 0, w / safe, 0.0)
    step = jnp.concatenate([jnp.cos(0.5 * angle), jnp.sin(0.5 * angle) * axis], axis=-1)
    return out.at[c.quat_q].set(_quat_mul(q[c.quat_q], step))


def local_exact(c: Charts, q_ref: jax.Array, q: jax.Array) -> jax.Array:
    """``(nv,)`` ``q`` read in the tangent coordinates at ``q_ref`` exactly as
    ``mj_differentiatePos(q_ref, q, 1)``: a quaternion as the rotation vector of
    ``q_ref^-1 q`` (angle in (-pi, pi]), for finite differences (``local`` is the first-order form).
    """
    if c.identity:
        return q - q_ref
    out = jnp.zeros((c.nv,), q.dtype).at[c.lin_v].set(q[c.lin_q] - q_ref[c.lin_q])
    conj = q_ref[c.quat_q] * jnp.asarray([1.0, -1.0, -1.0, -1.0], q.dtype)
    rel = _quat_mul(conj, q[c.quat_q])
    rel = rel * jnp.where(rel[..., :1] < 0, -1.0, 1.0)  # the short way round
    vec = rel[..., 1:]
    sin_half = jnp.linalg.norm(vec, axis=-1, keepdims=True)
    angle = 2.0 * jnp.arctan2(sin_half, rel[..., :1])
    safe = jnp.where(sin_half > 0, sin_half, 1.0)
    return out.at[c.quat_v].set(jnp.where(sin_half > 0, vec / safe * angle, 2.0 * vec))


def tangent_names(qvel_names: tuple[str, ...]) -> tuple[str, ...]:
    """Names of the ``2 nv`` tangent coordinates: position names per degree of freedom
    (``qpos:<joint>:x ... :rz`` for a free joint, ``qpos:<joint>:rx ... :rz`` for a ball joint,
    ``qpos:<joint>`` otherwise), then the ``qvel`` names."""
    return tuple("qpos:" + name.split(":", 1)[1] for name in qvel_names) + tuple(qvel_names)
