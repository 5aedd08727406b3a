"""``xla``: the CPU compiler options and the CPU device count asked of JAX."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from dynsparse import xla


def test_fusion_emitters_are_off_on_cpu_unless_asked_for(monkeypatch):
    monkeypatch.delenv(xla.ENV_VAR, raising=False)
    assert xla.compiler_options() == {"xla_cpu_use_fusion_emitters": False}
    monkeypatch.setenv(xla.ENV_VAR, "1")
    assert xla.compiler_options() == {}


def test_one_cpu_device_per_core_or_as_asked_before_jax_starts():
    """In a fresh process: ``$DYNSPARSE_CPU_DEVICES`` sets the count; once JAX has started, a
    second call changes nothing (and does not raise)."""
    code = (
        "import json, jax; from dynsparse import xla\n"
        "n = xla.use_cpu_cores(); first = len(jax.devices())\n"
        "again = xla.use_cpu_cores(5)\n"
        "print(json.dumps([n, first, again, len(jax.devices()), jax.devices()[0].platform]))\n"
    )
    env = {**os.environ, xla.DEVICES_ENV_VAR: "3", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [3, 3, 5, 3, "cpu"]
