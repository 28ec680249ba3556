"""Fixtures several test files share, each made once per test run.

The stores are made by the real builder from the inputs of `store_builds.write_inputs`:
`reference_store` is the frozen build of `store_builds.small_config` that the build tests compare every other
build with and that the loader and trainer tests read; the variants are other builds of the same inputs, each
differing from it in one stated way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from store_builds import BuiltStore, Inputs, build_frozen_store, integrity_manifest, small_config, write_inputs


@pytest.fixture(scope="session")
def build_inputs(tmp_path_factory) -> Inputs:
    """Synthetic body models and AMASS-format motion files (good ones in train/val/test subsets, bad ones)."""
    return write_inputs(tmp_path_factory.mktemp("build_inputs"))


@pytest.fixture(scope="session")
def reference_store(build_inputs, tmp_path_factory) -> BuiltStore:
    """(path, fingerprint) of the frozen in-process build of `small_config`. Read-only: copy it to change it."""
    return build_frozen_store(small_config(build_inputs, tmp_path_factory.mktemp("reference") / "store"))


@pytest.fixture(scope="session")
def unfrozen_store(build_inputs, tmp_path_factory) -> Path:
    """A build left as the builder leaves it (state complete, no fingerprint), without the test subset
    (SSM_synced): its test split is empty and its content differs from the reference store's."""
    from mpt_data.build import build_store

    out = tmp_path_factory.mktemp("unfrozen") / "store"
    return Path(build_store(small_config(build_inputs, out, subsets_exclude=("SSM_synced",))))


@pytest.fixture(scope="session")
def other_fingerprint_store(build_inputs, reference_store, tmp_path_factory) -> BuiltStore:
    """The reference store's data and layout under another fingerprint: built with another body-model batch
    size, a recipe field the store records (so the fingerprint covers it) that changes no byte of the data,
    since the forward runs in fixed blocks of 128 meshes whatever the batch size."""
    out = tmp_path_factory.mktemp("other_fingerprint") / "store"
    other = build_frozen_store(small_config(build_inputs, out, batch_size=32))
    assert other.fingerprint != reference_store.fingerprint
    assert integrity_manifest(other.path)["checksums"] == integrity_manifest(reference_store.path)["checksums"]
    return other
