"""The store ``dataset.create`` makes is the one xarray makes (checkpoints and resume: test_resume.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynsparse import dataset

LAYOUTS = {
    "tangent state, contact pairs": dataset.Layout(3, 7, ("q0", "q1", "v0", "v1"), ("u",), 2, 5, "float64", ("a/b", "c/d")),
    "separate qstate, no contact pair": dataset.Layout(
        2, 4, ("q0", "q1", "q2", "v0", "v1", "v2"), ("u", "w"), 2, 4, "float64", (), ("qa", "qb", "qc", "qd", "va", "vb", "vc"),
    ),
    "no actuator": dataset.Layout(1, 3, ("q", "v"), (), 1, 3, "float64"),
}
ATTRS = {"env": "X", "noise_beta": float("nan"), "n": np.int64(3), "f": np.float64(0.5), "s": json.dumps({"a": 1}), "l": [1, 2]}


def _xarray_create(path: Path, layout: dataset.Layout, attrs: dict) -> None:
    """What ``dataset.create`` did before it wrote Zarr directly: xarray over lazy Dask arrays."""
    import dask.array as da
    import xarray as xr

    sizes = dataset._sizes(layout)
    chunk_of = {"episode": layout.batch_size, "step": layout.chunk_steps}
    data_vars, encoding = {}, {}
    for name, (dims, dtype, fill) in dataset._variables(layout).items():
        chunks = tuple(chunk_of.get(d, max(sizes[d], 1)) for d in dims)
        data_vars[name] = (dims, da.full(tuple(sizes[d] for d in dims), fill, dtype=dtype, chunks=chunks))
        encoding[name] = {"chunks": chunks, "_FillValue": fill if np.issubdtype(np.dtype(dtype), np.floating) else None}
    n = len(layout.state_names)
    coords = {
        "episode": np.arange(layout.episodes), "step": np.arange(layout.steps), "out": list(layout.state_names),
        "state_in": list(layout.state_names), "action_in": list(layout.action_names), "dof": list(layout.state_names[n // 2:]),
        "contact_pair": np.asarray(layout.contact_pair_names, dtype=str),
    }
    if layout.separate_qstate:
        coords["qstate"] = list(layout.qstate_names)
    xr.Dataset(data_vars, coords=coords, attrs=attrs).to_zarr(
        path, mode="w", compute=False, encoding=encoding, consolidated=True, zarr_format=2,
    )


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_create_writes_exactly_the_store_xarray_writes(tmp_path, kind):
    layout = LAYOUTS[kind]
    _xarray_create(tmp_path / "xarray.zarr", layout, ATTRS)
    dataset.create(tmp_path / "direct.zarr", layout, ATTRS)
    metadata = [json.loads((tmp_path / name / ".zmetadata").read_text()) for name in ("xarray.zarr", "direct.zarr")]
    assert metadata[0] == metadata[1]
    # every file xarray wrote (metadata and coordinate chunks) has the same bytes; dynsparse adds its two
    diff = subprocess.run(["diff", "-r", "-q", "xarray.zarr", "direct.zarr"], cwd=tmp_path, capture_output=True, text=True)
    assert sorted(diff.stdout.splitlines()) == [
        "Only in direct.zarr: dynsparse-checkpoint.npz", "Only in direct.zarr: dynsparse-manifest",
    ]
    import xarray as xr

    ds, theirs = (xr.open_zarr(tmp_path / name, consolidated=True) for name in ("direct.zarr", "xarray.zarr"))
    assert ds.identical(theirs)
    assert np.isnan(ds.attrs["noise_beta"]) and ds.attrs["n"] == 3 and ds["J_s"].dims == ("episode", "step", "out", "state_in")
    assert ds["valid"].dtype == bool and not ds["valid"].values.any()
    assert np.isnan(ds["J_s"].values).all()


def test_create_imports_neither_xarray_nor_dask(tmp_path):
    code = (
        "import sys; from pathlib import Path; from dynsparse import dataset; "
        "dataset.create(Path(sys.argv[1]), dataset.Layout(1, 2, ('q', 'v'), ('u',), 1, 2, 'float64'), {}); "
        "print(sorted(m for m in ('xarray', 'dask.array', 'dask') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "d.zarr")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_create_refuses_an_existing_path(tmp_path):
    (tmp_path / "d.zarr").mkdir()
    with pytest.raises(Exception, match="already exists"):
        dataset.create(tmp_path / "d.zarr", LAYOUTS["tangent state, contact pairs"], {})
