"""Both CLIs print an expected error as one line naming the file or URL, never a traceback; `--debug` (or
MPT_DEBUG=1) shows the traceback; a bug still shows its traceback.

Each case runs the real command through click's CliRunner (the group's `invoke` is where errors are mapped)
or, where the process itself must differ (a missing package), a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpt_data.cli import main as data_cli
from mpt_train.cli import main as train_cli

REPO = Path(__file__).resolve().parents[1]


def _fails_in_one_line(result, *expected: str) -> str:
    """The output of a failed command: exit status != 0, no traceback, one `Error:` line holding `expected`."""
    out = result.output
    assert result.exit_code != 0, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out
    for text in expected:
        assert text in errors[0], out
    # what click reports is the message, not an exception escaping the group
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return errors[0]


def _run(cli, args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], **kw)


@pytest.fixture()
def no_debug_env(monkeypatch):
    monkeypatch.delenv("MPT_DEBUG", raising=False)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A run folder holding a tiny pre-trained transformer checkpoint (coco17 joints, as fine-tuning needs)."""
    from tiny_models import tiny_model

    from mpt_train import checkpoint as ckpt

    run = tmp_path_factory.mktemp("pretrained") / "run"
    model = tiny_model(num_vertices=64, patch=16, hidden_sizes=(32, 16))
    ckpt.save(run, 1, {"model": model.state_dict_versioned(), "store_fingerprint": None}, {"rng": {}})
    return run


# ------------------------------------------------------------------------------------------------------------
# mpt-train


def test_pretrain_on_a_missing_store_names_it(tmp_path, no_debug_env):
    missing = tmp_path / "nowhere"
    res = _run(train_cli, ["pretrain", "--shards", missing, "--steps", "1", "--out", tmp_path / "run"])
    _fails_in_one_line(res, str(missing))
    assert not (tmp_path / "run").exists()


def test_pretrain_on_an_unfrozen_store_says_to_freeze_it(unfrozen_store, tmp_path, no_debug_env):
    res = _run(train_cli, ["pretrain", "--shards", unfrozen_store, "--steps", "1", "--out", tmp_path / "run"])
    _fails_in_one_line(res, str(unfrozen_store), f"mpt-data freeze {unfrozen_store}", "--allow-unfrozen")


def test_evaluate_with_a_missing_checkpoint_names_it(reference_store, tmp_path, no_debug_env):
    missing = tmp_path / "runs" / "latest"
    res = _run(train_cli, ["evaluate", "--checkpoint", missing, "--shards", reference_store.path])
    _fails_in_one_line(res, str(missing), "no complete checkpoint")


def test_predict_on_a_text_file_names_it(pretrained, tmp_path, no_debug_env):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture\n")
    res = _run(train_cli, ["predict", "--checkpoint", pretrained, "--image", notes, "--out", tmp_path / "pred"])
    _fails_in_one_line(res, str(notes), "not a readable image")
    assert not (tmp_path / "pred").exists()


def test_predict_on_an_unknown_device_lists_the_choices(pretrained, tmp_path, no_debug_env):
    image = tmp_path / "person.jpg"
    image.write_bytes(b"")
    res = _run(train_cli, ["predict", "--checkpoint", pretrained, "--image", image, "--out", tmp_path / "p",
                           "--device", "gpu"])
    line = _fails_in_one_line(res, "--device", "'gpu'", "cuda")
    assert res.exit_code == 2, line  # a usage error


def test_finetune_on_an_empty_shard_folder_names_it(pretrained, tmp_path, no_debug_env):
    (tmp_path / "empty").mkdir()
    mix = tmp_path / "mix.yaml"
    mix.write_text("datasets:\n  - {name: e, shards: empty, weight: 1}\n")
    res = _run(train_cli, ["finetune", "--init", pretrained, "--data", mix, "--out", tmp_path / "ft",
                           "--backbone", "tiny", "--steps", "1", "--workers", "0", "--device", "cpu"])
    _fails_in_one_line(res, str(tmp_path / "empty"), "mpt-data images")


def test_a_mixture_with_an_unknown_key_gets_a_did_you_mean(pretrained, tmp_path, no_debug_env):
    mix = tmp_path / "mix.yaml"
    mix.write_text("datasets:\n  - {name: e, shards: empty, wieght: 1}\n")
    res = _run(train_cli, ["finetune", "--init", pretrained, "--data", mix, "--out", tmp_path / "ft",
                           "--backbone", "tiny", "--steps", "1", "--workers", "0", "--device", "cpu"])
    _fails_in_one_line(res, str(mix), "'wieght'", "did you mean 'weight'?")
    mix.write_text("datasets: [{name: e, shards: empty}]\nvertex_flips: flip.npy\n")
    res = _run(train_cli, ["finetune", "--init", pretrained, "--data", mix, "--out", tmp_path / "ft",
                           "--backbone", "tiny", "--steps", "1", "--workers", "0", "--device", "cpu"])
    _fails_in_one_line(res, str(mix), "'vertex_flips'", "did you mean 'vertex_flip'?")
    mix.write_text("datasets: [{name: e, shards: empty\n")
    res = _run(train_cli, ["finetune", "--init", pretrained, "--data", mix, "--out", tmp_path / "ft",
                           "--backbone", "tiny", "--steps", "1", "--workers", "0", "--device", "cpu"])
    _fails_in_one_line(res, str(mix), "not valid YAML at line 2")


def test_cuda_on_a_machine_without_it_says_what_to_use(pretrained, tmp_path, no_debug_env):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    image = tmp_path / "person.png"
    image.write_bytes(b"")
    (tmp_path / "empty").mkdir()
    mix = tmp_path / "mix.yaml"
    mix.write_text("datasets:\n  - {name: e, shards: empty}\n")
    res = _run(train_cli, ["finetune", "--init", pretrained, "--data", mix, "--out", tmp_path / "ft",
                           "--backbone", "tiny", "--steps", "1", "--device", "cuda"])
    _fails_in_one_line(res, "--device cuda", "CUDA is not available", "--device cpu")


def test_an_s3_store_without_s3fs_says_what_to_install(tmp_path):
    """A subprocess whose `import s3fs` fails, as on a machine without the package."""
    code = ("import sys; sys.modules['s3fs'] = None\n"
            "from mpt_train.cli import main\n"
            "main(['pretrain', '--shards', 's3://mpt-bucket/store', '--steps', '1', '--out', sys.argv[1]])\n")
    env = {k: v for k, v in os.environ.items() if k != "MPT_DEBUG"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "s3://mpt-bucket/store" in errors[0] and "s3fs" in errors[0], out


def test_a_stale_lock_warning_is_one_line(unfrozen_store, tmp_path, no_debug_env):
    """`mpt-data freeze` takes the store's lock; a lock left by a dead process is taken over with one line."""
    import json
    import socket

    store = tmp_path / "store"
    shutil.copytree(unfrozen_store, store, symlinks=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / ".store.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0, "command": "x"}))
    # a process of its own: pytest would record the warning instead of letting it print
    env = {k: v for k, v in os.environ.items() if k != "MPT_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "mpt_data.cli", "freeze", str(store)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "stale lock" in line]
    assert len(warned) == 1 and warned[0].startswith(f"warning: {lock}: took over a stale lock"), proc.stderr
    assert "warnings.warn" not in proc.stderr and "UserWarning" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ------------------------------------------------------------------------------------------------------------
# mpt-data


def test_images_on_a_text_file_says_it_is_not_an_npz(tmp_path, no_debug_env):
    notes = tmp_path / "notes.txt"
    notes.write_text("imgname,center\n")
    res = _run(data_cli, ["images", "--annotations", notes, "--images", tmp_path, "--out", tmp_path / "o"])
    line = _fails_in_one_line(res, str(notes), "not a readable .npz", "not a zip archive")
    assert "pickle" not in line


def test_a_malformed_recipe_names_the_file_and_line(tmp_path, no_debug_env):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: x\nsources: [amass_root: a\ncameras: 4\n")
    res = _run(data_cli, ["build", "--recipe", recipe, "--out", tmp_path / "store"])
    _fails_in_one_line(res, str(recipe), "not valid YAML at line 3")
    recipe.write_text("name: x\nsourcs: {amass_root: a}\n")
    res = _run(data_cli, ["build", "--recipe", recipe, "--out", tmp_path / "store"])
    _fails_in_one_line(res, str(recipe), "'sourcs.amass_root'", "did you mean 'sources.amass_root'?")
    assert not (tmp_path / "store").exists()


def test_preview_of_a_mesh_outside_the_store_names_it(reference_store, tmp_path, no_debug_env):
    res = _run(data_cli, ["preview", reference_store.path, "--mesh", "100000", "--out", tmp_path / "p.png"])
    _fails_in_one_line(res, str(reference_store.path), "mesh 100000", "0..134")


# ------------------------------------------------------------------------------------------------------------
# --debug, MPT_DEBUG, and bugs


def test_debug_flag_and_environment_show_the_traceback(tmp_path, monkeypatch):
    from mpt_train.checkpoint import CheckpointError

    missing = tmp_path / "nowhere"
    res = _run(train_cli, ["--debug", "pretrain", "--shards", missing, "--steps", "1", "--out", tmp_path / "r"])
    assert res.exit_code != 0 and res.exception is not None and str(missing) in str(res.exception)
    assert not isinstance(res.exception, SystemExit)
    from mpt_data.integrity import StoreError

    assert isinstance(res.exception, StoreError)
    monkeypatch.setenv("MPT_DEBUG", "1")
    res = _run(train_cli, ["evaluate", "--checkpoint", missing, "--shards", tmp_path])
    assert isinstance(res.exception, (StoreError, CheckpointError, FileNotFoundError)), res.output
    res = _run(data_cli, ["images", "--annotations", __file__, "--images", tmp_path, "--out", tmp_path / "o"])
    from mpt_data.images import AnnotationError

    assert isinstance(res.exception, AnnotationError)
    # as a user sees it: the traceback printed by the process
    env = {k: v for k, v in os.environ.items() if k != "MPT_DEBUG"} | {"OMP_NUM_THREADS": "1"}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("sources: [\n")
    for args, extra_env in (([sys.executable, "-m", "mpt_data.cli", "--debug"], {}),
                            ([sys.executable, "-m", "mpt_data.cli"], {"MPT_DEBUG": "1"})):
        proc = subprocess.run(args + ["build", "--recipe", str(recipe)], capture_output=True, text=True,
                              env=env | extra_env, cwd=tmp_path, timeout=120)
        assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr, proc.stderr
        assert "RecipeError" in proc.stderr and str(recipe) in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mpt_data.cli", "build", "--recipe", str(recipe)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stderr.startswith("Error: "), proc.stderr


def test_a_bug_is_not_dressed_as_a_user_error(tmp_path, monkeypatch, no_debug_env):
    """An unexpected exception type escapes the group (the process prints its traceback), announced as a bug."""
    import mpt_data.store as store_module

    def broken(*args, **kwargs):
        raise KeyError("counts")

    monkeypatch.setattr(store_module, "store_info", broken)
    res = _run(data_cli, ["info", tmp_path])
    assert isinstance(res.exception, KeyError)
    assert "internal error (KeyError)" in res.output and "Error:" not in res.output


def test_a_loader_worker_error_keeps_only_its_message():
    """torch re-raises a DataLoader worker's error with the worker's traceback inside its message."""
    from torch._utils import ExceptionWrapper

    from mpt_data.console import expected_message
    from mpt_data.integrity import StoreError

    try:
        raise StoreError("s3://b/store: chunk 3 of meshes/vertices does not match integrity.json")
    except StoreError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(StoreError) as caught:
        wrapped.reraise()
    assert "Traceback" in str(caught.value)
    assert expected_message(caught.value, (StoreError,)) == (
        "s3://b/store: chunk 3 of meshes/vertices does not match integrity.json")
    assert expected_message(KeyError("x"), (StoreError,)) is None


def test_a_missing_third_party_module_is_a_dependency_and_a_missing_own_module_a_bug():
    from mpt_data.console import expected_message, missing_dependency

    import importlib

    try:
        importlib.import_module("mpt_no_such_package")
    except ModuleNotFoundError as err:
        third_party = err
    assert missing_dependency(third_party) == "mpt_no_such_package"
    assert "pip install mpt_no_such_package" in expected_message(third_party, ())
    own = ModuleNotFoundError("No module named 'mpt_train.nothing'", name="mpt_train.nothing")
    assert missing_dependency(own) is None and expected_message(own, ()) is None
