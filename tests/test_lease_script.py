"""scripts/lease_train.py: which tasks a lease trains, with which command, and what install keeps (fast)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from dynsparse.policies import checkpoint

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("lease_train", ROOT / "scripts" / "lease_train.py")
lease = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lease)


def _meta(folder: Path, ret: float | None, segments=None, curve=None, steps=0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"env": folder.name, "evaluation": None if ret is None else {"return_mean": ret}, "complete": False, "curve": curve or [],
            "training": {"segments": segments or [], "steps_done": steps, "budget_timesteps": 100, "device": "cpu: cpu"}}
    (folder / "policy.json").write_text(json.dumps(meta))


def test_plan_picks_the_lowest_returns_below_target_using_the_further_checkpoint(tmp_path):
    pol, tr = tmp_path / "policies", tmp_path / "training"
    for env, ret in {"A": 999.0, "B": 0.0, "C": 40.0, "D": 260.0}.items():
        _meta(pol / env, ret)
    _meta(tr / "B", 120.0)  # a later training of B is further along than its committed policy
    assert lease.current_return(pol / "B", tr / "B") == (120.0, str(tr / "B"))
    assert lease.plan(pol, tr, ["A", "B", "C", "D", "E"], 500.0, 2) == [("E", float("-inf")), ("C", 40.0)]
    assert lease.plan(pol, tr, ["A", "B", "C", "D"], 500.0, 5) == [("C", 40.0), ("B", 120.0), ("D", 260.0)]
    assert lease.plan(pol, tr, ["A"], 500.0, 2) == []


def test_new_training_command_uses_the_published_budget_checkpoints_every_two_steps_and_task_beta(tmp_path):
    cmd = lease.train_command("BallInCup", tmp_path / "o", False, 300.4, None, ["--set", "num_envs=8"])
    text = " ".join(cmd)
    assert "train-policy BallInCup" in text and "--time-limit 300" in text and "--timesteps 60000000" in text
    assert "--set num_resets_per_eval=2" in text and "--noise-beta 1.0" in text and "--exploration-scale 3.0" in text
    evals = int(text.split("num_evals=")[1].split()[0])
    assert evals == 32  # ceil(60M / (2 x 983,040)) + 1: one training step per epoch, ~2M steps per evaluation
    assert cmd[-2:] == ["--set", "num_envs=8"]
    assert "--noise-beta" not in lease.train_command("CheetahRun", tmp_path, False, 10, None, [])
    assert "--exploration-scale" not in lease.train_command("CheetahRun", tmp_path, False, 10, None, [])
    resume = lease.train_command("CheetahRun", tmp_path / "o", True, 10, None, ["--set", "x=1"])
    assert resume[-1] == "--resume" and "--set" not in resume  # a resumed run keeps its own options


def test_segment_report_throughput_counts_this_segment_only(tmp_path):
    curve = [{"steps": 0, "elapsed_s": 50.0}, {"steps": 100, "elapsed_s": 60.0},  # earlier lease
             {"steps": 300, "elapsed_s": 130.0}, {"steps": 500, "elapsed_s": 140.0}, {"steps": 700, "elapsed_s": 150.0}]
    _meta(tmp_path / "X", 7.0, segments=[{"from_steps": 0}, {"from_steps": 100}], curve=curve, steps=700)
    rep = lease.segment_report(tmp_path / "X")
    assert rep["from_steps"] == 100 and rep["to_steps"] == 700 and rep["return"] == 7.0
    assert rep["steps_per_s_segment"] == pytest.approx(600 / 90)  # compile and first iteration included
    assert rep["steps_per_s_between_evals"] == pytest.approx(20.0)


def test_install_keeps_full_state_aside_and_exports_only_an_improvement(tmp_path, capsys):
    back, pol, tr = tmp_path / "back", tmp_path / "policies", tmp_path / "training"
    shutil.copytree(ROOT / "policies" / "CartpoleBalance", pol / "CartpoleBalance")
    shutil.copytree(ROOT / "policies" / "CheetahRun", pol / "CheetahRun")
    for env, delta in (("CartpoleBalance", -100.0), ("CheetahRun", +100.0)):
        meta, arrays = checkpoint.load(pol / env)
        meta = {k: v for k, v in meta.items() if k not in ("params_file", "params_sha256", "value_network", "exported_from_sha256")}
        meta["evaluation"] = {**meta["evaluation"], "return_mean": meta["evaluation"]["return_mean"] + delta}
        arrays["value/params/hidden_0/kernel"] = arrays["policy/params/hidden_0/kernel"]
        checkpoint.save(back / env, meta, arrays)
        (back / env / "train_state.npz").write_bytes(b"state")
    (back / "lease.md").write_text("# lease test\n")
    old_cartpole = (pol / "CartpoleBalance" / "policy.json").read_text()
    sys.argv = ["lease_train.py", "install", str(back), "--policies", str(pol), "--training", str(tr)]
    assert lease.main() == 0
    out = capsys.readouterr().out
    assert "CheetahRun: return 42.7 -> 142.7: exported" in out and "CartpoleBalance: return 899.8 does not beat" in out
    assert (pol / "CartpoleBalance" / "policy.json").read_text() == old_cartpole
    meta, arrays = checkpoint.load(pol / "CheetahRun")
    assert meta["value_network"] == "omitted" and not any(k.startswith("value/") for k in arrays)
    assert (tr / "CheetahRun" / "train_state.npz").read_bytes() == b"state" and (tr / "CartpoleBalance" / "train_state.npz").is_file()
    assert "# lease test" in (pol / "logs" / "leases.md").read_text()
