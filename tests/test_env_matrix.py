"""Every DM-Control environment of MuJoCo Playground through ``collect`` and ``analyze`` (short
rollouts, autodiff cross-checked by native finite differences).

Opt-in (``pytest -m matrix``, ~25-40 min on 2 CPU cores: one JIT compile per environment); the
free-joint FishSwim check also runs with ``-m slow``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dynsparse import analysis, collect, dataset, envs, results
from dynsparse.metrics import structure

ENVS = envs.dm_control_names()

_collected: dict[str, Path] = {}


def _collect(env: str, root: Path) -> Path:
    if env not in _collected:
        config = collect.CollectConfig(env=env, episodes=1, steps=6, policy={"name": "random"}, seed=0,
                                       check_every=2, batch_size=1, chunk_steps=6)
        _collected[env] = collect.collect(config, root / f"{env}.zarr")
    return _collected[env]


@pytest.fixture(scope="module")
def matrix_root(tmp_path_factory):
    return tmp_path_factory.mktemp("matrix")


def test_the_matrix_is_the_25_dm_control_tasks():
    assert len(ENVS) == 25 and {"HumanoidRun", "FishSwim", "CartpoleBalance", "FingerSpin"} <= set(ENVS)


@pytest.mark.matrix
@pytest.mark.parametrize("env", ENVS)
def test_collect_and_analyze(env, matrix_root):
    path = _collect(env, matrix_root)
    spec = envs.load(env)
    problems, _ = dataset.validate(path)
    assert problems == []
    ds = dataset.open_dataset(path)
    assert ds.sizes["state_in"] == ds.sizes["out"] == 2 * spec.nv and ds.sizes["action_in"] == spec.nu
    assert ("qstate" in ds.dims) == (spec.nq != spec.nv)
    assert bool(np.asarray(ds["finite"].values).all())
    assert structure.check_summary(ds)["checked_steps"] == 3
    out = analysis.analyze(path, matrix_root / f"{env}-analysis", analysis.AnalyzeOptions(tsne=False, shuffles=20))
    row = results.table_row(results.read_analysis(out))
    assert row["env"] == env and row["counted_steps"] == 6 and row["state_dim"] == 2 * spec.nv


@pytest.mark.matrix
@pytest.mark.parametrize("env", ENVS)
def test_every_checked_step_is_certified_or_classified(env, matrix_root):
    """No checked step is ``wrong``: the stored (converged) Jacobian agrees with MJX finite
    differences of the same function at some eps, or finite differences do not settle there (a
    switch within eps), or native MuJoCo simulates another step there (``jacobians.certify``)."""
    ds = dataset.open_dataset(_collect(env, matrix_root))
    summary = structure.check_summary(ds)
    assert summary["classes"]["wrong"] == 0, summary
    assert summary["classes"]["certified"] >= 1, summary


def _native_fd_at_stored_steps(ds, spec, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``(autodiff, native FD)`` ``[J_s | J_a]`` of every valid stored step (converged definition),
    FD at ``eps``."""
    from dynsparse.jacobians import finite_diff

    m = spec.mj_model
    fd = finite_diff.FiniteDiffBackend(m, spec.n_substeps, eps, "converged")
    assert ds.attrs["jacobian"] == "converged"
    state, warm, action = (np.asarray(ds[k].values) for k in ("state", "warmstart", "action"))
    ad_all, fd_all = [], []
    for e, t in zip(*np.nonzero(np.asarray(ds["valid"].values))):
        x = finite_diff.StepInputs(
            state[e, t, :m.nq], state[e, t, m.nq:], warm[e, t], action[e, t], np.zeros(m.na),
            m.body_pos[m.body_mocapid >= 0].copy(), m.body_quat[m.body_mocapid >= 0].copy(), 0.0,
        )
        j_s, j_a = fd(x)
        fd_all.append(np.concatenate([j_s, j_a], axis=1))
        ad_all.append(np.concatenate([ds["J_s"].values[e, t], ds["J_a"].values[e, t]], axis=1))
    return np.stack(ad_all), np.stack(fd_all)


@pytest.mark.parametrize("env, eps, tol", [
    # FishSwim's fluid forces leave FD an O(eps) error (measured: 5e-5, 5e-6, 5e-7 at eps 1e-5, 1e-6, 1e-7)
    pytest.param("FishSwim", 1e-7, 2e-6, marks=pytest.mark.long),
    # HumanoidRun: FD's O(eps^2) truncation on entries up to ~400 (max |diff| 6.8e-3, 6.8e-5 at eps
    # 1e-4, 1e-5) meets round-off at 1e-6 (1.3e-6 relative to max(1, |J|))
    pytest.param("HumanoidRun", 1e-6, 5e-6, marks=pytest.mark.matrix),
])
def test_free_joint_envs_match_native_fd_in_tangent_space(env, eps, tol, matrix_root):
    spec = envs.load(env)
    assert spec.nq == spec.nv + 1  # one free joint
    ds = dataset.open_dataset(_collect(env, matrix_root))
    ad, fd = _native_fd_at_stored_steps(ds, spec, eps)
    assert ad.shape == (6, 2 * spec.nv, 2 * spec.nv + spec.nu)
    assert float((np.abs(ad - fd) / np.maximum(1.0, np.abs(ad))).max()) < tol
    # the same zero structure: entries autodiff calls exactly zero are below FD's noise
    zero_ad, zero_fd = ad == 0, np.abs(fd) < tol
    assert not (zero_ad & ~zero_fd).any() and int(zero_ad.sum()) > 0
