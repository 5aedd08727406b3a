"""The import graph of ``src/dynsparse``: no circle, and no stage imports a later one.

Every ``import`` counts, also those inside functions (a lazy import is still an arrow). The
stages are README's "Architecture" list; a new module must be placed in it here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dynsparse"

#: (rank, pattern on the module name without "dynsparse."): a module may import equal or lower ranks
STAGES = (
    (0, r"^(errors|options|files|locks|interrupts|versions|upstream|xla|jaxcache|exported|manifest|tangent)$"),
    (1, r"^(sources|envs)$"),
    (2, r"^policies(\.|$)"),
    (3, r"^jacobians(\.|$)"),
    (4, r"^(rollout|native_rollout)$"),
    (5, r"^dataset$"),
    (6, r"^(collect|buildahead)$"),
    (7, r"^(metrics(\.|$)|graphs$)"),
    (8, r"^results$"),
    (9, r"^render(\.|$)"),
    (10, r"^(analysis$|learn(\.|$))"),
    (11, r"^report(\.|$)"),
    (12, r"^(sweep|reproduce|cli)$"),
    (13, r"^__main__$"),
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__") if name != "__init__" else ""] = path
    return out


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the dynsparse modules it imports (``from pkg import sub`` counts as ``pkg.sub``)."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}".removeprefix("dynsparse.") in mods
                           else node.module for a in node.names]
            for t in targets:
                if t == "dynsparse" or t.startswith("dynsparse."):
                    r = resolve(t.removeprefix("dynsparse").removeprefix("."))
                    if r is not None and r != name:
                        edges.setdefault(name, set()).add(r)
    return edges


def _rank(name: str) -> float:
    for rank, pattern in STAGES:
        if re.search(pattern, name):
            return rank
    raise AssertionError(f"module dynsparse.{name} is in no stage: add it to README's Architecture and to STAGES")


def test_every_module_has_a_stage():
    for name in _modules():
        if name:  # the package's own __init__
            _rank(name)


def test_no_import_circle():
    mods = _modules()
    edges = _edges(mods)
    state: dict[str, int] = {}

    def visit(v: str, path: list[str]) -> None:
        state[v] = 1
        for w in sorted(edges.get(v, ())):
            if state.get(w) == 1:
                cycle = path[path.index(w):] + [v, w] if w in path else [v, w]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if w not in state:
                visit(w, path + [v])
        state[v] = 2

    for v in sorted(mods):
        if v not in state:
            visit(v, [])


def test_no_stage_imports_a_later_one():
    edges = _edges(_modules())
    up = sorted(f"{a} -> {b}" for a, bs in edges.items() if a for b in bs if b and _rank(b) > _rank(a))
    assert not up, "imports pointing back up the pipeline: " + "; ".join(up)


def test_the_check_sees_a_lazy_import_and_a_circle(tmp_path, monkeypatch):
    """The checks can fail: an import inside a function is an arrow, a mutual import a circle."""
    pkg = tmp_path / "dynsparse"
    (pkg / "report").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from dynsparse.report import build\n")
    (pkg / "report" / "__init__.py").write_text("")
    (pkg / "report" / "build.py").write_text("from dynsparse import errors\n")
    monkeypatch.setattr(__import__(__name__), "SRC", pkg)
    edges = _edges(_modules())
    assert edges == {"errors": {"report.build"}, "report.build": {"errors"}}
    with pytest.raises(pytest.fail.Exception, match="import circle"):
        test_no_import_circle()
    with pytest.raises(AssertionError, match="errors -> report.build"):
        test_no_stage_imports_a_later_one()


#: import name -> distribution name where they differ
DISTRIBUTIONS = {"mujoco_playground": "playground", "sklearn": "scikit-learn", "dm_control": "dm-control",
                 "yaml": "pyyaml", "jinja2": "jinja2", "markupsafe": "jinja2"}


def test_every_third_party_import_is_declared():
    """Each package ``src/dynsparse`` imports (at any depth) is a dependency in pyproject.toml
    (``markupsafe`` comes with ``jinja2``)."""
    import sys
    import tomllib

    project = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    imported: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third = {m for m in imported if m not in sys.stdlib_module_names and m != "dynsparse"}
    missing = sorted(m for m in third if DISTRIBUTIONS.get(m, m).lower() not in declared)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert "jinja2" in third and "optax" in third  # the check sees lazy imports


def test_public_api_modules_load_on_first_use():
    """``import dynsparse`` is cheap (no JAX); every public module is reachable as an attribute."""
    import subprocess
    import sys

    code = ("import sys, dynsparse; assert 'jax' not in sys.modules and 'mujoco' not in sys.modules; "
            "[getattr(dynsparse, m) for m in dynsparse.__all__]; print(sorted(dynsparse.__all__))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import dynsparse

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dynsparse.nope  # noqa: B018


#: modules whose tests live in a file not named after them (nor their package): the file, and why
TESTED_IN = {
    "interrupts": ("test_reliability.py", "Ctrl-C is one of the reliability guarantees tested there"),
    "locks": ("test_reliability.py", "one writer at a time, with the other reliability guarantees"),
    "manifest": ("test_reliability.py", "checksums of damaged stores, with the other reliability guarantees"),
    "jaxcache": ("test_exported.py", "the compilation cache is the other half of the kept programs"),
    "jacobians.autodiff": ("test_backends.py", "autodiff against finite differences: the two backends together"),
    "jacobians.compare": ("test_jacobian_methods.py", "comparisons of the Jacobian methods and definitions"),
    "jacobians.definitions": ("test_jacobian_methods.py", "comparisons of the Jacobian methods and definitions"),
    "policies.checkpoint": ("test_ppo.py", "PPO checkpoints: written by training, read by the acting policy"),
    "policies.ppo_networks": ("test_ppo.py", "the networks of the acting PPO policy"),
    "policies.ppo_loop": ("test_ppo_train.py", "the resumable training loop"),
    "policies.replay": ("test_sources.py", "recorded trajectories are a model source's input (--from)"),
    "render.figures": ("test_analysis.py", "the figures are checked in the analyses that draw them"),
    "render.html": ("test_analysis.py", "the pages are checked in the analyses that write them"),
    "render.learn_figures": ("test_learn.py", "drawn from learn's records"),
    "report.build": ("test_analysis.py", "a report needs analyses: built and checked there (and in the browser)"),
}


def _imports(test: Path, module: str) -> bool:
    """Whether the test file imports ``dynsparse.<module>`` by name."""
    text = test.read_text()
    pkg, _, last = module.rpartition(".")
    patterns = [rf"import dynsparse\.{re.escape(module)}\b", rf"from dynsparse\.{re.escape(module)} import"]
    patterns.append(rf"from dynsparse\.{re.escape(pkg)} import [^\n]*\b{last}\b" if pkg else rf"from dynsparse import [^\n]*\b{last}\b")
    return any(re.search(p, text) for p in patterns)


def test_every_module_has_its_tests():
    """Each module is imported by ``tests/test_<module>*.py`` or ``tests/test_<package>*.py``, or
    by the file ``TESTED_IN`` names (with why); the map names no module twice over."""
    tests_dir = Path(__file__).parent
    missing = []
    for name, path in _modules().items():
        if not name or name == "__main__" or (path.name == "__init__.py" and not re.search(r"^(def|class) ", path.read_text(), re.M)):
            continue  # the package itself, the entry point, a package file without code of its own
        parts = name.split(".")
        prefixes = {f"test_{parts[-1]}", f"test_{'_'.join(parts)}", f"test_{parts[0]}"}
        candidates = [p for p in tests_dir.glob("test_*.py") if any(p.stem.startswith(x) for x in prefixes)]
        if any(_imports(p, name) for p in candidates):
            assert name not in TESTED_IN, f"{name} has tests named after it: drop it from TESTED_IN"
            continue
        if name in TESTED_IN and _imports(tests_dir / TESTED_IN[name][0], name):
            continue
        missing.append(name)
    assert missing == [], f"modules without tests named after them (or a TESTED_IN entry): {missing}"
