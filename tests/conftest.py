"""Shared fixtures: compiled functions are built once per session and reused across tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# One JAX compilation cache for the whole test session (and for the subprocesses the resume
# test starts), so each (env, batch shape) compiles once per machine.
os.environ.setdefault("DYNSPARSE_JAX_CACHE", str(Path(tempfile.gettempdir()) / "dynsparse-test-jax-cache"))

# One CPU device in this process and in the subprocesses tests start (results compared bit for
# bit against in-process references); tests of the split over devices ask for 2 explicitly.
os.environ.setdefault("DYNSPARSE_CPU_DEVICES", "1")

# No build-ahead process beside the pipeline's tiny test studies (its JAX start-up would cost more
# than it saves there); tests/test_buildahead.py turns it on.
os.environ.setdefault("DYNSPARSE_BUILD_AHEAD", "0")

from dynsparse import jaxcache  # noqa: E402

jaxcache.enable()


@pytest.fixture(scope="session")
def cartpole():
    from dynsparse import envs

    return envs.load("CartpoleBalance")


@pytest.fixture(scope="session")
def cartpole_jac(cartpole):
    import jax

    from dynsparse.jacobians import autodiff

    return jax.jit(autodiff.make_jacobian_fn(cartpole))


@pytest.fixture(scope="session")
def bouncer_store(tmp_path_factory):
    """A small real dataset with contacts coming and going (3 episodes x 80 steps of a ball pushed
    over a floor, colored-noise actions, finite-difference checks every 10 steps)."""
    from models import BOUNCER

    from dynsparse import collect, envs

    spec = envs.from_mjcf(BOUNCER, name="Bouncer", n_substeps=2, init_noise=0.05)
    config = collect.CollectConfig(
        env="Bouncer", episodes=3, steps=80, policy={"name": "colored", "beta": 1.0, "scale": 1.0}, seed=0,
        check_every=10, batch_size=3, chunk_steps=40,
    ).validated()
    out = tmp_path_factory.mktemp("bouncer") / "bouncer.zarr"
    collect.collect(config, out, spec=spec)
    return out


@pytest.fixture(scope="session")
def bouncer_analysis(bouncer_store, tmp_path_factory):
    """The analysis folder of ``bouncer_store`` (default options, fewer shuffles)."""
    from dynsparse import analysis

    out = tmp_path_factory.mktemp("bouncer-analysis") / "analysis"
    return analysis.analyze(bouncer_store, out, analysis.AnalyzeOptions(shuffles=50))
