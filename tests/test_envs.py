"""Environment registry, names, and refusals."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from dynsparse import envs, errors


def test_all_25_dm_control_envs_are_listed():
    names = envs.dm_control_names()
    assert len(names) == 25 and "CheetahRun" in names and "SwimmerSwimmer6" in names


def test_cheetah_spec(tmp_path):
    spec = envs.load("CheetahRun")
    assert spec.state_names[:3] == ("qpos:rootx", "qpos:rootz", "qpos:rooty")
    assert spec.state_names[9] == "qvel:rootx" and len(spec.state_names) == 18
    assert spec.action_names == ("act:bthigh", "act:bshin", "act:bfoot", "act:fthigh", "act:fshin", "act:ffoot")
    assert spec.n_substeps == 1 and spec.dt == pytest.approx(0.01)
    assert (spec.action_low == -1).all() and (spec.action_high == 1).all()
    assert spec.mjx_model.opt.timestep.dtype.name == "float64"


def test_walker_substeps():
    spec = envs.load("WalkerRun")
    assert spec.n_substeps == 10 and spec.dt == pytest.approx(0.025) and spec.sim_dt == pytest.approx(0.0025)


def test_free_joint_names():
    xml = """<mujoco><worldbody><body><freejoint name="root"/><geom size=".1"/>
             <body><joint name="ball" type="ball"/><geom size=".1"/></body></body></worldbody></mujoco>"""
    model = mujoco.MjModel.from_xml_string(xml)
    raw = envs.qstate_names(model)
    assert raw[:7] == tuple(f"qpos:root:{a}" for a in ("x", "y", "z", "qw", "qx", "qy", "qz"))
    assert raw[7:11] == tuple(f"qpos:ball:{a}" for a in ("qw", "qx", "qy", "qz"))
    assert raw[11:17] == tuple(f"qvel:root:{a}" for a in ("x", "y", "z", "rx", "ry", "rz"))
    assert raw[17:] == ("qvel:ball:rx", "qvel:ball:ry", "qvel:ball:rz")
    state, action = envs.variable_names(model)  # the tangent space: 2 nv
    assert state[:6] == tuple(f"qpos:root:{a}" for a in ("x", "y", "z", "rx", "ry", "rz"))
    assert state[6:9] == ("qpos:ball:rx", "qpos:ball:ry", "qpos:ball:rz")
    assert state[9:] == raw[11:] and action == ()


def test_humanoid_state_is_the_tangent_space():
    spec = envs.load("HumanoidRun")
    assert (spec.nq, spec.nv, spec.state_size, spec.qstate_size) == (28, 27, 54, 55)
    assert spec.state_names[:6] == tuple(f"qpos:root:{a}" for a in ("x", "y", "z", "rx", "ry", "rz"))
    assert spec.qstate_names[3] == "qpos:root:qw" and len(spec.qstate_names) == 55


def test_locomotion_without_assets_fails_fast_without_network(monkeypatch, tmp_path):
    from mujoco_playground._src import mjx_env

    monkeypatch.setattr(mjx_env, "MENAGERIE_PATH", tmp_path / "missing" / "mujoco_menagerie")
    with pytest.raises(errors.UserError, match="needs the mujoco_menagerie robot assets, which are missing"):
        envs.check_name("Go1JoystickFlatTerrain")


def test_unknown_names():
    with pytest.raises(errors.UserError, match="did you mean CartpoleBalance"):
        envs.check_name("CartpoleBalanc")
    with pytest.raises(errors.UserError, match="unknown dtype 'float16'"):
        envs.load("CartpoleBalance", "float16")
    with pytest.raises(errors.UserError, match="'float32' is not supported yet"):
        envs.load("CartpoleBalance", "float32")


def test_contact_pairs_cover_every_contact_slot_mjx_makes():
    import jax

    from dynsparse import envs

    spec = envs.load("CheetahRun")
    names, table = envs.contact_pairs(spec)
    state = jax.jit(spec.env.reset)(jax.random.PRNGKey(0))
    geoms = np.asarray(state.data._impl.contact.geom)
    assert geoms.shape[0] == 6
    idx = table[geoms[:, 0], geoms[:, 1]]
    assert (idx >= 0).all()
    geom_name = lambda g: mujoco.mj_id2name(spec.mj_model, mujoco.mjtObj.mjOBJ_GEOM, int(g))  # noqa: E731
    assert [names[i] for i in idx] == [f"{geom_name(a)}|{geom_name(b)}" for a, b in geoms]
    assert names[idx[1]] == "ground|bfoot"
    active = np.asarray(envs.active_contact_pairs(state.data, table, len(names)))
    assert active.sum() <= int(envs.count_contacts(state.data)) and active.shape == (len(names),)


def test_envs_command_lists_every_task_with_its_tangent_state_size(capsys):
    from dynsparse import cli

    assert cli.main(["envs"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:26]}
    assert len(lines) == 25
    assert lines["HumanoidRun"].split()[1:5] == ["28", "27", "54", "21"] and "tangent space" in lines["HumanoidRun"]
    assert lines["CheetahRun"].split()[1:5] == ["9", "9", "18", "6"] and "tangent" not in lines["CheetahRun"]


def test_an_edited_mjcf_file_is_loaded_again_in_the_same_process(tmp_path):
    """``envs.load`` caches one spec per compiled model: the same file gives the same spec (its
    compiled functions are reused), an edited one, or an edited included file, a new spec."""
    part = tmp_path / "act.xml"
    part.write_text('<mujoco><actuator><motor joint="x" ctrlrange="-1 1"/></actuator></mujoco>')
    xml = tmp_path / "m.xml"
    xml.write_text('<mujoco><worldbody><body><joint name="x" type="slide"/><geom type="box" size=".1 .1 .1"/></body>'
                   '</worldbody><include file="act.xml"/></mujoco>')
    first = envs.load(f"mjcf:{xml}")
    assert envs.load(f"mjcf:{xml}") is first
    part.write_text('<mujoco><actuator><motor joint="x" ctrlrange="-2 2"/></actuator></mujoco>')
    second = envs.load(f"mjcf:{xml}")
    assert second is not first and float(second.action_high[0]) == 2.0 and float(first.action_high[0]) == 1.0
