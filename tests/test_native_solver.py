"""``native_solver``: the finite_diff backend's solver diagnostics (native only, fast tier).

The replay is the FD backend's own nominal step (bit for bit), the residual is the primal
constraint cost's gradient (checked against a dense recompute from the constraint rows), and the
counts follow MJX's rules (truncated: iteration cap reached with the residual above tolerance;
start returned: no iteration while a constraint is active)."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from dynsparse import cli, collect, dataset, envs, errors
from dynsparse.jacobians import definitions, finite_diff, native_solver
from dynsparse.metrics import structure
from helpers import interrupt_after_first_unit, one_error_line
from models import DIVERGING_SPRING, LEGGED, LEGGED_SUBSTEPS, RESTING_BOX, RESTING_BOX_SUBSTEPS
from test_finite_diff import ARM_ACT_MOCAP, HINGE_CHAIN, _visited


def _with_option(xml: str, option: str) -> str:
    """``xml`` with ``option`` (attributes of ``<option>``) added."""
    if "<option " in xml:
        return xml.replace("<option ", f"<option {option} ", 1)
    return xml.replace("<worldbody>", f"<option {option}/><worldbody>", 1)


REPLAYS = {
    "legged": (LEGGED, LEGGED_SUBSTEPS),
    "legged PGS": (_with_option(LEGGED, 'solver="PGS"'), LEGGED_SUBSTEPS),
    "legged CG 2 iterations": (_with_option(LEGGED, 'solver="CG" iterations="2"'), LEGGED_SUBSTEPS),
    "legged sparse": (_with_option(LEGGED, 'jacobian="sparse"'), LEGGED_SUBSTEPS),
    "arm RK4 (activation, mocap)": (_with_option(ARM_ACT_MOCAP, 'integrator="RK4"'), 2),
    "hinge chain implicitfast": (_with_option(HINGE_CHAIN, 'integrator="implicitfast"'), 1),
    "resting box": (RESTING_BOX, RESTING_BOX_SUBSTEPS),
    # mjData that outlives a step, or a forward pass mj_step does not leave as the solve's
    "legged noslip": (_with_option(LEGGED, 'iterations="4" noslip_iterations="3"'), LEGGED_SUBSTEPS),
}


@pytest.mark.parametrize("case", list(REPLAYS))
@pytest.mark.parametrize("definition", ["as-run", "converged"])
def test_replay_is_the_finite_difference_nominal_step(case: str, definition: str) -> None:
    """The diagnostics come from the function the FD Jacobian differentiates: the replayed next
    state equals ``BatchedFD``'s nominal one bit for bit (solver, integrator, sparse Jacobian,
    activations, mocap; reading the solve writes nothing a later substep reads)."""
    xml, substeps = REPLAYS[case]
    model = mujoco.MjModel.from_xml_string(xml)
    arrays = _visited(model, substeps, 25, seed=2)
    _, s_next = finite_diff.BatchedFD(model, substeps, definition, threads=2).jacobians(arrays)
    for threads in (0, 2):
        out = native_solver.NativeSolverDiagnostics(model, substeps, definition, threads=threads).batch(arrays)
        np.testing.assert_array_equal(out["next_state"], s_next)
        assert out["solver_residual"].shape == out["solver_truncated"].shape == (25,)
        assert np.all(out["solver_residual"] >= 0) and np.all(out["solver_truncated"] <= substeps)


RK4_CASES = {
    "arm RK4 (activation, mocap contact)": _with_option(ARM_ACT_MOCAP, 'integrator="RK4"'),
    "hinge chain RK4 (limit)": _with_option(HINGE_CHAIN, 'integrator="RK4"'),
    "legged RK4 noslip (free + ball joint, contacts)": _with_option(LEGGED, 'integrator="RK4" iterations="4" noslip_iterations="3"'),
    "legged RK4 (free + ball joint, contacts)": _with_option(LEGGED, 'integrator="RK4"'),
}


def _rk4_next(m: mujoco.MjModel, d: mujoco.MjData, stages: list) -> tuple[np.ndarray, np.ndarray]:
    """``mj_RungeKutta``'s final update from the four stages: ``qpos`` by ``mj_integratePos`` with
    the velocities weighted by ``B = (1, 2, 2, 1) / 6``, ``qvel`` plus the weighted accelerations."""
    dv, da = np.zeros(m.nv), np.zeros(m.nv)
    for w, st in zip(np.array([1.0, 2.0, 2.0, 1.0]) / 6.0, stages):
        dv += st.qvel * w
        da += st.qacc * w
    qpos = d.qpos.copy()
    mujoco.mj_integratePos(m, qpos, dv, m.opt.timestep)
    return qpos, d.qvel + da * m.opt.timestep


@pytest.mark.parametrize("case", list(RK4_CASES))
def test_rk4_stages_are_the_ones_mj_step_takes(case: str) -> None:
    """``rk4_stages`` repeats ``mj_RungeKutta``'s four forward passes without changing ``d``; the
    first stage's solve is the one read after ``mj_forward`` at the substep's start.

    With hinge and slide joints only, the stages combined by MuJoCo's final update give
    ``mj_step``'s next state bit for bit (so each stage state, and the solve read there, is the
    step's own). With free or ball joints the published ``mj_RungeKutta`` (and MJX's RK4, which
    gives the same step to round-off) builds the later stages' orientations otherwise than the
    pinned MuJoCo 4.0.0 (measured with a control callback: stage 3 of a spinning ball joint
    differs by ~4e-8 rad): there the combined stages land within 1e-6 of the step's next state."""
    model = mujoco.MjModel.from_xml_string(RK4_CASES[case])
    diag = native_solver.NativeSolverDiagnostics(model, 1, "as-run", threads=0)
    m = diag.model
    rotational = bool(np.isin(m.jnt_type, [int(mujoco.mjtJoint.mjJNT_FREE), int(mujoco.mjtJoint.mjJNT_BALL)]).any())
    euler = mujoco.MjModel.from_xml_string(RK4_CASES[case].replace('integrator="RK4"', 'integrator="Euler"'))
    arrays = _visited(euler, 3, 40, seed=5)  # states of a stable (Euler) trajectory
    d, scratch, ref = mujoco.MjData(m), mujoco.MjData(m), mujoco.MjData(m)
    read = native_solver.SolveReader(diag._solve_model)
    active = 0
    for k in range(40):
        x = finite_diff.StepInputs.from_arrays(arrays, (k,))
        finite_diff.set_inputs(m, d, x)
        before = (d.qpos.copy(), d.qvel.copy(), d.act.copy(), d.time, d.qacc_warmstart.copy())
        stages = native_solver.rk4_stages(m, d, scratch, read, diag._solve_model)
        for a, b in zip(before, (d.qpos, d.qvel, d.act, d.time, d.qacc_warmstart)):
            np.testing.assert_array_equal(a, b)
        qpos, qvel = _rk4_next(m, d, stages)
        finite_diff.set_inputs(m, ref, x)
        mujoco.mj_step(m, ref)
        if rotational:
            scale = max(1.0, float(np.abs(ref.qvel).max()))
            np.testing.assert_allclose(qpos, ref.qpos, rtol=0, atol=1e-6)
            np.testing.assert_allclose(qvel, ref.qvel, rtol=0, atol=1e-6 * scale)
        else:
            np.testing.assert_array_equal(qpos, ref.qpos)
            np.testing.assert_array_equal(qvel, ref.qvel)
        finite_diff.set_inputs(m, ref, x)
        mujoco.mj_forward(diag._solve_model, ref)
        assert stages[0].solve == read(ref)
        active += sum(st.solve.active for st in stages)
    assert active > 0  # constraint rows were active at some stages: the solves read were real


def test_rk4_counts_the_solves_of_all_four_stages() -> None:
    """With RK4 a substep runs four solves, and all four are counted (as the autodiff backend's
    ``definitions.diagnostics`` does): Newton capped at one iteration on the legged robot
    truncates more solves per step than it has substeps, which reading one stage per substep
    could never count; each step's counts and largest residual are those of its
    ``4 x substeps`` stage solves, the MJX rule applied to each."""
    xml = _with_option(LEGGED, 'integrator="RK4" iterations="1"')
    model = mujoco.MjModel.from_xml_string(xml)
    arrays = _visited(mujoco.MjModel.from_xml_string(xml.replace('integrator="RK4"', 'integrator="Euler"')), LEGGED_SUBSTEPS, 30, seed=7)
    diag = native_solver.NativeSolverDiagnostics(model, LEGGED_SUBSTEPS, "as-run", threads=0)
    out = diag.batch(arrays)
    assert LEGGED_SUBSTEPS < out["solver_truncated"].max() <= 4 * LEGGED_SUBSTEPS
    m, d, scratch = diag.model, mujoco.MjData(diag.model), mujoco.MjData(diag.model)
    read = native_solver.SolveReader(m)
    for k in range(30):
        finite_diff.set_inputs(m, d, finite_diff.StepInputs.from_arrays(arrays, (k,)))
        solves = []
        for _ in range(LEGGED_SUBSTEPS):
            solves += [st.solve for st in native_solver.rk4_stages(m, d, scratch, read)]
            mujoco.mj_step(m, d)
        assert out["solver_truncated"][k] == sum(int(s.niter >= 1 and s.residual >= m.opt.tolerance) for s in solves)
        assert out["solver_start_returned"][k] == sum(int(s.niter == 0 and s.active) for s in solves)
        assert out["solver_residual"][k] == max(s.residual for s in solves)
    np.testing.assert_array_equal(out["next_state"], finite_diff.BatchedFD(model, LEGGED_SUBSTEPS, "as-run", threads=0).jacobians(arrays)[1])


def test_a_model_with_sleep_or_actuator_delays_is_refused_in_one_line(tmp_path, capsys) -> None:
    """With sleep on, a sleeping body's next state depends on MuJoCo's sleep timers (not in the
    state), and reused mjData carry them from one perturbed step to the next (measured: batched
    and one-at-a-time FD then disagree by up to 346): no native path measures such a model. The
    same for delayed actuators (their next state depends on past controls), and for the exact
    (MJX) path, which would simulate them without sleep and without the delays."""
    xml = ('<mujoco><option timestep="0.005"><flag sleep="enable"/></option><worldbody><geom type="plane" size="2 2 0.1"/>'
           '<body pos="0 0 0.1"><freejoint/><geom type="box" size="0.1 0.1 0.1"/></body></worldbody>'
           '<actuator><motor joint="0" ctrlrange="-1 1"/></actuator></mujoco>').replace('joint="0"', 'joint="j"').replace("<freejoint/>", '<freejoint name="j"/>')
    model = mujoco.MjModel.from_xml_string(xml)
    for definition in ("as-run", "converged"):
        with pytest.raises(errors.UserError, match="enables sleep"):
            native_solver.NativeSolverDiagnostics(model, 1, definition)
        with pytest.raises(errors.UserError, match="enables sleep"):
            finite_diff.FiniteDiffBackend(model, 1, definition=definition)
    delayed = mujoco.MjModel.from_xml_string(LEGGED.replace('<motor ctrlrange="-1 1" gear="5"/>',
                                                            '<motor ctrlrange="-1 1" gear="5" nsample="4" delay="0.004"/>'))
    with pytest.raises(errors.UserError, match="delays its actuators"):
        finite_diff.FiniteDiffBackend(delayed, 1)
    path = tmp_path / "sleepy.xml"
    path.write_text(xml)
    assert cli.main(["collect", f"mjcf:{path}", "--backend", "finite_diff", "--episodes", "1", "--steps", "4",
                     "--out", str(tmp_path / "s.zarr")]) != 0
    assert "enables sleep" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "s.zarr").exists()
    # MJX accepts both and simulates them without sleep and without the delays (a delayed motor's
    # hinge moves in MJX's first step, not in MuJoCo's): the exact path refuses them too
    delayed_xml = LEGGED.replace('<motor ctrlrange="-1 1" gear="5"/>', '<motor ctrlrange="-1 1" gear="5" nsample="4" delay="0.004"/>')
    for bad, match in ((xml, "enables sleep"), (delayed_xml, "delays its actuators")):
        with pytest.raises(errors.UserError, match=match):
            envs.from_mjcf(bad)
        with pytest.raises(errors.UserError, match=match):
            envs.from_mjcf(bad, native=True)
        path.write_text(bad)
        assert cli.main(["collect", f"mjcf:{path}", "--episodes", "1", "--steps", "4", "--out", str(tmp_path / "a.zarr")]) != 0
        assert match in one_error_line(capsys.readouterr().err)
        assert not (tmp_path / "a.zarr").exists()


def test_noslip_iterations_are_not_counted_as_the_solves() -> None:
    """MuJoCo adds noslip's iterations to ``solver_niter``; the diagnostics are the main solve's:
    at one substep per step they equal those of the same model without noslip from the same
    inputs (the main solve is the same; noslip only post-processes it)."""
    with_noslip = mujoco.MjModel.from_xml_string(_with_option(LEGGED, 'iterations="4" noslip_iterations="3"'))
    without = mujoco.MjModel.from_xml_string(_with_option(LEGGED, 'iterations="4"'))
    arrays = _visited(with_noslip, 1, 80, seed=6)
    a = native_solver.NativeSolverDiagnostics(with_noslip, 1, "as-run", threads=0).batch(arrays)
    b = native_solver.NativeSolverDiagnostics(without, 1, "as-run", threads=0).batch(arrays)
    for name in ("solver_truncated", "solver_start_returned", "solver_residual"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert a["solver_truncated"].sum() > 0  # the cap of 4 is reached at some steps: the check has teeth
    assert not np.array_equal(a["next_state"], b["next_state"])  # noslip did change the steps


def test_replay_stops_at_a_warning_as_the_rollout_does() -> None:
    """A state that diverges mid-step (a stiff spring from 1e6 m, gravity on): MuJoCo warns and
    resets; ``mujoco.rollout`` (BatchedFD) stops stepping at the warning, and so does the replay,
    so both end on the same (finite, reset) state."""
    xml = DIVERGING_SPRING.replace('gravity="0 0 0"', 'gravity="0 0 -9.81"').replace('axis="1 0 0"', 'axis="0 0 1"')
    model = mujoco.MjModel.from_xml_string(xml)
    arrays = {"qpos": np.array([[1e6]]), "qvel": np.zeros((1, 1)), "warmstart": np.zeros((1, 1)), "ctrl": np.zeros((1, 1)),
              "act": np.zeros((1, 0)), "mocap_pos": np.zeros((1, 0, 3)), "mocap_quat": np.zeros((1, 0, 4)), "time": np.zeros(1)}
    _, s_next = finite_diff.BatchedFD(model, 5, "as-run", threads=0).jacobians(arrays)
    out = native_solver.NativeSolverDiagnostics(model, 5, "as-run", threads=0).batch(arrays)
    np.testing.assert_array_equal(out["next_state"], s_next)
    assert np.abs(s_next).max() < 10  # the reset state, not 5 steps on from it


def test_more_islands_than_mujoco_records() -> None:
    """MuJoCo records iteration counts for 20 islands (mjNISLAND); 25 separate boxes make 25.
    Then a residual above the tolerance counts as truncated (the cap may have been hit where no
    count is kept), and no start point as returned."""
    boxes = "".join(f'<body pos="{0.3 * i} 0 0.1"><freejoint/><geom type="box" size="0.1 0.1 0.1"/></body>' for i in range(25))
    model = mujoco.MjModel.from_xml_string(f'<mujoco><option iterations="1" solver="CG"/><worldbody><geom type="plane" '
                                           f'size="10 10 0.1"/>{boxes}</worldbody></mujoco>')
    d = mujoco.MjData(model)
    for _ in range(40):
        mujoco.mj_step(model, d)
    assert d.nisland > len(d.solver_niter) == 20
    solve = native_solver.read_solve(model, d)
    assert solve.unrecorded
    arrays = {"qpos": d.qpos[None].copy(), "qvel": d.qvel[None].copy(), "warmstart": d.qacc_warmstart[None].copy(),
              "ctrl": np.zeros((1, 0)), "act": np.zeros((1, 0)), "mocap_pos": np.zeros((1, 0, 3)),
              "mocap_quat": np.zeros((1, 0, 4)), "time": np.zeros(1)}
    out = native_solver.NativeSolverDiagnostics(model, 1, "as-run", threads=0).batch(arrays)
    assert out["solver_residual"][0] >= model.opt.tolerance and out["solver_truncated"][0] == 1
    assert out["solver_start_returned"][0] == 0


@pytest.mark.parametrize("solver,iterations", [("Newton", 1), ("CG", 1), ("CG", 3), ("PGS", 3), ("Newton", 100),
                                               ('Newton" noslip_iterations="2', 1)])
def test_residual_is_the_primal_cost_gradient(solver: str, iterations: int) -> None:
    """The residual equals ``|M qacc - qfrc_smooth - J' f(qacc)| / trace(M)`` recomputed densely:
    on the legged robot (pyramidal contacts and joint limits) the primal force of a row is
    ``-efc_D jar`` where ``jar = J qacc - aref < 0`` and 0 elsewhere. For PGS this is not the
    solver's own force (which satisfies the equation of motion exactly), so a truncated PGS solve
    still shows a residual; nor after noslip iterations (which change the forces)."""
    model = mujoco.MjModel.from_xml_string(_with_option(LEGGED, f'solver="{solver}" iterations="{iterations}"'))
    arrays = _visited(model, LEGGED_SUBSTEPS, 30, seed=3)
    d = mujoco.MjData(model)
    ours, dense = [], []
    for k in range(30):
        finite_diff.set_inputs(model, d, finite_diff.StepInputs.from_arrays(arrays, (k,)))
        mujoco.mj_forward(model, d)
        if d.nefc == 0:
            continue
        assert set(np.unique(d.efc_type).tolist()) <= {int(mujoco.mjtConstraint.mjCNSTR_LIMIT_JOINT),
                                                       int(mujoco.mjtConstraint.mjCNSTR_CONTACT_PYRAMIDAL)}
        jac = d.efc_J.reshape(d.nefc, model.nv)
        jar = jac @ d.qacc - d.efc_aref
        force = np.where(jar < 0, -d.efc_D * jar, 0.0)
        full_m = np.zeros((model.nv, model.nv))
        mujoco.mj_fullM(model, d, full_m)
        dense.append(np.linalg.norm(full_m @ d.qacc - d.qfrc_smooth - jac.T @ force) / np.trace(full_m))
        ours.append(native_solver.read_solve(model, d).residual)
    assert len(ours) >= 20
    ours, dense = np.array(ours), np.array(dense)
    np.testing.assert_allclose(ours, dense, rtol=1e-8, atol=1e-13)
    if iterations < 100:
        assert dense.max() > 1e-3  # truncated solves: far from optimal, so the check has teeth
    else:
        assert dense.max() < 1e-10


def test_truncation_follows_the_iteration_cap_and_the_residual() -> None:
    """CG capped at 2 iterations truncates the resting box's solves (as-run); each count equals
    the rule applied to the substeps one by one. The converged definition (the model's solver
    with 100 iterations, tolerance 1e-14) solves with Newton, not CG, whose improvement test
    (cost change < 1e-14) would stop it with gradients up to ~5e-7: it lands at round-off, as the
    Newton model's own converged solves do."""
    model = mujoco.MjModel.from_xml_string(_with_option(RESTING_BOX, 'solver="CG" iterations="2"'))
    arrays = _visited(model, RESTING_BOX_SUBSTEPS, 30, seed=4)
    as_run = native_solver.NativeSolverDiagnostics(model, RESTING_BOX_SUBSTEPS, "as-run", threads=0)
    out = as_run.batch(arrays)
    assert out["solver_truncated"].sum() > 10
    # the same rule by hand, substep by substep
    m, d = as_run.model, mujoco.MjData(as_run.model)
    for k in range(30):
        finite_diff.set_inputs(m, d, finite_diff.StepInputs.from_arrays(arrays, (k,)))
        count, worst = 0, 0.0
        for _ in range(RESTING_BOX_SUBSTEPS):
            mujoco.mj_step(m, d)
            niter = int(d.solver_niter[:max(1, d.nisland)].max())
            solve = native_solver.read_solve(m, d)
            count += int(niter >= 2 and solve.residual >= m.opt.tolerance)
            worst = max(worst, solve.residual)
        assert out["solver_truncated"][k] == count and out["solver_residual"][k] == worst
    conv = native_solver.NativeSolverDiagnostics(model, RESTING_BOX_SUBSTEPS, "converged", threads=0).batch(arrays)
    assert conv["solver_truncated"].sum() == 0 and conv["solver_residual"].max() < 1e-10
    # CG itself at the converged settings: its improvement test stops it far above round-off
    # (what the converged definition solved before it switched CG models to Newton)
    cg = definitions.native_model(model, "converged")
    cg.opt.solver = mujoco.mjtSolver.mjSOL_CG
    residuals = []
    for k in range(30):
        d = mujoco.MjData(cg)
        finite_diff.set_inputs(cg, d, finite_diff.StepInputs.from_arrays(arrays, (k,)))
        for _ in range(RESTING_BOX_SUBSTEPS):
            mujoco.mj_step(cg, d)
            assert int(d.solver_niter[:max(1, d.nisland)].max()) < cg.opt.iterations  # stopped by its own test
            residuals.append(native_solver.read_solve(cg, d).residual)
    assert 1e-8 < max(residuals) < 1e-5
    newton = mujoco.MjModel.from_xml_string(RESTING_BOX)
    same = native_solver.NativeSolverDiagnostics(newton, RESTING_BOX_SUBSTEPS, "converged", threads=0).batch(arrays)
    assert same["solver_truncated"].sum() == 0 and same["solver_residual"].max() < 1e-10
    np.testing.assert_array_equal(conv["next_state"], same["next_state"])


def test_start_returned_when_the_warm_start_is_the_solution() -> None:
    """Replaying a step of the resting box with the solver's own answer as the warm start: the
    solver returns its start point (no iteration) with the contacts active, at the one substep.
    Without constraint rows nothing is counted and the residual is 0."""
    model = mujoco.MjModel.from_xml_string(RESTING_BOX)
    arrays = _visited(model, 1, 30, seed=3)
    d = mujoco.MjData(model)
    finite_diff.set_inputs(model, d, finite_diff.StepInputs.from_arrays(arrays, (29,)))
    mujoco.mj_forward(model, d)
    assert d.nefc > 0
    replay = {k: v[29:30].copy() for k, v in arrays.items()}
    cold = native_solver.NativeSolverDiagnostics(model, 1, "as-run", threads=0).batch(replay)
    replay["warmstart"][0] = d.qacc
    warm = native_solver.NativeSolverDiagnostics(model, 1, "as-run", threads=0).batch(replay)
    assert int(warm["solver_start_returned"][0]) == 1 and int(warm["solver_truncated"][0]) == 0
    assert int(cold["solver_start_returned"][0]) == 0
    free = mujoco.MjModel.from_xml_string(HINGE_CHAIN.replace('limited="true" range="-0.5 0.5"', ""))
    out = native_solver.NativeSolverDiagnostics(free, 1, "as-run", threads=0).batch(_visited(free, 1, 5, seed=0))
    assert out["solver_residual"].tolist() == [0.0] * 5 and out["solver_start_returned"].sum() == 0


def test_finite_diff_datasets_record_the_diagnostics(tmp_path) -> None:
    """A finite_diff collection stores the diagnostics (no more NaN / -1), the attrs say how
    they are defined, and ``structure`` reports them: CG capped at 2 iterations truncates the
    resting box's as-run solves."""
    path = tmp_path / "box.xml"
    path.write_text(_with_option(RESTING_BOX, 'solver="CG" iterations="2"'))
    out = tmp_path / "box.zarr"
    assert cli.main(["collect", f"mjcf:{path}", "--backend", "finite_diff", "--jacobian", "as-run", "--substeps",
                     str(RESTING_BOX_SUBSTEPS), "--episodes", "2", "--steps", "12", "--out", str(out)]) == 0
    ds = dataset.open_dataset(out)
    assert ds.attrs["solver_diagnostics"] == native_solver.DEFINITION_TEXT
    valid = ds["valid"].values
    assert valid.all()
    assert np.isfinite(ds["solver_residual"].values).all()
    assert (ds["solver_truncated"].values >= 0).all() and (ds["solver_start_returned"].values >= 0).all()
    summary = structure.solver_summary(ds)
    assert summary is not None and summary["steps"] == 24 and summary["steps_truncated"] > 0
    # the stored counts are the replay's, step by step (ctrl = the action clipped to ctrlrange)
    model = mujoco.MjModel.from_xml_path(str(path))
    n, nq = valid.size, model.nq
    state = ds["state"].values.reshape(n, -1).astype(np.float64)
    arrays = {"qpos": state[:, :nq], "qvel": state[:, nq:], "warmstart": ds["warmstart"].values.reshape(n, -1).astype(np.float64),
              "ctrl": np.clip(ds["action"].values.reshape(n, -1), -1, 1).astype(np.float64), "act": np.zeros((n, 0)),
              "mocap_pos": np.zeros((n, 0, 3)), "mocap_quat": np.zeros((n, 0, 4)), "time": np.zeros(n)}
    again = native_solver.NativeSolverDiagnostics(model, RESTING_BOX_SUBSTEPS, "as-run", threads=0).batch(arrays)
    np.testing.assert_array_equal(again["solver_truncated"], ds["solver_truncated"].values.ravel())
    np.testing.assert_array_equal(again["solver_residual"], ds["solver_residual"].values.ravel())


def test_a_pgs_or_cg_models_converged_definition_solves_with_newton() -> None:
    """PGS's improvement test stops it short of the optimum whatever its cap, so a PGS model's
    converged copy solves with Newton (to round-off: no truncation, residual ~1e-13), bit for bit
    the step of the same model with Newton at the converged settings; as-run keeps PGS, and the
    definition text says so for PGS models only."""
    pgs = mujoco.MjModel.from_xml_string(_with_option(LEGGED, 'solver="PGS"'))
    assert definitions.native_model(pgs, "converged").opt.solver == mujoco.mjtSolver.mjSOL_NEWTON
    assert definitions.native_model(pgs, "as-run").opt.solver == mujoco.mjtSolver.mjSOL_PGS
    arrays = _visited(pgs, LEGGED_SUBSTEPS, 25, seed=5)
    conv = native_solver.NativeSolverDiagnostics(pgs, LEGGED_SUBSTEPS, "converged", threads=0).batch(arrays)
    assert conv["solver_truncated"].sum() == 0 and conv["solver_residual"].max() < 1e-10
    newton = mujoco.MjModel.from_xml_string(LEGGED)
    same = native_solver.NativeSolverDiagnostics(newton, LEGGED_SUBSTEPS, "converged", threads=0).batch(arrays)
    np.testing.assert_array_equal(conv["next_state"], same["next_state"])
    as_run = native_solver.NativeSolverDiagnostics(pgs, LEGGED_SUBSTEPS, "as-run", threads=0).batch(arrays)
    assert np.median(as_run["solver_residual"]) > 1e-8  # PGS itself stops far from the optimum
    assert definitions.description("converged", pgs).endswith(definitions.NEWTON_CONVERGED["PGS"])
    cg = mujoco.MjModel.from_xml_string(_with_option(LEGGED, 'solver="CG"'))
    assert definitions.native_model(cg, "converged").opt.solver == mujoco.mjtSolver.mjSOL_NEWTON
    assert definitions.native_model(cg, "as-run").opt.solver == mujoco.mjtSolver.mjSOL_CG
    assert definitions.description("converged", cg).endswith(definitions.NEWTON_CONVERGED["CG"])
    assert definitions.description("converged", newton) == definitions.DESCRIPTIONS["converged"]
    assert definitions.description("as-run", pgs) == definitions.DESCRIPTIONS["as-run"]


def test_an_unfinished_run_of_another_definition_is_not_resumed(tmp_path, monkeypatch) -> None:
    """A store whose definition attrs differ from this version's (started by a dynsparse whose
    solver diagnostics were defined otherwise) is not resumed: one line naming the attr, and
    nothing in it changes. Finished, such a store is left as it is (nothing to compute)."""
    spec = envs.from_mjcf(RESTING_BOX, name="Box", n_substeps=RESTING_BOX_SUBSTEPS, init_noise=0.0)
    config = collect.CollectConfig(env="Box", episodes=1, steps=8, chunk_steps=4, backend="finite_diff", seed=1,
                                   policy={"name": "random"})

    with monkeypatch.context() as earlier:  # the earlier version
        earlier.setattr(native_solver, "DEFINITION_TEXT", "an earlier definition")
        interrupt_after_first_unit(config, tmp_path / "unfinished.zarr", spec)
        collect.collect(config, tmp_path / "finished.zarr", spec=spec)
    before = dataset.open_dataset(tmp_path / "unfinished.zarr").load()
    with pytest.raises(errors.UserError) as err:
        collect.collect(config, tmp_path / "unfinished.zarr", spec=spec)
    assert "whose solver_diagnostics differs" in str(err.value) and "\n" not in str(err.value)
    after = dataset.open_dataset(tmp_path / "unfinished.zarr").load()
    assert dataset.read_checkpoint(tmp_path / "unfinished.zarr").next_unit == 1
    for name in before.data_vars:
        np.testing.assert_array_equal(after[name].values, before[name].values, err_msg=name)
    assert collect.collect(config, tmp_path / "finished.zarr", spec=spec) == tmp_path / "finished.zarr"
    assert dataset.open_dataset(tmp_path / "finished.zarr").attrs["solver_diagnostics"] == "an earlier definition"


def test_a_changed_included_file_stops_a_resume(tmp_path) -> None:
    """The attrs record the compiled model's digest (MJB), which covers the files the main XML
    includes: an unfinished run whose included body file changed is not resumed (one line), though
    the main XML, the one file ``model_sha256`` covers, is the same."""
    (tmp_path / "body.xml").write_text('<mujoco><worldbody><body name="box" pos="0 0 0.1"><joint name="x" type="slide" '
                                       'axis="1 0 0"/><joint name="z" type="slide" axis="0 0 1"/><geom type="box" '
                                       'size="0.1 0.1 0.1" mass="1"/></body></worldbody></mujoco>')
    main = tmp_path / "main.xml"
    main.write_text('<mujoco><option timestep="0.005"/><worldbody><geom type="plane" size="2 2 0.1"/></worldbody>'
                    '<include file="body.xml"/><actuator><motor joint="x" ctrlrange="-1 1"/></actuator></mujoco>')
    env = f"mjcf:{main}"
    config = collect.CollectConfig(env=env, episodes=1, steps=8, chunk_steps=4, backend="finite_diff", seed=1,
                                   policy={"name": "random"})

    out = tmp_path / "run.zarr"
    interrupt_after_first_unit(config, out)
    attrs = dataset.open_dataset(out).attrs
    assert attrs["model_compiled_sha256"] == envs.model_digest(envs.load(env).mj_model)
    (tmp_path / "body.xml").write_text((tmp_path / "body.xml").read_text().replace('mass="1"', 'mass="2"'))
    envs._load.cache_clear()  # a new process would load the file again
    try:
        with pytest.raises(errors.UserError) as err:
            collect.collect(config, out)
        assert "the compiled model differs" in str(err.value) and "\n" not in str(err.value)
        assert dataset.read_checkpoint(out).next_unit == 1
        assert dataset.open_dataset(out).attrs["model_sha256"] == attrs["model_sha256"]  # the main XML is the same
    finally:
        envs._load.cache_clear()
