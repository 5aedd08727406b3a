"""``collect``: the automatic batch size and how a resume keeps the stored one."""

from __future__ import annotations

import shutil

import pytest

from dynsparse import collect, errors


@pytest.mark.parametrize("episodes, batch", [(1, 1), (10, 10), (64, 64), (65, 33), (100, 50), (128, 64), (129, 43)])
def test_auto_batch_size_is_balanced_and_at_most_64(episodes, batch):
    assert collect.auto_batch_size(episodes) == batch
    n = -(-episodes // batch)
    assert batch <= collect.AUTO_BATCH and n * batch - episodes < n  # fewer padded episodes than batches


def test_default_batch_size_resolves_and_explicit_is_kept():
    base = dict(env="CartpoleBalance", episodes=100, steps=10, policy={"name": "random"})
    assert collect.CollectConfig(**base).validated().batch_size == 50
    assert collect.CollectConfig(**base, batch_size=16).validated().batch_size == 16
    assert collect.CollectConfig(**{**base, "episodes": 3}, batch_size=16).validated().batch_size == 3
    with pytest.raises(errors.UserError, match="episodes 0 is not allowed; allowed: an integer > 0"):
        collect.CollectConfig(**{**base, "episodes": 0}).validated()


def test_a_resume_with_the_default_batch_size_takes_the_stored_one(bouncer_store, tmp_path, monkeypatch):
    assert collect.stored_batch_size(tmp_path / "missing.zarr") is None
    (tmp_path / "not_a_store").mkdir()
    assert collect.stored_batch_size(tmp_path / "not_a_store") is None
    assert collect.stored_batch_size(bouncer_store) == 3  # the fixture's explicit batch size
    copy = tmp_path / "copy.zarr"
    shutil.copytree(bouncer_store, copy)
    from dynsparse import envs
    from models import BOUNCER

    spec = envs.from_mjcf(BOUNCER, name="Bouncer", n_substeps=2, init_noise=0.05)
    config = collect.CollectConfig(
        env="Bouncer", episodes=3, steps=80, policy={"name": "colored", "beta": 1.0, "scale": 1.0}, seed=0,
        check_every=10, chunk_steps=40,
    )  # batch size left to the default, which would now be 2: the stored 3 is taken, not refused
    monkeypatch.setattr(collect, "AUTO_BATCH", 2)
    assert collect.auto_batch_size(3) == 2

    def no_runner(*args, **kwargs):
        raise AssertionError("a complete store needs no compiled programs")

    monkeypatch.setattr(collect, "_Runner", no_runner)  # nothing to compute: nothing built or loaded
    seen = []
    assert collect.collect(config, copy, spec=spec, on_progress=seen.append) == copy
    assert [(p.unit, p.n_units, p.steps_done, p.steps_total) for p in seen] == [(2, 2, 240, 240)]
    with pytest.raises(errors.UserError, match="batch_size: stored 3, requested 2"):
        collect.collect(collect.CollectConfig(**{**config.__dict__, "batch_size": 2}), copy, spec=spec)
