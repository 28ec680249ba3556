"""Atomic checkpoints: round trip, `latest`, pruning, crash mid-write, store fingerprint check."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mpt_train import checkpoint as ckpt


def _state(step: int) -> dict:
    return {"model": {"w": torch.full((3,), float(step))}, "store_fingerprint": "fp-a"}


def test_round_trip_with_rng(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    rng = ckpt.rng_state()
    ckpt.save(tmp_path, 5, _state(5), {"rng": rng, "loader": {"epoch": 1, "batches_done": 7}})
    expect = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    loaded = ckpt.load_checkpoint(tmp_path / "latest")
    state, rank_state = loaded.state, loaded.rank_state
    assert state["step"] == 5 and torch.equal(state["model"]["w"], torch.full((3,), 5.0))
    assert rank_state["loader"] == {"epoch": 1, "batches_done": 7}
    ckpt.set_rng_state(rank_state["rng"])
    assert (random.random(), np.random.rand()) == expect[:2] and torch.equal(torch.rand(1), expect[2])
    marker = json.loads((ckpt.step_dir(tmp_path, 5) / ckpt.MARKER).read_text())
    assert marker["step"] == 5 and "state.pt" in marker["files"]


def test_keeps_last_two_and_latest_ignores_incomplete(tmp_path):
    for s in (1, 2, 3):
        ckpt.save(tmp_path, s, _state(s), {}, keep=2)
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [2, 3]
    (tmp_path / "step-00000009").mkdir()  # no marker: a crash after the rename
    (tmp_path / ".tmp-step-00000010").mkdir()
    assert ckpt.latest(tmp_path).name == "step-00000003"
    with pytest.raises(ValueError):
        ckpt.save(tmp_path, 4, _state(4), {}, keep=1)


@pytest.mark.parametrize("crash_at", ["rank_file", "state_file", "marker"])
def test_crash_mid_write_never_replaces_last_good(tmp_path, monkeypatch, crash_at):
    ckpt.save(tmp_path, 1, _state(1), {"rng": 1})
    real_save = ckpt._atomic_torch_save

    def failing_save(obj, path):
        if (crash_at == "rank_file" and path.name.startswith("rank")) or \
                (crash_at == "state_file" and path.name == "state.pt"):
            path.with_name(path.name + ".tmp").write_bytes(b"partial")
            raise KeyboardInterrupt("killed")
        real_save(obj, path)

    def failing_marker(path, obj, **kw):  # killed while writing the marker: only its temporary file exists
        path.with_name(f".{path.name}.tmp").write_text('{"step": ')
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ckpt, "_atomic_torch_save", failing_save)
    if crash_at == "marker":
        monkeypatch.setattr(ckpt, "atomic_write_json", failing_marker)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(tmp_path, 2, _state(2), {"rng": 2})
    monkeypatch.undo()
    assert ckpt.latest(tmp_path).name == "step-00000001"
    state = ckpt.load_checkpoint(tmp_path).state
    assert torch.equal(state["model"]["w"], torch.full((3,), 1.0))
    ckpt.save(tmp_path, 2, _state(2), {"rng": 2})  # a retry of the same step succeeds
    assert ckpt.latest(tmp_path).name == "step-00000002"


def test_hard_kill_of_a_writing_process(tmp_path):
    """A process killed (os._exit) while writing step 2 leaves step 1 as `latest`."""
    script = textwrap.dedent(f"""
        import os, torch
        from mpt_train import checkpoint as ckpt
        ckpt.save({str(tmp_path)!r}, 1, {{"model": {{"w": torch.ones(2)}}}}, {{}})
        real = ckpt._atomic_torch_save
        def dying(obj, path):
            if path.name == "state.pt":
                os._exit(9)
            real(obj, path)
        ckpt._atomic_torch_save = dying
        ckpt.save({str(tmp_path)!r}, 2, {{"model": {{"w": torch.zeros(2)}}}}, {{}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 9
    assert ckpt.latest(tmp_path).name == "step-00000001"
    state = ckpt.load_checkpoint(tmp_path).state
    assert torch.equal(state["model"]["w"], torch.ones(2))


def test_fingerprint_mismatch_refused_unless_forced(tmp_path):
    ckpt.save(tmp_path, 1, _state(1), {})
    with pytest.raises(ValueError, match="fingerprint"):
        ckpt.load_checkpoint(tmp_path, expected_fingerprint="fp-b")
    state = ckpt.load_checkpoint(tmp_path, expected_fingerprint="fp-b", force=True).state
    assert state["store_fingerprint"] == "fp-a"
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ckpt.load_checkpoint(tmp_path / "empty")
