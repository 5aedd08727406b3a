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
    (out / reproduce.STUDY_FILE).write_text(json.dumps(reproduce.StudyConfig.full().identity()))
    with pytest.raises(errors.UserError, match="another configuration .*episodes"):
        reproduce.reproduce(out, reproduce.StudyConfig.quick())
    assert [p.name for p in out.iterdir()] == [reproduce.STUDY_FILE]


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(errors.UserError, match="not a dynsparse study folder"):
        reproduce.reproduce(tmp_path, reproduce.StudyConfig.quick(envs=("CartpoleBalance",)))
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_cli_rejects_unknown_env(tmp_path, capsys):
    assert cli.main(["reproduce", "--quick", "--envs", "CartpoleBalance,Cheetah", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "'Cheetah' is not one of the study's tasks" in err and "CheetahRun" in err
    assert not (tmp_path / "s").exists()


def test_quick_config_is_small_and_full_is_paper_scale():
    q, f = reproduce.StudyConfig.quick(), reproduce.StudyConfig.full()
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
