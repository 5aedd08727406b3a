"""A certificate per checked step: the stored Jacobian against references of the *same* function.

References (both compute the control step of the stored definition, same solver settings, same
incoming warm start, same substeps):

- **MJX finite differences**: centred differences of the MJX control step itself
  (``definitions.make_primal_control_step``, float64) at each ``EPS``, positions perturbed and
  read with the exact tangent maps (``tangent.retract_exact`` / ``local_exact``).
- **native finite differences**: the same with native MuJoCo (``finite_diff.NativeStep``),
  used only where native MuJoCo reproduces MJX's nominal next state (``NATIVE_STATE_TOL``).

Error of a Jacobian ``J`` against a reference ``R`` taken at step ``eps`` (rows ``i`` = outputs)::

    err = max_ij  max(0, |J_ij - R_ij| - noise_ij(eps)) / max(|J_ij|, |R_ij|, FLOOR * m_i)

with ``m_i = max_j |J_ij|`` (the row's scale; entries far below it are compared absolutely
against ``FLOOR * m_i``) and ``noise_ij(eps) = NOISE * max(|s'_i|, 1) * w_j / eps`` the round-off
of column ``j``'s difference of an output of magnitude ``|s'_i|`` computed to ``NOISE`` relative
accuracy: ``w_j = 1`` for a centred difference ``(f(x + eps) - f(x - eps)) / (2 eps)``, ``w_j = 4``
for the one-sided second-order one of an action at its control bound, ``(3 f(x) - 4 f(x - eps) +
f(x - 2 eps)) / (2 eps)`` (half the sum of the stencil's absolute weights: ``column_weights``).

Classes (``CLASSES``; stored as their index, -1 = not checked):

``certified``
  ``err <= RTOL`` against MJX FD at some ``eps`` (so the zero pattern agrees at FD's resolution:
  an exact zero of ``J`` has ``|R| <= RTOL * FLOOR * m_i`` + noise), and native MuJoCo either
  confirms it (``err <= RTOL`` at some eps) or its FD is itself unstable across eps.
``kink``
  no eps certifies and MJX FD is not stable across eps at the scale of the disagreement
  (``err <= STABLE_RATIO * spread``, ``spread`` the difference between the two consecutive eps
  that agree best): a contact, friction or solver switch lies within eps of the state; no
  derivative exists at that scale.
``native-differs``
  MJX FD certifies, but native MuJoCo cannot reproduce MJX's next state (``NATIVE_STATE_TOL``)
  or, reproducing it, its FD (stable across eps, as above) disagrees: simulator semantics differ
  there.
``wrong``
  ``err > RTOL`` and ``err > STABLE_RATIO * spread``: finite differences settled on a value and
  ``J`` is not it. A real error (must not occur).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dynsparse import envs, tangent
from dynsparse.jacobians import CHECK_CLASSES, definitions, finite_diff, solve

EPS = (1e-5, 1e-6, 1e-7)
RTOL = 1e-5
FLOOR = 1e-3
NOISE = 1e-14
STABLE_RATIO = 10.0
NATIVE_STATE_TOL = 1e-9
#: zero threshold of the exact Jacobians for the pattern count (the dataset default)
ZERO_THRESHOLD = 1e-12
#: an entry is "clearly nonzero" for the pattern count above this share of its row's scale
CLEAR = 1e-6

CLASSES = CHECK_CLASSES
NOT_CHECKED = -1

DEFINITION_TEXT = (
    f"checked steps: centred finite differences of the same control step (same definition, solver settings, "
    f"incoming warm start and substeps) in MJX (float64) and in native MuJoCo at eps {', '.join(f'{e:g}' for e in EPS)} "
    f"(tangent coordinates and action units). err = max_ij max(0, |J - R| - noise_ij) / max(|J|, |R|, {FLOOR:g} m_i), "
    f"m_i = max_j |J_ij|, noise_ij = {NOISE:g} max(|s'_i|, 1) w_j / eps, w_j = 1 for a centred column and 4 for the "
    f"one-sided second-order column of an action at its control bound (half its stencil's absolute weights); class "
    f"certified: err <= {RTOL:g} vs MJX FD at some "
    f"eps (native confirms, or its FD is not stable); spread: the scaled difference between the two consecutive eps whose "
    f"FD agree best; wrong: err > {RTOL:g} and err > {STABLE_RATIO:g} spread (FD settled on another value); kink: "
    f"neither (FD not stable at the scale of the disagreement: a switch within eps); native-differs: MJX FD certifies "
    f"but native MuJoCo does not reproduce MJX's next state (max |diff| / max(|s'|, 1) > {NATIVE_STATE_TOL:g}) or its "
    f"FD settles on another value. check_pattern_mismatch: entries with |J| < {ZERO_THRESHOLD:g} and |R| > c_ij, or "
    f"|J| > c_ij and |R| <= noise_ij, c_ij = {CLEAR:g} m_i + noise_ij, at the best eps"
)


@dataclasses.dataclass(frozen=True)
class Certificate:
    """The verdict on one step's Jacobian.

    Attributes:
      cls: one of ``CLASSES``.
      err: the smallest scaled error against MJX FD over ``EPS``; eps: the eps attaining it.
      spread: how well MJX FD settles: the difference between the consecutive eps that agree best.
      pattern_mismatch: entries whose zero decision contradicts MJX FD at ``eps``.
      native_state_err: ``max |s'_native - s'_mjx| / max(|s'|, 1)`` (NaN: native not run).
      native_err: smallest scaled error against native FD (NaN: native not reproducing/not run).
    """

    cls: str
    err: float
    eps: float
    spread: float
    pattern_mismatch: int
    native_state_err: float
    native_err: float

    @property
    def code(self) -> int:
        return CLASSES.index(self.cls)


#: dataset variable -> ``Certificate`` attribute (``check_class`` holds ``code``)
DATASET_FIELDS = {
    "check_err": "err", "check_eps": "eps", "check_fd_spread": "spread",
    "check_pattern_mismatch": "pattern_mismatch", "check_native_state_err": "native_state_err",
    "check_native_err": "native_err",
}


def _noise(s_next_tangent_scale: np.ndarray, eps: float, weights: np.ndarray | None = None) -> np.ndarray:
    """``(rows, 1)`` (centred columns only: ``weights`` None) or ``(rows, cols)`` ``noise_ij(eps)``
    of the module docstring; ``weights`` ``(cols,)`` the columns' ``w_j`` at this eps."""
    noise = NOISE * s_next_tangent_scale[:, None] / eps
    return noise if weights is None else noise * np.asarray(weights, np.float64)[None, :]


def column_weights(a: np.ndarray, low: np.ndarray, high: np.ndarray, n_state: int, eps: tuple[float, ...] = EPS) -> np.ndarray:
    """``(len(eps), n_state + nu)`` each column's round-off weight ``w_j`` at each eps: half the sum
    of its stencil's absolute weights (``finite_diff.stencil``: the nominal's weight is ``-(w_plus +
    w_minus)``), 1 for a centred column, 4 for a one-sided one (an action less than eps from a
    bound, or beyond it)."""
    _, _, w_plus, w_minus = finite_diff.stencil(np.asarray(a)[None, :], low, high, np.asarray(eps)[:, None], n_state)
    return (np.abs(w_plus) + np.abs(w_minus) + np.abs(w_plus + w_minus)) / 2


def output_scale(s_next: np.ndarray, nq: int, nv: int) -> np.ndarray:
    """``(2 nv,)`` magnitudes ``max(|s'_i|, 1)`` of the outputs in tangent order (a free joint's
    position rows use its translation and quaternion magnitudes)."""
    q, v = np.abs(s_next[:nq]), np.abs(s_next[nq:])
    q_scale = np.full(nv, max(float(q.max(initial=0.0)), 1.0)) if nq != nv else q
    return np.maximum(np.concatenate([q_scale, v]), 1.0)


def _scaled_max(a: np.ndarray, b: np.ndarray, m: np.ndarray, noise: np.ndarray) -> float:
    """``max_ij max(0, |a - b| - noise_ij) / max(|a|, |b|, FLOOR m_i)`` (``m`` per row, ``noise``
    per row ``(rows, 1)`` or per entry)."""
    denom = np.maximum(np.maximum(np.abs(a), np.abs(b)), FLOOR * m)
    excess = np.maximum(np.abs(a - b) - noise, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.where(excess > 0, excess / np.where(denom > 0, denom, 1.0), 0.0)
    e = np.where((excess > 0) & (denom == 0), np.inf, e)
    return float(e.max(initial=0.0))


def _row_scale(j: np.ndarray) -> np.ndarray:
    return np.abs(j).max(axis=1, keepdims=True)


def scaled_error(j: np.ndarray, r: np.ndarray, scale: np.ndarray, eps: float, weights: np.ndarray | None = None) -> float:
    """``err`` of the module docstring for ``(2nv, k)`` ``j``, ``r`` and output scales ``scale``
    (``weights``: the columns' ``w_j`` at this eps; None: all centred)."""
    return _scaled_max(j, r, _row_scale(j), _noise(scale, eps, weights))


def _weights_at(weights: np.ndarray | None, k: int) -> np.ndarray | None:
    return None if weights is None else weights[k]


def fd_spread(j: np.ndarray, refs: np.ndarray, scale: np.ndarray, eps: tuple[float, ...] = EPS,
              weights: np.ndarray | None = None) -> float:
    """How well the references settle: the smallest difference between references at consecutive
    eps (``err`` of one against the next, with the row scales of ``j`` and the smaller eps's
    noise; ``weights`` ``(len(eps), cols)`` or None as in ``classify``). Small: FD has converged
    at some scale; large: a switch lies within every eps."""
    m = _row_scale(j)
    return min(_scaled_max(refs[k], refs[k + 1], m, _noise(scale, eps[k + 1], _weights_at(weights, k + 1)))
               for k in range(len(eps) - 1))


def _settled_elsewhere(err: float, spread: float) -> bool:
    """FD settled on a value (its best pair of eps agrees ``STABLE_RATIO`` times better) that
    ``J`` misses by more than ``RTOL``."""
    return err > RTOL and err > STABLE_RATIO * spread


def pattern_mismatch(j: np.ndarray, r: np.ndarray, scale: np.ndarray, eps: float, weights: np.ndarray | None = None) -> int:
    """Entries exactly zero in ``j`` that FD sees clearly nonzero, or clearly nonzero in ``j``
    that FD sees as zero (within its round-off).

    "Clearly nonzero" means above ``CLEAR`` times the row's scale *beyond* FD's round-off
    ``noise_ij(eps)`` at this eps: an FD value within its own round-off contradicts nothing, and a
    value of ``j`` below it cannot be seen by FD at all (the certificate allows the same noise, so
    a certified step has no exact zero of ``j`` that FD contradicts)."""
    m = _row_scale(j)
    noise = _noise(scale, eps, weights)
    clear = CLEAR * m + noise
    zero_j = np.abs(j) < ZERO_THRESHOLD
    clear_r = np.abs(r) > clear
    clear_j = np.abs(j) > clear
    zero_r = np.abs(r) <= noise
    return int(np.sum((zero_j & clear_r) | (clear_j & zero_r)))


def _best(j: np.ndarray, refs: np.ndarray, scale: np.ndarray, eps: tuple[float, ...],
          weights: np.ndarray | None = None) -> tuple[float, int]:
    errs = [scaled_error(j, refs[k], scale, eps[k], _weights_at(weights, k)) for k in range(len(eps))]
    k = int(np.argmin(errs))
    return errs[k], k


def classify(
    j: np.ndarray,
    mjx_refs: np.ndarray,
    s_next: np.ndarray,
    nq: int,
    native: tuple[np.ndarray, np.ndarray] | None = None,
    eps: tuple[float, ...] = EPS,
    weights: np.ndarray | None = None,
) -> Certificate:
    """Certify one step.

    Args:
      j: ``(2nv, 2nv + nu)`` the stored ``[J_s | J_a]``.
      mjx_refs: ``(len(eps), 2nv, 2nv + nu)`` MJX FD of the same function at each eps.
      s_next: ``(nq + nv,)`` MJX's nominal next state of that function.
      nq: the model's ``nq``.
      native: ``(native_refs (len(eps), 2nv, 2nv + nu), native s_next (nq + nv,))`` or None.
      weights: ``(len(eps), 2nv + nu)`` the columns' round-off weights ``column_weights`` (None:
        every column centred, ``w_j = 1``).
    """
    nv = j.shape[0] // 2
    scale = output_scale(s_next, nq, nv)
    if not (np.isfinite(j).all() and np.isfinite(mjx_refs).all()):
        return Certificate("wrong", float("nan"), float("nan"), float("nan"), int(j.size), float("nan"), float("nan"))
    err, k = _best(j, mjx_refs, scale, eps, weights)
    spread = fd_spread(j, mjx_refs, scale, eps, weights)
    mismatch = pattern_mismatch(j, mjx_refs[k], scale, eps[k], _weights_at(weights, k))
    state_err = native_err = float("nan")
    native_ok = True
    if native is not None:
        native_refs, native_next = native
        state_err = float(np.max(np.abs(native_next - s_next) / np.maximum(np.abs(s_next), 1.0)))
        if state_err <= NATIVE_STATE_TOL and np.isfinite(native_refs).all():
            native_err, _ = _best(j, native_refs, scale, eps, weights)
            native_ok = not _settled_elsewhere(native_err, fd_spread(j, native_refs, scale, eps, weights))
        else:
            native_ok = False
    if err <= RTOL:
        cls = "certified" if native_ok else "native-differs"
    elif _settled_elsewhere(err, spread):
        cls = "wrong"
    else:
        cls = "kink"
    return Certificate(cls, err, eps[k], spread, mismatch, state_err, native_err)


def make_mjx_fd(spec: envs.EnvSpec, definition: str, eps: tuple[float, ...] = EPS) -> Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]:
    """``make_batched_mjx_fd`` for one step: ``fd(data, a) -> (refs, s_next)`` with ``data`` an
    unbatched ``mjx.Data``, ``a`` ``(nu,)``, ``refs`` ``(len(eps), 2nv, 2nv + nu)`` and ``s_next``
    ``(nq + nv,)`` (not jitted)."""
    batched = make_batched_mjx_fd(spec, definition, eps)

    def fd(data: Any, a: jax.Array) -> tuple[jax.Array, jax.Array]:
        refs, s_next = batched(jax.tree_util.tree_map(lambda x: x[None], data), a[None])
        return refs[0], s_next[0]

    return fd


def make_batched_mjx_fd(spec: envs.EnvSpec, definition: str, eps: tuple[float, ...] = EPS) -> Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]:
    """Centred finite differences of the MJX control step of ``definition`` at ``g`` steps (one-sided
    into the control range for an action at its bound: ``finite_diff.stencil``).

    Returns:
      ``fd(data, a) -> (refs, s_next)`` (not jitted): ``data`` an ``mjx.Data`` whose every leaf has
      a leading ``(g,)`` axis, ``a`` ``(g, nu)``; ``refs`` ``(g, len(eps), 2nv, 2nv + nu)`` in the
      tangent space, ``s_next`` ``(g, nq + nv)`` the nominal next states.

    The nominal and all ``2 len(eps) (2nv + nu)`` perturbed steps of all ``g`` steps run as one
    flat batch, every ``mjx.Data`` leaf repeated per row, so that the control step is traced under
    one ``vmap`` whose loop carries are batched from the start. A ``vmap`` over the steps around
    a ``vmap`` over the directions, with the nominal step traced apart (as before), traced the
    same numbers in 7.7 s and compiled them in 7.7 s; this way 3.4 s and 4.1 s (CheetahRun, 4
    steps, 2-core CPU; bit for bit the same references there and on BallInCup; WalkerRun's differ
    by round-off, 2e-9 of the largest entry).
    """
    f = definitions.make_primal_control_step(spec, definition)
    model = definitions.mjx_model(spec, definition)
    c, nv, nu, nq = spec.charts, spec.nv, spec.nu, spec.nq
    n, k = 2 * nv + nu, len(eps)
    rows = 1 + 2 * k * n  # per step: the nominal, then every +/- direction at every eps
    steps = jnp.asarray(eps)
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)

    def run(d: Any, x: jax.Array, a: jax.Array) -> jax.Array:
        s = jnp.concatenate([tangent.retract_exact(c, d.qpos, x[:nv]), d.qvel + x[nv:2 * nv]])
        return f(d, s, a + x[2 * nv:])[0]

    def read(s_next: jax.Array, s: jax.Array) -> jax.Array:
        return jnp.concatenate([tangent.local_exact(c, s_next[:nq], s[:nq]), s[nq:]])

    def fd(data: Any, a: jax.Array) -> tuple[jax.Array, jax.Array]:
        g = a.shape[0]
        one = match_step_dtypes(model, jax.tree_util.tree_map(lambda x: x[0], data))
        data = jax.tree_util.tree_map(lambda x, o: x.astype(o.dtype), data, one)
        dtype = data.qpos.dtype
        # (g, k, n) each: centred, one-sided into the control range at an action's bound
        up, down, w_plus, w_minus = finite_diff.stencil(a[:, None, :], low, high, steps[None, :, None], 2 * nv, xp=jnp)
        eye = jnp.eye(n, dtype=dtype)
        plus_dirs = (steps[None, :, None, None] * up[..., None] * eye).reshape(g, k * n, n)
        minus_dirs = (steps[None, :, None, None] * down[..., None] * eye).reshape(g, k * n, n)
        dirs = jnp.concatenate([jnp.zeros((g, 1, n), dtype), plus_dirs, minus_dirs], axis=1).reshape(g * rows, n)
        per_row = lambda x: jnp.repeat(x, rows, axis=0)  # noqa: E731
        outs = jax.vmap(run)(jax.tree_util.tree_map(per_row, data), dirs, per_row(a)).reshape(g, rows, nq + nv)
        s_next = outs[:, 0]
        diffs = jax.vmap(jax.vmap(read, in_axes=(None, 0)))(s_next, outs)
        plus = diffs[:, 1:1 + k * n].reshape(g, k, n, 2 * nv)
        minus = diffs[:, 1 + k * n:].reshape(g, k, n, 2 * nv)
        # velocities are read absolutely: a one-sided stencil's weights do not cancel the nominal
        # value (centred ones do, exactly: its term is then a zero)
        base = (w_plus + w_minus)[..., None] * diffs[:, 0][:, None, None]
        cols = (w_plus[..., None] * plus + w_minus[..., None] * minus - base) / (2 * steps[None, :, None, None])
        return jnp.swapaxes(cols, 2, 3), s_next

    return fd


def match_step_dtypes(model: Any, data: Any) -> Any:
    """``data`` (an unbatched ``mjx.Data``) with each field cast to the dtype one ``primal_step``
    returns for it, so that it can be the carry of a scan over substeps (under x64 some integer
    fields of ``mjx.make_data`` may differ). Done while tracing (``jax.eval_shape``), so a
    program loaded from the cache pays nothing for it."""
    shapes = jax.eval_shape(lambda d: solve.primal_step(model, d)[0], data)
    return jax.tree_util.tree_map(lambda x, s: x if x.dtype == s.dtype else x.astype(s.dtype), data, shapes)


def native_refs(native: finite_diff.NativeStep, x: finite_diff.StepInputs, eps: tuple[float, ...] = EPS) -> tuple[np.ndarray, np.ndarray]:
    """``(refs (len(eps), 2nv, 2nv + nu), s_next)``: native FD of ``native``'s control step."""
    refs, s_next = [], None
    for e in eps:
        r, s_next = native.jacobian(x, e)
        refs.append(r)
    return np.stack(refs), s_next


@functools.lru_cache(maxsize=16)
def _batched_mjx_fd(spec: envs.EnvSpec, definition: str) -> Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]:
    from dynsparse import exported, xla

    options = xla.compiler_options()
    identity = {**exported.env_identity(spec), "definition": definition, "eps": list(EPS)}
    return exported.Cached(jax.jit(make_batched_mjx_fd(spec, definition), compiler_options=options), "certify-fd", identity, options)


class StepChecker:
    """Certifies stored Jacobians of one environment and definition at given steps.

    MJX finite differences run in groups of ``GROUP`` steps (one compiled shape; the last group
    is padded), native ones for all steps at once (``finite_diff.BatchedFD``, on all cores).
    """

    GROUP = 4

    def __init__(self, spec: envs.EnvSpec, definition: str, prefetch: bool = True):
        from mujoco import mjx

        self.spec = spec
        self.fd = _batched_mjx_fd(spec, definition)
        if prefetch:
            self.fd.prefetch()
        self.native = finite_diff.BatchedFD(spec.mj_model, spec.n_substeps, definition)
        # the integer fields' dtypes are matched to a step's inside the program (match_step_dtypes):
        # tracing a step here would cost every run 3-5 s, also when the program is loaded
        base = mjx.make_data(spec.mjx_model)
        self.base = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (self.GROUP,) + x.shape), base)

    def _data(self, inputs: dict[str, np.ndarray]) -> Any:
        """Batched ``mjx.Data`` (``GROUP``) holding ``StepInputs`` fields with leading ``(GROUP,)``."""
        return self.base.replace(
            qpos=jnp.asarray(inputs["qpos"]), qvel=jnp.asarray(inputs["qvel"]),
            qacc_warmstart=jnp.asarray(inputs["warmstart"]), ctrl=jnp.asarray(inputs["ctrl"]),
            act=jnp.asarray(inputs["act"]).reshape(self.base.act.shape),
            mocap_pos=jnp.asarray(inputs["mocap_pos"]).reshape(self.base.mocap_pos.shape),
            mocap_quat=jnp.asarray(inputs["mocap_quat"]).reshape(self.base.mocap_quat.shape),
            time=jnp.asarray(inputs["time"], self.base.time.dtype),
        )

    def _group_args(self, group: dict[str, np.ndarray]) -> tuple[Any, jax.Array]:
        """The MJX finite differences' arguments for one group of ``GROUP`` steps."""
        return self._data(group), jnp.asarray(group["ctrl"])

    def prepare(self) -> str:
        """Build the MJX finite-difference program ahead of its first use, without running it
        (``exported.Cached.ensure``; the arguments of a group of zero steps, float64 as the
        chunk's outputs are). Returns what ``ensure`` returns."""
        m, g = self.spec.mj_model, self.GROUP
        shapes = {"qpos": (m.nq,), "qvel": (m.nv,), "warmstart": (m.nv,), "ctrl": (m.nu,), "act": (m.na,),
                  "mocap_pos": (m.nmocap, 3), "mocap_quat": (m.nmocap, 4), "time": ()}
        return self.fd.ensure(*self._group_args({k: np.zeros((g, *v)) for k, v in shapes.items()}))

    def __call__(self, inputs: dict[str, np.ndarray], jac: np.ndarray) -> list[Certificate]:
        """Certificates of ``k`` steps.

        Args:
          inputs: the ``finite_diff.StepInputs`` fields, each with leading ``(k,)``.
          jac: ``(k, 2nv, 2nv + nu)`` the stored ``[J_s | J_a]`` of those steps.
        """
        k = jac.shape[0]
        # native references of all k steps at once (every eps): same numbers as native_refs
        native = [self.native.jacobians(inputs, e) for e in EPS]
        native_refs_all = np.stack([n[0] for n in native], axis=1)  # (k, len(EPS), 2nv, 2nv + nu)
        native_next = native[-1][1]
        out: list[Certificate] = []
        for g0 in range(0, k, self.GROUP):
            idx = np.minimum(np.arange(g0, g0 + self.GROUP), k - 1)
            group = {name: np.asarray(v)[idx] for name, v in inputs.items()}
            refs, s_next = (np.asarray(x) for x in self.fd(*self._group_args(group)))
            for r in range(min(self.GROUP, k - g0)):
                i = g0 + r
                weights = column_weights(inputs["ctrl"][i], self.spec.action_low, self.spec.action_high, 2 * self.spec.nv)
                out.append(classify(jac[i], refs[r], s_next[r], self.spec.nq, (native_refs_all[i], native_next[i]), weights=weights))
        return out
