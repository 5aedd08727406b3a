"""The CLI end to end on a small run: collect, structure (table and JSON), validate, plain xarray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from dynsparse import cli


def test_collect_structure_validate(tmp_path, capsys):
    out = tmp_path / "run.zarr"
    args = ["collect", "CartpoleBalance", "--episodes", "2", "--steps", "20", "--policy", "random", "--seed", "1",
            "--check-every", "4", "--chunk-steps", "20", "--out", str(out)]
    assert cli.main(args) == 0
    assert "wrote" in capsys.readouterr().out

    ds = xr.open_zarr(out)  # plain xarray, no dynsparse
    assert dict(ds.sizes) == {"episode": 2, "step": 20, "out": 4, "state_in": 4, "action_in": 1, "dof": 2, "contact_pair": 0}
    assert list(ds["state_in"].values) == ["qpos:slider", "qpos:hinge_1", "qvel:slider", "qvel:hinge_1"]
    assert ds.attrs["env"] == "CartpoleBalance" and ds.attrs["backend"] == "autodiff"
    assert ds.attrs["dtype"] == "float64" and ds.attrs["n_substeps"] == 1
    assert ds.attrs["jacobian_method"].startswith("forward-mode autodiff (jax.jacfwd) through MJX per physics substep")
    assert json.loads(ds.attrs["policy"]) == {"name": "random"}
    assert json.loads(ds.attrs["versions"])["mujoco"]
    assert json.loads(ds.attrs["config"])["check_every"] == 4
    assert bool(ds["valid"].all()) and bool(ds["finite"].all())
    # s' of step t is s of step t+1: the stored trajectory is one consistent rollout
    np.testing.assert_array_equal(ds["next_state"].values[:, :-1], ds["state"].values[:, 1:])
    checked = ds["check_class"].values >= 0
    assert checked.sum() == 10 and (checked[:, ::4]).all()
    assert ds.attrs["jacobian"] == "converged" and "certified" in ds.attrs["check_definition"]

    assert cli.main(["structure", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["env"] == "CartpoleBalance"
    assert set(result["J_s"]) == {"zeros", "total", "percent", "entries"} and result["J_s"]["total"] == 16
    # The cart's position influences nothing but itself (translation invariance).
    assert {"qpos:hinge_1 <- qpos:slider", "qvel:slider <- qpos:slider", "qvel:hinge_1 <- qpos:slider"} <= set(result["J_s"]["entries"])
    assert result["check"]["checked_steps"] == 10 and result["check"]["classes"]["certified"] == 10
    assert result["jacobian"] == "converged" and result["solver"]["steps"] == 40

    assert cli.main(["structure", str(out), "--threshold", "1e-3", "--relative"]) == 0
    table = capsys.readouterr().out
    assert "threshold: relative 0.001" in table and "J_s" in table
    assert cli.main(["structure", str(out), "--json", "--frequency"]) == 0
    freq = json.loads(capsys.readouterr().out)["zero_frequency"]
    assert freq["J_s"]["in"][0] == "qpos:slider" and len(freq["J_s"]["percent"]) == 4
    assert freq["J_s"]["percent"][1][0] == 100.0  # qpos:hinge_1 <- qpos:slider: always zero
    assert cli.main(["structure", str(out), "--frequency"]) == 0
    assert "J_a zero frequency" in capsys.readouterr().out
    assert cli.main(["validate", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")
    # same command again: already complete, nothing recomputed
    assert cli.main(args) == 0


@pytest.mark.slow  # ~100 s cold (a subprocess compiles for two devices)
def test_collect_splits_episodes_over_two_cpu_devices(tmp_path):
    """The CLI asks for one CPU device per core; a batch split over two devices gives the same
    dataset as one device up to round-off: identical zero decisions, Jacobians within 1e-6."""
    import os
    import subprocess
    import sys

    from dynsparse import collect
    from dynsparse.jacobians import compare

    args = dict(env="CartpoleBalance", episodes=4, steps=30, policy={"name": "random"}, seed=2, batch_size=4, chunk_steps=15)
    one = tmp_path / "one.zarr"
    collect.collect(collect.CollectConfig(**args), one)  # this process: one device
    two = tmp_path / "two.zarr"
    cli_args = ["collect", "CartpoleBalance", "--episodes", "4", "--steps", "30", "--policy", "random", "--seed", "2",
                "--batch-size", "4", "--chunk-steps", "15", "--out", str(two)]
    proc = subprocess.run([sys.executable, "-m", "dynsparse", *cli_args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, DYNSPARSE_CPU_DEVICES="2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = xr.open_zarr(one), xr.open_zarr(two)
    assert a.attrs["devices"] == 1 and b.attrs["devices"] == 2
    np.testing.assert_allclose(b["state"].values, a["state"].values, rtol=0, atol=1e-9)
    jac = lambda ds: np.concatenate([ds["J_s"].values, ds["J_a"].values], axis=-1)  # noqa: E731
    assert compare.method_agreement(jac(a), jac(b)).passes()
