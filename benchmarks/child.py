"""Run a benchmark's measuring code in a fresh Python process and read back its one result.

A fresh process per variant is what makes a cold measurement cold (no traced, compiled or
imported state carried over) and keeps monkeypatched variants apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

PREFIX = "RESULT "


def run(code: str, args: list[str], what: str, env: dict[str, str] | None = None) -> Any:
    """Run ``python -c code *args``; return the JSON it printed on its last ``RESULT `` line.

    Raises:
      SystemExit: the process failed or printed no result (``what`` names it, with its stderr tail).
    """
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode or not lines:
        raise SystemExit(f"{what} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(PREFIX):])
