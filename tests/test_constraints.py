"""Constraints never active in the data, and the global zeros they may hide (hand-built cases)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dynsparse import cli, dataset
from dynsparse.metrics import constraints, structure

#: a block on a limited x rail, 1 m above a floor plane, no gravity: the floor is never touched;
#: the rail limit is RANGE from the origin (initial x is U(-0.1, 0.1)).
RAIL = """
<mujoco model="rail">
  <option timestep="0.01" gravity="0 0 0"/>
  <worldbody>
    <geom name="floor" type="plane" size="5 5 0.1"/>
    <body name="block" pos="0 0 1">
      <joint name="x" type="slide" axis="1 0 0" limited="true" range="-RANGE RANGE"/>
      <geom name="box" type="box" size="0.1 0.1 0.1" mass="1"/>
    </body>
  </worldbody>
  <actuator><motor name="push" joint="x" ctrlrange="-1 1"/></actuator>
</mujoco>
"""


def _collect(tmp_path, name: str, half_range: float) -> tuple:
    xml = tmp_path / f"{name}.xml"
    xml.write_text(RAIL.replace("RANGE", str(half_range)))
    out = tmp_path / f"{name}.zarr"
    assert cli.main(["collect", f"mjcf:{xml}", "--episodes", "1", "--steps", "5", "--out", str(out)]) == 0
    return out, dataset.open_dataset(out)


def test_unreached_limit_flags_its_zero_and_a_reached_one_does_not(tmp_path, capsys):
    """Far limit (5 m): never active; ``qvel:x <- qpos:x`` is zero at every step (no force depends
    on x) and is flagged; the floor pair is never in contact and touches ``qvel:x`` but not
    ``qpos:x`` (sliding along x does not change the distance to the plane). Near limit (1 mm,
    initial x beyond it): active, not listed, and the limit's stiffness makes that entry non-zero."""
    out, ds = _collect(tmp_path, "far", 5.0)
    q1 = structure.global_structure(ds)
    assert q1["J_s"]["entries"] == ["qvel:x <- qpos:x"]
    inactive = q1["inactive"]
    assert inactive["note"] == "" and inactive["steps"] == 5
    by_name = {c["name"]: c for c in inactive["constraints"]}
    assert set(by_name) == {"x", "floor|box"}
    assert by_name["x"]["kind"] == "joint limit" and by_name["x"]["touches"] == ["qpos:x", "qvel:x"]
    assert by_name["x"]["zeros"] == ["qvel:x <- qpos:x"] and 4.8 < by_name["x"]["closest"] < 5.0
    assert by_name["floor|box"]["touches"] == ["qvel:x"] and by_name["floor|box"]["zeros"] == []
    assert inactive["zeros_at_risk"] == 1
    capsys.readouterr()
    assert cli.main(["structure", str(out)]) == 0
    text = capsys.readouterr().out
    assert "constraints never active in the 5 counted steps: 2 (1 touch global zeros; 1 zeros may be unvisited)" in text
    assert "  x joint limit never active: 1 zeros in column(s) qpos:x may be unvisited" in text
    assert cli.main(["structure", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inactive"]["zeros_at_risk"] == 1

    from dynsparse import analysis

    folder = analysis.analyze(out, tmp_path / "far-analysis", analysis.AnalyzeOptions(tsne=False, shuffles=5))
    page = (folder / "index.html").read_text()
    assert "1 global zero(s) may only mean that the data never activated a constraint" in page
    assert "x joint limit never active in 5 steps: 1 zeros in column(s) qpos:x may be unvisited" in page
    assert "qvel:x &lt;- qpos:x <em>(may be unvisited: x joint limit never active)</em>" in page
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["global"]["inactive"]["zeros_at_risk"] == 1

    _, near = _collect(tmp_path, "near", 0.001)
    q1 = structure.global_structure(near)
    assert "qvel:x <- qpos:x" not in q1["J_s"]["entries"]
    assert [c["name"] for c in q1["inactive"]["constraints"]] == ["floor|box"]
    assert q1["inactive"]["zeros_at_risk"] == 0


def test_model_that_cannot_be_rebuilt_gives_a_note_and_still_lists_contact_pairs(bouncer_store):
    """A dataset collected from an in-memory spec (name 'Bouncer'): limits cannot be checked,
    said in a note; never-active contact pairs are still listed (without touched variables)."""
    ds = dataset.open_dataset(bouncer_store)
    q1 = structure.global_structure(ds)
    inactive = q1["inactive"]
    assert "could not be rebuilt" in inactive["note"] and "joint and tendon limits not checked" in inactive["note"]
    active = dataset.load(ds, ("contact_pairs",))["contact_pairs"].values.any(axis=(0, 1))
    never = [str(n) for n, a in zip(ds["contact_pair"].values, active) if not a]
    assert [c["name"] for c in inactive["constraints"]] == never
    assert all(c["touches"] == [] for c in inactive["constraints"])
    lines = constraints.format_lines(inactive)
    assert lines[0].startswith("note: ")


@pytest.mark.parametrize("quat, half_range, listed", [
    ([1.0, 0.0, 0.0, 0.0], 0.5, True),                        # at rest: angle 0, limit 0.5 rad away
    ([np.cos(0.3), np.sin(0.3), 0.0, 0.0], 0.5, False),        # angle 0.6 rad > 0.5: active
])
def test_ball_joint_limit_uses_the_rotation_angle(quat, half_range, listed):
    import mujoco

    xml = f"""<mujoco><compiler angle="radian"/><worldbody><body><joint name="b" type="ball" limited="true" range="0 {half_range}"/>
      <geom type="capsule" fromto="0 0 0 0 0 -0.5" size="0.05"/></body></worldbody></mujoco>"""
    model = mujoco.MjModel.from_xml_string(xml)
    qpos = np.asarray([quat], float)
    names = [f"qpos:b:{a}" for a in ("rx", "ry", "rz")] + [f"qvel:b:{a}" for a in ("rx", "ry", "rz")]
    found = constraints._joint_limits(model, qpos, names)  # pylint: disable=protected-access
    assert bool(found) == listed
    if listed:
        assert found[0]["touches"] == names and found[0]["closest"] == pytest.approx(half_range)


def test_a_changed_included_file_stops_the_limit_check(tmp_path):
    """The rebuilt model must be the collected one, included files too (the compiled model's
    digest): with the rail's actuator moved into an included file that changes after collection
    (the main XML unchanged), limits are not checked and the note says why; unchanged, they are."""
    part = tmp_path / "actuator.xml"
    part.write_text('<mujoco><actuator><motor name="push" joint="x" ctrlrange="-1 1"/></actuator></mujoco>')
    xml = tmp_path / "rail.xml"
    main = RAIL.replace("RANGE", "5.0").replace('<actuator><motor name="push" joint="x" ctrlrange="-1 1"/></actuator>',
                                              '<include file="actuator.xml"/>')
    assert "include" in main
    xml.write_text(main)
    out = tmp_path / "rail.zarr"
    assert cli.main(["collect", f"mjcf:{xml}", "--episodes", "1", "--steps", "5", "--out", str(out)]) == 0
    ds = dataset.open_dataset(out)
    model, note = constraints.model_of(ds)
    assert model is not None and note == ""
    assert "x" in [c["name"] for c in structure.global_structure(ds)["inactive"]["constraints"]]
    part.write_text('<mujoco><actuator><motor name="push" joint="x" ctrlrange="-2 2"/></actuator></mujoco>')
    model, note = constraints.model_of(ds)
    assert model is None and "changed since collection" in note
    inactive = structure.global_structure(ds)["inactive"]
    assert "changed since collection" in inactive["note"] and "x" not in [c["name"] for c in inactive["constraints"]]
