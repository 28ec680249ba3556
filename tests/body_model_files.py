"""The synthetic body-model files, built once per test run and copied wherever a test needs them.

Building the synthetic model takes seconds of CPU; many tests need the same (seed, vertex count).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.cache
def _cache_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="mpt-test-body-models-"))
    atexit.register(shutil.rmtree, root)  # the tests hold copies, never the cached files themselves
    return root


def write_body_models(out_dir: Path, seed: int = 0, num_vertices: int = 1500) -> Path:
    """Same files as `mpt_data.synth.body.write_body_models(out_dir, seed, num_vertices)`."""
    from mpt_data.synth.body import write_body_models as build

    cached = _cache_root() / f"seed{seed}-v{num_vertices}"
    if not cached.exists():
        partial = _cache_root() / f".partial-seed{seed}-v{num_vertices}"
        build(partial, seed=seed, num_vertices=num_vertices)
        partial.rename(cached)
    shutil.copytree(cached, out_dir, dirs_exist_ok=True)
    return Path(out_dir)
