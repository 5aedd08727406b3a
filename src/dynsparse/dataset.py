"""The one data model: a labelled xarray Dataset per (environment, policy, seed) run, in Zarr.

Layout (Zarr format 2, consolidated metadata, readable with plain ``xarray.open_zarr``):

- dims ``episode``, ``step``, ``out`` (next-state variable), ``state_in``, ``action_in``, ``dof``,
  ``contact_pair`` (the geom pairs the simulator can put in contact), and for models with free or
  ball joints (``nq != nv``) ``qstate``
- coords: the named variables (``qpos:rootx``, ``qvel:bthigh``, ``act:bthigh``, ...)
- data variables (E episodes, T steps, n = 2 nv the tangent state, m = nu):

The Jacobians' state coordinates (``out``, ``state_in``) are MuJoCo's tangent space ``[dq, dv]``
(``dynsparse.tangent``; a free joint's ``qpos:root:x .. :z, :rx .. :rz``), which for hinge and
slide joints is ``[qpos, qvel]`` itself. When ``nq != nv`` the stored states ``state`` and
``next_state`` keep the simulator's ``[qpos, qvel]`` (quaternions included) on their own dim
``qstate`` (``nq + nv`` names, a free joint's ``qpos:root:qw ..``) instead of ``state_in``/``out``.

  ===================== ======================== ==========================================
  name                  dims                     meaning
  ===================== ======================== ==========================================
  state                 episode, step, state_in  s = [qpos, qvel] before the step
  action                episode, step, action_in a as the policy emitted it
  next_state            episode, step, out       s' after the control step
  J_s                   episode, step, out,      ds'/ds
                        state_in
  J_a                   episode, step, out,      ds'/da
                        action_in
  n_contacts            episode, step            active contacts (see attrs)
  contact_pairs         episode, step,           the geom pair has an active contact
                        contact_pair             (coords 'geom1|geom2', see attrs)
  reward                episode, step            the environment's reward for the step
  warmstart             episode, step, dof       solver warm start entering the step (qacc units)
  valid                 episode, step            the step exists (written, episode alive)
  finite                episode, step            J_s and J_a have no NaN/Inf
  solver_residual       episode, step            the definition's solve: largest |r|/trace(M)
                                                 over substeps (finite_diff: native replay,
                                                 attrs solver_diagnostics; NaN: not recorded)
  solver_truncated      episode, step            substeps whose solve stopped at its
                                                 iteration cap above tolerance (-1: n/a)
  solver_start_returned episode, step            substeps whose solver start point passed
                                                 its gradient test with a constraint active
                                                 (no iteration moved it; -1: n/a)
  check_class           episode, step            certificate (certify.CLASSES index: 0
                                                 certified, 1 kink, 2 native-differs, 3
                                                 wrong); -1 = not checked
  check_err             episode, step            scaled error vs MJX FD, best eps (NaN)
  check_eps             episode, step            the eps of check_err (NaN)
  check_fd_spread       episode, step            MJX FD change across eps (NaN)
  check_pattern_mismatch episode, step           zero decisions FD contradicts (-1)
  check_native_state_err episode, step           native vs MJX next state (NaN)
  check_native_err      episode, step            scaled error vs native FD (NaN)
  definition_rel_diff   episode, step            --compare-definitions: scaled difference
                                                 between converged and as-run (NaN)
  definition_pattern_diff episode, step          entries whose zero decision differs (-1)
  definition_state_diff episode, step            converged vs as-run next state (NaN)
  ===================== ======================== ==========================================

Durability: the store is created complete (all arrays, fill values) in a temporary directory,
the checksum of every file it holds is recorded (``dynsparse-manifest/created.json``), and it is
renamed into place. Collection writes in units of (episode batch, step chunk) that match the Zarr
chunks: each chunk file is written atomically by Zarr, ``valid`` last; then the checksums of the
unit's chunk files (``dynsparse-manifest/unit-NNNNNN.json``); then the checkpoint file (progress
and the exact simulator carry) is atomically replaced, which commits the unit. A killed run leaves
at most one uncommitted unit, with some of its chunks (possibly ``valid`` too) written; resuming
rewrites that unit with identical values, and ``validate`` says so in a note.

Integrity: ``open_dataset`` (every reader) checks every file of the created store and of each
committed unit against its recorded checksum and refuses a missing, altered or unexpected chunk,
and metadata files that disagree with the consolidated metadata, in one line; ``validate`` lists
them all. A missing chunk is never read as its fill value.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dynsparse import errors, files, jacobians, manifest, versions

FORMAT = "dynsparse-dataset"
FORMAT_VERSION = 3  # 2: contact_pairs; 3: named Jacobian definitions, certificates
CHECKPOINT = "dynsparse-checkpoint.npz"

#: Config keys that identify a run: resuming with any of these different is refused.
IDENTITY_KEYS = (
    "env", "episodes", "steps", "policy", "seed", "backend", "dtype", "check_every",
    "batch_size", "chunk_steps", "fd_eps", "jacobian", "compare_definitions", "substeps", "rollout",
)

#: the value of an identity key that stores made before it existed hold (every earlier
#: collection simulated its trajectories in MJX)
IDENTITY_DEFAULTS = {"rollout": "mjx"}

#: Certificate classes of checked steps; ``check_class`` holds the index (-1: not checked).
CHECK_CLASSES = jacobians.CHECK_CLASSES

_VERSION_PACKAGES = (
    "dynsparse", "jax", "jaxlib", "mujoco", "mujoco-mjx", "playground", "brax", "flax",
    "numpy", "xarray", "zarr",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a dataset depends on."""
    return versions.package_versions(_VERSION_PACKAGES)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Sizes and names that fix a store's shape."""

    episodes: int
    steps: int
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    batch_size: int
    chunk_steps: int
    dtype: str
    contact_pair_names: tuple[str, ...] = ()
    #: names of the stored ``[qpos, qvel]`` when they differ from ``state_names`` (``nq != nv``)
    qstate_names: tuple[str, ...] = ()

    @property
    def separate_qstate(self) -> bool:
        """Whether ``state``/``next_state`` live on their own ``qstate`` dim (``nq != nv``)."""
        return bool(self.qstate_names) and tuple(self.qstate_names) != tuple(self.state_names)

    @property
    def n_batches(self) -> int:
        return -(-self.episodes // self.batch_size)

    @property
    def n_chunks(self) -> int:
        return -(-self.steps // self.chunk_steps)

    @property
    def n_units(self) -> int:
        return self.n_batches * self.n_chunks

    def unit_slices(self, unit: int) -> tuple[slice, slice]:
        """``(episode slice, step slice)`` of a unit, clipped to the store."""
        b, c = divmod(unit, self.n_chunks)
        e0, t0 = b * self.batch_size, c * self.chunk_steps
        return slice(e0, min(e0 + self.batch_size, self.episodes)), slice(t0, min(t0 + self.chunk_steps, self.steps))


def _variables(layout: Layout) -> dict[str, tuple[tuple[str, ...], str, Any]]:
    """name -> (dims, dtype, fill value)."""
    f = layout.dtype
    es = ("episode", "step")
    separate = layout.separate_qstate
    return {
        "state": (es + ("qstate" if separate else "state_in",), f, np.nan),
        "action": (es + ("action_in",), f, np.nan),
        "next_state": (es + ("qstate" if separate else "out",), f, np.nan),
        "J_s": (es + ("out", "state_in"), f, np.nan),
        "J_a": (es + ("out", "action_in"), f, np.nan),
        "n_contacts": (es, "int32", -1),
        "contact_pairs": (es + ("contact_pair",), "bool", False),
        "reward": (es, f, np.nan),
        "warmstart": (es + ("dof",), f, np.nan),
        "valid": (es, "bool", False),
        "finite": (es, "bool", False),
        "solver_residual": (es, "float64", np.nan),
        "solver_truncated": (es, "int16", -1),
        "solver_start_returned": (es, "int16", -1),
        "check_class": (es, "int8", -1),
        "check_err": (es, "float64", np.nan),
        "check_eps": (es, "float64", np.nan),
        "check_fd_spread": (es, "float64", np.nan),
        "check_pattern_mismatch": (es, "int32", -1),
        "check_native_state_err": (es, "float64", np.nan),
        "check_native_err": (es, "float64", np.nan),
        "definition_rel_diff": (es, "float64", np.nan),
        "definition_pattern_diff": (es, "int32", -1),
        "definition_state_diff": (es, "float64", np.nan),
    }


#: Every variable a store of this format has.
REQUIRED_VARIABLES = tuple(_variables(Layout(1, 1, ("a", "b"), ("u",), 1, 1, "float64")))

#: Variables written last in a unit (their chunk marks the unit as present).
COMMIT_VARIABLE = "valid"


def create(path: Path, layout: Layout, attrs: dict[str, Any]) -> None:
    """Create an empty store at ``path`` atomically (built in a temporary sibling, then renamed).

    The store is what ``xarray.Dataset.to_zarr(compute=False)`` writes for the dataset of
    ``layout`` (Zarr format 2, consolidated; ``tests/test_dataset.py`` compares the metadata and
    coordinate files with xarray's own), made with Zarr directly: xarray needs
    lazy Dask arrays to create without writing data, and importing ``dask.array`` and
    ``xarray`` cost 1.7 s of a collection's start-up.

    Raises:
      UserError: ``path`` already exists.
    """
    import zarr

    path = Path(path)
    if path.exists():
        raise errors.UserError(f"output path {str(path)!r} already exists; choose another --out")
    with files.publish(path) as tmp:  # the store appears whole or not at all
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2, attributes=_json_attrs(attrs))
        for name, values in coordinates(layout).items():
            fill = np.nan if values.dtype.kind == "f" else None  # as xarray: NaN for a floating coordinate
            group.create_array(name, data=values, fill_value=fill, attributes={"_ARRAY_DIMENSIONS": [name]})
        sizes = _sizes(layout)
        chunk_of = {"episode": layout.batch_size, "step": layout.chunk_steps}
        for name, (dims, dtype, fill) in _variables(layout).items():
            # Floats: NaN marks "not written / not checked". Integers and booleans carry no
            # _FillValue (xarray would turn them into floats); read them where ``valid`` is true.
            floating = np.issubdtype(np.dtype(dtype), np.floating)
            group.create_array(
                name, shape=tuple(sizes[d] for d in dims), dtype=dtype,
                chunks=tuple(chunk_of.get(d, max(sizes[d], 1)) for d in dims),
                fill_value=fill if floating else None, attributes={"_ARRAY_DIMENSIONS": list(dims)},
            )
        zarr.consolidate_metadata(str(tmp), zarr_format=2)
        manifest.record_creation(tmp)
        _write_checkpoint(tmp, next_unit=0, n_units=layout.n_units, carry=None)


def _sizes(layout: Layout) -> dict[str, int]:
    """The length of every dimension of ``layout``'s store."""
    n = len(layout.state_names)
    return {
        "episode": layout.episodes, "step": layout.steps, "out": n, "state_in": n,
        "action_in": len(layout.action_names), "dof": n - n // 2, "contact_pair": len(layout.contact_pair_names),
        "qstate": len(layout.qstate_names),
    }


def coordinates(layout: Layout) -> dict[str, np.ndarray]:
    """The coordinate arrays of ``layout``'s store: ``episode``, ``step`` (int64 indices), the
    variable names (fixed-width unicode, as xarray stores a list of strings) and ``qstate`` where
    the stored state is ``[qpos, qvel]`` rather than the tangent state."""
    def names(values: tuple[str, ...]) -> np.ndarray:
        return np.asarray(values, dtype=str) if len(values) else np.asarray([], dtype=np.float64)  # xarray: [] -> float64

    n = len(layout.state_names)
    coords = {
        "episode": np.arange(layout.episodes, dtype=np.int64), "step": np.arange(layout.steps, dtype=np.int64),
        "out": names(layout.state_names), "state_in": names(layout.state_names),
        "action_in": names(layout.action_names), "dof": names(layout.state_names[n // 2:]),
        "contact_pair": np.asarray(layout.contact_pair_names, dtype=str),
    }
    if layout.separate_qstate:
        coords["qstate"] = names(layout.qstate_names)
    return coords


def _json_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` with NumPy scalars and arrays as plain JSON values (what xarray stores)."""
    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        return value

    return {key: plain(value) for key, value in attrs.items()}


def is_store(path: Path) -> bool:
    """Whether ``path`` looks like a dynsparse store (a directory with consolidated Zarr metadata)."""
    path = Path(path)
    return path.is_dir() and (path / ".zmetadata").exists()


def open_dataset(path: Path | str, verify: bool = True) -> Any:
    """Open a store lazily as an ``xarray.Dataset`` (after basic checks).

    Args:
      verify: check every file against the checksums its writer recorded (``manifest``), so a
        missing or altered chunk is refused instead of read as the fill value.

    Raises:
      UserError: the path is missing, not a dynsparse store, its metadata is unreadable, or
        (``verify``) a file differs from what was written.
    """
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise errors.UserError(f"dataset {str(path)!r} does not exist")
    if not is_store(path):
        raise errors.UserError(
            f"{str(path)!r} is not a dynsparse dataset (no Zarr metadata .zmetadata); "
            f"run `dynsparse validate {path}` for details"
        )
    try:
        ds = xr.open_zarr(path, consolidated=True)
    except Exception as exc:  # noqa: BLE001 - any decode failure is a user-facing corrupt store
        found = manifest.created_problems(path) if verify else []
        if found:
            raise errors.UserError(f"dataset {str(path)!r} is damaged: {found[0]}; `dynsparse validate {path}` lists every problem") from exc
        raise errors.UserError(f"cannot open dataset {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if ds.attrs.get("format") != FORMAT:
        raise errors.UserError(f"{str(path)!r} is a Zarr store but not a dynsparse dataset (attrs.format missing)")
    if verify and ds.attrs.get("format_version") != FORMAT_VERSION:
        raise errors.UserError(
            f"{str(path)!r} was written in dataset format {ds.attrs.get('format_version')!r}; this dynsparse writes format "
            f"{FORMAT_VERSION} and reads only that: collect it again into another --out (or use the version that wrote it)"
        )
    missing = [name for name in REQUIRED_VARIABLES if name not in ds.data_vars]
    if missing:
        raise errors.UserError(
            f"dataset {str(path)!r} lacks variable(s) {', '.join(missing)}: damaged, or written by another "
            f"dynsparse version (its format_version {ds.attrs.get('format_version')!r}, this one reads {FORMAT_VERSION})"
        )
    if verify:
        _verify(path, ds)
    return ds


def _verify(path: Path, ds: Any) -> None:
    """Raise a one-line UserError naming the first checksum problem of the store at ``path``."""
    try:
        layout = layout_of(read_config(ds), ds)
    except (KeyError, TypeError, ValueError) as exc:
        raise errors.UserError(f"dataset {str(path)!r} has no readable run configuration in its attrs; run `dynsparse validate {path}`") from exc
    checkpoint = read_checkpoint(path)
    for problem in checkpoint.problems(layout):
        raise errors.UserError(f"{str(path)!r}: {problem}; run `dynsparse validate {path}`")
    found = integrity_problems(path, layout, min(checkpoint.next_unit, layout.n_units))
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise errors.UserError(f"dataset {str(path)!r} is damaged: {found[0]}{more}; nothing was read: `dynsparse validate {path}` lists every problem")


def read_config(ds: Any) -> dict[str, Any]:
    """The run configuration stored in a dataset's attrs."""
    return json.loads(ds.attrs["config"])


def layout_of(config: dict[str, Any], ds: Any) -> Layout:
    """The layout a store's configuration and coords imply."""
    pairs = tuple(str(x) for x in ds["contact_pair"].values) if "contact_pair" in ds.coords else ()
    qstate = tuple(str(x) for x in ds["qstate"].values) if "qstate" in ds.coords else ()
    return Layout(
        episodes=int(config["episodes"]), steps=int(config["steps"]), state_names=tuple(str(x) for x in ds["state_in"].values),
        action_names=tuple(str(x) for x in ds["action_in"].values), batch_size=int(config["batch_size"]),
        chunk_steps=int(config["chunk_steps"]), dtype=str(config["dtype"]), contact_pair_names=pairs,
        qstate_names=qstate,
    )


# ----------------------------------------------------------------------------- checkpoints


@dataclasses.dataclass
class Checkpoint:
    """Progress of a collection: the next unit to compute and, mid-batch, the exact carry."""

    next_unit: int
    n_units: int
    carry: list[np.ndarray] | None

    @property
    def complete(self) -> bool:
        return self.next_unit >= self.n_units

    def problems(self, layout: Layout) -> list[str]:
        """What makes this checkpoint unusable with ``layout`` (empty: usable)."""
        out = []
        if self.n_units != layout.n_units:
            out.append(f"checkpoint says {self.n_units} units, the layout has {layout.n_units}")
        elif not self.complete and self.next_unit % layout.n_chunks and self.carry is None:
            out.append(f"checkpoint resumes mid-episode (unit {self.next_unit}) but holds no simulator state")
        return out


def _write_checkpoint(path: Path, next_unit: int, n_units: int, carry: list[np.ndarray] | None) -> None:
    arrays = {"next_unit": np.int64(next_unit), "n_units": np.int64(n_units), "has_carry": np.bool_(carry is not None)}
    for i, leaf in enumerate(carry or []):
        arrays[f"leaf_{i:04d}"] = np.asarray(leaf)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    files.write_atomic(Path(path) / CHECKPOINT, buf.getvalue())


def write_checkpoint(path: Path, next_unit: int, n_units: int, carry: list[np.ndarray] | None) -> None:
    """Atomically record that units ``< next_unit`` are complete, with the carry to continue."""
    _write_checkpoint(Path(path), next_unit, n_units, carry)


def read_checkpoint(path: Path) -> Checkpoint:
    """Read a store's checkpoint.

    Raises:
      UserError: missing or unreadable checkpoint.
    """
    file = Path(path) / CHECKPOINT
    if not file.exists():
        raise errors.UserError(f"dataset {str(path)!r} has no {CHECKPOINT}: not written by dynsparse collect, or damaged")
    try:
        with np.load(file) as z:
            leaves = sorted(k for k in z.files if k.startswith("leaf_"))
            carry = [z[k] for k in leaves] if bool(z["has_carry"]) else None
            return Checkpoint(int(z["next_unit"]), int(z["n_units"]), carry)
    except Exception as exc:  # noqa: BLE001
        raise errors.UserError(f"checkpoint {str(file)!r} is unreadable: {type(exc).__name__}: {exc}") from exc


def remove_partial_files(path: Path) -> int:
    """Delete the temporary ``*.partial`` files an interrupted Zarr write can leave; return count."""
    n = 0
    for p in Path(path).rglob("*.partial"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def write_unit(path: Path, layout: Layout, unit: int, arrays: dict[str, np.ndarray]) -> None:
    """Write one unit's arrays (each ``(episodes in unit, steps in unit, ...)``), ``valid`` last,
    then the unit's checksum record (``manifest``). The caller commits it with ``write_checkpoint``."""
    import zarr

    group = zarr.open_group(str(path), mode="r+", zarr_format=2)
    es, ts = layout.unit_slices(unit)
    names = [n for n in arrays if n != COMMIT_VARIABLE] + [COMMIT_VARIABLE]
    for name in names:
        group[name][es, ts] = arrays[name]
    manifest.record_unit(path, unit, unit_chunks(layout, unit))


def unit_chunks(layout: Layout, unit: int) -> dict[str, str]:
    """``{variable: chunk file relative to the store}`` of one unit (every data variable)."""
    b, c = divmod(unit, layout.n_chunks)
    return manifest.unit_chunks(((name, len(dims)) for name, (dims, _, _) in _variables(layout).items()), b, c)


def unit_where(layout: Layout, unit: int) -> str:
    """A unit's place in words: ``"episodes 0-1, steps 20-39"``."""
    es, ts = layout.unit_slices(unit)
    return f"episodes {es.start}-{es.stop - 1}, steps {ts.start}-{ts.stop - 1}"


def integrity_problems(path: Path, layout: Layout, committed_units: int) -> list[str]:
    """Checksum problems of a store (``manifest.problems``) over its first ``committed_units`` units."""
    return manifest.problems(Path(path), ((u, unit_chunks(layout, u), unit_where(layout, u)) for u in range(committed_units)))


def load(ds: Any, names: list[str] | tuple[str, ...] | None = None) -> Any:
    """Load variables of a (lazy) dataset into memory.

    Raises:
      UserError: a chunk cannot be read or decoded (a damaged store), naming what failed.
    """
    part = ds[list(names)] if names is not None else ds
    try:
        return part.load()
    except Exception as exc:  # noqa: BLE001 - any decode failure means a damaged store
        where = ds.encoding.get("source", "the dataset")
        raise errors.UserError(
            f"{where} is damaged: reading {', '.join(names or part.data_vars)} failed with "
            f"{type(exc).__name__}: {exc}; run `dynsparse validate` on it"
        ) from exc


def iter_episode_blocks(ds: Any, names: tuple[str, ...] | None = None, block: int | None = None) -> Iterator[Any]:
    """Yield the dataset loaded in blocks of episodes (the store's episode chunking by default).

    Raises:
      UserError: a block cannot be read (see ``load``).
    """
    if block is None:
        chunks = ds["J_s"].encoding.get("chunks") or ds["J_s"].encoding.get("preferred_chunks", {})
        block = int(chunks[0]) if isinstance(chunks, tuple) else int(ds.sizes["episode"])
    for e0 in range(0, ds.sizes["episode"], block):
        yield load(ds.isel(episode=slice(e0, e0 + block)), names)


# ----------------------------------------------------------------------------- validation


def validate(path: Path | str) -> tuple[list[str], list[str]]:
    """Check a store thoroughly: metadata, shapes, every chunk, progress and consistency.

    Returns:
      ``(problems, notes)``: each problem is one line saying exactly what is wrong (empty: the
      store is sound); notes are facts that are not errors (e.g. an unfinished collection).
    """
    path = Path(path)
    problems: list[str] = []
    notes: list[str] = []
    try:
        ds = open_dataset(path, verify=False)
    except errors.UserError as exc:
        return [str(exc)] + (manifest.created_problems(path) if is_store(path) else []), notes
    try:
        config = read_config(ds)
    except (KeyError, json.JSONDecodeError):
        return ["attrs.config is missing or not JSON: cannot tell how the dataset was made"], notes
    if ds.attrs.get("format_version") != FORMAT_VERSION:
        problems.append(f"format_version {ds.attrs.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
    layout = layout_of(config, ds)
    problems += manifest.created_problems(path)
    problems += _check_shapes(ds, layout)
    if problems:
        return problems, notes
    try:
        checkpoint = read_checkpoint(path)
    except errors.UserError as exc:
        problems.append(str(exc))
        checkpoint = None
    if checkpoint is not None:
        problems += checkpoint.problems(layout)
    partial = list(path.rglob("*.partial"))
    if partial:
        notes.append(f"{len(partial)} leftover *.partial file(s) from an interrupted write (harmless; removed on resume)")
    done = min(checkpoint.next_unit, layout.n_units) if checkpoint is not None else 0
    for unit in range(layout.n_units):
        es, ts = layout.unit_slices(unit)
        where = unit_where(layout, unit)
        if unit < done:
            damaged = manifest.unit_problems(path, unit, unit_chunks(layout, unit), where)
            if damaged:  # the content checks below would only restate it
                problems += damaged
                continue
        block = {}
        for name in ds.data_vars:
            try:
                block[name] = np.asarray(ds[name].isel(episode=es, step=ts).values)
            except Exception as exc:  # noqa: BLE001 - report any decode failure
                problems.append(f"variable {name!r} at {where} is unreadable: {type(exc).__name__}: {exc}")
        if len(block) != len(ds.data_vars):
            continue
        valid = block["valid"].astype(bool)
        if unit < done:
            problems += [f"{p} at {where}" for p in _check_written_unit(block, valid)]
        elif valid.any() and unit == done:
            notes.append(f"the unit at {where} was written but not yet committed (the run stopped between writing it "
                         "and its checkpoint); resuming rewrites it with the same values")
        elif valid.any():
            problems.append(f"steps at {where} are marked valid but the checkpoint says this unit is not written")
    if checkpoint is not None and not checkpoint.complete:
        notes.append(f"collection is unfinished: {done} of {layout.n_units} units written; rerun the collect command to resume")
    return problems, notes


def _check_shapes(ds: Any, layout: Layout) -> list[str]:
    problems = []
    n, m = len(layout.state_names), len(layout.action_names)
    expected = {"episode": layout.episodes, "step": layout.steps, "out": n, "state_in": n, "action_in": m}
    for dim, size in expected.items():
        if ds.sizes.get(dim) != size:
            problems.append(f"dimension {dim!r} has size {ds.sizes.get(dim)}, the configuration implies {size}")
    for name, (dims, dtype, _) in _variables(layout).items():
        if name not in ds:
            problems.append(f"variable {name!r} is missing")
            continue
        if tuple(ds[name].dims) != dims:
            problems.append(f"variable {name!r} has dims {tuple(ds[name].dims)}, expected {dims}")
        if ds[name].dtype != np.dtype(dtype):
            problems.append(f"variable {name!r} has dtype {ds[name].dtype}, expected {dtype}")
    if list(ds["out"].values) != list(ds["state_in"].values):
        problems.append("coords 'out' and 'state_in' differ")
    return problems


def _check_written_unit(block: dict[str, np.ndarray], valid: np.ndarray) -> list[str]:
    problems = []
    if (np.diff(valid.astype(np.int8), axis=1) > 0).any():
        problems.append("'valid' switches from false back to true within an episode")
    finite = np.isfinite(block["J_s"]).all(axis=(-2, -1)) & np.isfinite(block["J_a"]).all(axis=(-2, -1)) & valid
    if (block["finite"].astype(bool) != finite).any():
        problems.append("'finite' does not match the stored Jacobians")
    if "contact_pairs" in block and block["contact_pairs"].shape[-1]:
        touching = block["contact_pairs"].astype(bool).any(axis=-1)
        if (touching != (block["n_contacts"] > 0))[valid].any():
            problems.append("'contact_pairs' and 'n_contacts' disagree on whether anything touches")
    # (next_state may be NaN at a valid step: the step where the simulation diverged.)
    for name in ("state", "action"):
        if np.isnan(block[name][valid]).any():
            problems.append(f"{name!r} has NaN at valid steps")
    return problems
