"""Exact global-zero counts on hand-built models, through the whole pipeline, both backends."""

from __future__ import annotations

import numpy as np
import pytest

from dynsparse import collect, dataset, envs
from dynsparse.metrics import structure

from models import CART_POLE_CHAIN, FREE_SLIDER, SLIDER_DT, SLIDER_MASS, TWO_PENDULUMS

BACKENDS = ("autodiff", "finite_diff")
#: Zero threshold per backend: autodiff gives exact zeros; centred finite differences (eps 1e-6)
#: carry round-off of ~1e-10 where a perturbation changes float rounding but not the dynamics
#: (e.g. shifting the cart's x), so they are judged at their resolution.
THRESHOLD = {"autodiff": 1e-12, "finite_diff": 1e-8}


def _run(tmp_path, xml, name, backend, n_substeps=1, steps=12):
    spec = envs.from_mjcf(xml, name=name, n_substeps=n_substeps, init_noise=0.5)
    config = collect.CollectConfig(env=name, episodes=2, steps=steps, policy={"name": "random"}, seed=3,
                                   backend=backend, chunk_steps=6)
    out = collect.collect(config, tmp_path / f"{name}-{backend}.zarr", spec=spec)
    return dataset.open_dataset(out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_uncoupled_pendulums_are_block_diagonal(tmp_path, backend):
    ds = _run(tmp_path, TWO_PENDULUMS, "two_pendulums", backend)
    result = structure.global_structure(ds, THRESHOLD[backend])
    assert result["steps"]["counted"] == 24
    # J_s is 4x4 with two 2x2 blocks: the 8 cross-pendulum entries are zero, nothing else.
    assert result["J_s"]["zeros"] == 8 and result["J_s"]["total"] == 16
    cross = {f"{o}:{a} <- {i}:{b}" for o in ("qpos", "qvel") for i in ("qpos", "qvel") for a, b in (("h1", "h2"), ("h2", "h1"))}
    assert set(result["J_s"]["entries"]) == cross
    # J_a is 4x2: each motor moves only its own pendulum.
    assert result["J_a"]["zeros"] == 4
    assert set(result["J_a"]["entries"]) == {f"{o}:{a} <- act:{m}" for o in ("qpos", "qvel") for a, m in (("h1", "m2"), ("h2", "m1"))}


@pytest.mark.parametrize("backend", BACKENDS)
def test_free_slider_exact_values(tmp_path, backend):
    n = 3
    ds = _run(tmp_path, FREE_SLIDER, "free_slider", backend, n_substeps=n)
    h, m = SLIDER_DT, SLIDER_MASS
    j_s = ds["J_s"].values.reshape(-1, 2, 2)
    j_a = ds["J_a"].values.reshape(-1, 2, 1)
    tol = 1e-12 if backend == "autodiff" else 1e-8
    np.testing.assert_allclose(j_s, np.broadcast_to([[1.0, n * h], [0.0, 1.0]], j_s.shape), rtol=0, atol=tol)
    np.testing.assert_allclose(j_a[:, :, 0], np.broadcast_to([h * h / m * n * (n + 1) / 2, n * h / m], j_a.shape[:2]), rtol=0, atol=tol)
    result = structure.global_structure(ds, THRESHOLD[backend])
    assert result["J_s"]["entries"] == ["qvel:x <- qpos:x"]
    assert result["J_a"]["zeros"] == 0
    # the table warns about finite differences' resolution at a threshold below it
    assert ("undercount zeros" in structure.format_table(structure.global_structure(ds))) == (backend == "finite_diff")


@pytest.mark.parametrize("backend", BACKENDS)
def test_planar_chain_root_x_influences_nothing(tmp_path, backend):
    ds = _run(tmp_path, CART_POLE_CHAIN, "cart_pole_chain", backend)
    result = structure.global_structure(ds, THRESHOLD[backend])
    expected = {
        "qpos:hinge <- qpos:rootx", "qvel:rootx <- qpos:rootx", "qvel:hinge <- qpos:rootx",
        "qpos:hinge <- qvel:rootx", "qvel:hinge <- qvel:rootx",
    }
    assert set(result["J_s"]["entries"]) == expected
    assert result["J_s"]["zeros"] == 5
    assert result["J_a"]["zeros"] == 0


def test_diverging_simulation_is_flagged_not_dropped(tmp_path):
    from models import DIVERGING_SPRING

    ds = _run(tmp_path, DIVERGING_SPRING, "diverging_spring", "autodiff", steps=120).load()
    valid, finite = ds["valid"].values, ds["finite"].values
    # every episode diverges: some steps exist with non-finite Jacobians, then the episode ends
    assert (valid[:, 0]).all() and not valid[:, -1].any()
    assert ((valid & ~finite).sum(axis=1) >= 1).all()
    result = structure.global_structure(ds)
    assert result["steps"]["nonfinite"] == int((valid & ~finite).sum()) > 0
    assert result["steps"]["counted"] == int(finite.sum())
    assert dataset.validate(tmp_path / "diverging_spring-autodiff.zarr") == ([], [])
