"""Shared fixtures: compiled functions are built once per session and reused across tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# One JAX compilation cache for the whole test session (and for the subprocesses the resume
# test starts), so each (env, batch shape) compiles once per machine.
os.environ.setdefault("DYNSPARSE_JAX_CACHE", str(Path(tempfile.gettempdir()) / "dynsparse-test-jax-cache"))

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
