"""The store opens in the array ecosystem: xarray reads every group with named axes and decodes the int16
vertices to metres through the CF attributes, while MPT's own readers keep reading the raw integers once.

All stores here are made by the real builder (conftest's `reference_store`, `unfrozen_store`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from mpt_data import schema

xr = pytest.importorskip("xarray")

MESH, VERTEX = 37, 211  # an arbitrary stored vertex


def _raw_group(store: Path):
    return zarr.open_group(str(store), mode="r")


def test_open_zarr_decodes_vertices_to_metres_from_the_int16_storage(reference_store):
    store = reference_store.path
    raw = _raw_group(store)[schema.VERTICES]
    assert raw.dtype == np.int16
    stored = np.asarray(raw[MESH, VERTEX])
    assert np.abs(stored).max() > 100, "a vertex away from the root, so the scale is visible in the value"

    ds = xr.open_zarr(str(store), group="meshes")
    vertices = ds["vertices"]
    assert vertices.dims == ("mesh", "vertex", "xyz")
    assert vertices.encoding["dtype"] == np.int16 and vertices.encoding["scale_factor"] == 1e-4
    metres = vertices[MESH, VERTEX].values
    np.testing.assert_array_equal(metres, stored.astype(np.float64) * 1e-4)
    assert vertices.attrs["units"] == "m"
    # Integer arrays whose zeros are values (split 0 = train) are not masked by the zarr fill value.
    assert ds["split"].dtype == np.int8 and int((ds["split"].values == 0).sum()) > 0


def test_xarray_and_the_trainer_reader_give_the_same_metres(reference_store):
    from mpt_data.preview import read_mesh_views
    from mpt_train.store import StoreReader

    store = reference_store.path
    xarray_m = xr.open_zarr(str(store), group="meshes")["vertices"][MESH].values  # (V, 3) float64
    reader = StoreReader(str(store))
    chunk = reader.chunk_size
    batch = reader.read_chunk(MESH // chunk)
    trainer_m = batch["vertices"][MESH % chunk]
    preview_m = read_mesh_views(store, MESH).vertices
    # float32 products of the same integers and scale: equal to float32 rounding, never scaled twice
    np.testing.assert_allclose(trainer_m, xarray_m, rtol=0, atol=1e-7)
    np.testing.assert_allclose(preview_m, xarray_m, rtol=0, atol=1e-7)


def test_open_datatree_names_the_axes_of_every_group(reference_store):
    tree = xr.open_datatree(str(reference_store.path), engine="zarr")
    assert tree["views/joints2d"].dims == ("mesh", "camera", "keypoint", "xy")
    assert tree["cameras/K"].dims == ("camera", "row", "column")
    assert tree["meshes/joints/smpl24"].dims == ("mesh", "smpl24_joint", "xyz")
    assert tree["meshes/joints/coco17"].dims == ("mesh", "coco17_joint", "xyz")
    assert tree["topology/regressors/smpl24"].dims == ("smpl24_joint", "vertex")
    assert tree["topology/level1/up_index"].dims == ("finer_vertex", "neighbour")
    counts = tree.attrs[schema.ATTR_COUNTS]
    assert tree["views"].sizes["camera"] == counts["cameras"] and tree["meshes"].sizes["mesh"] == counts["meshes"]
    assert tree["topology"].sizes["vertex"] == counts["vertices"]
    np.testing.assert_array_equal(tree["cameras/R"].values, np.asarray(_raw_group(reference_store.path)[schema.CAMERA_R][:]))


def test_every_array_carries_the_schema_dimension_names_and_the_manifest_records_them(reference_store):
    store = reference_store.path
    manifest = json.loads((store / schema.INTEGRITY_MANIFEST).read_text())
    arrays = [(p, a) for p, a in _raw_group(store).members(max_depth=None) if isinstance(a, zarr.Array)]
    assert len(arrays) == len(manifest["arrays"]) > 20
    for path, arr in arrays:
        dims = schema.dimension_names(path)
        assert arr.metadata.dimension_names == dims and len(dims) == arr.ndim, path
        assert manifest["arrays"][path]["dimension_names"] == list(dims), path
    with pytest.raises(ValueError, match="no dimension names for an array at 'meshes/colour'"):
        schema.dimension_names("meshes/colour")


def test_verify_names_a_changed_dimension_name(reference_store, tmp_path):
    from mpt_data.freeze import verify_store

    store = tmp_path / "store"
    shutil.copytree(reference_store.path, store)
    for p in store.rglob("*"):
        p.chmod(p.stat().st_mode | 0o200)
    root_json = store / "zarr.json"
    root = json.loads(root_json.read_text())
    root["consolidated_metadata"]["metadata"][schema.VERTICES]["dimension_names"] = ["mesh", "point", "xyz"]
    root_json.write_text(json.dumps(root))
    report = verify_store(store)
    assert not report.ok
    assert report.mismatches == [f"{schema.VERTICES}: dimension_names reads [\"mesh\", \"point\", \"xyz\"] (consolidated metadata), "
                                 f"{schema.INTEGRITY_MANIFEST} records [\"mesh\", \"vertex\", \"xyz\"]"]


def _strip_new_metadata(store: Path) -> None:
    """Make a built store look as the builder wrote it before arrays had dimension names and CF attributes."""
    for meta in store.rglob("zarr.json"):
        doc = json.loads(meta.read_text())
        if doc.get("node_type") != "array":
            continue
        doc.pop("dimension_names", None)
        for key in schema.VERTEX_CF_ATTRS:
            doc.get("attributes", {}).pop(key, None)
        meta.write_text(json.dumps(doc))


def test_a_store_built_before_dimension_names_still_freezes_verifies_and_reads(unfrozen_store, tmp_path):
    from mpt_data.freeze import freeze_store, verify_store
    from mpt_train.store import StoreReader

    store = tmp_path / "old"
    shutil.copytree(unfrozen_store, store)
    _strip_new_metadata(store)
    assert _raw_group(store)[schema.VERTICES].metadata.dimension_names is None
    fingerprint = freeze_store(store)
    manifest = json.loads((store / schema.INTEGRITY_MANIFEST).read_text())
    assert all("dimension_names" not in a for a in manifest["arrays"].values())
    assert manifest["arrays"][schema.VERTICES]["attributes"] == {schema.ATTR_SCALE_M: schema.VERTEX_SCALE_M}
    report = verify_store(store)
    assert report.ok and report.computed_fingerprint == fingerprint, report.mismatches
    reader = StoreReader(str(store))
    stored = np.asarray(_raw_group(store)[schema.VERTICES][:reader.chunk_size])
    np.testing.assert_array_equal(reader.read_chunk(0)["vertices"], stored.astype(np.float32) * np.float32(1e-4))


def test_freeze_refuses_a_scale_factor_that_disagrees_with_scale_m(unfrozen_store, tmp_path):
    from mpt_data.freeze import freeze_store
    from mpt_data.integrity import StoreError

    store = tmp_path / "bad"
    shutil.copytree(unfrozen_store, store)
    meta = store / schema.VERTICES / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["scale_factor"] = 1e-3
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match=r"meshes/vertices: attribute 'scale_factor' is 0\.001, the builder writes 0\.0001"):
        freeze_store(store)
