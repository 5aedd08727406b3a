"""``dynsparse sweep``: configuration, job ids, the Dask cluster path, killed workers, failed
jobs and re-runs."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import one_error_line

from dynsparse import cli, dataset, errors, sweep

REPO = Path(__file__).resolve().parents[1]


def _config(**over):
    raw = {"envs": ["CartpoleBalance"], "episodes": 2, "steps": 20, "batch_size": 2, "chunk_steps": 10, "backend": "finite_diff"}
    raw.update(over)
    return sweep.config_from_dict(raw)


def test_grid_and_job_ids():
    config = _config(envs=["CartpoleBalance", "PointMass"], policies=["random", {"name": "colored", "beta": 2.0, "scale": 0.5}],
                     seeds=[0, 3], thresholds=[1e-12, 1e-6])
    jobs = config.jobs()
    assert len(config.runs()) == 8 and len(jobs) == 16
    assert jobs[0].id == "CartpoleBalance__random__seed0__thr1e-12"
    assert jobs[1].id == "CartpoleBalance__random__seed0__thr1e-06"
    assert jobs[-1].id == "PointMass__colored-b2-s0.5__seed3__thr1e-06"
    assert len({j.id for j in jobs}) == 16
    ppo = _config(policies=[f"ppo:{REPO / 'policies' / 'CartpoleBalance'}"]).runs()[0]
    assert ppo.id.startswith("CartpoleBalance__ppo-CartpoleBalance-") and ppo.policy["checkpoint"].endswith("policies/CartpoleBalance")
    # collection settings go to collect unchanged; batch and chunk never exceed the run
    assert _config(episodes=1, steps=5).runs()[0].collect_kwargs(_config(episodes=1, steps=5))["batch_size"] == 1


@pytest.mark.parametrize("raw, message", [
    ({"envs": ["CartpoleBalanc"]}, "unknown environment 'CartpoleBalanc'; did you mean CartpoleBalance"),
    ({"envs": "CartpoleBalance"}, "sweep envs 'CartpoleBalance' is not allowed; allowed: a non-empty list"),
    ({"envs": []}, "sweep envs [] is not allowed; allowed: a non-empty list"),
    ({"envs": ["CartpoleBalance"], "seed": [1]}, "unknown key 'seed'; allowed: envs, policies, seeds"),
    ({"seeds": [1]}, "'envs' is missing"),
    ({"envs": ["CartpoleBalance"], "thresholds": [-1.0]}, "threshold -1.0"),
    ({"envs": ["CartpoleBalance"], "seeds": [0, 0]}, "repeat a value"),
    ({"envs": ["CartpoleBalance"], "policies": ["greedy"]}, "unknown policy 'greedy'; allowed: random, colored, ppo:DIR"),
    ({"envs": ["CartpoleBalance"], "policies": ["ppo:/no/such/folder"]}, "/no/such/folder"),
    ({"envs": ["CartpoleBalance"], "steps": 1.5}, "steps 1.5 is not allowed; allowed: an integer"),
    ({"envs": ["CartpoleBalance"], "backend": "magic"}, "magic"),
    ({"envs": ["CartpoleBalance"], "tsne": "yes"}, "tsne 'yes' is not allowed; allowed: true or false"),
])
def test_bad_configs_are_refused_with_one_line(raw, message):
    with pytest.raises(errors.UserError, match=None) as info:
        sweep.config_from_dict(raw)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_config_files(tmp_path, capsys):
    (tmp_path / "s.toml").write_text('envs = ["CartpoleBalance"]\nseeds = [0, 1]\nthresholds = [1e-12]\n')
    assert sweep.load_config(tmp_path / "s.toml").seeds == (0, 1)
    (tmp_path / "s.json").write_text(json.dumps({"envs": ["PointMass"], "policies": ["colored"]}))
    assert sweep.load_config(tmp_path / "s.json").policies == ({"name": "colored", "beta": 1.0, "scale": 1.0},)
    (tmp_path / "bad.toml").write_text("envs = [")
    (tmp_path / "s.yaml").write_text("envs: [a]")
    for name, message in [("bad.toml", "is not valid TOML"), ("s.yaml", "allowed: .toml, .json"), ("nope.toml", "cannot be read")]:
        assert cli.main(["sweep", str(tmp_path / name), "--out", str(tmp_path / "o")]) == cli.EXIT_USER_ERROR
        assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_bad_only_and_foreign_folders_touch_nothing(tmp_path):
    config = _config()
    with pytest.raises(errors.UserError, match="--only 'x' is not a job of this sweep; allowed: CartpoleBalance__random__seed0__thr1e-12"):
        sweep.run_sweep(config, tmp_path / "o", only=["x"])
    assert not (tmp_path / "o").exists()
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "mine.txt").write_text("keep")
    with pytest.raises(errors.UserError, match="exists and is not a dynsparse sweep"):
        sweep.run_sweep(config, tmp_path / "f")
    assert (tmp_path / "f" / "mine.txt").read_text() == "keep" and len(list((tmp_path / "f").iterdir())) == 1
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / sweep.CONFIG_FILE).write_text(json.dumps({**config.to_json(), "steps": 99}))
    with pytest.raises(errors.UserError, match="steps: stored 99, requested 20"):
        sweep.run_sweep(config, tmp_path / "s")


def test_menagerie_option_errors(tmp_path, capsys, monkeypatch):
    assert cli.main(["--menagerie", str(tmp_path / "nowhere"), "envs"]) == cli.EXIT_USER_ERROR
    assert "--menagerie" in (line := one_error_line(capsys.readouterr().err)) and "is not a directory" in line
    monkeypatch.setenv("DYNSPARSE_MENAGERIE", str(tmp_path / "nowhere"))
    assert cli.main(["collect", "Go1JoystickFlatTerrain", "--out", str(tmp_path / "g.zarr")]) == cli.EXIT_USER_ERROR
    assert "$DYNSPARSE_MENAGERIE" in one_error_line(capsys.readouterr().err)
    # an existing but empty checkout: the environment cannot be built, said in one line
    from mujoco_playground._src import mjx_env

    from dynsparse import envs

    monkeypatch.setattr(mjx_env, "MENAGERIE_PATH", mjx_env.MENAGERIE_PATH)
    monkeypatch.setattr(envs, "_menagerie_explicit", False)
    (tmp_path / "empty").mkdir()
    assert cli.main(["--menagerie", str(tmp_path / "empty"), "collect", "Go1JoystickFlatTerrain", "--out", str(tmp_path / "g.zarr")]) == cli.EXIT_USER_ERROR
    line = one_error_line(capsys.readouterr().err)
    assert "Go1JoystickFlatTerrain" in line and str(tmp_path / "empty") in line
    assert not (tmp_path / "g.zarr").exists()


def _kill_mid_collection(address: str, out: Path, killed: dict, stop: threading.Event) -> None:
    """Kill (SIGKILL) the worker process that is collecting a run whose store is partly written."""
    from distributed import Client

    with Client(address, timeout="20s", set_as_default=False) as client:
        pids = client.run(os.getpid)
        while not stop.is_set() and not killed:
            for store in sorted(out.glob("runs/*/data.zarr")):
                try:
                    ck = dataset.read_checkpoint(store)
                except Exception:  # noqa: BLE001 - not yet created / being replaced
                    continue
                if not 1 <= ck.next_unit < ck.n_units - 3:
                    continue
                run_id = store.parent.name
                for addr, keys in client.processing().items():
                    if any(str(k).startswith(f"collect-{run_id}-") for k in keys) and addr in pids:
                        killed.update(run=run_id, unit=ck.next_unit, pid=pids[addr])
                        os.kill(pids[addr], signal.SIGKILL)
                        return
            time.sleep(0.02)


@pytest.mark.slow
def test_sweep_on_a_local_dask_cluster_survives_a_killed_worker(tmp_path):
    from distributed import LocalCluster

    config = sweep.config_from_dict({
        "envs": ["CartpoleBalance", "PendulumSwingup", "PointMass"], "seeds": [0, 1], "thresholds": [1e-12],
        "episodes": 2, "steps": 600, "batch_size": 2, "chunk_steps": 10, "backend": "finite_diff",
    })
    out = tmp_path / "sweep"
    killed: dict = {}
    stop = threading.Event()
    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        killer = threading.Thread(target=_kill_mid_collection, args=(cluster.scheduler_address, out, killed, stop))
        killer.start()
        try:
            outcomes = sweep.run_sweep(config, out, scheduler=cluster.scheduler_address)
        finally:
            stop.set()
            killer.join()
    assert killed, "no collection was caught mid-way to kill its worker"
    assert [o.state for o in outcomes] == ["done"] * 6, [(o.job.id, o.error) for o in outcomes]
    status = {o.job.run.id: sweep.read_status(out, o.job) for o in outcomes}
    # the killed run was re-run by Dask on another worker and resumed from its checkpoint
    assert status[killed["run"]]["collected"]["resumed_at_unit"] >= killed["unit"] >= 1
    # the test's own cluster sets no thread share: every worker uses the process's cores
    assert {s["collected"]["fd_threads"] for s in status.values()} == {len(os.sched_getaffinity(0))}
    problems, _ = dataset.validate(out / "runs" / killed["run"] / "data.zarr")
    assert problems == []
    rows = sweep.summary_rows(out, config)
    assert [r["status"] for r in rows] == ["done"] * 6 and all(r["counted_steps"] == 1200 for r in rows)
    header = (out / sweep.SUMMARY_FILE).read_text().splitlines()[0].split(",")
    assert header[:7] == list(sweep.SUMMARY_KEYS) and "J_s_global_zero_pct" in header
    # a second call recomputes nothing
    before = {p: p.stat().st_mtime_ns for p in (out / sweep.STATUS_DIR).iterdir()}
    again = sweep.run_sweep(config, out, scheduler="tcp://127.0.0.1:1")  # no scheduler needed: nothing to run
    assert [o.state for o in again] == ["skipped"] * 6
    assert before == {p: p.stat().st_mtime_ns for p in (out / sweep.STATUS_DIR).iterdir()}


@pytest.mark.slow
def test_failed_job_is_reported_and_rerun_alone(tmp_path, capsys):
    """The CartpoleBalance policy cannot drive PendulumSwingup: that job fails at run time, is
    reported with its error, and ``--only`` re-runs it alone without touching the others."""
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        'envs = ["CartpoleBalance", "PendulumSwingup"]\npolicies = ["ppo:' + str(REPO / "policies" / "CartpoleBalance") + '"]\n'
        'episodes = 1\nsteps = 20\nbatch_size = 1\nchunk_steps = 10\nbackend = "finite_diff"\n'
    )
    out = tmp_path / "out"
    argv = ["sweep", str(cfg), "--out", str(out), "--workers", "2"]  # workers inherit $DYNSPARSE_JAX_CACHE
    assert cli.main(argv) == 1
    text = capsys.readouterr()
    config = sweep.load_config(cfg)
    good, bad = config.jobs()
    assert f"failed {bad.id}: UserError" in text.out and "--only JOB" in text.err
    rows = {r["job"]: r for r in sweep.summary_rows(out, config)}
    assert rows[good.id]["status"] == "done" and rows[bad.id]["status"] == "failed"
    assert "CartpoleBalance" in rows[bad.id]["error"] and "\n" not in rows[bad.id]["error"]
    assert "Traceback" in sweep.read_status(out, bad)["traceback"]
    # each of the 2 local workers runs native finite differences on its share of the cores
    assert sweep.read_status(out, good)["collected"]["fd_threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"{bad.id},PendulumSwingup" in (out / sweep.SUMMARY_FILE).read_text()
    done_mtime = sweep.status_path(out, good).stat().st_mtime_ns
    assert cli.main(argv + ["--only", bad.id]) == 1
    assert "0 done now, 1 done before, 1 failed" in capsys.readouterr().out
    assert sweep.status_path(out, good).stat().st_mtime_ns == done_mtime


def test_unreachable_scheduler_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "CONNECT_TIMEOUT", "2s")
    with pytest.raises(errors.UserError, match="cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'"):
        sweep.run_sweep(_config(), tmp_path / "o", scheduler="tcp://127.0.0.1:9")
    assert not (tmp_path / "o" / sweep.STATUS_DIR).exists()  # no job was recorded


def test_pipeline_executor_collects_in_this_process_and_records_every_job(tmp_path):
    """``executor="pipeline"`` (what ``reproduce`` uses): runs collected one after another here,
    analyses in a worker process; a job that fails at run time is recorded, the others finish;
    a rerun computes only what is not done."""
    config = _config(envs=["CartpoleBalance", "PendulumSwingup"], policies=[f"ppo:{REPO / 'policies' / 'CartpoleBalance'}"],
                     thresholds=[1e-12, 1e-6], episodes=1, batch_size=1)
    with pytest.raises(errors.UserError, match="leave out --scheduler and --workers"):
        sweep.run_sweep(config, tmp_path / "x", executor="pipeline", workers=2)
    with pytest.raises(errors.UserError, match="executor 'threads' is not allowed; allowed: dask, pipeline"):
        sweep.run_sweep(config, tmp_path / "x", executor="threads")
    assert not (tmp_path / "x").exists()
    out = tmp_path / "sweep"
    events, units = [], []
    outcomes = sweep.run_sweep(config, out, executor="pipeline", on_event=lambda s, j, p: events.append((s, j.id)),
                               on_collect_progress=lambda p: units.append((p.steps_done, p.steps_total)))
    cart_a, cart_b, pend_a, pend_b = config.jobs()
    assert [o.state for o in outcomes] == ["done", "done", "failed", "failed"], [(o.job.id, o.error) for o in outcomes]
    assert "CartpoleBalance" in outcomes[2].error and "\n" not in outcomes[2].error
    assert events[:2] == [("collecting", cart_a.id), ("collected", cart_a.id)]
    assert ("collecting", pend_a.id) in events and ("collected", pend_a.id) not in events
    assert sorted(e for e in events if e[0] in ("done", "failed")) == sorted(
        [("done", cart_a.id), ("done", cart_b.id), ("failed", pend_a.id), ("failed", pend_b.id)])
    assert units[-1] == (20, 20) and (10, 20) in units  # CartpoleBalance's two chunks of 10 steps
    status = sweep.read_status(out, cart_b)
    assert status["state"] == "done" and status["row"]["counted_steps"] == 20 and status["collected"]["units"] == 2
    assert (cart_b.analysis_dir(out) / "summary.json").is_file()
    assert [r["status"] for r in sweep.summary_rows(out, config)] == ["done", "done", "failed", "failed"]
    events.clear()
    again = sweep.run_sweep(config, out, executor="pipeline", only=[pend_b.id], on_event=lambda s, j, p: events.append((s, j.id)))
    assert [o.state for o in again] == ["skipped", "skipped", "not run", "failed"]
    assert events == [("collecting", pend_b.id), ("failed", pend_b.id)]


_ANALYSIS_WORKER_OF_A_KILLED_PIPELINE = """
import os, sys, time
from dynsparse import sweep
with sweep._analysis_process() as pool:
    worker = pool.submit(os.getpid).result(timeout=120)
    pool.submit(time.sleep, 300)  # an analysis still running when this process is killed
    print(worker, flush=True)
    time.sleep(300)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel ends the worker with its parent on Linux")
def test_a_killed_pipeline_takes_its_analysis_worker_with_it():
    """SIGKILL to the process that runs the pipeline (it cannot shut its pool down) while its
    analysis worker is busy: the kernel ends the worker too, instead of leaving it running."""
    import subprocess

    from helpers import alive

    proc = subprocess.Popen([sys.executable, "-c", _ANALYSIS_WORKER_OF_A_KILLED_PIPELINE], stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(proc.stdout.readline())
        assert worker != proc.pid and alive(worker)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        deadline = time.time() + 20
        while alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        assert not alive(worker), "the analysis worker outlived its killed pipeline"
    finally:
        proc.kill()
        if worker is not None and alive(worker):  # the failure's orphan: not left for 300 s
            os.kill(worker, signal.SIGKILL)


def test_the_analysis_worker_runs_native_thread_pools_on_one_thread():
    """The worker runs beside a collection that has every core: scikit-learn's OpenMP t-SNE and
    NumPy's BLAS run on one thread there (their spinning threads slowed t-SNE 1.3x), while this
    process keeps its own settings."""
    from helpers import native_threads

    before = native_threads()
    with sweep._analysis_process() as pool:
        inside = pool.submit(native_threads).result(timeout=120)
    assert inside["env"] == {k: "1" for k in sweep.ONE_THREAD_VARS}
    assert inside["pools"] and all(n == 1 for _, n in inside["pools"]), inside["pools"]
    assert any(api == "openmp" for api, _ in inside["pools"]), inside["pools"]
    assert native_threads() == before
