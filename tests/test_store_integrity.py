"""Integrity of a store end to end, on stores made by the real builder, with real faults on disk:

freeze re-hashes the data and refuses a chunk that differs from its record; the fingerprint is the SHA-256 of
integrity.json and so covers metadata (a changed scale_m in the consolidated metadata is caught by verify
and refused by the reader); the trainer's reader checks every chunk it reads (flipped byte, deleted shard
file); freeze never follows a symbolic link and verify reports one; a store frozen before manifests is
refused by the reader and re-frozen by freeze to the same fingerprint as a fresh freeze.
"""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import zarr

from mpt_data import schema
from mpt_data import freeze as fz
from mpt_data import integrity
from mpt_data import store as st
from mpt_train.data import LoaderConfig, PairLoader
from mpt_train.store import StoreError as ReaderError
from mpt_train.store import open_store
from test_store import _shard_chunk_range, _writable_copy

# The reference store (tests/store_builds.small_config): 8-mesh chunks, 32-mesh shards, 4 chunks per shard.
CHUNK, SHARD = 8, 32
BAD_CHUNK = 6  # meshes 48..55: the second shard's third chunk, in the train split (CMU motions come first)


def _flip_chunk_bytes(store, array: str, chunk: int) -> None:
    """XOR 16 bytes in the middle of an inner chunk's compressed bytes, inside its shard file."""
    shard_file = store / array / "c" / str(chunk * CHUNK // SHARD)
    while shard_file.is_dir():
        shard_file = shard_file / "0"
    offset, nbytes = _shard_chunk_range(shard_file, chunk % (SHARD // CHUNK), SHARD // CHUNK)
    blob = bytearray(shard_file.read_bytes())
    for i in range(offset + nbytes // 2, offset + nbytes // 2 + 16):
        blob[i] ^= 0xFF
    shard_file.write_bytes(bytes(blob))


def _unfreeze(store) -> None:
    """Back to the state the builder leaves (complete, no fingerprint, no manifest, no consolidated metadata)."""
    (store / schema.INTEGRITY_MANIFEST).unlink()
    root = json.loads((store / "zarr.json").read_text())
    root.pop("consolidated_metadata", None)
    root["attributes"].update({"state": schema.STATE_COMPLETE, "fingerprint": None})
    (store / "zarr.json").write_text(json.dumps(root))


def test_fingerprint_is_the_sha256_of_the_manifest_which_records_metadata_and_chunks(reference_store):
    ref, fp = reference_store
    blob = (ref / schema.INTEGRITY_MANIFEST).read_bytes()
    assert integrity.manifest_fingerprint(blob) == fp
    doc = json.loads(blob)
    assert integrity.canonical_json(doc) == blob, "the manifest is stored in its canonical form"
    n = doc["group"]["counts"]["meshes"]
    vertices = doc["arrays"][schema.VERTICES]
    assert vertices["attributes"] == {"scale_m": schema.VERTEX_SCALE_M, "scale_factor": schema.VERTEX_SCALE_M,
                                      "units": "m"} and vertices["dtype"] == "int16"
    assert vertices["dimension_names"] == ["mesh", "vertex", "xyz"]
    assert vertices["shape"][0] == n and vertices["chunk_rows"] == CHUNK
    assert len(doc["checksums"][schema.VERTICES]) == -(-n // CHUNK)
    assert doc["groups"]["cameras"]["names"] and schema.SEQUENCES_TABLE in doc["files"]
    # state, fingerprint, tool version and the local paths of the recipe are not part of the meaning
    assert not {"state", "fingerprint", "tool_version"} & set(doc["group"])
    assert "amass_root" not in doc["group"]["recipe"] and doc["group"]["recipe_hash"]


def test_freeze_rehashes_and_refuses_a_flipped_byte_naming_array_chunk_and_partition(reference_store, tmp_path):
    ref, fp = reference_store
    store = _writable_copy(ref, tmp_path / "copy")
    _unfreeze(store)
    assert fz.freeze_store(store) == fp  # the clean data re-freezes to the same fingerprint
    store = _writable_copy(ref, tmp_path / "bad")
    _unfreeze(store)
    _flip_chunk_bytes(store, schema.VERTICES, BAD_CHUNK)
    with pytest.raises(st.StoreError, match=rf"{schema.VERTICES}: chunk {BAD_CHUNK} \(meshes 48..55\) differs "
                                            r"from its completion record.*p000001\.json.*--resume"):
        fz.freeze_store(store)
    assert zarr.open_group(str(store), mode="r").attrs["state"] == schema.STATE_COMPLETE
    assert not (store / schema.INTEGRITY_MANIFEST).exists()
    report = fz.verify_store(store)  # before freezing: against the completion records
    assert [m for m in report.mismatches if m.startswith(schema.VERTICES)] == [
        f"{schema.VERTICES}: chunk {BAD_CHUNK} (meshes 48..55) differs"]


def test_reader_and_loader_stop_at_a_flipped_byte_naming_array_and_chunk(reference_store, tmp_path):
    ref, _ = reference_store
    store = _writable_copy(ref, tmp_path / "copy")
    _flip_chunk_bytes(store, schema.JOINTS2D, BAD_CHUNK)
    reader = open_store(str(store))  # the metadata is intact: opening works
    assert reader.verified
    clean = reader.read_chunk(BAD_CHUNK - 1)
    assert clean["joints2d"].shape[0] == CHUNK
    with pytest.raises(ReaderError, match=rf"{store}: {schema.JOINTS2D} chunk {BAD_CHUNK} \(meshes 48..55\)"):
        reader.read_chunk(BAD_CHUNK)
    report = fz.verify_store(store)
    assert not report.ok and any(m.startswith(f"{schema.JOINTS2D}: chunk {BAD_CHUNK} (meshes 48..55) differs")
                                 for m in report.mismatches), report.mismatches
    store2 = _writable_copy(ref, tmp_path / "copy2")
    _flip_chunk_bytes(store2, schema.VERTICES, BAD_CHUNK)
    cfg = LoaderConfig(shards=str(store2), split="train", batch_size=16, num_workers=0, shuffle=False,
                       drop_last=False, pin_memory=False)
    with pytest.raises(ReaderError, match=rf"{schema.VERTICES} chunk {BAD_CHUNK} \(meshes 48..55\)"):
        list(PairLoader(cfg))


def test_a_deleted_shard_file_is_an_error_not_zero_meshes(reference_store, tmp_path):
    ref, _ = reference_store
    store = _writable_copy(ref, tmp_path / "copy")
    shard_file = store / schema.VERTICES / "c" / "1" / "0" / "0"
    shard_file.unlink()  # zarr now reads meshes 32..63 as the fill value: all-zero vertices
    raw = zarr.open_group(str(store), mode="r")[schema.VERTICES][32:40]
    assert not raw.any()
    reader = open_store(str(store))
    assert reader.read_chunk(3)["vertices"].any()
    with pytest.raises(ReaderError, match=rf"{schema.VERTICES} chunk 4 \(meshes 32..39\)"):
        reader.read_chunk(4)
    assert reader.read_chunk(4, vertices=False)["joints2d"].shape[0] == CHUNK  # other arrays are whole
    report = fz.verify_store(store)
    assert [m for m in report.mismatches if m.startswith(schema.VERTICES)] == [
        f"{schema.VERTICES}: chunk {c} (meshes {c * CHUNK}..{c * CHUNK + CHUNK - 1}) differs" for c in range(4, 8)]


def test_changed_scale_in_the_consolidated_metadata_fails_verify_and_the_reader(reference_store, tmp_path):
    ref, fp = reference_store
    store = _writable_copy(ref, tmp_path / "copy")
    root_json = store / "zarr.json"
    root = json.loads(root_json.read_text())
    root["consolidated_metadata"]["metadata"][schema.VERTICES]["attributes"]["scale_m"] = 9e-4
    root_json.write_text(json.dumps(root))
    assert zarr.open_group(str(store), mode="r")[schema.VERTICES].attrs["scale_m"] == 9e-4  # what a reader sees
    report = fz.verify_store(store)
    assert not report.ok and report.computed_fingerprint != fp
    assert report.mismatches == [f"{schema.VERTICES}: attribute 'scale_m' reads 0.0009 (consolidated metadata), "
                                 f"{schema.INTEGRITY_MANIFEST} records 0.0001"]
    with pytest.raises(ReaderError, match=r"metadata differs from integrity\.json.*meshes/vertices: attribute "
                                          r"'scale_m' reads 0\.0009"):
        open_store(str(store))
    # the same change in the array's own zarr.json (what a reader ignoring consolidation sees) is named too
    store2 = _writable_copy(ref, tmp_path / "copy2")
    array_json = store2 / schema.VERTICES / "zarr.json"
    meta = json.loads(array_json.read_text())
    meta["attributes"]["scale_m"] = 9e-4
    array_json.write_text(json.dumps(meta))
    assert fz.verify_store(store2).mismatches == [
        f"{schema.VERTICES}: attribute 'scale_m' reads 0.0009 (per-array zarr.json), "
        f"{schema.INTEGRITY_MANIFEST} records 0.0001"]


def test_a_changed_manifest_no_longer_matches_the_fingerprint(reference_store, tmp_path):
    ref, _ = reference_store
    store = _writable_copy(ref, tmp_path / "copy")
    doc = json.loads((store / schema.INTEGRITY_MANIFEST).read_bytes())
    doc["arrays"][schema.VERTICES]["attributes"]["scale_m"] = 9e-4
    (store / schema.INTEGRITY_MANIFEST).write_bytes(integrity.canonical_json(doc))
    with pytest.raises(ReaderError, match="does not hash to the store's fingerprint"):
        open_store(str(store))
    assert any(m.startswith(f"{schema.INTEGRITY_MANIFEST}: its SHA-256") for m in fz.verify_store(store).mismatches)


def test_freeze_never_follows_a_symlink_and_verify_reports_it(reference_store, tmp_path):
    ref, _ = reference_store
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of any store")
    outside.chmod(0o644)
    outside_dir = tmp_path / "outside_dir"
    outside_dir.mkdir()
    (outside_dir / "f").write_text("x")
    store = _writable_copy(ref, tmp_path / "copy")
    _unfreeze(store)
    (store / "meshes" / "notes.txt").symlink_to(outside)
    with pytest.raises(st.StoreError, match=r"refusing to freeze: meshes/notes\.txt: a symbolic link"):
        fz.freeze_store(store)
    report = fz.verify_store(store)
    assert report.mismatches == [f"meshes/notes.txt: a symbolic link (to {outside}) inside the store; a store must "
                                 "hold its own files: replace the link by the file it names, or remove it"]
    # The pass that makes files read-only skips links to files and folders alike.
    (store / "topology" / "linked_dir").symlink_to(outside_dir, target_is_directory=True)
    fz._set_files_writable(store, False)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644
    assert (outside_dir / "f").stat().st_mode & stat.S_IWUSR
    assert not (store / schema.SEQUENCES_TABLE).stat().st_mode & 0o222
    assert (store / "meshes" / "notes.txt").is_symlink()


def test_a_store_frozen_before_manifests_is_refused_by_the_reader_and_refrozen(reference_store, tmp_path):
    ref, fp = reference_store
    store = tmp_path / "old"
    shutil.copytree(ref, store)  # file modes kept: read-only, as freeze left them
    os.remove(store / schema.INTEGRITY_MANIFEST)
    with pytest.raises(ReaderError, match=r"without integrity\.json.*Re-freeze it with `mpt-data freeze"):
        open_store(str(store))
    assert not fz.verify_store(store).ok
    assert fz.freeze_store(store) == fp
    assert open_store(str(store)).fingerprint == fp and fz.verify_store(store).ok
    assert not (store / schema.INTEGRITY_MANIFEST).stat().st_mode & 0o222


def test_cli_verify_says_what_it_checked(reference_store):
    from click.testing import CliRunner

    from mpt_data.cli import main

    ref, fp = reference_store
    r = CliRunner().invoke(main, ["verify", str(ref)])
    assert r.exit_code == 0, r.output
    assert "re-read and re-hashed against integrity.json" in r.output and "consolidated metadata" in r.output
    assert "no symbolic links" in r.output and f"computed {fp}" in r.output and r.output.rstrip().endswith("OK")
