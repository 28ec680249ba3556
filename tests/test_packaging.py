"""Packaging invariants: the trainer installs and runs without the data side's heavy deps; the build recipes
ship inside the package and are found by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
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


# --- recipes installed with the package -----------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
# What a wheel is built from: the project file, the readme it declares, the packages and the recipes' folder
# with the split manifest they name.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "data_manifest.yaml", "pipelines", "mpt_data", "mpt_train")


def _package_folders() -> set[str]:
    return {str(p.parent.relative_to(REPO)) for top in ("mpt_data", "mpt_train") for p in (REPO / top).rglob("__init__.py")
            if "__pycache__" not in p.parts}


@pytest.mark.slow
def test_wheel_ships_the_recipes_and_an_installed_wheel_finds_them_by_name(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in WHEEL_SOURCES:  # a copy, so the build leaves no build/ or egg-info in the checkout
        item = REPO / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(item, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", str(wheels)],
                   cwd=src, check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("mpt-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        recipes = sorted(p.name for p in (REPO / "pipelines").glob("*.yaml"))
        assert {"amass-mpt.yaml", "demo.yaml"} <= set(recipes)
        for name in recipes:  # the repository's files, byte for byte: one source
            assert zf.read(f"mpt_data/pipelines/{name}") == (REPO / "pipelines" / name).read_bytes()
        assert zf.read("mpt_data/data_manifest.yaml") == (REPO / "data_manifest.yaml").read_bytes()
        missing = {f for f in _package_folders() if f"{f}/__init__.py" not in names}
        assert not missing, f"packages missing from the wheel (add them to pyproject.toml's packages): {sorted(missing)}"
        zf.extractall(tmp_path / "site")  # a pure-Python wheel unpacked is what an install puts on the path

    probe = ("from mpt_data.recipe import find_recipe, load_recipe\n"
             "cfg = load_recipe('amass-mpt')\n"
             "print(find_recipe('amass-mpt')); print(cfg.name, dict(cfg.splits)['HumanEva'], cfg.target_meshes)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    path, summary = out.stdout.split("\n")[:2]
    assert Path(path) == tmp_path / "site" / "mpt_data" / "pipelines" / "amass-mpt.yaml"
    assert summary == "amass-mpt val 2000000"  # the split manifest beside it was found: HumanEva is validation


def test_a_bare_recipe_name_finds_the_packaged_recipe_and_a_path_still_works(tmp_path):
    from mpt_data.recipe import find_recipe, load_recipe, packaged_recipes

    assert packaged_recipes() == {p.stem: p for p in sorted((REPO / "pipelines").glob("*.yaml"))}
    assert find_recipe("amass-mpt").resolve() == (REPO / "pipelines" / "amass-mpt.yaml").resolve()
    assert load_recipe("amass-mpt") == load_recipe(str(REPO / "pipelines" / "amass-mpt.yaml"))
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\nsampling: {target_fps: 5}\n")
    assert load_recipe(str(mine)).target_fps == 5 and find_recipe(mine) == mine


def test_an_unknown_recipe_name_is_one_line_listing_the_packaged_ones(tmp_path, monkeypatch):
    from mpt_data.cli import main as data_main
    from mpt_data.recipe import RecipeError, find_recipe

    with pytest.raises(RecipeError, match=r"^no recipe file or packaged recipe named 'amass'; packaged recipes: "
                                          r"amass-hands, amass-mpt, demo, demo-hands \(or give the path of a YAML file\)$"):
        find_recipe("amass")
    with pytest.raises(RecipeError, match=r"^recipe 'nowhere/amass-mpt.yaml' not found$"):
        find_recipe("nowhere/amass-mpt.yaml")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(data_main, ["build", "--recipe", "amass", "--out", str(tmp_path / "s")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "packaged recipes: amass-hands, amass-mpt, demo, demo-hands" in res.output and len(res.output.strip().splitlines()) == 1, res.output
