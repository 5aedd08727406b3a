"""Environments by MuJoCo Playground registry name (and MJCF strings), with named variables.

The state of a control step is ``s = [qpos, qvel]`` (length ``nq + nv``) and the action ``a`` is
the environment's action exactly as a policy emits it (length ``nu``). One control step
``s' = f(s, a)`` runs the environment's ``n_substeps`` physics steps with ``ctrl = a`` held, as
``mujoco_playground._src.mjx_env.step`` does (MuJoCo itself clamps ``ctrl`` to ``ctrlrange``).
Its Jacobians are taken in the tangent space of ``s`` (``2 nv`` coordinates; ``dynsparse.tangent``),
which is ``[qpos, qvel]`` itself unless the model has free or ball joints. What exactly is
differentiated (the constraint solver's iterations and warm start) is a named definition:
``dynsparse.jacobians.definitions``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from dynsparse import errors, tangent

jax.config.update("jax_enable_x64", True)

log = logging.getLogger(__name__)

#: Contact definition recorded in datasets (``n_contacts``).
CONTACT_DEFINITION = (
    "contacts whose signed distance is below their inclusion margin (dist < includemargin), "
    "i.e. the contacts that generate constraint rows, at the last substep of the control step; "
    "contact_pairs marks the geom pairs (coord contact_pair, 'geom1|geom2') with at least one such contact"
)

_JOINT_AXES = {
    mujoco.mjtJoint.mjJNT_FREE: (("x", "y", "z", "qw", "qx", "qy", "qz"), ("x", "y", "z", "rx", "ry", "rz")),
    mujoco.mjtJoint.mjJNT_BALL: (("qw", "qx", "qy", "qz"), ("rx", "ry", "rz")),
}


@dataclasses.dataclass(frozen=True, eq=False)
class EnvSpec:
    """Everything dynsparse needs to know about one environment.

    Attributes:
      name: Playground registry name, e.g. ``"CheetahRun"``.
      env: the Playground environment object (MJX ``impl="jax"``).
      mj_model: the native MuJoCo model the environment was built from.
      n_substeps: physics steps per control step.
      dt: control time step in seconds (``n_substeps * sim_dt``).
      sim_dt: physics time step in seconds.
      state_names: ``2 nv`` names of the Jacobians' state coordinates, the tangent space
        ``[dq, dv]`` (see ``dynsparse.tangent``): ``qpos:<joint>`` (``qpos:<joint>:x .. :rz`` for a
        free joint) then ``qvel:<joint>``. Equal to ``qstate_names`` when ``nq == nv``.
      qstate_names: ``nq + nv`` names of the stored state ``[qpos, qvel]`` (a free joint's
        ``qpos:<joint>:x, .., :qw, .., :qz``).
      charts: the index sets mapping ``qpos`` to the tangent space.
      action_names: ``nu`` names, ``act:<actuator>``.
      action_low, action_high: ``(nu,)`` action bounds (the actuator ``ctrlrange``; +-inf where
        an actuator is not ``ctrllimited``).
      dtype: float dtype of the simulation state (``float64``; see ``check_dtype``).

    Specs compare and hash by identity (``load`` returns one per name and dtype), so compiled
    functions can be cached per spec.
    """

    name: str
    env: Any
    mj_model: mujoco.MjModel
    n_substeps: int
    dt: float
    sim_dt: float
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    action_low: np.ndarray
    action_high: np.ndarray
    qstate_names: tuple[str, ...]
    charts: tangent.Charts
    dtype: str = "float64"

    @property
    def nq(self) -> int:
        return int(self.mj_model.nq)

    @property
    def nv(self) -> int:
        return int(self.mj_model.nv)

    @property
    def nu(self) -> int:
        return int(self.mj_model.nu)

    @property
    def state_size(self) -> int:
        """Size of the Jacobians' (tangent) state, ``2 nv``."""
        return 2 * self.nv

    @property
    def qstate_size(self) -> int:
        """Size of the stored state ``[qpos, qvel]``, ``nq + nv``."""
        return self.nq + self.nv

    @property
    def native_only(self) -> bool:
        """Whether MJX cannot build this model (``NativeEnv``): only a native rollout with the
        ``finite_diff`` backend measures it."""
        return isinstance(self.env, NativeEnv)

    @property
    def mjx_model(self) -> Any:
        """The MJX model; ``UserError`` (why MJX cannot build it) for a native-only model."""
        if isinstance(self.env, NativeEnv):
            raise errors.UserError(self.env.unsupported)
        return self.env.mjx_model


def dm_control_names() -> tuple[str, ...]:
    """The 25 DM Control Suite environment names of MuJoCo Playground."""
    from mujoco_playground import registry

    return tuple(registry.dm_control_suite.ALL_ENVS)


def _other_playground_names() -> dict[str, str]:
    from mujoco_playground import registry

    out = {n: "locomotion" for n in registry.locomotion.ALL_ENVS}
    out.update({n: "manipulation" for n in registry.manipulation.ALL_ENVS})
    return out


def other_names() -> tuple[str, ...]:
    """Playground locomotion and manipulation names (they need mujoco_menagerie assets)."""
    return tuple(_other_playground_names())


def static_info(name: str, native: bool = False) -> dict[str, Any]:
    """Sizes and timing of an environment: ``nq, nv, nu, n_substeps, dt`` (seconds); ``native``:
    also of a model MJX cannot build (``load``)."""
    spec = load(name, native=native)
    return {"nq": spec.nq, "nv": spec.nv, "nu": spec.nu, "n_substeps": spec.n_substeps, "dt": spec.dt}


#: Environment variable naming a local mujoco_menagerie checkout (same as ``--menagerie``).
MENAGERIE_ENV = "DYNSPARSE_MENAGERIE"

#: set once ``use_menagerie`` was given a path explicitly (it then wins over the variable)
_menagerie_explicit = False


def use_menagerie(path: str | None) -> None:
    """Point Playground's locomotion and manipulation environments at a local mujoco_menagerie
    checkout: ``path``, else ``$DYNSPARSE_MENAGERIE`` (unless a path was given before), else
    Playground's default location.

    Raises:
      UserError: the path given (or in ``$DYNSPARSE_MENAGERIE``) is not an existing directory.
    """
    import os
    from pathlib import Path

    from dynsparse import upstream

    mjx_env = upstream.playground_mjx_env()

    global _menagerie_explicit
    source = "--menagerie"
    if path is None:
        if _menagerie_explicit:
            return
        path, source = os.environ.get(MENAGERIE_ENV) or None, f"${MENAGERIE_ENV}"
    if path is None:
        return
    p = Path(path).expanduser()
    if not p.is_dir():
        raise errors.UserError(
            f"{source} {str(path)!r} is not a directory; allowed: the path of a local mujoco_menagerie "
            f"checkout (git clone https://github.com/google-deepmind/mujoco_menagerie)"
        )
    mjx_env.MENAGERIE_PATH = p.resolve()
    _menagerie_explicit = _menagerie_explicit or source == "--menagerie"


def menagerie_path() -> str:
    """Where Playground looks for the mujoco_menagerie robot assets (after ``use_menagerie``)."""
    from dynsparse import upstream

    mjx_env = upstream.playground_mjx_env()

    return str(mjx_env.MENAGERIE_PATH)


def check_name(name: str) -> None:
    """Raise ``UserError`` if ``name`` is not a loadable environment, suggesting close names.

    Names with a source prefix (``gymnasium:``, ``mjcf:``) are checked by ``dynsparse.sources``.

    Locomotion and manipulation environments need the mujoco_menagerie assets on disk (see
    ``use_menagerie``); when they are missing this raises instead of letting Playground clone them
    from the network.
    """
    from dynsparse import sources

    if sources.kind(name) != "playground":
        sources.check(name)
        return
    dm = dm_control_names()
    if name in dm:
        return
    others = _other_playground_names()
    if name in others:
        from dynsparse import upstream

        mjx_env = upstream.playground_mjx_env()

        use_menagerie(None)
        if not mjx_env.MENAGERIE_PATH.exists():
            raise errors.UserError(
                f"environment {name!r} ({others[name]}) needs the mujoco_menagerie robot assets, "
                f"which are missing: expected a checkout at {menagerie_path()}; pass --menagerie PATH "
                f"(or set ${MENAGERIE_ENV}) to a local checkout of https://github.com/google-deepmind/mujoco_menagerie "
                f"(commit {mjx_env.MENAGERIE_COMMIT_SHA})"
            )
        return
    close = difflib.get_close_matches(name, dm + tuple(others), n=3, cutoff=0.5)
    if not close:
        close = [n for n in dm + tuple(others) if n.lower().startswith(name.lower()[:4])][:3]
    hint = (f"; did you mean {', '.join(close)}?" if close else
            "; run `dynsparse envs` for the list (Playground names, gymnasium:TASK-v5, mjcf:PATH)")
    raise errors.UserError(f"unknown environment {name!r}{hint}")


def qstate_names(model: mujoco.MjModel) -> tuple[str, ...]:
    """The ``nq + nv`` names of ``[qpos, qvel]``: ``qpos:<joint>`` / ``qvel:<joint>``; a free joint
    gives ``qpos:<joint>:x ... :qz`` and ``qvel:<joint>:x ... :rz``, a ball joint ``:qw..:qz`` and
    ``:rx..:rz``. Unnamed joints are called ``joint<i>``."""
    qpos_names: list[str] = []
    qvel_names: list[str] = []
    for j in range(model.njnt):
        jname = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j) or f"joint{j}"
        jtype = mujoco.mjtJoint(model.jnt_type[j])
        if jtype in _JOINT_AXES:
            pos_axes, vel_axes = _JOINT_AXES[jtype]
            qpos_names += [f"qpos:{jname}:{ax}" for ax in pos_axes]
            qvel_names += [f"qvel:{jname}:{ax}" for ax in vel_axes]
        else:
            qpos_names.append(f"qpos:{jname}")
            qvel_names.append(f"qvel:{jname}")
    return tuple(qpos_names + qvel_names)


def variable_names(model: mujoco.MjModel) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Named Jacobian coordinates of a MuJoCo model.

    Returns:
      ``(state_names, action_names)``: the ``2 nv`` tangent-state names (``qpos:<joint>`` per
      degree of freedom, a free joint's ``qpos:<joint>:x, :y, :z, :rx, :ry, :rz``, then the
      ``qvel`` names of ``qstate_names``) and ``nu`` names ``act:<actuator>`` (unnamed actuators
      are called ``actuator<i>``).
    """
    qvel_names = qstate_names(model)[model.nq:]
    act_names = [
        f"act:{mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, i) or f'actuator{i}'}"
        for i in range(model.nu)
    ]
    return tangent.tangent_names(qvel_names), tuple(act_names)


def model_digest(model: mujoco.MjModel) -> str:
    """SHA-256 (hex) of the compiled model, MuJoCo's own serialization (``mj_saveModel``, MJB):
    everything the compiler read (included XML, meshes, height fields, textures, defaults) and
    every option, so it changes with any file the model uses, not only its main XML. The same
    model compiled in another process gives the same digest."""
    import hashlib

    buffer = np.zeros(mujoco.mj_sizeModel(model), np.uint8)
    mujoco.mj_saveModel(model, None, buffer)
    return hashlib.sha256(buffer.tobytes()).hexdigest()


def action_bounds(model: mujoco.MjModel) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)``, each ``(nu,)``: the actuator ``ctrlrange``, or +-inf where not limited."""
    limited = model.actuator_ctrllimited.astype(bool)
    low = np.where(limited, model.actuator_ctrlrange[:, 0], -np.inf)
    high = np.where(limited, model.actuator_ctrlrange[:, 1], np.inf)
    return low.astype(np.float64), high.astype(np.float64)


def load(name: str, dtype: str = "float64", substeps: int | None = None, native: bool = False) -> EnvSpec:
    """Load an environment with the differentiable MJX implementation.

    Args:
      name: Playground registry name (``"CheetahRun"``), ``gymnasium:TASK-v5``,
        ``dm_control:DOMAIN-TASK`` or ``mjcf:PATH`` (``dynsparse.sources``).
      dtype: ``"float64"``, the only one supported (see ``check_dtype``).
      substeps: physics steps per control step of an ``mjcf:`` model (default 1); ``None`` for
        every other source (they define their own).
      native: accept a non-Playground model that MJX cannot build, as a native-only spec
        (``NativeEnv``; for a model MJX builds, the same spec as without it).

    Raises:
      UserError: unknown name, missing robot assets or file, a model MJX cannot build (unless
        ``native``), or an unsupported dtype.

    One spec per ``(name, dtype, substeps, native)`` however the arguments are passed (compiled
    functions are cached per spec); for ``mjcf:`` also per compiled model (``model_digest``), so
    that a file edited (or an included file, a mesh) between two calls in one process is loaded
    again, not served from the cache.
    """
    from dynsparse import sources

    version = None
    if sources.kind(name) == "mjcf":
        check_dtype(dtype)
        sources.check_substeps(name, substeps)
        version = model_digest(sources.load(name, substeps).model)
    return _load(name, dtype, substeps, bool(native), version)


@functools.lru_cache(maxsize=None)
def _load(name: str, dtype: str, substeps: int | None, native: bool, version: str | None = None) -> EnvSpec:
    """``load``'s spec; ``version``: the compiled digest of an ``mjcf:`` model (a cache key only)."""
    from dynsparse import sources

    check_dtype(dtype)
    check_name(name)
    sources.check_substeps(name, substeps)
    if sources.kind(name) != "playground":
        if native:
            try:
                return load(name, dtype, substeps)
            except sources.MJXCannotBuild as exc:
                return _spec(name, NativeEnv(sources.load(name, substeps), str(exc)), dtype)
        r = sources.load(name, substeps)
        try:
            env = MjcfEnv(r.model, r.n_substeps, r.init_noise, r.reset_kind, r.init_qpos, r.init_qvel)
        except NotImplementedError as exc:
            raise sources.build_error(name, exc) from exc
        return _spec(name, env, dtype)
    from mujoco_playground import registry

    dm = name in dm_control_names()
    try:
        # the differentiable MJX implementation (Playground's locomotion tasks default to "warp")
        overrides = {"impl": "jax"} if dm or "impl" in registry.get_default_config(name) else {}
        env = registry.load(name, config_overrides=overrides)
    except (FileNotFoundError, ValueError) as exc:
        if dm:
            raise
        raise errors.UserError(
            f"environment {name!r} could not be built from the mujoco_menagerie checkout at {menagerie_path()} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); point --menagerie (or "
            f"${MENAGERIE_ENV}) at a complete checkout"
        ) from exc
    return _spec(name, env, dtype)


def _spec(name: str, env: Any, dtype: str = "float64") -> EnvSpec:
    """The ``EnvSpec`` of a Playground-style environment object (``mj_model``, ``n_substeps``, ``dt``)."""
    model = env.mj_model
    check_state_is_complete(model)  # Playground's models too (ModelEnv checked its own on construction)
    state_names, action_names = variable_names(model)
    low, high = action_bounds(model)
    return EnvSpec(
        name=name, env=env, mj_model=model, n_substeps=int(env.n_substeps), dt=float(env.dt),
        sim_dt=float(model.opt.timestep), state_names=state_names, action_names=action_names,
        action_low=low, action_high=high, qstate_names=qstate_names(model), charts=tangent.charts(model),
        dtype=dtype,
    )


def check_dtype(dtype: str) -> None:
    """Raise ``UserError`` unless ``dtype`` is supported.

    Only float64 is: a float32 MJX model still produces float64 data under ``jax_enable_x64``
    (measured with mujoco-mjx 3.17: qpos, qvel, qacc come out float64 from a float32 model and
    float32 data), so a float32 run would silently not be one.
    """
    if dtype == "float32":
        raise errors.UserError(
            "dtype 'float32' is not supported yet (MJX 3.17 promotes a float32 simulation to float64 "
            "under jax_enable_x64); allowed: float64"
        )
    if dtype != "float64":
        raise errors.UserError(f"unknown dtype {dtype!r}; allowed: float64")


def state_of(data: Any) -> jax.Array:
    """``[qpos, qvel]`` of an ``mjx.Data`` (unbatched): shape ``(nq + nv,)``."""
    return jnp.concatenate([data.qpos, data.qvel])


def count_contacts(data: Any) -> jax.Array:
    """Number of active contacts of an unbatched ``mjx.Data`` (see ``CONTACT_DEFINITION``)."""
    contact = data._impl.contact  # pylint: disable=protected-access
    if contact.dist.shape[0] == 0:
        return jnp.zeros((), jnp.int32)
    return jnp.sum(contact.dist < contact.includemargin).astype(jnp.int32)


@functools.lru_cache(maxsize=64)
def contact_pairs(spec: EnvSpec) -> tuple[tuple[str, ...], np.ndarray]:
    """The geom pairs the simulator can put in contact, and a lookup table from geom ids to pair index.

    Uses MJX's own static candidate list (``collision_driver.geom_pairs``: MuJoCo's broad-phase
    filters, contype/conaffinity, parent and weld exclusion, ``<pair>`` and ``<exclude>``) of pairs
    of types that have a collision function, so every contact the simulator can make has a pair:
    MJX's functions, or for a native-only model (``EnvSpec.native_only``) native MuJoCo's (every
    type pair but plane-plane, plane-hfield and hfield-hfield). Unnamed geoms are called ``geom<id>``.

    Returns:
      ``(names, table)``: names ``'geom1|geom2'`` (n_pairs,), and an ``(ngeom, ngeom)`` int32
      table, symmetric, holding the pair index or -1.
    """
    from dynsparse import upstream

    collision_driver = upstream.mjx_collision_driver()

    m = spec.mj_model
    table = np.full((m.ngeom, m.ngeom), -1, np.int32)
    names: list[str] = []
    if m.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_CONTACT:  # e.g. the Cartpole tasks
        return (), table
    native = spec.native_only
    flat = {int(mujoco.mjtGeom.mjGEOM_PLANE), int(mujoco.mjtGeom.mjGEOM_HFIELD)}

    def collides(t1: int, t2: int) -> bool:
        if native:  # mjCOLLISIONFUNC has no plane-plane, plane-hfield or hfield-hfield function
            return not (int(t1) in flat and int(t2) in flat)
        return collision_driver.has_collision_fn(t1, t2)

    for g1, g2, _ in collision_driver.geom_pairs(m):
        if table[g1, g2] >= 0 or not collides(m.geom_type[g1], m.geom_type[g2]):
            continue
        table[g1, g2] = table[g2, g1] = len(names)
        names.append("|".join(mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_GEOM, g) or f"geom{g}" for g in (g1, g2)))
    return tuple(names), table


def active_contact_pairs(data: Any, table: np.ndarray, n_pairs: int) -> jax.Array:
    """``(n_pairs,)`` bool: the geom pairs with at least one active contact (unbatched data)."""
    contact = data._impl.contact  # pylint: disable=protected-access
    if contact.dist.shape[0] == 0 or n_pairs == 0:
        return jnp.zeros((n_pairs,), bool)
    active = contact.dist < contact.includemargin
    idx = jnp.asarray(table)[contact.geom[:, 0], contact.geom[:, 1]]
    # a contact whose pair is unknown (cannot happen with MJX's candidate list) goes to a spare slot
    idx = jnp.where(idx >= 0, idx, n_pairs)
    return jnp.zeros((n_pairs + 1,), bool).at[idx].max(active)[:n_pairs]


#: The integrators ``mjx.step`` runs (mujoco-mjx 3.17).
_MJX_STEP_INTEGRATORS = (mujoco.mjtIntegrator.mjINT_EULER, mujoco.mjtIntegrator.mjINT_RK4, mujoco.mjtIntegrator.mjINT_IMPLICITFAST)

#: How an ``MjcfEnv`` draws initial states (see ``MjcfEnv``).
RESET_KINDS = ("uniform", "uniform-normal", "reacher", "pusher")


def check_state_is_complete(model: mujoco.MjModel) -> None:
    """Raise ``UserError`` unless ``s = [qpos, qvel]`` (with the action) determines the model's next
    state, so that the control step has Jacobians in ``s``: a model that enables sleep (a sleeping
    body's next state depends on MuJoCo's sleep timers) or delays its actuators (``nsample`` /
    ``delay``: the next state depends on past controls) is refused, in every path. Native MuJoCo
    carries that state in ``mjData`` (and a reused ``mjData`` from one perturbed step into the
    next); MJX (mujoco-mjx 3.17) accepts such a model and simulates it without sleep and without the
    delays, another model than the XML's (measured: a delayed motor's hinge moves in MJX's first
    step, not in MuJoCo's)."""
    if model.opt.enableflags & int(mujoco.mjtEnableBit.mjENBL_SLEEP):
        raise errors.UserError(
            "the model enables sleep (<flag sleep=\"enable\"/>): a sleeping body's next state depends on MuJoCo's "
            "sleep timers, which are not in s = [qpos, qvel], so the step has no Jacobian in s; disable sleep to measure it"
        )
    if model.nu and (np.asarray(model.actuator_historyadr) >= 0).any():
        raise errors.UserError(
            "the model delays its actuators (actuator nsample/delay): the next state depends on past controls, which "
            "are not in s = [qpos, qvel], so the step has no Jacobian in s; remove the delay to measure it"
        )


class ModelEnv:
    """A MuJoCo model with a control step and initial-state draws, without any MJX object: what
    a native rollout needs (``dynsparse.native_rollout``). ``MjcfEnv`` adds the MJX environment;
    ``NativeEnv`` is this alone, for models MJX cannot build.

    ``reset`` draws, with ``s = init_noise`` (``initial``, in JAX, so both rollouts start from the
    same states):

    - ``uniform`` (default): ``qpos = init_qpos (+) U(-s, s)`` per degree of freedom (a quaternion
      is turned by a rotation vector with such components and normalised), ``qvel = init_qvel +
      U(-s, s)``;
    - ``uniform-normal``: the same ``qpos``, ``qvel = init_qvel + s N(0, 1)`` (Gymnasium's
      HalfCheetah, Ant, InvertedDoublePendulum);
    - ``reacher`` / ``pusher``: Gymnasium's Reacher-v5 / Pusher-v5 ``reset_model`` (goal in a disc
      of radius 0.2 / the cylinder at least 0.17 from the goal, by rejection).

    ``init_qpos`` / ``init_qvel`` default to the model's ``qpos0`` and zero. The control step holds
    ``ctrl = action`` for ``n_substeps`` physics steps (Gymnasium's ``do_simulation``:
    ``data.ctrl[:] = action`` then ``mj_step(nstep=frame_skip)``); reward 0.
    """

    def __init__(
        self, model: str | mujoco.MjModel, n_substeps: int = 1, init_noise: float = 0.1,
        reset_kind: str = "uniform", init_qpos: np.ndarray | None = None, init_qvel: np.ndarray | None = None,
    ):
        self.mj_model = mujoco.MjModel.from_xml_string(model) if isinstance(model, str) else model
        check_state_is_complete(self.mj_model)
        self.n_substeps = int(n_substeps)
        self.dt = float(self.mj_model.opt.timestep) * self.n_substeps
        self.init_noise = float(init_noise)
        self.action_size = int(self.mj_model.nu)
        if reset_kind not in RESET_KINDS:
            raise ValueError(f"unknown reset kind {reset_kind!r}; allowed: {', '.join(RESET_KINDS)}")
        self.reset_kind = reset_kind
        m = self.mj_model
        self.init_qpos = np.array(m.qpos0 if init_qpos is None else init_qpos, np.float64)
        self.init_qvel = np.zeros(m.nv) if init_qvel is None else np.array(init_qvel, np.float64)

    def initial_state_identity(self) -> dict[str, Any]:
        """What ``initial`` closes over (part of every kept program's key, ``exported.env_identity``)."""
        import hashlib

        digest = lambda x: hashlib.sha256(np.ascontiguousarray(x, np.float64).tobytes()).hexdigest()  # noqa: E731
        return {"init_noise": self.init_noise, "reset_kind": self.reset_kind,
                "init_qpos": digest(self.init_qpos), "init_qvel": digest(self.init_qvel)}

    def initial(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(qpos (nq,), qvel (nv,))`` of one episode drawn by ``reset_kind`` from ``key`` (JAX, jittable)."""
        m, s = self.mj_model, self.init_noise
        k1, k2, k3 = jax.random.split(key, 3)
        c = tangent.charts(m)
        qpos0, qvel0 = jnp.asarray(self.init_qpos), jnp.asarray(self.init_qvel)
        if self.reset_kind == "pusher":
            def draw(k: jax.Array) -> jax.Array:
                k_x, k_y = jax.random.split(k)
                return jnp.array([jax.random.uniform(k_x, (), minval=-0.3, maxval=0.0),
                                  jax.random.uniform(k_y, (), minval=-0.2, maxval=0.2)])

            cyl = _reject(draw, lambda p: jnp.linalg.norm(p) > 0.17, k1)
            qpos = qpos0.at[-4:-2].set(cyl).at[-2:].set(0.0)
            qvel = (qvel0 + jax.random.uniform(k2, (m.nv,), minval=-0.005, maxval=0.005)).at[-4:].set(0.0)
            return qpos, qvel
        if self.reset_kind == "reacher":
            qpos = qpos0 + jax.random.uniform(k1, (m.nq,), minval=-0.1, maxval=0.1)
            goal = _reject(lambda k: jax.random.uniform(k, (2,), minval=-0.2, maxval=0.2), lambda g: jnp.linalg.norm(g) < 0.2, k3)
            qvel = (qvel0 + jax.random.uniform(k2, (m.nv,), minval=-0.005, maxval=0.005)).at[-2:].set(0.0)
            return qpos.at[-2:].set(goal), qvel
        dq = jax.random.uniform(k1, (m.nv,), minval=-s, maxval=s)
        qpos = tangent.normalize_quaternions(c, tangent.retract(c, qpos0, dq))
        if self.reset_kind == "uniform-normal":
            return qpos, qvel0 + s * jax.random.normal(k2, (m.nv,))
        return qpos, qvel0 + jax.random.uniform(k2, (m.nv,), minval=-s, maxval=s)


class MjcfEnv(ModelEnv):
    """A minimal Playground-style environment around any MuJoCo model (reward 0, obs = state).

    Used for hand-built models whose Jacobians are known on paper, for user models (``mjcf:``)
    and for Gymnasium's and dm_control's MuJoCo tasks. ``step`` holds ``ctrl = action`` for
    ``n_substeps`` MJX steps; ``reset`` draws as ``ModelEnv`` says.

    Raises:
      NotImplementedError: MJX cannot build or step the model (names the feature).
    """

    def __init__(
        self, model: str | mujoco.MjModel, n_substeps: int = 1, init_noise: float = 0.1,
        reset_kind: str = "uniform", init_qpos: np.ndarray | None = None, init_qvel: np.ndarray | None = None,
    ):
        from mujoco import mjx

        super().__init__(model, n_substeps, init_noise, reset_kind, init_qpos, init_qvel)
        if self.mj_model.opt.integrator not in _MJX_STEP_INTEGRATORS:  # put_model accepts DISCRETE, mjx.step does not
            raise NotImplementedError(f"{mujoco.mjtIntegrator(self.mj_model.opt.integrator)} is not implemented (mjx.step runs Euler, RK4, implicitfast)")
        self.mjx_model = mjx.put_model(self.mj_model, impl="jax")

    def reset(self, key: jax.Array) -> Any:
        from mujoco import mjx

        from dynsparse import upstream

        mjx_env = upstream.playground_mjx_env()

        qpos, qvel = self.initial(key)
        data = mjx.make_data(self.mjx_model).replace(qpos=qpos, qvel=qvel)
        data = mjx.forward(self.mjx_model, data)
        return mjx_env.State(data, state_of(data), jnp.zeros(()), jnp.zeros(()), {}, {})

    def step(self, state: Any, action: jax.Array) -> Any:
        from mujoco import mjx

        def substep(d: Any, _: None) -> tuple[Any, None]:
            return mjx.step(self.mjx_model, d.replace(ctrl=action)), None

        data, _ = jax.lax.scan(substep, state.data, None, length=self.n_substeps)
        done = (jnp.isnan(data.qpos).any() | jnp.isnan(data.qvel).any()).astype(float)
        return state.replace(data=data, obs=state_of(data), reward=jnp.zeros(()), done=done)


class NativeEnv(ModelEnv):
    """A model MJX cannot build or step (Gymnasium's PGS Humanoids, the fully implicit or discrete
    integrator, a collision pair MJX lacks): simulated by native MuJoCo only, so only the
    ``finite_diff`` backend with a native rollout measures it. Initial states as ``ModelEnv``.

    Args:
      unsupported: the one-line error naming what MJX lacks (``sources.build_error``), raised by
        everything that needs MJX (``EnvSpec.mjx_model``).
    """

    def __init__(self, recipe: Any, unsupported: str):
        super().__init__(recipe.model, recipe.n_substeps, recipe.init_noise, recipe.reset_kind, recipe.init_qpos, recipe.init_qvel)
        self.unsupported = unsupported


def _reject(draw: Callable[[jax.Array], jax.Array], accept: Callable[[jax.Array], jax.Array], key: jax.Array) -> jax.Array:
    """Rejection sampling: ``draw(k)`` with fresh keys until ``accept`` holds (as Gymnasium's loops)."""
    def cond(c: tuple[jax.Array, jax.Array]) -> jax.Array:
        return ~accept(c[1])

    def body(c: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        k, sub = jax.random.split(c[0])
        return k, draw(sub)

    k, sub = jax.random.split(key)
    return jax.lax.while_loop(cond, body, (k, draw(sub)))[1]


def from_mjcf(xml: str, name: str = "mjcf", n_substeps: int = 1, init_noise: float = 0.1, native: bool = False) -> EnvSpec:
    """An ``EnvSpec`` for an MJCF string (see ``MjcfEnv``); float64. With ``native``, a model MJX
    cannot build is a native-only spec (``NativeEnv``) instead of an error.

    Raises:
      UserError: MJX cannot build the model and ``native`` is false (names the feature,
        ``sources.build_error``).
    """
    from dynsparse import sources

    try:
        return _spec(name, MjcfEnv(xml, n_substeps, init_noise))
    except NotImplementedError as exc:
        error = sources.build_error(name, exc)
        if not native:
            raise error from exc
        return _spec(name, NativeEnv(sources.Recipe(mujoco.MjModel.from_xml_string(xml), n_substeps, init_noise), str(error)))
