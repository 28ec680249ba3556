"""Contracts between the two packages: the data side stands alone, shared names live in one place."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import mpt_data


def _imported_modules(path: Path) -> set[str]:
    """Every absolute module name a file imports, at any depth (function-level imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_mpt_data_imports_nothing_from_mpt_train():
    root = Path(mpt_data.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) > 20 and any(f.parent.name == "synth" for f in files)
    offenders = {str(f.relative_to(root)): sorted(m for m in _imported_modules(f) if m.split(".")[0] == "mpt_train")
                 for f in files}
    assert {f: m for f, m in offenders.items() if m} == {}


# Each package's modules in data-flow order: contracts first, then the stages a sample passes through, then the
# tasks and tools built on them. A module may import only modules before it (the README's code map follows it).
DATA_FLOW = {
    "mpt_data": ["schema", "conventions", "fileio", "image_schema", "integrity", "remote", "raster", "topology", "amass",
                 "sampling", "cameras", "rigs", "recipe", "plan", "model_files", "kinematics", "body", "hand", "mano_params", "store", "meshes", "build", "freeze", "transfer", "preview", "images",
                 "freihand", "synth", "synth.surface", "synth.rig", "synth.body", "synth.hand", "synth.motion", "synth.picture",
                 "synth.images", "synth.freihand", "bench", "console", "cli"],
    "mpt_train": ["store", "order", "data", "inputs", "views", "augment", "model", "losses", "metrics", "protocols", "backbones",
                  "checkpoint", "runtime", "loading", "evaluate", "images", "baselines", "report", "trainer", "pretrain",
                  "finetune", "posenet", "predict", "comparison", "plot", "bench", "cli"],
}


def _imported_modules_resolved(path: Path, package: str, module: str) -> set[str]:
    """`_imported_modules` with relative imports resolved against `package.module` (`from .x import y`
    gives package.x, and package.x.y too when y is a module: `from . import bench`)."""
    names = _imported_modules(path)
    parts = [package, *module.split(".")]
    if path.name != "__init__.py":
        parts = parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = parts[: len(parts) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
            names.add(mod)
            names.update(f"{mod}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module in (package, f"{package}.synth"):
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_module_imports_one_later_in_the_data_flow():
    import mpt_train

    for package, order in DATA_FLOW.items():
        root = Path((mpt_data if package == "mpt_data" else mpt_train).__file__).parent
        on_disk = {".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                   for f in root.rglob("*.py")} - {"__init__"}
        assert on_disk == set(order), f"{package}: place new modules in DATA_FLOW"
        rank = {name: i for i, name in enumerate(order)}
        later = {}
        for name in order:
            path = root / (name.replace(".", "/") + ".py")
            if not path.exists():
                path = root / name.replace(".", "/") / "__init__.py"
            for m in _imported_modules_resolved(path, package, name):
                own = m.removeprefix(package + ".")
                if m.startswith(package + ".") and own in rank and rank[own] > rank[name]:
                    later.setdefault(name, []).append(own)
        assert later == {}, f"{package}: modules importing ones later in the data flow: {later}"


def _tiny_image_dataset(root: Path, n: int = 4) -> Path:
    """`mpt-data images` output for n random 64 px images: ``root/shards/d``."""
    import cv2
    import numpy as np

    from mpt_data.images import ImagesConfig, ingest

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    names = []
    for i in range(n):
        names.append(f"im{i}.jpg")
        cv2.imwrite(str(root / "images" / names[-1]), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    part = np.ones((n, 24, 3), np.float32)
    part[:, :, :2] = rng.uniform(16, 48, (n, 24, 2))
    np.savez(root / "d.npz", imgname=np.array(names), center=np.full((n, 2), 32, np.float32),
             scale=np.full(n, 0.2, np.float32), part=part)
    ingest(ImagesConfig(str(root / "d.npz"), str(root / "images"), str(root / "shards"), dataset="d", crop_px=32))
    return root / "shards" / "d"


def _rewrite_version(shard_file: Path, version: str | None) -> None:
    import pyarrow.parquet as pq

    from mpt_data import image_schema

    table = pq.read_table(shard_file)
    meta = dict(table.schema.metadata or {})
    meta.pop(image_schema.VERSION_METADATA_KEY.encode())
    if version is not None:
        meta[image_schema.VERSION_METADATA_KEY.encode()] = version.encode()
    pq.write_table(table.replace_schema_metadata(meta), shard_file)


def test_image_shards_carry_the_shared_columns_and_version_and_the_reader_refuses_another(tmp_path):
    import pyarrow.parquet as pq
    import pytest

    from mpt_data import image_schema
    from mpt_train.images import ImageShardError, open_dataset

    folder = _tiny_image_dataset(tmp_path)
    shard_file = folder / image_schema.SHARD_FILE.format(index=0)
    written = pq.ParquetFile(shard_file)
    assert tuple(written.schema_arrow.names) == image_schema.COLUMNS
    assert image_schema.shard_format_version(written.metadata.metadata) == image_schema.SHARD_FORMAT_VERSION
    assert json.loads((folder / image_schema.SUMMARY_FILE).read_text())["version"] == image_schema.SHARD_FORMAT_VERSION
    assert sum(rows for _, _, rows in open_dataset(folder, "d").units) == 4

    assert open_dataset(folder, "d").joint_set == "coco17"
    for version, shown in (("3", "version 3"), (None, "version None")):
        _rewrite_version(shard_file, version)
        with pytest.raises(ImageShardError, match=re.escape(f"{shard_file}: image shard format {shown}, this reader reads 1, 2")):
            open_dataset(folder, "d")
    # a version-1 shard (no joint-set key) still reads, as COCO-17
    table = pq.read_table(shard_file)
    meta = {k: v for k, v in table.schema.metadata.items() if k != image_schema.JOINT_SET_METADATA_KEY.encode()}
    meta[image_schema.VERSION_METADATA_KEY.encode()] = b"1"
    pq.write_table(table.replace_schema_metadata(meta), shard_file)
    assert open_dataset(folder, "d").joint_set == "coco17"
