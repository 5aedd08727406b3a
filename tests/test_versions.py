"""``versions``: installed versions as recorded in datasets and checkpoints."""

from __future__ import annotations

import numpy as np

from dynsparse import versions


def test_installed_and_missing_packages():
    got = versions.package_versions(["numpy", "dynsparse-no-such-package"])
    assert got == {"numpy": np.__version__, "dynsparse-no-such-package": "not installed"}
    assert versions.package_versions([]) == {}
