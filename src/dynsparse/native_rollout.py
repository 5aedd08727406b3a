"""Native rollouts: trajectories simulated by MuJoCo's C library, with no JAX program to trace.

The ``finite_diff`` backend takes its Jacobians with native MuJoCo (``finite_diff.BatchedFD``);
where the environment is one of dynsparse's own (``envs.ModelEnv``: ``mjcf:``, ``gymnasium:``,
``dm_control:`` sources, reward 0, no termination but divergence) and the policy does not look at
the state (``random``, ``colored``: ``Policy.open_loop_actions``), the trajectories are simulated
natively too, so such a run compiles no rollout program, and a model MJX cannot build (``envs.NativeEnv``)
is measured at all. Playground's tasks (JAX rewards and resets), PPO policies and ``--from``
replays keep the MJX rollout (``rollout``).

What is simulated is the MJX rollout's function: initial states drawn by the same JAX code
(``ModelEnv.initial``, the same keys), ``mujoco.MjData`` initialised as ``mjx.make_data`` does
(zero warm start, time, activations; mocap bodies at the model's), then per control step ``ctrl =
a`` and ``n_substeps`` ``mj_step`` calls with the model's own solver settings, the warm start
carried from substep to substep and from step to step. Per step it records what the MJX chunk
records (``rollout.make_chunk_fn``), from the same quantities: the state before and after,
the contacts of the last substep (``dist < includemargin``), and the ``finite_diff.StepInputs``
of the step. Native MuJoCo and MJX agree on one step to round-off (~1e-15 relative, measured by
``tests/test_native_rollout.py`` on every source kind); over many steps the two trajectories
separate as round-off grows in a chaotic system, so the two rollouts' datasets agree step for step
only in distribution (the attrs ``rollout`` and ``rollout_definition`` say which one ran).

Divergence: native MuJoCo resets a simulation whose ``qpos``, ``qvel`` or ``qacc`` is not finite
or exceeds ``mjMAXVAL`` (1e10) and warns (``mjWARN_BADQPOS`` / ``BADQVEL`` / ``BADQACC``); a step
where that happens gets a NaN next state and ends its episode, as a NaN state ends an MJX episode
(MJX keeps integrating past 1e10, so it ends the same episode at a later step).
"""

from __future__ import annotations

import concurrent.futures
import functools
from typing import Any

import mujoco
import numpy as np

from dynsparse import envs
from dynsparse.jacobians import finite_diff
from dynsparse.policies import Policy

#: Recorded in the attrs of every dataset (``rollout_definition``), by rollout.
DEFINITIONS = {
    "native": (
        "native MuJoCo (mj_step, the model's own solver settings, warm start carried): initial states drawn by the "
        "environment's JAX reset from the same keys as the MJX rollout, then n_substeps mj_step calls per control step "
        "with ctrl = action held; a step at which MuJoCo's divergence check fires (qpos, qvel or qacc not finite or above "
        "1e10: mjWARN_BADQPOS/BADQVEL/BADQACC) gets a NaN next state and ends its episode. Agrees with the MJX rollout "
        "step by step to round-off; long trajectories separate as round-off grows"
    ),
    "mjx": "MJX (the environment's own jitted reset and step, jax implementation); an episode ends at a NaN state",
}

_DIVERGED = (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL, mujoco.mjtWarning.mjWARN_BADQACC)

#: the integration state of one episode: everything ``mj_step`` reads (``mj_getState``)
STATE_SPEC = int(mujoco.mjtState.mjSTATE_INTEGRATION)


def why_not(spec: envs.EnvSpec, policy: Policy) -> str | None:
    """``None`` if a native rollout can simulate ``spec`` with ``policy``; else why not (one phrase)."""
    if not isinstance(spec.env, envs.ModelEnv):
        return f"{spec.name} is a MuJoCo Playground task (its reset and reward are JAX code)"
    if not policy.open_loop:
        return f"policy {policy.name!r} does not act on noise alone (it needs the MJX rollout)"
    return None


class NativeRollout:
    """Batched native rollouts of one environment and one open-loop policy, in chunks of steps.

    The carry between chunks is ``(states, alive)``: ``states`` ``(B, nstate)`` float64, each
    episode's ``mj_getState(STATE_SPEC)`` vector, and ``alive`` ``(B,)`` bool; it is saved in the
    dataset's checkpoint and restored exactly, so a resumed run equals an uninterrupted one.

    Args:
      spec: an environment whose ``env`` is an ``envs.ModelEnv`` (``why_not`` is ``None``).
      policy: an open-loop policy.
      threads: worker threads, each simulating a share of the episodes (default: this process's
        cores, ``finite_diff.default_threads``).
    """

    def __init__(self, spec: envs.EnvSpec, policy: Policy, threads: int | None = None):
        reason = why_not(spec, policy)
        if reason is not None:
            raise ValueError(f"no native rollout: {reason}")
        self.spec, self.policy = spec, policy
        self.model = spec.mj_model
        self.n_substeps = int(spec.n_substeps)
        self.low, self.high = np.asarray(spec.action_low, np.float64), np.asarray(spec.action_high, np.float64)
        names, self.pair_table = envs.contact_pairs(spec)
        self.n_pairs = len(names)
        self.nstate = mujoco.mj_stateSize(self.model, STATE_SPEC)
        self.threads = max(1, finite_diff.default_threads() if threads is None else int(threads))
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        _initial_fn(spec).prefetch()

    def initial_carry(self, keys: Any) -> tuple[np.ndarray, np.ndarray]:
        """The carry at step 0 of ``B`` episodes from their PRNG keys ``(B, 2)``
        (``rollout.episode_keys``): the environment's own initial draws (``ModelEnv.initial``,
        jitted and kept on disk: a small program, the only JAX work of a native run) in a fresh
        ``MjData``."""
        qpos, qvel = (np.asarray(x, np.float64) for x in _initial_fn(self.spec)(keys))
        d = mujoco.MjData(self.model)
        states = np.zeros((len(qpos), self.nstate))
        for i in range(len(qpos)):
            mujoco.mj_resetData(self.model, d)
            d.qpos[:], d.qvel[:] = qpos[i], qvel[i]
            mujoco.mj_getState(self.model, d, states[i], STATE_SPEC)
        return states, np.ones(len(qpos), bool)

    def chunk(self, carry: tuple[np.ndarray, np.ndarray], noise: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
        """``Tc`` control steps of every episode.

        Args:
          carry: ``(states (B, nstate), alive (B,))`` after the previous chunk (or ``initial_carry``).
          noise: ``(B, Tc, nu)`` the policy noise of these steps.

        Returns:
          The carry after the chunk and the arrays of ``rollout.make_chunk_fn`` without Jacobians,
          each ``(B, Tc, ...)``: ``state``, ``action``, ``next_state``, ``reward`` (0),
          ``n_contacts``, ``contact_pairs``, ``valid`` and the ``finite_diff.StepInputs`` fields.
          Steps of ended episodes hold NaN (``valid`` false).
        """
        states, alive = np.array(carry[0], np.float64), np.array(carry[1], bool)
        noise = np.asarray(noise, np.float64)
        actions = self.policy.open_loop_actions(noise, self.low, self.high)
        b, tc = noise.shape[:2]
        out = self._empty(b, tc)
        out["action"][:] = out["ctrl"][:] = actions
        groups = [g for g in np.array_split(np.arange(b), min(self.threads, b)) if g.size]
        if len(groups) == 1:
            self._episodes(groups[0], states, alive, actions, out)
        else:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="native-rollout")
            for f in [self._pool.submit(self._episodes, g, states, alive, actions, out) for g in groups]:
                f.result()
        return (states, alive), out

    def _empty(self, b: int, tc: int) -> dict[str, np.ndarray]:
        m = self.model
        nan = lambda *shape: np.full((b, tc, *shape), np.nan)  # noqa: E731
        return {
            "state": nan(m.nq + m.nv), "action": nan(m.nu), "next_state": nan(m.nq + m.nv),
            "reward": np.zeros((b, tc)), "n_contacts": np.zeros((b, tc), np.int32),
            "contact_pairs": np.zeros((b, tc, self.n_pairs), bool), "valid": np.zeros((b, tc), bool),
            "qpos": nan(m.nq), "qvel": nan(m.nv), "warmstart": nan(m.nv), "ctrl": nan(m.nu), "act": nan(m.na),
            "mocap_pos": nan(m.nmocap, 3), "mocap_quat": nan(m.nmocap, 4), "time": nan(),
        }

    def _episodes(self, group: np.ndarray, states: np.ndarray, alive: np.ndarray, actions: np.ndarray,
                  out: dict[str, np.ndarray]) -> None:
        """Simulate the episodes ``group`` in place (``states``, ``alive`` and ``out`` rows)."""
        m, n_sub, nq = self.model, self.n_substeps, self.model.nq
        d = mujoco.MjData(m)
        warnings = [d.warning[w] for w in _DIVERGED]
        for i in group:
            if not alive[i]:
                continue
            mujoco.mj_setState(m, d, states[i], STATE_SPEC)
            for t in range(actions.shape[1]):
                out["qpos"][i, t], out["qvel"][i, t] = d.qpos, d.qvel
                out["warmstart"][i, t], out["time"][i, t] = d.qacc_warmstart, d.time
                if m.na:
                    out["act"][i, t] = d.act
                if m.nmocap:
                    out["mocap_pos"][i, t], out["mocap_quat"][i, t] = d.mocap_pos, d.mocap_quat
                out["valid"][i, t] = True
                for w in warnings:
                    w.number = 0
                d.ctrl[:] = actions[i, t]
                for _ in range(n_sub):
                    mujoco.mj_step(m, d)
                if any(w.number for w in warnings):  # MuJoCo reset the simulation: it diverged
                    alive[i] = False
                    break
                out["next_state"][i, t, :nq], out["next_state"][i, t, nq:] = d.qpos, d.qvel
                self._contacts(d, out, i, t)
                if not (np.isfinite(d.qpos).all() and np.isfinite(d.qvel).all()):
                    alive[i] = False
                    break
            mujoco.mj_getState(m, d, states[i], STATE_SPEC)
        out["state"][group] = np.concatenate([out["qpos"][group], out["qvel"][group]], axis=-1)

    def _contacts(self, d: mujoco.MjData, out: dict[str, np.ndarray], i: int, t: int) -> None:
        """``n_contacts`` and ``contact_pairs`` of the last substep (``envs.CONTACT_DEFINITION``)."""
        if not d.ncon:
            return
        c = d.contact
        active = c.dist < c.includemargin
        out["n_contacts"][i, t] = int(active.sum())
        if self.n_pairs and active.any():
            idx = self.pair_table[c.geom[active, 0], c.geom[active, 1]]
            out["contact_pairs"][i, t, idx[idx >= 0]] = True

    def close(self) -> None:
        """End the worker threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


@functools.lru_cache(maxsize=32)
def _initial_fn(spec: envs.EnvSpec) -> Any:
    """Jitted ``keys (B, 2) -> (qpos (B, nq), qvel (B, nv))``: the environment's own draws, kept
    as a program on disk like the MJX reset (``exported.Cached``: a later run loads it instead of
    compiling it, 1.9 s on HalfCheetah)."""
    import jax

    from dynsparse import exported

    return exported.Cached(jax.jit(jax.vmap(spec.env.initial)), "initial", exported.env_identity(spec))
