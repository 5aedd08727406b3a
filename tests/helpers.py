"""Small helpers shared by the tests."""

from pathlib import Path


def one_error_line(err: str) -> str:
    """The CLI's stderr must hold exactly one non-empty line (the error); return it."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[-1]


def rerecord_checksums(store) -> None:
    """Record the current chunk files of every unit of ``store`` as written (tests that alter a
    store's content on purpose, to check the consistency checks behind the checksums)."""
    from dynsparse import dataset, manifest

    ds = dataset.open_dataset(store, verify=False)
    layout = dataset.layout_of(dataset.read_config(ds), ds)
    for unit in range(layout.n_units):
        manifest.record_unit(store, unit, dataset.unit_chunks(layout, unit))



def interrupt_after_first_unit(config, out, spec=None) -> None:
    """Collect ``config`` (a ``collect.CollectConfig``) into ``out`` and stop it once its first
    unit is written: an unfinished store to resume (``spec``: an explicit ``envs.EnvSpec``)."""
    import pytest

    from dynsparse import collect

    class Stop(Exception):
        pass

    def stop_after_first(p) -> None:
        if p.unit == 1:
            raise Stop

    with pytest.raises(Stop):
        collect.collect(config, out, on_progress=stop_after_first, spec=spec)


def hold_lock(file: str, ready, seconds: float) -> None:
    """Hold the lock ``file`` (``dynsparse.locks``) for ``seconds``, setting the event ``ready``
    once held (a ``multiprocessing`` child's target: a process that builds a program)."""
    import time

    from dynsparse import locks

    with locks.wait(file):
        ready.set()
        time.sleep(seconds)


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def native_threads() -> dict:
    """In this process: the one-thread variables and the thread count of every native thread pool
    loaded once scikit-learn's t-SNE is imported (threadpoolctl)."""
    import os

    import sklearn.manifold  # noqa: F401 - loads scikit-learn's OpenMP runtime
    from threadpoolctl import threadpool_info

    from dynsparse.sweep import ONE_THREAD_VARS

    return {"env": {k: os.environ.get(k) for k in ONE_THREAD_VARS},
            "pools": sorted({(i["internal_api"], i["num_threads"]) for i in threadpool_info()})}
