"""Store helpers: checksums, quantisation, freeze, verify (names corrupt chunks), info, manifest."""

from __future__ import annotations

import hashlib
import shutil
import stat

import numpy as np
import pytest
import zarr

from mpt_data import schema
from mpt_data import freeze as fz
from mpt_data import store as st


def _writable_copy(src, dst):
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return dst


def test_chunk_checksums_hash_each_slab_of_little_endian_bytes():
    a = np.arange(10 * 3, dtype=">i4").reshape(10, 3)  # big-endian input: same content, same digests
    sums = st.chunk_checksums(a, 4)
    little = a.astype("<i4")
    want = [hashlib.blake2b(little[s : s + 4].tobytes(), digest_size=16).hexdigest() for s in (0, 4, 8)]
    assert sums == want
    assert st.chunk_checksums(np.zeros((0, 3)), 4) == [hashlib.blake2b(b"", digest_size=16).hexdigest()]


def test_vertex_quantisation_round_trip_and_range():
    v = np.array([[0.0, 1.23456, -3.2766], [0.00004, -0.00006, 2.5]])
    q = st.quantise_vertices(v)
    assert q.dtype == np.int16 and q.tolist() == [[0, 12346, -32766], [0, -1, 25000]]
    assert np.abs(st.dequantise_vertices(q) - v).max() <= 0.5e-4 + 1e-7
    with pytest.raises(st.StoreError, match="int16 range"):
        st.quantise_vertices(np.array([[3.3, 0.0, 0.0]]))


def test_layout_must_be_shard_aligned():
    with pytest.raises(st.StoreError, match="multiple"):
        st.StoreLayout(10, 5, 1, {"coco17": 17}, 156, 16, 17, chunk_meshes=8, shard_meshes=20)
    lay = st.StoreLayout(70, 5, 1, {"coco17": 17}, 156, 16, 17, chunk_meshes=8, shard_meshes=32)
    assert lay.num_partitions == 3 and lay.partition_range(2) == (64, 70)


def _shard_chunk_range(shard_file, chunk_in_shard, chunks_per_shard):
    """(offset, nbytes) of an inner chunk, from the sharding index at the end of the file (uint64 pairs + crc32c)."""
    blob = shard_file.read_bytes()
    index = np.frombuffer(blob[-(16 * chunks_per_shard + 4) : -4], dtype="<u8").reshape(-1, 2)
    return int(index[chunk_in_shard, 0]), int(index[chunk_in_shard, 1])


def test_verify_passes_then_names_a_corrupted_chunk(reference_store, tmp_path):
    ref, fp = reference_store
    report = fz.verify_store(ref)
    assert report.ok and report.computed_fingerprint == fp and report.chunks_checked > 20
    store = _writable_copy(ref, tmp_path / "copy")
    group = zarr.open_group(str(store), mode="r")
    chunk, shard = group.attrs["chunk_meshes"], group.attrs["shard_meshes"]
    per_shard = shard // chunk
    shard_file = store / schema.VERTICES / "c" / "1" / "0" / "0"
    offset, nbytes = _shard_chunk_range(shard_file, 2, per_shard)
    blob = bytearray(shard_file.read_bytes())
    for i in range(offset + nbytes // 2, offset + nbytes // 2 + 16):
        blob[i] ^= 0xFF
    shard_file.write_bytes(bytes(blob))
    report = fz.verify_store(store)
    assert not report.ok
    bad = per_shard * 1 + 2
    assert any(m.startswith(f"{schema.VERTICES}: chunk {bad} (meshes {bad * chunk}..") for m in report.mismatches), report.mismatches
    assert len(report.mismatches) == 1
    assert report.computed_fingerprint != fp


def test_verify_names_a_changed_sequences_table_and_camera_array(reference_store, tmp_path):
    ref, _ = reference_store
    store = _writable_copy(ref, tmp_path / "copy")
    (store / schema.SEQUENCES_TABLE).write_bytes((store / schema.SEQUENCES_TABLE).read_bytes() + b"\0")
    arr = zarr.open_array(str(store / schema.CAMERA_T), mode="r+")
    t = arr[:]
    t[0, 0] += 0.001
    arr[:] = t
    report = fz.verify_store(store)
    assert any(m.startswith(schema.SEQUENCES_TABLE) for m in report.mismatches)
    assert any(m.startswith(f"{schema.CAMERA_T}: chunk 0 (whole array)") for m in report.mismatches)


def test_freeze_needs_every_record_and_is_idempotent(reference_store, tmp_path):
    ref, fp = reference_store
    assert fz.freeze_store(ref) == fp  # already frozen: unchanged
    store = _writable_copy(ref, tmp_path / "copy")
    g = zarr.open_group(str(store), mode="r+")
    g.attrs.update({"state": schema.STATE_COMPLETE, "fingerprint": None})
    st.partition_record_path(store, 1).unlink()
    with pytest.raises(st.StoreError, match=r"partitions \[1\].*--resume"):
        fz.freeze_store(store)


def test_info_reports_counts_sizes_and_compression(reference_store):
    ref, fp = reference_store
    info = st.store_info(ref)
    assert info["fingerprint"] == fp and info["state"] == "frozen"
    c = info["counts"]
    assert c["views"] == c["meshes"] * c["cameras"] and sum(c["splits"].values()) == c["meshes"]
    assert 0 < info["vertex_bytes_per_mesh"] < 0.5 * info["vertex_raw_float32_bytes_per_mesh"]
    text = st.format_info(info)
    assert fp in text and "meshes/vertices" in text


def test_manifest_update_keeps_the_head_and_replaces_same_name(tmp_path):
    import yaml

    m = tmp_path / "m.yaml"
    m.write_text("# comment kept\nsources:\n  amass: {root_hint: x}\nstores: []\n")
    fz.update_manifest(m, {"name": "a", "path": "/s/a", "fingerprint": "1", "counts": {"meshes": 3}})
    fz.update_manifest(m, {"name": "b", "path": "/s/b", "fingerprint": "2", "counts": {"meshes": 4}})
    fz.update_manifest(m, {"name": "a", "path": "/s/a", "fingerprint": "3", "counts": {"meshes": 5}})
    text = m.read_text()
    assert text.startswith("# comment kept\nsources:\n  amass: {root_hint: x}\n")
    doc = yaml.safe_load(text)
    assert [(s["name"], s["fingerprint"]) for s in doc["stores"]] == [("b", "2"), ("a", "3")]
