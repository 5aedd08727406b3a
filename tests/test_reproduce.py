"""``reproduce``: refusals (fast) and the whole quick study end to end (slow)."""

from __future__ import annotations

import json
import time

import pytest

from dynsparse import cli, errors, reproduce
from dynsparse.render import figures


def test_study_folder_of_another_configuration_is_refused(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / reproduce.STUDY_FILE).write_text(json.dumps(reproduce.full().validated().to_json()))
    with pytest.raises(errors.UserError, match="another configuration .*episodes"):
        reproduce.reproduce(out, reproduce.quick())
    assert [p.name for p in out.iterdir()] == [reproduce.STUDY_FILE]


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(errors.UserError, match="not a dynsparse sweep folder"):
        reproduce.reproduce(tmp_path, reproduce.quick(envs=("CartpoleBalance",)))
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_cli_rejects_unknown_env(tmp_path, capsys):
    assert cli.main(["reproduce", "--quick", "--envs", "CartpoleBalance,Cheetah", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "'Cheetah' is not one of the study's tasks" in err and "CheetahRun" in err
    assert not (tmp_path / "s").exists()


def test_quick_config_is_small_and_full_is_paper_scale():
    q, f = reproduce.quick(), reproduce.full()
    assert (q.episodes, q.steps) == (2, 300) and (f.episodes, f.steps) == (10, 1000)
    assert q.envs == f.envs == reproduce.STUDY_ENVS and len(f.envs) == 8


@pytest.mark.long  # ~10-15 min: the README's command (a) end to end
def test_quick_study_end_to_end_in_chromium(tmp_path):
    import browser

    browser.require_chromium()
    out = tmp_path / "study"
    assert cli.main(["reproduce", "--quick", "--out", str(out)]) == 0
    page = out / "report" / "index.html"
    info = browser.inspect(page, browser.screenshot_path(tmp_path, "study.png"))
    assert info["sections"] == 8 and info["rows"] == 8
    kinds = [i["kind"] for i in info["images"]]
    assert all(kinds.count(k) == 8 for k in figures.KINDS), kinds
    assert all(i["complete"] and i["width"] > 100 for i in info["images"])
    text = page.read_text()
    for env in reproduce.STUDY_ENVS:
        assert f">{env}</a>" in text
    assert '{"name": "random"}' in text  # the policy is named
    timing = json.loads((out / "timing.json").read_text())
    assert set(timing) == set(reproduce.STUDY_ENVS) | {"report"}
    # rerun: everything is done, nothing is recomputed
    t0 = time.perf_counter()
    assert cli.main(["reproduce", "--quick", "--out", str(out)]) == 0
    assert time.perf_counter() - t0 < 60


def test_a_small_study_is_a_pipelined_sweep_plus_a_report(tmp_path):
    """``reproduce`` = the preset sweep (one env here, tiny) + ``report``; a rerun recomputes nothing."""
    scale = {"episodes": 1, "steps": 20, "check_every": 0, "batch_size": 1, "chunk_steps": 10, "tsne": False,
             "max_points": 50, "backend": "finite_diff"}
    config = reproduce.preset(scale, envs=("CartpoleBalance",), seed=3)
    assert config.seeds == (3,) and config.analysis_seed == 3 and config.policies == ({"name": "random"},)
    out = tmp_path / "study"
    stages = []
    page = reproduce.reproduce(out, config, on_stage=lambda e: stages.append((e.stage, e.env, e.done, e.index)))
    assert page == out / "report" / "index.html" and page.is_file()
    assert stages == [("collect", "CartpoleBalance", False, 0), ("collect", "CartpoleBalance", True, 1),
                      ("analyze", "CartpoleBalance", False, 1), ("analyze", "CartpoleBalance", True, 2),
                      ("report", None, False, 2), ("report", None, True, 3)]
    [job] = config.validated().jobs()
    assert (out / "runs" / "CartpoleBalance__random__seed3" / "data.zarr").is_dir() and job.analysis_dir(out).is_dir()
    text = page.read_text()
    assert "native centred finite differences (not certified)" in text and "seed 3" in text
    timing = json.loads((out / "timing.json").read_text())
    assert set(timing) == {"CartpoleBalance", "report"} and timing["CartpoleBalance"]["collect"] > 0
    assert json.loads((out / reproduce.STUDY_FILE).read_text())["episodes"] == 1
    stages.clear()
    reproduce.reproduce(out, config, on_stage=lambda e: stages.append((e.stage, e.done, e.index)))
    assert stages == [("analyze", True, 2), ("report", False, 2), ("report", True, 3)]
