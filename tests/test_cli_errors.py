"""Bad input: one clear line, a non-zero exit, and nothing already written damaged."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import one_error_line

from dynsparse import cli, dataset


def _run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err



def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _store(tmp_path: Path, name: str = "other.zarr", **overrides) -> Path:
    """A real (empty) dynsparse store with a CartpoleBalance configuration, no simulation."""
    config = {"env": "CartpoleBalance", "episodes": 2, "steps": 4, "policy": {"name": "random"}, "seed": 0,
              "backend": "autodiff", "dtype": "float64", "check_every": 0, "batch_size": 2, "chunk_steps": 4,
              "fd_eps": 1e-6, "jacobian": "converged", "compare_definitions": False}
    config.update(overrides)
    layout = dataset.Layout(config["episodes"], config["steps"], ("qpos:slider", "qpos:hinge_1", "qvel:slider", "qvel:hinge_1"),
                            ("act:slide",), config["batch_size"], config["chunk_steps"], "float64")
    attrs = {"format": dataset.FORMAT, "format_version": dataset.FORMAT_VERSION, "env": config["env"],
             "backend": "autodiff", "policy": json.dumps(config["policy"]), "seed": 0, "config": json.dumps(config)}
    out = tmp_path / name
    dataset.create(out, layout, attrs)
    return out


def test_unknown_env_suggests_close_names(capsys, tmp_path):
    code, _, err = _run(capsys, "collect", "CheetaRun", "--out", str(tmp_path / "x.zarr"))
    line = one_error_line(err)
    assert code == cli.EXIT_USER_ERROR
    assert "'CheetaRun'" in line and "CheetahRun" in line
    assert not (tmp_path / "x.zarr").exists()


def test_unknown_env_through_the_installed_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dynsparse.cli", "collect", "WalkerRn", "--out", str(tmp_path / "x.zarr")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert one_error_line(proc.stderr).startswith("dynsparse: error: unknown environment 'WalkerRn'")


@pytest.mark.parametrize("flag,value", [("--episodes", "0"), ("--episodes", "-3"), ("--steps", "0"), ("--steps", "x")])
def test_non_positive_sizes(capsys, tmp_path, flag, value):
    assert cli.main(["collect", "CartpoleBalance", flag, value, "--out", str(tmp_path / "x.zarr")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert flag in line and repr(value) in line and "allowed" in line


@pytest.mark.parametrize("beta", ["-0.5", "2.5", "nan"])
def test_beta_out_of_range(capsys, tmp_path, beta):
    code, _, err = _run(capsys, "collect", "CartpoleBalance", "--policy", "colored", "--beta", beta, "--out", str(tmp_path / "x.zarr"))
    assert code == 2
    line = one_error_line(err)
    assert "beta" in line and "0.0 <= beta <= 2.0" in line


def test_unknown_policy_and_backend(capsys, tmp_path):
    code, _, err = _run(capsys, "collect", "CartpoleBalance", "--policy", "expert", "--out", str(tmp_path / "x.zarr"))
    assert code == 2 and "unknown policy 'expert'" in one_error_line(err)
    code, _, err = _run(capsys, "collect", "CartpoleBalance", "--backend", "magic", "--out", str(tmp_path / "x.zarr"))
    assert code == 2 and "--backend: 'magic' is not allowed; allowed: autodiff, finite_diff" in one_error_line(err)


def test_bad_jacobian_definition_and_combinations(capsys, tmp_path):
    out = tmp_path / "x.zarr"
    code, _, err = _run(capsys, "collect", "CartpoleBalance", "--jacobian", "exact", "--out", str(out))
    assert code == 2 and "--jacobian: unknown Jacobian definition 'exact'; allowed: converged, as-run" in one_error_line(err)
    code, _, err = _run(capsys, "collect", "CartpoleBalance", "--backend", "finite_diff", "--compare-definitions", "--out", str(out))
    assert code == 2 and "compare-definitions computes both exact definitions: it needs --backend autodiff" in one_error_line(err)
    code, _, err = _run(capsys, "reproduce", "--quick", "--jacobian", "as_run", "--out", str(tmp_path / "study"))
    assert code == 2 and "unknown Jacobian definition 'as_run'" in one_error_line(err)
    assert not out.exists() and not (tmp_path / "study").exists()


def test_format_2_store_is_refused(capsys, tmp_path):
    """A store of the previous format (warm start held at every substep) is never resumed or read."""
    import zarr

    store = _store(tmp_path)
    group = zarr.open_group(str(store), mode="r+", zarr_format=2)
    group.attrs["format_version"] = 2
    zarr.consolidate_metadata(str(store), zarr_format=2)
    code, _, err = _run(capsys, "collect", "CartpoleBalance", "--episodes", "2", "--steps", "4", "--batch-size", "2",
                        "--chunk-steps", "4", "--out", str(store))
    assert code == 2 and "dataset format 2; this dynsparse writes format 3" in one_error_line(err)


@pytest.mark.parametrize("threshold", ["0", "-1e-9", "nan", "inf"])
def test_bad_threshold(capsys, tmp_path, threshold):
    store = _store(tmp_path)
    assert cli.main(["structure", str(store), f"--threshold={threshold}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--threshold" in line and repr(threshold) in line and "finite number > 0" in line


def test_output_path_holding_another_run_is_refused_untouched(capsys, tmp_path):
    store = _store(tmp_path, episodes=2)
    before = _tree_hash(store)
    code, _, err = _run(capsys, "collect", "CartpoleBalance", "--episodes", "5", "--steps", "4", "--out", str(store))
    line = one_error_line(err)
    assert code == 2
    assert "different configuration" in line and "episodes: stored 2, requested 5" in line
    assert _tree_hash(store) == before


def test_output_path_that_is_not_a_store_is_refused_untouched(capsys, tmp_path):
    target = tmp_path / "notes"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    code, _, err = _run(capsys, "collect", "CartpoleBalance", "--out", str(target))
    assert code == 2 and "not a dynsparse dataset" in one_error_line(err)
    assert (target / "keep.txt").read_text() == "precious"
    file_target = tmp_path / "file.zarr"
    file_target.write_text("x")
    code, _, err = _run(capsys, "collect", "CartpoleBalance", "--out", str(file_target))
    assert code == 2 and file_target.read_text() == "x"


def test_truncated_chunk_is_reported_by_validate_and_structure(capsys, tmp_path):
    store = _store(tmp_path)
    # A written unit whose J_s chunk is then truncated on disk.
    opened = dataset.open_dataset(store)
    layout = dataset.layout_of(json.loads(opened.attrs["config"]), opened)
    import numpy as np

    arrays = {
        "state": np.zeros((2, 4, 4)), "action": np.zeros((2, 4, 1)), "next_state": np.zeros((2, 4, 4)),
        "J_s": np.ones((2, 4, 4, 4)), "J_a": np.ones((2, 4, 4, 1)), "n_contacts": np.zeros((2, 4), np.int32),
        "reward": np.zeros((2, 4)), "warmstart": np.zeros((2, 4, 2)), "finite": np.ones((2, 4), bool),
        "solver_start_returned": np.zeros((2, 4), np.int16), "valid": np.ones((2, 4), bool),
    }
    dataset.write_unit(store, layout, 0, arrays)
    dataset.write_checkpoint(store, 1, 1, None)
    assert cli.main(["validate", str(store)]) == 0
    capsys.readouterr()
    chunk = store / "J_s" / "0.0.0.0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    code, out, _ = _run(capsys, "validate", str(store))
    assert code == 1
    assert "file J_s/0.0.0.0 (episodes 0-1, steps 0-3) was altered" in out
    code, _, err = _run(capsys, "structure", str(store))
    assert code == 2 and "J_s" in one_error_line(err)


def test_store_without_metadata(capsys, tmp_path):
    store = _store(tmp_path)
    (store / ".zmetadata").unlink()
    code, out, _ = _run(capsys, "validate", str(store))
    assert code == 1 and "not a dynsparse dataset" in out
    code, _, err = _run(capsys, "structure", str(store))
    assert code == 2 and "not a dynsparse dataset" in one_error_line(err)
    code, _, err = _run(capsys, "collect", "CartpoleBalance", "--out", str(store))
    assert code == 2 and "not a dynsparse dataset" in one_error_line(err)


def test_missing_dataset(capsys, tmp_path):
    code, _, err = _run(capsys, "structure", str(tmp_path / "nope.zarr"))
    assert code == 2 and "does not exist" in one_error_line(err)


def test_store_missing_a_variable(capsys, tmp_path):
    import shutil

    store = _store(tmp_path)
    shutil.rmtree(store / "check_class")
    meta = json.loads((store / ".zmetadata").read_text())
    meta["metadata"] = {k: v for k, v in meta["metadata"].items() if not k.startswith("check_class/")}
    (store / ".zmetadata").write_text(json.dumps(meta))
    code, _, err = _run(capsys, "structure", str(store))
    assert code == 2 and "lacks variable(s) check_class" in one_error_line(err)


def test_checkpoint_mid_episode_without_state_is_refused(capsys, tmp_path):
    store = _store(tmp_path, steps=8, chunk_steps=4)
    dataset.write_checkpoint(store, 1, 2, None)  # unit 1 is mid-episode: a carry is required
    before = _tree_hash(store)
    code, out, _ = _run(capsys, "validate", str(store))
    assert code == 1 and "resumes mid-episode (unit 1) but holds no simulator state" in out
    code, _, err = _run(capsys, "collect", "CartpoleBalance", "--episodes", "2", "--steps", "8", "--chunk-steps", "4", "--out", str(store))
    assert code == 2 and "holds no simulator state" in one_error_line(err)
    assert _tree_hash(store) == before
