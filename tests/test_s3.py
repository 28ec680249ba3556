"""Stores on object storage: a real S3 protocol server on 127.0.0.1 (moto), reached through s3fs with ordinary
credentials and an endpoint URL, as a user reaches their own bucket.

Copy a frozen store to a bucket, verify it there, stream the same batches from it as from the local store (with
and without the read cache), resume an interrupted copy, catch a corrupted object, refuse what must be refused
with one line naming the URL, and never write a credential anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs", reason="object-storage tests need the s3 extra: pip install 'mpt[s3]'")
pytest.importorskip("moto.server", reason="object-storage tests need the s3 extra: pip install 'mpt[s3]'")

from s3_server import ACCESS_KEY, SECRET_KEY, S3Server  # noqa: E402

from mpt_data.integrity import StoreError  # noqa: E402
from mpt_data.transfer import COPY_MARKER, CopyConfig, copy_store  # noqa: E402


@pytest.fixture(scope="session")
def s3():
    server = S3Server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bucket_store(s3, reference_store) -> str:
    """The reference store copied to a bucket of its own (read-only for the tests: copy it again to change it)."""
    url = f"s3://{s3.new_bucket()}/stores/reference"
    copy_store(CopyConfig(str(reference_store.path), url, {}, s3.options(), progress=False))
    return url


def _copy_to_new_bucket(s3, reference_store) -> tuple[str, str]:
    bucket = s3.new_bucket()
    url = f"s3://{bucket}/store"
    copy_store(CopyConfig(str(reference_store.path), url, {}, s3.options(), progress=False))
    return url, f"{bucket}/store"


def _flip_byte(fs, key: str) -> None:
    blob = bytearray(fs.cat_file(key))
    blob[len(blob) // 2] ^= 0xFF
    fs.pipe_file(key, bytes(blob))


def _vertices_shard(fs, root: str) -> str:
    return sorted(k for k in fs.find(root) if "/meshes/vertices/c/" in k)[0]


def test_copy_to_a_bucket_verifies_there_with_the_source_fingerprint(s3, reference_store, bucket_store):
    from mpt_data.freeze import verify_store
    from mpt_data.store import store_info

    fs = s3.filesystem()
    root = bucket_store[len("s3://"):]
    local = {str(p.relative_to(reference_store.path)): p.stat().st_size
             for p in reference_store.path.rglob("*") if p.is_file()}
    remote = {k[len(root) + 1:]: v["size"] for k, v in fs.find(root, detail=True).items()}
    assert remote == local  # every file, same sizes, no copy marker left
    assert COPY_MARKER not in remote
    report = verify_store(bucket_store, s3.options())
    assert report.ok, report.mismatches
    assert report.stored_fingerprint == report.computed_fingerprint == reference_store.fingerprint
    info, local_info = store_info(bucket_store, s3.options()), store_info(reference_store.path)
    assert info["counts"] == local_info["counts"] and info["fingerprint"] == reference_store.fingerprint
    assert info["total_bytes"] == sum(local.values())
    assert info["sizes_bytes"] == local_info["sizes_bytes"]


def test_preview_reads_the_same_mesh_and_views_from_the_bucket(s3, reference_store, bucket_store):
    import dataclasses

    from mpt_data.preview import read_mesh_views

    remote, local = read_mesh_views(bucket_store, 5, s3.options()), read_mesh_views(reference_store.path, 5)
    for f in dataclasses.fields(local):
        assert np.array_equal(np.asarray(getattr(remote, f.name)), np.asarray(getattr(local, f.name))), f.name


@pytest.mark.parametrize("workers", [0, 1])
def test_training_batches_from_the_bucket_equal_the_local_ones(s3, reference_store, bucket_store, tmp_path, workers):
    from mpt_train.data import LoaderConfig, PairLoader

    def batches(**where):
        cfg = LoaderConfig(batch_size=16, num_workers=workers, pin_memory=False, seed=3, **where)
        it = iter(PairLoader(cfg))
        return [next(it) for _ in range(3)]

    local = batches(shards=str(reference_store.path))
    cache = tmp_path / "cache"
    for where in (dict(shards=bucket_store, storage_options=s3.options()),
                  dict(shards=bucket_store, storage_options=s3.options(), cache_dir=str(cache)),  # fills it
                  dict(shards=bucket_store, storage_options=s3.options(), cache_dir=str(cache))):  # reads it
        got = batches(**where)
        for a, b in zip(local, got):
            assert a.keys() == b.keys()
            for k in a:
                assert np.array_equal(a[k].numpy(), b[k].numpy()), k
    entries = list((cache / reference_store.fingerprint).rglob("*.npy"))
    assert entries  # the cache holds decoded chunks under the store's fingerprint


def test_the_read_cache_replaces_a_corrupted_entry(s3, reference_store, bucket_store, tmp_path):
    from mpt_data import schema
    from mpt_train.store import open_store

    reader = open_store(bucket_store, storage_options=s3.options(), cache_dir=str(tmp_path))
    first = reader.read_chunks([0, 1])
    assert reader.cache.misses > 0 and reader.cache.hits == 0
    entry = tmp_path / reference_store.fingerprint / schema.VERTICES / "1.npy"
    original = np.load(entry)
    stored = original.copy()
    stored.flat[0] += 7  # a damaged cache entry: must be noticed by its checksum and replaced
    np.save(entry, stored)
    again = open_store(bucket_store, storage_options=s3.options(), cache_dir=str(tmp_path))
    second = again.read_chunks([0, 1])
    assert again.cache.evictions == 1 and again.cache.hits > 0
    for a, b in zip(first, second):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(np.load(entry), original)  # the damaged entry was rewritten from the store


def test_verify_names_a_corrupted_object_and_a_resumed_copy_moves_only_what_is_missing_or_wrong(s3, reference_store):
    from mpt_data.freeze import verify_store

    url, root = _copy_to_new_bucket(s3, reference_store)
    fs = s3.filesystem()
    corrupted = _vertices_shard(fs, root)
    _flip_byte(fs, corrupted)  # same size: only the chunk checksums can tell
    report = verify_store(url, s3.options())
    assert not report.ok
    assert any(m.startswith("meshes/vertices: chunk ") for m in report.mismatches), report.mismatches
    # Now what a copy killed before its end leaves besides: the root zarr.json (written last) absent, the marker
    # present, and a data object never uploaded.
    fs.rm_file(f"{root}/zarr.json")
    fs.pipe_file(f"{root}/{COPY_MARKER}", json.dumps({"fingerprint": reference_store.fingerprint}).encode())
    missing = sorted(k for k in fs.find(root) if "/c/" in k)[0]
    assert missing != corrupted
    fs.rm_file(missing)
    with pytest.raises(StoreError, match="no Zarr store"):  # a partial copy is never taken for a store
        verify_store(url, s3.options())
    report = copy_store(CopyConfig(str(reference_store.path), url, {}, s3.options(), progress=False))
    rel = lambda k: k[len(root) + 1:]  # noqa: E731
    assert sorted(report.copied) == sorted({"zarr.json", rel(missing), rel(corrupted)})
    assert report.repaired == [rel(corrupted)]
    assert verify_store(url, s3.options()).ok
    assert not fs.exists(f"{root}/{COPY_MARKER}")


def test_copy_refuses_an_unfrozen_store_and_a_destination_holding_another(s3, reference_store, unfrozen_store,
                                                                         other_fingerprint_store, bucket_store):
    fs = s3.filesystem()
    bucket = s3.new_bucket()
    with pytest.raises(StoreError, match=r"state 'complete', not 'frozen'.*mpt-data freeze"):
        copy_store(CopyConfig(str(unfrozen_store), f"s3://{bucket}/x", {}, s3.options(), progress=False))
    assert fs.find(bucket) == []
    before = fs.find(bucket_store[len("s3://"):], detail=True)
    with pytest.raises(StoreError, match="holds another store"):
        copy_store(CopyConfig(str(other_fingerprint_store.path), bucket_store, {}, s3.options(), progress=False))
    assert fs.find(bucket_store[len("s3://"):], detail=True) == before


def _one_line_error(result, *needles: str) -> str:
    """The CLI failed with exactly one `Error: ...` line containing every needle, and no traceback."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_bad_remote_input_is_one_line_naming_the_url_and_writes_nothing(s3, bucket_store, reference_store, tmp_path,
                                                                       monkeypatch):
    import socket

    from click.testing import CliRunner

    from mpt_data.cli import main

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    fs = s3.filesystem()
    empty = s3.new_bucket()
    runner = CliRunner()
    opts = s3.cli_options()
    cases = [
        (["verify", bucket_store, "--storage-option", f"key={ACCESS_KEY}", "--storage-option", f"secret={SECRET_KEY}",
          "--storage-option", f"endpoint_url={dead}",
          "--storage-option", 'config_kwargs={"connect_timeout": 1, "retries": {"max_attempts": 1}}'],
         ("cannot reach the endpoint", dead)),
        (["info", bucket_store, "--storage-option", f"endpoint_url={s3.endpoint}"], ("no credentials",)),
        (["verify", "s3://no-such-bucket-mpt/store", *opts], ("bucket 'no-such-bucket-mpt' does not exist",)),
        (["preview", f"s3://{empty}/nothing", "--out", str(tmp_path / "p.png"), *opts], ("not an MPT store",)),
        (["copy", str(reference_store.path), "s3://no-such-bucket-mpt/store", *opts], ("does not exist",)),
    ]
    for args, needles in cases:
        url = args[1] if args[0] != "copy" else args[2]
        _one_line_error(runner.invoke(main, args), url, *needles)
    assert fs.find(empty) == [] and not (tmp_path / "p.png").exists()
    assert not fs.exists("no-such-bucket-mpt")


def test_build_refuses_an_object_storage_out_and_says_what_to_do(build_inputs, s3):
    from click.testing import CliRunner

    from mpt_data.cli import main

    result = CliRunner().invoke(main, ["build", "--amass-root", str(build_inputs.amass_root), "--body-models",
                                       str(build_inputs.body_dir), "--out", "s3://somewhere/store", "--workers", "0"])
    _one_line_error(result, "s3://somewhere/store", "mpt-data copy")


def test_credentials_never_reach_logs_checkpoints_run_configs_or_stores(s3, reference_store, tmp_path, capfd):
    from click.testing import CliRunner

    from mpt_data.cli import main as data_main
    from mpt_train.cli import main as train_main

    bucket = s3.new_bucket()
    url = f"s3://{bucket}/store"
    runner = CliRunner()
    copied = runner.invoke(data_main, ["copy", str(reference_store.path), url, "--no-progress", *s3.cli_options()])
    assert copied.exit_code == 0, copied.output
    staged = tmp_path / "staged"
    back = runner.invoke(data_main, ["copy", url, str(staged), "--no-progress", *s3.cli_options()])
    assert back.exit_code == 0, back.output
    run = tmp_path / "run"
    trained = runner.invoke(train_main, ["pretrain", "--shards", url, *s3.cli_options(), "--cache-dir",
                                         str(tmp_path / "cache"), "--preset", "tiny", "--steps", "2", "--batch-size", "4",
                                         "--checkpoint-every", "1", "--val-every", "0", "--val-batches", "1",
                                         "--workers", "0", "--device", "cpu", "--no-progress", "--out", str(run)])
    assert trained.exit_code == 0, trained.output
    assert list(run.rglob("state.pt")) and (run / "metrics.jsonl").exists()
    scored = runner.invoke(train_main, ["evaluate", "--checkpoint", str(run), "--shards", url, *s3.cli_options(),
                                        "--max-batches", "1", "--batch-size", "8", "--no-baseline", "--device", "cpu",
                                        "--json-out", str(run / "eval.json")])
    assert scored.exit_code == 0, scored.output
    assert json.loads((run / "eval.json").read_text())["clean"]["samples"] == 8
    written = [p for root in (run, staged, tmp_path / "cache") for p in Path(root).rglob("*") if p.is_file()]
    assert any(p.suffix == ".npy" for p in written) and any(p.name == "integrity.json" for p in written)
    logs = copied.output + back.output + trained.output + scored.output + "".join(capfd.readouterr())
    for secret in (SECRET_KEY.encode(), ACCESS_KEY.encode()):
        assert [str(p) for p in written if secret in p.read_bytes()] == []
        assert secret not in logs.encode()
        fs = s3.filesystem()
        assert [k for k in fs.find(bucket) if secret in fs.cat_file(k)] == []
    config = json.loads(next(run.rglob("config.json")).read_text()) if list(run.rglob("config.json")) else None
    if config is not None:
        assert "<redacted>" in json.dumps(config)


def test_the_standard_environment_variables_reach_the_bucket_without_options(s3, reference_store, bucket_store,
                                                                            monkeypatch):
    from mpt_data.store import store_info
    from mpt_train.store import open_store

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    assert store_info(bucket_store)["fingerprint"] == reference_store.fingerprint
    remote, local = open_store(bucket_store), open_store(str(reference_store.path))
    assert all(np.array_equal(remote.read_chunk(2)[k], local.read_chunk(2)[k]) for k in local.read_chunk(2))


def test_storage_options_parse_values_and_redact_secrets():
    from mpt_data.remote import REDACTED, parse_storage_options, redact_options

    opts = parse_storage_options(["endpoint_url=http://127.0.0.1:9000", "anon=false", "use_ssl=True",
                                  "default_block_size=1048576", f"secret={SECRET_KEY}",
                                  'client_kwargs={"region_name": "eu-1", "aws_secret_access_key": "x=y"}'])
    assert opts == {"endpoint_url": "http://127.0.0.1:9000", "anon": False, "use_ssl": True,
                    "default_block_size": 1048576, "secret": SECRET_KEY,
                    "client_kwargs": {"region_name": "eu-1", "aws_secret_access_key": "x=y"}}
    assert redact_options(opts) == {"endpoint_url": "http://127.0.0.1:9000", "anon": False, "use_ssl": True,
                                    "default_block_size": 1048576, "secret": REDACTED,
                                    "client_kwargs": {"region_name": "eu-1", "aws_secret_access_key": REDACTED}}
    with pytest.raises(ValueError, match="expected KEY=VALUE") as err:
        parse_storage_options([SECRET_KEY])
    assert SECRET_KEY not in str(err.value)
