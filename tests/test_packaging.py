"""Packaging invariants: the trainer installs and runs without the data side's heavy deps."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from click.testing import CliRunner


def _modules_after(code: str) -> set[str]:
    probe = "import sys\n" + textwrap.dedent(code) + "\nprint('\\n'.join(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_mpt_train_imports_neither_dask_nor_smplx():
    # Every trainer module, not just the package: a GPU node may have neither installed.
    code = (
        "import pkgutil, importlib, mpt_train\n"
        "for m in pkgutil.iter_modules(mpt_train.__path__):\n"
        "    importlib.import_module('mpt_train.' + m.name)\n"
    )
    loaded = _modules_after(code)
    assert "mpt_train.cli" in loaded
    heavy = {m for m in loaded if m.split(".")[0] in {"dask", "distributed", "smplx"}}
    assert heavy == set(), f"mpt_train pulled in {sorted(heavy)}"


def test_mpt_data_package_import_is_light():
    loaded = _modules_after("import mpt_data, mpt_data.conventions, mpt_data.schema")
    assert not {m for m in loaded if m.split(".")[0] in {"dask", "smplx", "torch", "zarr"}}


def test_cli_help_lists_the_commands():
    from mpt_data.cli import main as data_main
    from mpt_train.cli import main as train_main

    data_help = CliRunner().invoke(data_main, ["--help"])
    assert data_help.exit_code == 0, data_help.output
    for command in ("synth", "build", "freeze", "verify", "info", "preview", "bench", "images"):
        assert command in data_main.commands, f"mpt-data has no '{command}' command"
    train_help = CliRunner().invoke(train_main, ["--help"])
    assert train_help.exit_code == 0, train_help.output
    for command in ("pretrain", "evaluate", "bench", "finetune", "predict"):
        assert command in train_main.commands, f"mpt-train has no '{command}' command"


def test_inference_imports_no_training_code():
    # predict and evaluate (with the checkpoint loading they call) stand without the loop, the tasks,
    # the criterion or the augmentation: a serving machine imports only what inference runs.
    loaded = _modules_after("import mpt_train.predict, mpt_train.evaluate, mpt_train.loading")
    training = {"mpt_train.trainer", "mpt_train.finetune", "mpt_train.posenet", "mpt_train.pretrain",
                "mpt_train.losses", "mpt_train.augment"}
    assert "mpt_train.loading" in loaded
    assert loaded & training == set(), f"inference pulled in {sorted(loaded & training)}"
