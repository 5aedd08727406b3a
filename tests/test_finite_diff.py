"""``finite_diff.BatchedFD`` (``mujoco.rollout`` on threads) computes exactly ``NativeStep.jacobian``.

Native only (no JAX compile): fast tier. The cases cover every path of the batched code: hinge
models (whole-array perturbations), a free and a ball joint (``mj_integratePos`` /
``mj_differentiatePos`` per row), activations (``act`` in the state vector), mocap bodies that
touch the robot (mocap in the control vector), substeps, chunking and the ``mj_getState`` fallback.
"""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from dynsparse.jacobians import finite_diff
from models import LEGGED, LEGGED_SUBSTEPS

#: a filtered actuator (na = 1) on an arm whose tip rests against a mocap box (contact): the next
#: state depends on the activation and on where the mocap body is.
ARM_ACT_MOCAP = """
<mujoco model="arm_act_mocap">
  <option timestep="0.004"/>
  <worldbody>
    <body name="box" mocap="true" pos="0.33 0 0">
      <geom type="box" size="0.03 0.1 0.1"/>
    </body>
    <body name="arm">
      <joint name="shoulder" type="hinge" axis="0 0 1" damping="0.1"/>
      <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.02" mass="0.5"/>
      <body pos="0.3 0 0">
        <joint name="elbow" type="hinge" axis="0 0 1" damping="0.1"/>
        <geom type="sphere" size="0.03" mass="0.1"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <general name="shoulder" joint="shoulder" dyntype="filter" dynprm="0.05" gainprm="2" ctrlrange="-1 1"/>
    <motor name="elbow" joint="elbow" gear="1" ctrlrange="-1 1"/>
  </actuator>
</mujoco>
"""

HINGE_CHAIN = """
<mujoco model="hinge_chain">
  <option timestep="0.01"/>
  <worldbody>
    <body>
      <joint name="a" type="hinge" axis="0 1 0" limited="true" range="-0.5 0.5"/>
      <geom type="capsule" fromto="0 0 0 0 0 -0.3" size="0.02" mass="1"/>
      <body pos="0 0 -0.3">
        <joint name="b" type="slide" axis="1 0 0" damping="0.3"/>
        <geom type="sphere" size="0.04" mass="0.3"/>
      </body>
    </body>
  </worldbody>
  <actuator><motor joint="a" gear="3"/><motor joint="b"/></actuator>
</mujoco>
"""


def _visited(model: mujoco.MjModel, substeps: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    """``StepInputs`` fields ``(steps, ...)`` along a random-action trajectory (warm starts as run)."""
    d = mujoco.MjData(model)
    rng = np.random.default_rng(seed)
    mujoco.mj_forward(model, d)
    rows = []
    for t in range(steps):
        d.ctrl[:] = rng.uniform(-1, 1, model.nu)
        if model.nmocap:
            d.mocap_pos[0, 0] = 0.33 + 0.01 * np.sin(t)
        rows.append(finite_diff.StepInputs(
            d.qpos.copy(), d.qvel.copy(), d.qacc_warmstart.copy(), d.ctrl.copy(), d.act.copy(),
            d.mocap_pos.copy(), d.mocap_quat.copy(), float(d.time)))
        for _ in range(substeps):
            mujoco.mj_step(model, d)
    return {name: np.stack([np.asarray(getattr(r, name)) for r in rows]) for name in rows[0].__dataclass_fields__}


CASES = {
    "legged (free + ball joint, contacts)": (LEGGED, LEGGED_SUBSTEPS),
    "arm (activation, mocap contact)": (ARM_ACT_MOCAP, 2),
    "hinge/slide chain (limit)": (HINGE_CHAIN, 1),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("definition", ["as-run", "converged"])
def test_batched_equals_one_step_at_a_time(case: str, definition: str) -> None:
    xml, substeps = CASES[case]
    model = mujoco.MjModel.from_xml_string(xml)
    arrays = _visited(model, substeps, 23, seed=1)
    one = finite_diff.NativeStep(model, substeps, definition)
    want = [one.jacobian(finite_diff.StepInputs.from_arrays(arrays, (k,)), 1e-6) for k in range(23)]
    for threads, chunk in ((0, 256), (2, 5)):
        batched = finite_diff.BatchedFD(model, substeps, definition, threads=threads, chunk=chunk)
        jac, s_next = batched.jacobians(arrays, 1e-6)
        assert jac.shape == (23, 2 * model.nv, 2 * model.nv + model.nu)
        np.testing.assert_array_equal(jac, np.stack([w[0] for w in want]))
        np.testing.assert_array_equal(s_next, np.stack([w[1] for w in want]))


def test_mocap_and_activation_reach_the_rollout() -> None:
    """The case is a real check: the Jacobian changes when the mocap box or the activation does."""
    model = mujoco.MjModel.from_xml_string(ARM_ACT_MOCAP)
    assert model.na == 1 and model.nmocap == 1
    arrays = _visited(model, 2, 30, seed=2)
    batched = finite_diff.BatchedFD(model, 2, threads=0)
    j0, s0 = batched.jacobians(arrays)
    moved = dict(arrays, mocap_pos=arrays["mocap_pos"] + np.array([0.2, 0, 0]))
    j1, s1 = batched.jacobians(moved)
    assert not np.array_equal(s0, s1) and not np.array_equal(j0, j1)
    active = dict(arrays, act=arrays["act"] + 0.5)
    assert not np.array_equal(batched.jacobians(active)[1], s0)


def test_state_vector_fallback_equals_whole_array_packing() -> None:
    """Without the marked layout (e.g. a plugin's state in the vector) each step is packed by
    ``mj_getState``: same numbers."""
    model = mujoco.MjModel.from_xml_string(ARM_ACT_MOCAP)
    arrays = _visited(model, 2, 9, seed=3)
    batched = finite_diff.BatchedFD(model, 2, threads=0)
    assert batched._layout is not None
    fast = batched.jacobians(arrays)
    batched._layout = None
    slow = batched.jacobians(arrays)
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])


def test_backend_batch_keeps_the_leading_shape() -> None:
    """``FiniteDiffBackend.batch`` on ``(E, T)`` inputs equals its one-step call at each index."""
    model = mujoco.MjModel.from_xml_string(HINGE_CHAIN)
    flat = _visited(model, 1, 6, seed=4)
    arrays = {k: v.reshape((2, 3) + v.shape[1:]) for k, v in flat.items()}
    fd = finite_diff.FiniteDiffBackend(model, 1, threads=2)
    js, ja = fd.batch(arrays)
    assert js.shape == (2, 3, 4, 4) and ja.shape == (2, 3, 4, 2)
    for idx in np.ndindex(2, 3):
        one_s, one_a = fd(finite_diff.StepInputs.from_arrays(arrays, idx))
        np.testing.assert_array_equal(js[idx], one_s)
        np.testing.assert_array_equal(ja[idx], one_a)


def test_thread_count_from_the_environment(monkeypatch):
    """``$DYNSPARSE_FD_THREADS`` (what a sweep's local Dask cluster gives each worker) sets the
    batches' threads; anything but an integer > 0 falls back to the process's cores."""
    import os

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv(finite_diff.THREADS_ENV_VAR, "3")
    assert finite_diff.default_threads() == 3
    for bad in ("0", "-2", "many", ""):
        monkeypatch.setenv(finite_diff.THREADS_ENV_VAR, bad)
        assert finite_diff.default_threads() == cores
