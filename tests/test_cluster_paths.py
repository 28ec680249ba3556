"""A build given relative paths works on a cluster whose workers run in another current directory (as the
workers of `dask worker` on other machines do): the paths are made absolute before any task is sent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from store_builds import small_config


@pytest.mark.slow
def test_relative_paths_reach_workers_whose_current_directory_is_another(reference_store, build_inputs, tmp_path,
                                                                          monkeypatch):
    from distributed import LocalCluster

    from mpt_data.build import build_store
    from mpt_data.freeze import freeze_store

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        monkeypatch.chdir(tmp_path)  # after the worker started: its current directory stays the old one
        config = small_config(build_inputs, Path("store"), workers=None, scheduler=cluster.scheduler_address,
                              amass_root=os.path.relpath(build_inputs.amass_root, tmp_path),
                              body_model_dir=os.path.relpath(build_inputs.body_dir, tmp_path))
        assert not Path(config.amass_root).is_absolute() and Path(config.amass_root).is_dir()
        path = build_store(config)
    assert path == tmp_path / "store"
    assert freeze_store(path) == reference_store.fingerprint, "the same data as the in-process build"
