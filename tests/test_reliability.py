"""A damaged or shared store never gives a wrong answer, and no bad input ends in a traceback.

Damaged stores are copies of the session's small real store (``bouncer_store``); every reader
(``open_dataset``) checks the checksums its writer recorded, ``validate`` lists every problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynsparse import cli, dataset, errors, interrupts, locks, manifest


def _run(capsys, *argv: str, stdout: bool = False) -> tuple[int, str]:
    """Exit code and stderr (``stdout``: stdout too, after it) of one in-process CLI call."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.err + (captured.out if stdout else "")


def _error_lines(err: str) -> list[str]:
    """stderr without progress-bar lines."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _copy(store: Path, tmp_path: Path, name: str = "copy.zarr") -> Path:
    out = tmp_path / name
    shutil.copytree(store, out)
    return out


def _chunk(store: Path, variable: str, unit: int = 1) -> Path:
    layout = dataset.layout_of(dataset.read_config(dataset.open_dataset(store, verify=False)), dataset.open_dataset(store, verify=False))
    return store / dataset.unit_chunks(layout, unit)[variable]


# ----------------------------------------------------------------------------- integrity


def test_the_writer_records_every_chunk_and_a_sound_store_verifies(bouncer_store):
    ds = dataset.open_dataset(bouncer_store)  # verify=True: passes
    layout = dataset.layout_of(dataset.read_config(ds), ds)
    assert dataset.integrity_problems(bouncer_store, layout, layout.n_units) == []
    record = json.loads(manifest.unit_file(bouncer_store, 1).read_text())
    assert set(record["files"]) == set(dataset.unit_chunks(layout, 1).values())
    js = record["files"]["J_s/0.1.0.0"]
    assert js == manifest.sha256(bouncer_store / "J_s/0.1.0.0")
    created = json.loads((bouncer_store / manifest.MANIFEST_DIR / manifest.CREATED).read_text())["files"]
    assert {"out/0", "state_in/0", ".zmetadata", "J_s/.zarray"} <= set(created)
    assert dataset.validate(bouncer_store) == ([], [])


@pytest.mark.parametrize("variable", ["J_s", "valid"])
def test_a_missing_chunk_is_refused_not_read_as_fill(bouncer_store, tmp_path, capsys, variable):
    """Today's main read a deleted J_s chunk as NaN (0 global zeros instead of the true count) and
    a deleted valid chunk as False (silently fewer steps)."""
    store = _copy(bouncer_store, tmp_path)
    chunk = _chunk(store, variable)
    chunk.unlink()
    rel = chunk.relative_to(store).as_posix()
    code, err = _run(capsys, "structure", store)
    [line] = _error_lines(err)
    assert code == cli.EXIT_USER_ERROR and f"chunk {rel}" in line and "missing" in line and "episodes 0-2, steps 40-79" in line
    with pytest.raises(errors.UserError, match="is damaged"):
        dataset.open_dataset(store)
    problems, _ = dataset.validate(store)
    assert problems == [f"chunk {rel} (episodes 0-2, steps 40-79) is missing"]


def test_every_damaged_chunk_is_listed_and_an_altered_one_is_refused(bouncer_store, tmp_path, capsys):
    store = _copy(bouncer_store, tmp_path)
    _chunk(store, "J_a", unit=0).unlink()
    altered = _chunk(store, "next_state", unit=1)
    data = bytearray(altered.read_bytes())
    data[-1] ^= 0xFF
    altered.write_bytes(bytes(data))
    problems, _ = dataset.validate(store)
    assert len(problems) == 2
    assert "J_a/0.0.0.0 (episodes 0-2, steps 0-39) is missing" in problems[0]
    assert "next_state/0.1.0" in problems[1] and "altered" in problems[1]
    code, err = _run(capsys, "analyze", store, "--out", tmp_path / "an", "--no-tsne")
    assert code == cli.EXIT_USER_ERROR and "(and 1 more)" in _error_lines(err)[0] and not (tmp_path / "an").exists()


def test_garbage_metadata_is_caught_though_reads_use_the_consolidated_copy(bouncer_store, tmp_path, capsys):
    store = _copy(bouncer_store, tmp_path)
    (store / "J_s" / ".zarray").write_text("garbage")
    problems, _ = dataset.validate(store)
    assert any("J_s/.zarray" in p and "unreadable" in p for p in problems), problems
    code, err = _run(capsys, "structure", store)
    assert code == cli.EXIT_USER_ERROR and "J_s/.zarray" in _error_lines(err)[0]


def test_a_truncated_coordinate_chunk_is_refused(bouncer_store, tmp_path, capsys):
    """Today's main printed garbage variable names for a truncated ``out/0``."""
    store = _copy(bouncer_store, tmp_path)
    coord = store / "out" / "0"
    coord.write_bytes(coord.read_bytes()[:-3])
    code, err = _run(capsys, "structure", store)
    [line] = _error_lines(err)
    assert code == cli.EXIT_USER_ERROR and "out/0" in line and "altered" in line
    assert any("out/0" in p for p in dataset.validate(store)[0])


def test_a_lost_unit_record_is_refused(bouncer_store, tmp_path):
    store = _copy(bouncer_store, tmp_path)
    manifest.unit_file(store, 0).unlink()
    with pytest.raises(errors.UserError, match="unit-000000.json .* is missing"):
        dataset.open_dataset(store)


def test_killed_between_valid_and_checkpoint_is_a_note_not_a_problem(bouncer_store, tmp_path):
    """The last unit's chunks (``valid`` included) are written, its checkpoint is not: a normal
    resume rewrites it, so ``validate`` says that instead of reporting damage."""
    store = _copy(bouncer_store, tmp_path)
    dataset.write_checkpoint(store, 1, 2, [np.zeros(3)])  # as if killed before committing unit 1
    problems, notes = dataset.validate(store)
    assert problems == []
    assert any("written but not yet committed" in n and "resuming rewrites it" in n for n in notes), notes


# ----------------------------------------------------------------------------- locks


def test_a_second_writer_is_refused_while_the_first_holds_the_store(bouncer_store, tmp_path, capsys):
    store = _copy(bouncer_store, tmp_path)
    before = _tree_hash(store)
    with locks.hold(store):
        code, err = _run(capsys, "collect", "CartpoleBalance", "--episodes", "1", "--steps", "4", "--out", store)
        [line] = _error_lines(err)
        assert code == cli.EXIT_USER_ERROR and f"is being written by process {os.getpid()}" in line
    assert _tree_hash(store) == before
    assert not locks.lock_path(store).exists()  # released and removed


def test_a_second_analyze_leaves_the_first_ones_working_folder_alone(bouncer_store, tmp_path, capsys):
    out = tmp_path / "analysis"
    working = tmp_path / ".analysis.partial-1"  # what a running analyze writes into
    working.mkdir()
    (working / "summary.json").write_text("{}")
    with locks.hold(out):
        code, err = _run(capsys, "analyze", bouncer_store, "--out", out, "--no-tsne")
        assert code == cli.EXIT_USER_ERROR and "is being written by process" in _error_lines(err)[0]
    assert (working / "summary.json").read_text() == "{}" and not out.exists()


def test_a_stale_lock_of_a_killed_process_does_not_block(tmp_path):
    target = tmp_path / "x.zarr"
    locks.lock_path(target).write_text("999999")  # left by a killed writer: no process holds it
    with locks.hold(target):
        assert locks.lock_path(target).read_text() == str(os.getpid())
    assert not locks.lock_path(target).exists()


def test_refused_input_leaves_no_folders_made_for_the_lock(tmp_path):
    target = tmp_path / "a" / "b" / "x.zarr"
    with locks.hold(target):
        assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a").exists()


def test_a_waiting_lock_waits_for_its_holder_and_is_removed_after(tmp_path):
    """``locks.wait``: the second holder (another process) is told who holds it, waits until it is
    released, then holds it itself; a free lock is taken without waiting."""
    import subprocess
    import sys
    import time

    file = tmp_path / "p.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dynsparse import locks\n"
         "with locks.wait(sys.argv[1]) as waited:\n print('held', waited, flush=True); time.sleep(3)", str(file)],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().split() == ["held", "False"]
    told: list[str] = []
    t0 = time.monotonic()
    with locks.wait(file, on_wait=told.append) as waited:
        waited_s = time.monotonic() - t0
        assert waited and told == [str(holder.pid)] and file.read_text() == str(os.getpid())
    assert holder.wait(timeout=30) == 0 and waited_s > 1.0
    assert not file.exists()
    with locks.wait(file, on_wait=told.append) as waited:
        assert not waited and len(told) == 1


# ----------------------------------------------------------------------------- Ctrl-C


def test_a_swallowed_ctrl_c_still_stops_at_the_next_safe_point():
    """A library that catches KeyboardInterrupt (as one did inside collect) cannot lose it."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        interrupts.install()
        interrupts.check()  # nothing yet
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0) if hasattr(signal, "sigtimedwait") else None
        except KeyboardInterrupt:
            pass  # swallowed
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    finally:
        interrupts._interrupted.clear()
        signal.signal(signal.SIGINT, previous)


_INTERRUPTED_IN_EXEC = """
import sys

from dynsparse import cli
from dynsparse.policies import ppo_train


def interrupted(*args, **kwargs):
    exec("raise KeyboardInterrupt", {})  # as a Ctrl-C inside a dataclass's creation would


cli._COMMANDS["validate"] = interrupted
ppo_train.train = interrupted
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv, hint", [
    (["validate", "x.zarr"], "run the same command again to resume"),
    (["train-policy", "CartpoleBalance", "--out", "p"], "--resume"),
], ids=["main", "train-policy"])
def test_ctrl_c_escaping_string_compiled_code_still_exits_130_under_python_m(tmp_path, argv, hint):
    """A ``KeyboardInterrupt`` that escapes ``exec`` of a string (CPython records it process-wide)
    and that the CLI catches: ``python -m`` must exit with the CLI's 130, not by SIGINT (-2, as
    1 in ~10 interrupted pipelined sweeps did before ``interrupts.handled``)."""
    (tmp_path / "interrupted_in_exec.py").write_text(_INTERRUPTED_IN_EXEC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "interrupted_in_exec", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == cli.EXIT_INTERRUPTED, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dynsparse: interrupted") and hint in last


# ----------------------------------------------------------------------------- HTML


def test_report_html_escapes_crafted_summary_values(bouncer_analysis):
    from dynsparse import results
    from dynsparse.render import html as html_lib

    summary = json.loads((bouncer_analysis / "summary.json").read_text())
    evil = '"><script>alert(1)</script>'
    summary["env"] = evil
    summary["table"]["env"] = evil
    summary["data"]["episodes"] = "<b>3</b>"
    summary["options"]["threshold"] = "<i>x</i>"
    page = html_lib.page("t", [(results.AnalysisSummary.from_json(summary), bouncer_analysis)])
    assert "<script>" not in page and "<b>3</b>" not in page and "<i>x</i>" not in page
    assert 'id="env-0-___script_alert_1___script_"' in page and 'href="#env-0-___script_alert_1___script_"' in page


# ----------------------------------------------------------------------------- bad input


def _policy_copy(tmp_path: Path, name: str, change) -> Path:
    src = Path(__file__).resolve().parents[1] / "policies" / "CartpoleBalance"
    dst = tmp_path / name
    shutil.copytree(src, dst)
    meta = json.loads((dst / "policy.json").read_text())
    change(meta)
    (dst / "policy.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize("change, expected", [
    (lambda m: m.pop("env"), "lacks 'env'"),
    (lambda m: m.update(obs_size="x"), "'obs_size' is 'x'"),
    (lambda m: m["network"].update(policy_hidden=[32, 32]), "do not fit"),
])
def test_a_damaged_policy_json_is_one_line(tmp_path, capsys, change, expected):
    policy = _policy_copy(tmp_path, "p", change)
    code, err = _run(capsys, "collect", "CartpoleBalance", "--policy", f"ppo:{policy}", "--episodes", "1", "--steps", "4",
                     "--out", tmp_path / "x.zarr")
    [line] = _error_lines(err)
    assert code == cli.EXIT_USER_ERROR and expected in line and not (tmp_path / "x.zarr").exists()


def test_a_negative_seed_is_refused_before_any_store_exists(tmp_path, capsys):
    code, err = _run(capsys, "collect", "CartpoleBalance", "--seed", "-1", "--out", tmp_path / "x.zarr")
    assert code == cli.EXIT_USER_ERROR and "'-1' is not allowed; allowed: an integer in 0 .. 2**32 - 1" in _error_lines(err)[0]
    assert list(tmp_path.iterdir()) == []


def test_unwritable_outputs_are_one_line(bouncer_store, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, err = _run(capsys, "analyze", bouncer_store, "--out", blocker, "--no-tsne")
    assert code == cli.EXIT_USER_ERROR and "is a file, not a folder" in _error_lines(err)[0] and blocker.read_text() == "x"
    code, err = _run(capsys, "collect", "CartpoleBalance", "--episodes", "1", "--steps", "4", "--out", blocker / "x.zarr")
    assert code == cli.EXIT_USER_ERROR and "cannot write" in _error_lines(err)[0]
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        code, err = _run(capsys, "analyze", bouncer_store, "--out", ro / "an", "--no-tsne")
        assert code == cli.EXIT_USER_ERROR and "cannot write" in _error_lines(err)[0]


def _bad_inputs(ws: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """~100 malformed invocations of every command: (label, argv). Every one must be refused."""
    new = str(ws["root"] / "new-output")
    store, damaged, file, empty = (str(ws[k]) for k in ("store", "damaged", "file", "empty"))
    collect = ["collect", "CartpoleBalance", "--episodes", "1", "--steps", "4"]
    cases: list[tuple[str, list[str]]] = []
    for flag, values in {
        "--episodes": ["0", "-3", "x", "1.5", ""], "--steps": ["0", "-1", "nan"], "--seed": ["-1", str(2**40), "x"],
        "--check-every": ["-1", "x"], "--batch-size": ["0", "-2"], "--chunk-steps": ["0", "y"],
        "--backend": ["bogus", ""], "--dtype": ["float16", "x"], "--jacobian": ["bogus", "as_run"],
        "--policy": ["bogus", "ppo:/nonexistent/dir", f"ppo:{file}", f"ppo:{empty}"],
        "--noise-beta": ["nan", "x", "inf"], "--noise-scale": ["-1", "nan", "inf"],
    }.items():
        for v in values:
            noise = ["--policy", "colored"] if flag.startswith("--noise") else []
            cases.append((f"collect {flag} {v!r}", collect + noise + [flag, v, "--out", new]))
    for env in ["", "Cartpole", "../x", "CheetaRun", "mjcf:"]:
        cases.append((f"collect env {env!r}", ["collect", env, "--out", new]))
    for out in [file, store, damaged, empty + "/../" + Path(file).name, file + "/x.zarr"]:
        cases.append((f"collect --out {Path(out).name}", collect + ["--out", out]))
    cases.append(("collect --policy colored, --noise-beta on random", collect + ["--noise-beta", "1", "--out", new]))
    for path in ["/nonexistent.zarr", file, empty, damaged]:
        for cmd in (["structure"], ["validate"], ["analyze", "--out", new, "--no-tsne"], ["learn", "--out", new, "--quick"]):
            cases.append((f"{cmd[0]} {Path(path).name}", cmd[:1] + [path] + cmd[1:]))
    for flag, values in {"--threshold": ["-1", "nan", "x"], "--shuffles": ["-1", "x"], "--perplexity": ["0", "-1"],
                         "--max-points": ["0"], "--episode": ["99", "-1"], "--bin-width": ["0", "nan"], "--seed": ["-1"]}.items():
        for v in values:
            cases.append((f"analyze {flag} {v!r}", ["analyze", store, "--out", new, "--no-tsne", flag, v]))
    cases.append(("analyze --out existing file", ["analyze", store, "--out", file, "--no-tsne"]))
    cases.append(("structure --threshold -1", ["structure", store, "--threshold", "-1"]))
    cases.append(("structure --threshold nan", ["structure", store, "--threshold", "nan"]))
    for flag, values in {"--losses": ["bogus", ""], "--seeds": ["0", "-1"], "--epochs": ["0"], "--lr": ["-1", "nan"],
                         "--hidden": ["x", "0"], "--jac-weight": ["-1"], "--batch-size": ["0"]}.items():
        for v in values:
            cases.append((f"learn {flag} {v!r}", ["learn", store, "--out", new, flag, v]))
    cases.append(("learn --out existing", ["learn", store, "--out", file]))
    for folders in (["/nonexistent"], [store], [empty], [file]):
        cases.append((f"report {Path(folders[0]).name}", ["report", *folders, "--out", new]))
    cases.append(("report --out file", ["report", empty, "--out", file]))
    for name, text in {"garbage.toml": "[[[", "bad-env.json": json.dumps({"envs": ["Nope"], "policies": ["random"]}),
                       "neg.json": json.dumps({"envs": ["CartpoleBalance"], "policies": ["random"], "episodes": -1}),
                       "list.json": "[1, 2]"}.items():
        cfg = ws["root"] / name
        cfg.write_text(text)
        cases.append((f"sweep {name}", ["sweep", str(cfg), "--out", new]))
    good = ws["root"] / "good.json"
    good.write_text(json.dumps({"envs": ["CartpoleBalance"], "policies": ["random"], "episodes": 1, "steps": 4}))
    cases += [("sweep missing config", ["sweep", "/nonexistent.toml", "--out", new]),
              ("sweep --workers 0", ["sweep", str(good), "--out", new, "--workers", "0"]),
              ("sweep --only bogus", ["sweep", str(good), "--out", new, "--only", "bogus"]),
              ("sweep --out file", ["sweep", str(good), "--out", file])]
    for flag, v in [("--envs", "Bogus"), ("--seed", "-1"), ("--jacobian", "bogus"), ("--policies", "/nonexistent"),
                    ("--noise-scale", "-1")]:
        cases.append((f"reproduce {flag} {v}", ["reproduce", "--out", new, flag, v]))
    cases.append(("reproduce --out file", ["reproduce", "--out", file, "--quick"]))
    for args in (["Bogus"], ["CartpoleBalance", "--timesteps", "0"], ["CartpoleBalance", "--timesteps", "x"],
                 ["CartpoleBalance", "--noise-beta", "nan"], ["CartpoleBalance", "--set", "bogus=1"],
                 ["CartpoleBalance", "--set", "noequals"]):
        cases.append((f"train-policy {' '.join(args)}", ["train-policy", *args, "--out", new]))
    cases.append(("train-policy --out non-empty", ["train-policy", "CartpoleBalance", "--out", str(ws["root"])]))
    for out in [file, str(ws["root"] / "g.csv"), str(ws["root"] / "g")]:
        cases.append((f"graphs --out {Path(out).name}", ["graphs", store, "--out", out]))
    cases.append(("graphs damaged", ["graphs", damaged, "--out", str(ws["root"] / "g.npz")]))
    for pred in ["/nonexistent.npz", file, empty]:
        cases.append((f"score {Path(pred).name}", ["score", store, pred]))
    cases.append(("score --json existing", ["score", store, file, "--json", file]))
    cases += [("unknown command", ["bogus"]), ("no command", []), ("envs extra", ["envs", "x"])]
    return cases + _random_bad_inputs(ws, np.random.default_rng(19), 60)


#: numeric options of each command, and values no numeric option accepts
_NUMERIC = {
    ("collect", "CartpoleBalance"): ("--episodes", "--steps", "--seed", "--check-every", "--batch-size", "--chunk-steps"),
    ("analyze", "STORE"): ("--threshold", "--shuffles", "--perplexity", "--max-points", "--episode", "--bin-width", "--seed"),
    ("structure", "STORE"): ("--threshold",),
    ("learn", "STORE"): ("--seeds", "--epochs", "--lr", "--batch-size", "--jac-weight", "--model-threshold", "--true-threshold"),
    ("reproduce",): ("--seed",),
    ("train-policy", "CartpoleBalance"): ("--timesteps", "--budget-scale", "--seed"),
    ("graphs", "STORE"): ("--threshold",),
}
_NEVER_NUMERIC = ("nan", "x", "", "-1", "inf", "-inf", "1e999", "0x10", "1,5")


def _random_bad_inputs(ws: dict[str, Path], rng: np.random.Generator, n: int) -> list[tuple[str, list[str]]]:
    """``n`` random invocations: a command, 1-3 of its numeric options with values none of them
    accepts, the rest valid, in random order."""
    commands = list(_NUMERIC)
    out = []
    for _ in range(n):
        head = list(commands[rng.integers(len(commands))])
        flags = rng.choice(_NUMERIC[tuple(head)], size=min(len(_NUMERIC[tuple(head)]), int(rng.integers(1, 4))), replace=False)
        args = [a for f in flags for a in (str(f), str(rng.choice(_NEVER_NUMERIC)))]
        pairs = [args[i:i + 2] for i in range(0, len(args), 2)]
        rng.shuffle(pairs)
        argv = [str(ws["store"]) if h == "STORE" else h for h in head] + [a for p in pairs for a in p]
        if head[0] != "structure":
            argv += ["--out", str(ws["root"] / ("new-output.npz" if head[0] == "graphs" else "new-output"))]
        names = {str(ws["store"]): "STORE", str(ws["root"] / "new-output"): "NEW", str(ws["root"] / "new-output.npz"): "NEW.npz"}
        out.append(("random: " + " ".join(repr(a) if a == "" else names.get(a, a) for a in argv), argv))
    return out


@pytest.fixture()
def workspace(bouncer_store, tmp_path):
    ws = {"root": tmp_path, "store": _copy(bouncer_store, tmp_path, "store.zarr"),
          "damaged": _copy(bouncer_store, tmp_path, "damaged.zarr"), "file": tmp_path / "a-file.txt", "empty": tmp_path / "empty"}
    _chunk(ws["damaged"], "J_s", unit=0).unlink()
    ws["file"].write_text("not a dataset")
    ws["empty"].mkdir()
    return ws


def test_bad_inputs_never_end_in_a_traceback_nor_change_anything(workspace, capsys):
    """Every command, 125 chosen and 60 random malformed invocations: a non-zero exit, a short error on stderr with no
    traceback, and the workspace (stores, files, folders) exactly as it was."""
    cases = _bad_inputs(workspace)
    assert len(cases) >= 180
    before = _tree_hash(workspace["root"])
    outcomes = []
    for label, argv in cases:
        reports = argv[:1] == ["validate"]  # validate's findings are its output (stdout, exit 1)
        code, err = _run(capsys, *argv, stdout=reports)
        lines = _error_lines(err)
        outcomes.append((label, code, lines[0] if lines else ""))
        assert code != 0, (label, err)
        assert "Traceback" not in err and (len(lines) == 1 or reports and lines), (label, err)
        assert not list(workspace["root"].glob("new-output*")), label
        assert _tree_hash(workspace["root"]) == before, label
    table = "\n".join(f"{label} | {code} | {line}" for label, code, line in outcomes)
    out = os.environ.get("DYNSPARSE_BAD_INPUT_TABLE")
    if out:  # the closing note's table
        Path(out).write_text(table + "\n")


def test_a_waiter_names_a_holder_that_has_not_yet_written_its_pid(tmp_path):
    """A holder writes its pid just after taking the lock: a waiter that finds the file still empty
    reads it again (the race seen in CI: "waiting for process ?")."""
    import threading
    import time as _time


    file = tmp_path / "p.lock"
    file.write_text("")

    def write_later() -> None:
        _time.sleep(0.2)
        file.write_text("4321")

    writer = threading.Thread(target=write_later)
    writer.start()
    assert locks._holder(file) == "4321"
    writer.join()
    file.write_text("")
    assert locks._holder(file, patience_s=0.05) == "?"
