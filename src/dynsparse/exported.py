"""Serialized programs (``jax.export``), so a later command skips tracing the control step.

JAX's persistent compilation cache (``jaxcache``) saves the XLA compile of the rollout chunk and
of the reset, but not the Python tracing and lowering before it, which is most of a command's
start-up (measured on CheetahRun, batch 16, warm XLA cache: reset 13 s + chunk 27-31 s of
tracing, 2 s of cache-hit compile). :class:`Cached` wraps a jitted function: on its first call
with given argument shapes it looks for a serialized StableHLO module (``jax.export``) under
``<jax cache>/exported/``; found, it deserializes it (~0.04 s) and compiles it (an XLA-cache hit
after the first time); not found, it traces and exports once, writes the module, and runs the
exported module itself (so a cold run compiles once, as before). Outputs are bit-identical to the
traced function's (tested).

The compiled executable is kept too (``jax.experimental.serialize_executable``, a ``.xla`` file
beside the module, its name tagged with a digest of this CPU's model and instruction-set flags:
XLA compiles for the host CPU). A later process on the same machine loads it directly: no
deserialising, lowering or XLA cache lookup of the module (CheetahRun's chunk: ~5 s -> see the
README's start-up table). Without it (another CPU, an unreadable file) the module is compiled
again and the executable rewritten. ``Cached.prefetch`` starts loading the executable a function last used in
a background thread as soon as the function is made (file names start with the function's
name and a digest of everything but its arguments, so that file is found before the arguments
are known).

Processes sharing the cache build each program once: building one (compiling its module, or
tracing, exporting and compiling) holds ``<name>.lock`` beside its files (``locks.wait``), and a
process that needs the same program meanwhile waits (a warning names the builder's process id),
then loads the executable the builder kept (sweep workers collecting the same environment, or two
commands started together). A killed builder leaves its lock file, and a writer killed mid-write
its temporary file: ``prune`` removes both (``remove_leftovers``).

A stale program would be a wrong measurement, so the file's key covers everything the traced
function depends on: the caller's identity (environment name, the MuJoCo model's binary, its
substeps and dtype, the environment's configuration and its class's source file, the policy's
configuration, the Jacobian options), the argument tree, shapes, dtypes, weak types and
shardings, the installed versions of dynsparse's numerical dependencies, a digest of every
dynsparse source file, the x64 flag, the backend and devices, ``XLA_FLAGS`` and the compiler
options. Any change gives a new key (a new file); nothing is ever reused across them. The folder is kept
under ``$DYNSPARSE_EXPORTED_MAX_MB`` (default 2048) by deleting the least recently used programs
(``prune``). With
``--jax-cache off`` (or ``DYNSPARSE_EXPORTED=off``) nothing is read or written. A file that cannot be read is ignored (with a
warning) and rewritten; a function that cannot be exported runs traced, as before.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import inspect
import io
import json
import logging
import os
import pickle
import re
import sys
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

from dynsparse import locks

log = logging.getLogger(__name__)

FORMAT = 1
#: ``DYNSPARSE_EXPORTED=off`` traces every program as before (the XLA cache still applies): for
#: benchmarks that measure what exporting saves
OFF_VAR = "DYNSPARSE_EXPORTED"
#: ``DYNSPARSE_EXPORTED_MAX_MB``: the most megabytes ``exported/`` may hold; after each new file the
#: least recently used programs are deleted beyond it (``prune``); 0 keeps everything
MAX_MB_VAR = "DYNSPARSE_EXPORTED_MAX_MB"
DEFAULT_MAX_MB = 2048
#: programs used this recently (seconds; their files' newest modification time) are never pruned:
#: another process sharing the folder may be about to load them
RECENT_S = 600.0
#: the programs this process prefetched, loaded or wrote (file stems): never pruned by it
_IN_USE: set[str] = set()
DEPENDENCIES = ("jax", "jaxlib", "mujoco", "mujoco-mjx", "playground", "brax", "flax", "numpy", "ml_collections")


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 over every ``.py`` file of the installed dynsparse package (names and contents)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def model_digest(model: Any) -> str:
    """SHA-256 of a ``mujoco.MjModel``'s binary form (``mj_saveModel``)."""
    import mujoco
    import numpy as np

    buf = np.empty(mujoco.mj_sizeModel(model), np.uint8)
    mujoco.mj_saveModel(model, None, buf)
    return hashlib.sha256(buf.tobytes()).hexdigest()


def env_identity(spec: Any) -> dict[str, Any]:
    """What the traced control step of an ``envs.EnvSpec`` depends on, as JSON values."""
    env = spec.env
    config = getattr(env, "_config", None)
    try:
        config_text = config.to_json() if hasattr(config, "to_json") else repr(config)
    except (TypeError, ValueError):
        config_text = repr(config)
    try:
        env_source = hashlib.sha256(Path(inspect.getsourcefile(type(env)) or "").read_bytes()).hexdigest()
    except (OSError, TypeError):
        env_source = type(env).__qualname__
    models = {model_digest(spec.mj_model)}
    if getattr(env, "mj_model", None) is not None and env.mj_model is not spec.mj_model:
        models.add(model_digest(env.mj_model))
    # how an own environment (envs.ModelEnv) draws initial states: its reset closes over them
    initial = getattr(env, "initial_state_identity", None)
    return {"name": spec.name, "class": f"{type(env).__module__}.{type(env).__qualname__}", "class_source": env_source,
            "models": sorted(models), "n_substeps": int(spec.n_substeps), "dtype": str(spec.dtype), "config": config_text,
            "initial_states": initial() if callable(initial) else None}


def program_environment() -> dict[str, Any]:
    """What every program's key holds besides its function and arguments: the format, the
    numerical dependencies' versions, dynsparse's source digest, Python, x64, backend, devices and
    ``XLA_FLAGS``."""
    return _environment()


def machine_tag() -> str:
    """This CPU's tag in executable file names (its model and instruction-set flags)."""
    return _machine_tag()


def _environment() -> dict[str, Any]:
    import jax

    from dynsparse.versions import package_versions

    return {"format": FORMAT, "versions": package_versions(DEPENDENCIES), "source": source_digest(),
            "python": sys.version.split()[0], "x64": bool(jax.config.read("jax_enable_x64")),
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _signature(leaves: list[Any], treedef: Any) -> tuple[list[Any], Any]:
    """The avals of flattened arguments and the signature a program is kept per: the tree, and
    each leaf's shape, dtype, weak type and layout over the devices."""
    avals = [_aval(x) for x in leaves]
    return avals, (treedef, tuple((a.shape, str(a.dtype), a.weak_type, _layout(a)) for a in avals))


def _aval(leaf: Any) -> Any:
    import jax

    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    weak = bool(getattr(jax.core.get_aval(leaf), "weak_type", False))
    sharding = getattr(leaf, "sharding", None)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding, weak_type=weak)


def _treedef_digest(treedef: Any) -> str:
    """A digest of an argument tree with its static data (``str(treedef)`` holds object addresses
    that change between processes): node types by name, static data canonicalised, arrays by
    content."""
    return hashlib.sha256(repr(_canonical_tree(treedef)).encode()).hexdigest()


def _canonical_tree(treedef: Any) -> Any:
    data = treedef.node_data()
    if data is None:
        return "*"
    kind, aux = data
    return (f"{kind.__module__}.{kind.__qualname__}", _canonical(aux), tuple(_canonical_tree(c) for c in treedef.children()))


def _canonical(x: Any) -> Any:
    """A repr-stable form of pytree static data (no object addresses)."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return ("ndarray", str(x.dtype), x.shape, hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest())
    if isinstance(x, (str, bytes, int, float, bool, complex, type(None), np.generic)):
        return repr(x)
    if isinstance(x, (tuple, list)):
        return (type(x).__name__, tuple(_canonical(v) for v in x))
    if isinstance(x, dict):
        return ("dict", tuple((repr(k), _canonical(v)) for k, v in x.items()))
    if isinstance(x, type):
        return f"type {x.__module__}.{x.__qualname__}"
    slots = getattr(type(x), "__slots__", None)
    fields = {k: getattr(x, k) for k in slots if hasattr(x, k)} if slots else getattr(x, "__dict__", None)
    if fields is not None:
        return (f"{type(x).__module__}.{type(x).__qualname__}", _canonical(dict(sorted(fields.items()))))
    text = repr(x)
    if " at 0x" in text:
        raise ValueError(f"pytree static data {type(x).__qualname__} has no stable description")
    return text


def _layout(aval: Any) -> str:
    """Which part of an array each device holds (the same for equivalent shardings of any type)."""
    if aval.sharding is None:
        return "-"
    if 0 in aval.shape:
        return "empty"  # nothing to place (JAX may replicate or split an empty output either way)
    return str(sorted((d.id, str(idx)) for d, idx in aval.sharding.devices_indices_map(aval.shape).items()))


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for the block (reference counting still frees
    everything that is not in a cycle), then restored as it was.

    Tracing a program allocates millions of small objects, and each few hundred allocations the
    collector walked them all: 5-7% of a cold build's CPU samples were ``gc_collect_main`` and its
    visitors (``perf``, CheetahRun, 2 episodes). Paused, tracing CheetahRun's chunk took 9.6-11.4 s
    instead of 12.9 s and its reset 4.1-5.1 s instead of 5.4 s, with the same peak memory
    (1.21-1.22 GB). ``gc`` is process-wide: a thread that leaves the block while another is in it
    re-enables it early, which only costs the other the saving.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Cached:
    """A jitted function whose traced program is kept on disk per argument signature.

    Args:
      fn: the ``jax.jit``-ed function (its ``__wrapped__`` is what gets exported).
      name: a short name for the files (``chunk``, ``reset``).
      identity: JSON values naming what ``fn`` closes over (see the module docstring).
      compiler_options: XLA options ``fn`` was jitted with (used to compile the exported module).
    """

    def __init__(self, fn: Callable[..., Any], name: str, identity: dict[str, Any],
                 compiler_options: dict[str, Any] | None = None):
        self.fn = fn
        self.name = name
        self.identity = identity
        self.compiler_options = compiler_options
        self._calls: dict[Any, tuple[Callable[..., Any], Any]] = {}
        self._prefetched: dict[Path, Any] = {}  # compiled path -> Future of _read_compiled
        #: how each signature was obtained: "loaded", "exported" or "traced" (for tests and timings)
        self.sources: dict[str, str] = {}

    def __call__(self, *args: Any) -> Any:
        import jax

        from dynsparse import jaxcache

        folder = jaxcache.current()
        if folder is None or os.environ.get(OFF_VAR) == "off":
            return self.fn(*args)
        leaves, treedef = jax.tree_util.tree_flatten(args)
        avals, signature = _signature(leaves, treedef)
        entry = self._calls.get(signature)
        if entry is None:
            entry = self._prepare(Path(folder) / "exported", treedef, avals, signature)
            self._calls[signature] = entry
        call, out_treedef = entry
        if out_treedef is None:
            return call(*args)
        return jax.tree_util.tree_unflatten(out_treedef, call(*leaves))

    def ensure(self, *args: Any) -> str:
        """Make sure this machine keeps the executable for ``args``' signature, without loading or
        running it: what a process building programs ahead of their use calls (``collect.prepare``).
        ``args`` may be arrays or ``jax.ShapeDtypeStruct`` s (with the sharding the call will have).

        Returns:
          ``"kept"`` (its executable is already on disk, or this function already holds it),
          ``"built"`` (compiled now, under the program's lock; or kept by another process while
          this one waited), ``"off"`` (no cache, or ``DYNSPARSE_EXPORTED=off``) or ``"traced"``
          (nothing can be kept: static data without a stable key, or a function that cannot be
          exported).
        """
        import jax

        from dynsparse import jaxcache

        folder = jaxcache.current()
        if folder is None or os.environ.get(OFF_VAR) == "off":
            return "off"
        leaves, treedef = jax.tree_util.tree_flatten(args)
        avals, signature = _signature(leaves, treedef)
        if signature in self._calls:
            return "kept"
        try:
            key = self.key(treedef, signature)
            stem = f"{self.name}-{self._family()}-{key[:40]}"
        except ValueError:
            return "traced"
        folder = Path(folder) / "exported"
        compiled_path = folder / f"{stem}-{_machine_tag()}.xla"
        if compiled_path.is_file():
            return "kept"
        with self._lock(folder, stem) as waited:
            if compiled_path.is_file():  # checked again under the lock (another process built it)
                return "built" if waited else "kept"
            self._build(folder, folder / f"{stem}.bin", compiled_path, key, treedef, avals)
        return "built" if compiled_path.is_file() else "traced"

    @contextlib.contextmanager
    def _lock(self, folder: Path, stem: str) -> Iterator[bool]:
        """Hold program ``stem``'s build lock (waiting while another process builds it, saying so:
        a warning naming the holder, or only a log line where the holder is this process's own
        build-ahead child, which a study starts to build exactly these programs); yields whether
        it waited. A read-only cache: no lock."""
        def on_wait(pid: str) -> None:
            if _own_child(pid):
                log.info("waiting for this process's build-ahead process %s, which is building the %s program %s",
                         pid, self.name, stem)
            else:
                log.warning("waiting for process %s, which is building the %s program %s", pid, self.name, stem)

        with contextlib.ExitStack() as stack:
            try:
                waited = stack.enter_context(locks.wait(folder / f"{stem}.lock", on_wait=on_wait))
            except OSError:  # a read-only cache: build without the lock, as before
                waited = False
            yield waited

    def prefetch(self) -> Path | None:
        """Start loading, in a background thread, the executable this function last used on this
        machine (the most recently used ``.xla`` file of its name and identity), so that the
        first call finds it loaded; returns that file, or ``None`` when there is none.

        Loading an executable takes 1-1.7 s of C++ that releases the GIL (CheetahRun's reset and
        chunk); started when the function is made, it overlaps the rest of a command's start-up
        and the other function's load. The first call uses the loaded executable only if its
        argument signature gives that very file (a call with other shapes loads or compiles its own,
        as without prefetching, and the prefetched one is dropped); a file that fails to load is
        handled at the call, as an unreadable one is. Nothing is prefetched twice, nor for a
        function that has already been called (``Cached`` objects are shared within a process).
        The file counts as in use by this process from here on (``prune``).
        """
        from dynsparse import jaxcache

        folder = jaxcache.current()
        if folder is None or os.environ.get(OFF_VAR) == "off" or self._calls or self._prefetched:
            return None  # off, or this function (shared within a process) already has its programs
        try:
            family = self._family()
        except ValueError:
            return None
        found = []
        for path in (Path(folder) / "exported").glob(f"{self.name}-{family}-*-{_machine_tag()}.xla"):
            try:
                found.append((path.stat().st_mtime, path))
            except OSError:  # pruned by another process meanwhile
                continue
        if not found:
            return None
        path = max(found)[1]
        _IN_USE.add(_stem(path))  # not pruned by this process before its first call
        self._prefetched[path] = _loader().submit(_read_compiled, path)
        return path

    def _family(self) -> str:
        """The part of every file name of this function that does not depend on its arguments
        (name, identity, environment, compiler options): 20 hex digits of SHA-256."""
        record = {"name": self.name, "identity": self.identity, "environment": _environment(),
                  "compiler_options": self.compiler_options}
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def key(self, treedef: Any, signature: Any) -> str:
        """The file key of one argument signature (SHA-256 hex)."""
        record = {"name": self.name, "identity": self.identity, "environment": _environment(),
                  "treedef": _treedef_digest(treedef), "avals": [list(map(str, s)) for s in signature[1]],
                  "compiler_options": self.compiler_options}
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()

    def _prepare(self, folder: Path, treedef: Any, avals: list[Any], signature: Any) -> tuple[Callable[..., Any], Any]:
        """The callable of one argument signature, loaded, compiled or traced (see the module
        docstring). Building a program (compiling a module, or tracing) holds its lock file, so
        that processes sharing the cache build each program once: one builds, the others wait and
        then load its executable."""
        try:
            key = self.key(treedef, signature)
            family = self._family()
        except ValueError:  # static data without a stable description: no safe key, so no file
            self.sources[f"unkeyed-{len(self.sources)}"] = "traced"
            return self.fn, None
        stem = f"{self.name}-{family}-{key[:40]}"
        path = folder / f"{stem}.bin"
        compiled_path = folder / f"{stem}-{_machine_tag()}.xla"
        future = self._prefetched.pop(compiled_path, None)
        self._prefetched.clear()  # a prefetch for other arguments is not used (it finishes in the background)
        entry = self._load_compiled(compiled_path, key, future)
        if entry is not None:
            return entry
        with self._lock(folder, stem):
            # checked again under the lock: another process may have built it meanwhile (we
            # waited for it, or it finished just before we took the lock)
            entry = self._load_compiled(compiled_path, key, None)
            if entry is not None:
                return entry
            return self._build(folder, path, compiled_path, key, treedef, avals)

    def _load_compiled(self, compiled_path: Path, key: str, future: Any) -> tuple[Callable[..., Any], Any] | None:
        """The kept executable at ``compiled_path`` (from the prefetch ``future`` if one was
        started), or ``None`` if there is none or it cannot be read (warned)."""
        if future is None and not compiled_path.is_file():
            return None
        try:
            # a prefetched executable is used even if its file has been pruned since
            call, out_treedef = _read_compiled(compiled_path) if future is None else future.result()
        except FileNotFoundError:  # pruned by another process meanwhile: as if it were not there
            return None
        except Exception as e:  # noqa: BLE001 - any unreadable file is ignored and rewritten
            warnings.warn(f"dynsparse: ignoring the unreadable compiled program {compiled_path} ({type(e).__name__}: {e})",
                          stacklevel=4)
            return None
        _touch(compiled_path)  # the most recently used: what the next prefetch picks (and prune keeps)
        _IN_USE.add(_stem(compiled_path))
        self.sources[key] = "compiled"
        return call, out_treedef

    def _build(self, folder: Path, path: Path, compiled_path: Path, key: str, treedef: Any,
               avals: list[Any]) -> tuple[Callable[..., Any], Any]:
        """Compile the kept module at ``path``, or trace, export and compile the function, keeping
        what is made; the traced function itself when it cannot be exported."""
        import jax

        if path.is_file():
            try:
                exp, out_treedef = _read(path)
                _touch(path)
                _IN_USE.add(_stem(path))
                targets = custom_call_targets(exp)
                _prepare_targets(targets)
                self.sources[key] = "loaded"
                return self._compile(exp, avals, out_treedef, compiled_path, targets), out_treedef
            except FileNotFoundError:  # pruned by another process meanwhile: traced again below
                pass
            except Exception as e:  # noqa: BLE001 - any unreadable file is ignored and rewritten
                warnings.warn(f"dynsparse: ignoring the unreadable exported program {path} ({type(e).__name__}: {e}); "
                              "tracing again", stacklevel=4)
        inner = getattr(self.fn, "__wrapped__", None)
        if inner is None:
            self.sources[key] = "traced"
            return self.fn, None
        out_tree: list[Any] = []

        def flat(*leaves: Any) -> list[Any]:
            out = inner(*jax.tree_util.tree_unflatten(treedef, leaves))
            flat_out, tree = jax.tree_util.tree_flatten(out)
            out_tree.append(tree)
            return flat_out

        try:
            with collector_paused():
                exp = jax.export.export(jax.jit(flat))(*avals)
                blob = exp.serialize()
        except Exception as e:  # noqa: BLE001 - export is an optimisation: run traced instead
            warnings.warn(f"dynsparse: could not export the {self.name} program ({type(e).__name__}: {e}); "
                          "running it traced", stacklevel=4)
            self.sources[key] = "traced"
            return self.fn, None
        _IN_USE.add(_stem(path))
        _write(path, blob, out_tree[-1])
        prune(folder)
        self.sources[key] = "exported"
        return self._compile(exp, avals, out_tree[-1], compiled_path), out_tree[-1]

    def _compile(self, exp: Any, avals: list[Any], out_treedef: Any, compiled_path: Path,
                 targets: set[str] | None = None) -> Callable[..., Any]:
        """Compile the exported program for these argument avals and keep the executable beside it
        (``compiled_path``), so that a later process loads it without lowering or compiling.

        Falls back to a jitted call of the exported program when the backend cannot serialize
        executables."""
        import jax

        from dynsparse import upstream

        call = jax.jit(exp.call, compiler_options=self.compiler_options) if self.compiler_options else jax.jit(exp.call)
        # An executable that JAX's persistent cache handed back cannot be serialized again on CPU:
        # the copy loads, then fails at run time ("Function wrapped_iota not found"; found with
        # jaxlib 0.8.2, tests/test_exported.py). So the executable to keep is compiled with the
        # persistent cache bypassed (a fresh compile, kept here instead of in XLA's cache); should
        # a cache hit still happen (another JAX), nothing is kept and the next process compiles
        # the module again.
        hits: list[str] = []

        def listen(event: str, **_: Any) -> None:
            if event == "/jax/compilation_cache/cache_hits":
                hits.append(event)

        jax.monitoring.register_event_listener(listen)
        try:
            with upstream.persistent_cache_bypassed():
                compiled = call.lower(*avals).compile()
        finally:
            jax.monitoring.unregister_event_listener(listen)
        if hits:
            self.sources[f"not-kept-{len(self.sources)}"] = "xla-cache-hit"
            return compiled
        try:
            _write_compiled(compiled_path, compiled, out_treedef, sorted(custom_call_targets(exp) if targets is None else targets))
            prune(compiled_path.parent)
        except Exception as e:  # noqa: BLE001 - the executable file is an optimisation
            warnings.warn(f"dynsparse: could not keep the compiled {self.name} program ({type(e).__name__}: {e})", stacklevel=4)
            return call
        return compiled


#: custom-call targets a loaded program may hold: XLA's own, and LAPACK's (initialised below)
_XLA_TARGETS = frozenset({"mhlo.topk", "Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape", "shape_assertion"})
_LAPACK = re.compile(r"lapack_[a-z]+_ffi")


def custom_call_targets(exp: Any) -> set[str]:
    """The custom-call target names in an exported program's module."""
    return set(re.findall(r"custom_call @([A-Za-z0-9_.]+)", exp.mlir_module()))


def _prepare_custom_calls(exp: Any) -> None:
    """Make the program's custom calls callable in this process, or refuse it.

    JAX initialises LAPACK's function table lazily, when it first *lowers* a linear-algebra op
    (``jaxlib.lapack.prepare_lapack_call``). A deserialized program is never lowered, so calling
    its ``lapack_*_ffi`` targets in a fresh process jumps through null pointers (a segmentation
    fault, seen with jaxlib 0.8.2). LAPACK is therefore initialised here; a target that is neither
    XLA's nor LAPACK's raises ``ValueError`` (the caller traces instead).
    """
    _prepare_targets(custom_call_targets(exp))


def _prepare_targets(targets: set[str]) -> None:
    """``_prepare_custom_calls`` for a program's custom-call target names."""
    unknown = sorted(t for t in targets if t not in _XLA_TARGETS and not _LAPACK.fullmatch(t))
    if unknown:
        raise ValueError(f"custom calls {unknown} cannot be prepared in a fresh process")
    if any(_LAPACK.fullmatch(t) for t in targets):
        import numpy as np
        from dynsparse import upstream

        upstream.jaxlib_lapack().prepare_lapack_call("potrf_ffi", np.dtype(np.float64))


def _own_child(pid: str) -> bool:
    """Whether ``pid`` (as a lock file holds it) is a live ``multiprocessing`` child of this
    process (the study's ``buildahead`` builder is one)."""
    import multiprocessing

    try:
        return int(pid) in {p.pid for p in multiprocessing.active_children()}
    except ValueError:
        return False


@functools.lru_cache(maxsize=1)
def _machine_tag() -> str:
    """A short digest of this CPU's model and instruction-set flags: an executable compiled here
    may use instructions another CPU lacks, so it is only loaded on a machine with the same tag."""
    import platform

    text = platform.machine() + platform.processor()
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
        text += "\n".join(sorted(set(lines)))
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def max_bytes() -> int | None:
    """The size limit of ``exported/`` in bytes from ``$DYNSPARSE_EXPORTED_MAX_MB`` (default
    ``DEFAULT_MAX_MB``); ``None`` for 0 (no limit).

    Raises:
      UserError: a value that is not a number of megabytes >= 0.
    """
    from dynsparse import errors

    text = os.environ.get(MAX_MB_VAR, "").strip() or str(DEFAULT_MAX_MB)
    try:
        mb = float(text)
    except ValueError:
        mb = -1.0
    if not mb >= 0 or mb == float("inf"):
        raise errors.UserError(f"{MAX_MB_VAR} {text!r} is not allowed; allowed: a number of megabytes >= 0 (0: no limit)")
    return None if mb == 0 else int(mb * 2**20)


def prune(folder: Path, limit: int | None = -1) -> list[str]:
    """Delete the least recently used programs of ``folder`` until it holds at most ``limit`` bytes
    (default: ``max_bytes()``; ``None``: no limit); returns the deleted programs' stems.

    A program is its module (``.bin``) with its executables (``.xla``, one per CPU), together;
    it was last used at the newest modification time among them (``Cached`` touches a file
    each time it loads it). A bad ``$DYNSPARSE_EXPORTED_MAX_MB`` is named in a warning and nothing
    is deleted. Programs this process prefetched, loaded or wrote are never deleted by it, nor
    are programs used in the last ``RECENT_S`` seconds (by any process sharing the folder), nor
    files of other names (a writer's temporary files). Files that vanish meanwhile (another
    process pruning) are skipped. First, whatever the limit, it removes what killed processes
    left (``remove_leftovers``).
    """
    remove_leftovers(folder)
    if limit == -1:
        from dynsparse import errors

        try:
            limit = max_bytes()
        except errors.UserError as e:  # housekeeping: a bad setting must not fail the command that wrote a program
            warnings.warn(f"dynsparse: {e}; nothing pruned", stacklevel=2)
            return []
    if limit is None:
        return []
    groups: dict[str, list[tuple[Path, int, float]]] = {}
    for path in Path(folder).iterdir():
        if not path.name.endswith((".bin", ".xla")):
            continue
        try:
            st = path.stat()
        except OSError:
            continue
        groups.setdefault(_stem(path), []).append((path, st.st_size, st.st_mtime))
    total = sum(size for members in groups.values() for _, size, _ in members)
    deleted = []
    now = time.time()
    for stem in sorted(groups, key=lambda g: max(m for _, _, m in groups[g])):
        if total <= limit:
            break
        if stem in _IN_USE or now - max(m for _, _, m in groups[stem]) < RECENT_S:
            continue
        for path, size, _ in groups[stem]:
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
        deleted.append(stem)
    return deleted


def remove_leftovers(folder: Path) -> list[str]:
    """Delete what processes killed mid-work left in ``folder`` and return the names: lock files
    no process holds (``locks.remove_if_free``), and temporary files (``.NAME.tmp-PID``, see
    ``files.write_atomic``) whose process no longer runs and that are older than ``RECENT_S``
    (a pid is only meaningful on this machine; the age guards a cache shared with another)."""
    removed = []
    now = time.time()
    for path in sorted(Path(folder).iterdir()):
        if path.suffix == ".lock":
            if locks.remove_if_free(path):
                removed.append(path.name)
            continue
        head, sep, pid = path.name.rpartition(".tmp-")
        if not (sep and head.startswith(".") and pid.isdigit()) or _running(int(pid)):
            continue
        try:
            if now - path.stat().st_mtime < RECENT_S:
                continue
            path.unlink()
        except OSError:
            continue
        removed.append(path.name)
    if removed:
        log.info("removed leftovers of killed processes in %s: %s", folder, ", ".join(removed))
    return removed


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _stem(path: Path) -> str:
    """The program a file belongs to: its name without ``.bin``, or without ``-<cpu tag>.xla``."""
    name = path.name
    return name[:-4] if name.endswith(".bin") else name[:-4].rsplit("-", 1)[0]


@functools.lru_cache(maxsize=1)
def _loader() -> Any:
    """The background threads that prefetch executables (two: a command's reset and chunk)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="dynsparse-load")


def _touch(path: Path) -> None:
    """Mark ``path`` as just used (its modification time), ignoring a read-only cache."""
    try:
        os.utime(path)
    except OSError:
        pass


def _write_compiled(path: Path, compiled: Any, out_treedef: Any, targets: list[str]) -> None:
    from jax.experimental import serialize_executable

    from dynsparse import files

    blob, in_tree, out_tree = serialize_executable.serialize(compiled)
    devices = [d.id for d in compiled.runtime_executable().local_devices()]  # in the executable's order
    buf = io.BytesIO()
    # zlib level 1: CheetahRun's chunk executable 11 MB -> a few MB, ~0.03 s to inflate
    pickle.dump({"format": FORMAT, "executable": zlib.compress(bytes(blob), 1), "in_tree": in_tree, "out_tree": out_tree,
                 "out_treedef": out_treedef, "custom_calls": targets, "devices": devices}, buf)
    files.write_atomic(path, buf.getvalue())


def _read_compiled(path: Path) -> tuple[Callable[..., Any], Any]:
    """``(executable, the function's output tree)`` of a file written by ``_write_compiled``
    (custom calls prepared first, as for a loaded exported program)."""
    import jax
    from jax.experimental import serialize_executable

    from dynsparse import upstream

    with open(path, "rb") as f:
        record = pickle.load(f)  # our own cache folder, written by _write_compiled
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"format {record.get('format') if isinstance(record, dict) else None!r}, expected {FORMAT}")
    _prepare_targets(set(record["custom_calls"]))
    # the devices it was compiled for (loading onto all of them would expect every input split
    # over all devices: a one-device program, e.g. the reset, then refuses its arguments)
    by_id = {d.id: d for d in jax.devices()}
    devices = [by_id[i] for i in record["devices"]]
    blob = zlib.decompress(record["executable"])
    with upstream.aot_tuning_alarms_dropped():  # XLA's false SIGILL alarm for this very CPU
        call = serialize_executable.deserialize_and_load(blob, record["in_tree"], record["out_tree"],
                                                         execution_devices=devices)
    return call, record["out_treedef"]


def _write(path: Path, blob: bytearray, out_treedef: Any) -> None:
    from dynsparse import files

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    pickle.dump({"format": FORMAT, "module": bytes(blob), "out_treedef": out_treedef}, buf)
    files.write_atomic(path, buf.getvalue())


def _read(path: Path) -> tuple[Any, Any]:
    import jax

    with open(path, "rb") as f:
        record = pickle.load(f)  # our own cache folder, written by _write (as XLA's cache holds executables)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"format {record.get('format') if isinstance(record, dict) else None!r}, expected {FORMAT}")
    return jax.export.deserialize(bytearray(record["module"])), record["out_treedef"]
