"""Q1 metrics on hand-made arrays with answers computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from dynsparse import errors
from dynsparse.jacobians import compare
from dynsparse.metrics import sparsity, structure


def test_zero_mask_absolute_keeps_exact_zeros_and_threshold():
    j = np.array([[0.0, 1e-13, -1e-12, 2.0], [np.nan, -0.0, 5e-13, 1e-11]])
    m = sparsity.zero_mask(j)
    assert m.tolist() == [[True, True, False, False], [False, True, True, False]]


def test_zero_mask_relative_scales_by_row_norm():
    j = np.array([[3.0, 4.0, 1e-4], [0.0, 0.0, 0.0], [1e-9, 0.0, 1e-9]])
    # row norms 5, 0, ~1.41e-9
    m = sparsity.zero_mask(j, 1e-4, "relative")
    assert m.tolist() == [[False, False, True], [True, True, True], [False, True, False]]


@pytest.mark.parametrize("bad", [0, -1e-9, float("nan"), float("inf"), "x"])
def test_threshold_must_be_positive_finite(bad):
    with pytest.raises(errors.UserError, match="threshold"):
        sparsity.zero_mask(np.zeros((1, 1)), bad)


#: the per-step check/solver variables of the store's schema, unchecked (name, dtype, fill)
SCALAR_FILLS = (
    ("solver_residual", np.float64, 0.0), ("solver_truncated", np.int16, 0), ("solver_start_returned", np.int16, 0),
    ("check_class", np.int8, -1), ("check_err", np.float64, np.nan), ("check_eps", np.float64, np.nan),
    ("check_fd_spread", np.float64, np.nan), ("check_pattern_mismatch", np.int32, -1),
    ("check_native_state_err", np.float64, np.nan), ("check_native_err", np.float64, np.nan),
    ("definition_rel_diff", np.float64, np.nan), ("definition_pattern_diff", np.int32, -1),
    ("definition_state_diff", np.float64, np.nan),
)


def _dataset(js, ja, valid, finite=None):
    """A dataset in the store's schema (2 state vars, 1 action) from explicit arrays."""
    e, t = valid.shape
    finite = valid.copy() if finite is None else finite
    names = ["qpos:a", "qvel:a"]
    ds = xr.Dataset(
        {
            "J_s": (("episode", "step", "out", "state_in"), js), "J_a": (("episode", "step", "out", "action_in"), ja),
            "valid": (("episode", "step"), valid), "finite": (("episode", "step"), finite),
            **{name: (("episode", "step"), np.full((e, t), fill, dtype)) for name, dtype, fill in SCALAR_FILLS},
        },
        coords={"out": names, "state_in": names, "action_in": ["act:u"]},
        attrs={"env": "hand", "backend": "autodiff", "policy": json.dumps({"name": "random"}), "seed": 0},
    )
    return ds.chunk({"episode": 1})


def test_global_structure_by_hand():
    # 2 episodes x 3 steps; the last step of episode 1 does not exist (valid false) and holds
    # garbage that must not count; one valid step has a NaN Jacobian and is excluded.
    js = np.zeros((2, 3, 2, 2))
    js[..., 0, 0] = 1.0           # never zero
    js[0, 0, 1, 0] = 2.0          # entry (1,0) non-zero once -> not a global zero
    js[1, 2] = 7.0                # invalid step: ignored
    ja = np.zeros((2, 3, 2, 1))
    ja[..., 1, 0] = 0.5           # row 1 depends on the action, row 0 never does
    ja[1, 1, 0, 0] = np.nan       # non-finite step
    valid = np.array([[True, True, True], [True, True, False]])
    finite = valid & ~np.array([[False, False, False], [False, True, False]])
    ds = _dataset(js, ja, valid, finite)
    r = structure.global_structure(ds)
    assert r["steps"] == {"counted": 4, "valid": 5, "nonfinite": 1, "expected": 6, "episodes": 2}
    assert r["J_s"]["zeros"] == 2 and r["J_s"]["total"] == 4 and r["J_s"]["percent"] == 50.0
    assert r["J_s"]["entries"] == ["qpos:a <- qvel:a", "qvel:a <- qvel:a"]
    assert r["J_a"]["entries"] == ["qpos:a <- act:u"]
    freq = structure.zero_frequency(ds)
    np.testing.assert_allclose(freq["J_s"].values, [[0.0, 100.0], [75.0, 100.0]])
    np.testing.assert_allclose(freq["J_a"].values, [[100.0], [0.0]])
    assert freq["J_s"].sel(out="qvel:a", state_in="qpos:a") == 75.0


def test_global_structure_with_nothing_counted():
    ds = _dataset(np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2, 1)), np.zeros((1, 2), bool))
    r = structure.global_structure(ds)
    assert r["J_s"]["zeros"] is None and r["steps"]["counted"] == 0
    assert "n/a" in structure.format_table(r)


def test_definition_difference_by_hand():
    a = np.array([[1.0, 0.0, 1e-7, 2e-6], [0.5, 0.5, 0.0, 0.0]])
    b = np.array([[1.0 + 2e-5, 3e-9, 0.0, 2e-6 + 1e-12], [0.5, 0.5, 0.0, 0.0]])
    rel, pattern = compare.definition_difference(a, b)
    # row 0's scale is 1.00002: entries below 1e-3 of it are compared against 1.00002e-3
    assert rel == pytest.approx(max(2e-5 / (1 + 2e-5), 1e-7 / 1.00002e-3), rel=1e-12)
    # entry (0, 1): 0 vs 3e-9 and entry (0, 2): 1e-7 vs 0 change their zero decision (|x| < 1e-12)
    assert pattern == 2
    assert compare.definition_difference(a, a) == (0.0, 0)
    rel, pattern = compare.definition_difference(np.array([[np.nan]]), np.array([[1.0]]))
    assert np.isnan(rel) and pattern == 1
