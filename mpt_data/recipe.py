"""Build recipes: the YAML files in `pipelines/` as one frozen BuildConfig, with command-line overrides.

A recipe is named by its file or, for the recipes installed with the package (`pipelines/*.yaml`, shipped as
the package `mpt_data.pipelines`), by its bare name: `--recipe amass-mpt`.

A recipe names the sources (kind, root folder, subsets, frame-rate overrides), the body model, the sampling
rule, the camera rig, the train/val/test split of subsets, and the store layout. Relative data paths (amass_root,
body_model.dir, h36m_regressor) resolve against the current directory; `splits.from` (the project's data
manifest) resolves against the recipe file's folder. Unknown keys and impossible values fail at once with a
message naming the field.

The camera rig (`rig`, `mpt_data.rigs`): `h36m` (the default: Human3.6M's rig, `cameras` 1, 2, 4 or 8),
`sphere` (`cameras` 1..64 around a hand), a packaged rig by name (`pipelines/rigs/<name>.yaml`) or a rig file.
A rig file named in a recipe resolves against the recipe file's folder (like `splits.from`); one given on the
command line (`--rig`) against the current directory. A rig file fixes the camera count: `cameras` is taken
from it when neither the recipe nor the command line sets it (or when `--rig` replaces the recipe's rig without
`--cameras`), and must equal it otherwise. The rig's content (`rigs.rig_digest`), not its path, enters the
recipe hash.

Sources (`sources.kind`, `mpt_data.meshes`): `amass` (the default: AMASS motion files under `sources.amass_root`;
with `body_model.type: mano` each frame makes the meshes of the recipe's `hands`) or `mano_params` (a folder of
MANO parameter files, `mpt_data.mano_params`, under the same `sources.amass_root` key: one right-hand mesh per
sampled frame, each file naming its side, so it needs `body_model.type: mano` and no `hands`). The kind enters
the recorded recipe (and its hash) only when it is not `amass`, so existing recipes hash as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpt_data import schema

SPLIT_NAMES = tuple(schema.SPLITS)
CAMERA_COUNTS = (1, 2, 4, 8)
BODY_MODEL_TYPES = ("smplh", "smpl", "mano")  # mano: the hand path (mpt_data.meshes), one mesh per hand side
HAND_SIDES = ("right", "left")
DEFAULT_SOURCE_KIND = "amass"
MANO_PARAMS_SOURCE = "mano_params"
SOURCE_KINDS = (DEFAULT_SOURCE_KIND, MANO_PARAMS_SOURCE)  # where meshes come from: AMASS motions, MANO parameters


class RecipeError(ValueError):
    """A recipe or option that cannot work; the message says which field and how to fix it."""


@dataclass(frozen=True)
class BuildConfig:
    """A resolved build recipe (YAML `pipelines/*.yaml`, overridden by CLI flags) plus runtime options.

    Recipe fields (stored in the store's `recipe` attribute): sources, body model, sampling, cameras, splits,
    layout. Runtime fields (`out`, `workers`, `scheduler`, `resume`, `overwrite`, `progress`) change how a
    build runs, never what it writes.
    """

    name: str = "store"
    source_kind: str = DEFAULT_SOURCE_KIND  # amass | mano_params (SOURCE_KINDS)
    amass_root: str = ""  # the source folder: the AMASS root, or the folder of MANO parameter files
    subsets_include: tuple[str, ...] = ()  # empty: every subset under the root
    subsets_exclude: tuple[str, ...] = ()
    fps_overrides: tuple[tuple[str, float], ...] = ()  # (subset, fps): replaces the files' frame rates
    body_model_dir: str = ""
    body_model_type: str = "smplh"
    num_betas: int = 16
    h36m_regressor: str | None = None  # J_regressor_h36m.npy (17, V); adds the h36m17 joint set
    hands: tuple[str, ...] = ()  # mano only: the hand sides made of each sampled frame, in mesh order
    target_fps: float | None = None  # exactly one of target_fps / target_meshes
    target_meshes: int | None = None
    cameras: int = 4
    rig: str = "h36m"  # h36m | sphere | a packaged rig name | a rig file (absolute once loaded; mpt_data.rigs)
    splits: tuple[tuple[str, str], ...] = ()  # (subset, split); subsets not listed are train
    chunk_meshes: int = 32
    shard_meshes: int = 2048
    batch_size: int = 512  # meshes per body-model forward
    # runtime
    out: str = "store"
    workers: int | None = None  # None: all cores; 0: in this process, no cluster
    scheduler: str | None = None  # address of an existing dask.distributed scheduler
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    device: str = "cpu"  # where the body-model forward runs: "cpu" or "cuda" (one GPU per worker)

    RUNTIME_FIELDS = ("out", "workers", "scheduler", "resume", "overwrite", "progress", "device")
    PATH_FIELDS = schema.RECIPE_PATH_FIELDS

    def recipe(self) -> dict[str, Any]:
        """The recipe part as plain JSON-able data (what the store records)."""
        d = dataclasses.asdict(self)
        for k in self.RUNTIME_FIELDS:
            d.pop(k)
        d["fps_overrides"] = dict(self.fps_overrides)
        d["splits"] = dict(self.splits)
        d["subsets_include"] = list(self.subsets_include)
        d["subsets_exclude"] = list(self.subsets_exclude)
        if self.hands:  # a body recipe records no hand sides (its hash stays what it was before hands existed)
            d["hands"] = list(self.hands)
        else:
            d.pop("hands")
        if self.source_kind == DEFAULT_SOURCE_KIND:  # likewise: AMASS recipes keep the hash they had
            d.pop("source_kind")
        return d

    def with_absolute_paths(self) -> BuildConfig:
        """The same config with its input paths and `out` made absolute against the current directory. The
        build's tasks open these paths in Dask worker processes, whose current directory is their own (on a
        cluster, another machine's): a relative path would name another place there."""
        def absolute(p: str | None) -> str | None:
            return os.path.abspath(p) if p else p

        from mpt_data.rigs import is_rig_path

        rig = os.path.abspath(self.rig) if is_rig_path(self.rig) else self.rig
        return dataclasses.replace(self, rig=rig, **{f: absolute(getattr(self, f)) for f in (*self.PATH_FIELDS, "out")})

    def camera_rig(self):
        """The resolved camera rig (`mpt_data.rigs.Rig`); RecipeError when `cameras` disagrees with it, RigError
        for a bad rig file."""
        from mpt_data.rigs import BUILTIN_RIGS, SPHERE_MAX_CAMERAS, resolve_rig

        if self.rig == "h36m" and self.cameras not in CAMERA_COUNTS:
            raise RecipeError(f"cameras must be one of {CAMERA_COUNTS} for rig h36m, got {self.cameras}")
        if self.rig == "sphere" and not 1 <= self.cameras <= SPHERE_MAX_CAMERAS:
            raise RecipeError(f"cameras must be in 1..{SPHERE_MAX_CAMERAS} for rig sphere, got {self.cameras}")
        rig = resolve_rig(self.rig, self.cameras)
        if self.rig not in BUILTIN_RIGS and len(rig.cameras) != self.cameras:
            raise RecipeError(f"cameras {self.cameras} does not match rig {self.rig} ({len(rig.cameras)} cameras): "
                              f"set cameras to {len(rig.cameras)} or leave it out (the rig file decides)")
        return rig

    def validate(self) -> None:
        """Raise RecipeError naming the first field that cannot work."""
        if self.source_kind not in SOURCE_KINDS:
            raise RecipeError(f"sources.kind must be one of {SOURCE_KINDS}, got {self.source_kind!r}")
        params = self.source_kind == MANO_PARAMS_SOURCE
        if not self.amass_root or not Path(self.amass_root).is_dir():
            where = ("the folder of MANO parameter files (<root>/<subset>/.../*.npz)" if params
                     else "the AMASS folder (<root>/<subset>/<subject>/*_poses.npz)")
            raise RecipeError(f"sources.amass_root {self.amass_root!r} is not a directory: point it at {where}")
        if not self.body_model_dir or not Path(self.body_model_dir).is_dir():
            raise RecipeError(f"body_model.dir {self.body_model_dir!r} is not a directory: point it at the folder with the {self.body_model_type.upper()} model files")
        if (self.target_fps is None) == (self.target_meshes is None):
            raise RecipeError("sampling: give exactly one of target_fps or target_meshes")
        if self.target_fps is not None and not (self.target_fps > 0):
            raise RecipeError(f"sampling.target_fps must be > 0, got {self.target_fps}")
        if self.target_meshes is not None and not (self.target_meshes > 0):
            raise RecipeError(f"sampling.target_meshes must be > 0, got {self.target_meshes}")
        self.camera_rig()  # the camera count against the rig, and a rig file's validity
        if self.num_betas < 1:
            raise RecipeError(f"body_model.num_betas must be >= 1, got {self.num_betas}")
        if self.body_model_type not in BODY_MODEL_TYPES:
            raise RecipeError(f"body_model.type must be one of {BODY_MODEL_TYPES}, got {self.body_model_type!r}")
        if params and self.body_model_type != "mano":
            raise RecipeError(f"sources.kind mano_params needs body_model.type mano (it is {self.body_model_type!r}): "
                              "parameter files pose MANO hands")
        if params and self.hands:
            raise RecipeError(f"hands {list(self.hands)} is for sources.kind amass; remove it for sources.kind "
                              "mano_params: each parameter file names its own side and makes one mesh per frame")
        if self.body_model_type == "mano":
            sides_ok = all(h in HAND_SIDES for h in self.hands) and len(set(self.hands)) == len(self.hands)
            if not params and not (self.hands and sides_ok):
                raise RecipeError(f"hands must list distinct sides of {HAND_SIDES} for body_model.type mano, got "
                                  f"{list(self.hands)} (or set sources.kind mano_params for MANO parameter files)")
            if self.h36m_regressor:
                raise RecipeError("body_model.h36m_regressor is a body joint set; remove it for body_model.type mano")
        elif self.hands:
            raise RecipeError(f"hands {list(self.hands)} needs body_model.type mano (it is {self.body_model_type!r})")
        if self.chunk_meshes < 1 or self.shard_meshes < 1 or self.shard_meshes % self.chunk_meshes:
            raise RecipeError(f"store.shard_meshes ({self.shard_meshes}) must be a positive multiple of store.chunk_meshes ({self.chunk_meshes})")
        if self.batch_size < 1:
            raise RecipeError(f"store.batch_size must be >= 1, got {self.batch_size}")
        for subset, split in self.splits:
            if split not in schema.SPLITS:
                raise RecipeError(f"splits: subset {subset!r} has split {split!r}; use one of {SPLIT_NAMES}")
        for subset, fps in self.fps_overrides:
            if not (float(fps) > 0):
                raise RecipeError(f"sources.fps_overrides[{subset!r}] must be > 0, got {fps}")
        if self.h36m_regressor and not Path(self.h36m_regressor).is_file():
            raise RecipeError(f"body_model.h36m_regressor {self.h36m_regressor!r} does not exist: give the path of J_regressor_h36m.npy or remove the key")
        if self.device not in ("cpu", "cuda"):
            raise RecipeError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.workers is not None and self.workers < 0:
            raise RecipeError(f"workers must be >= 0, got {self.workers}")


_RECIPE_KEYS = {
    "name": "name",
    "sources.kind": "source_kind",
    "sources.amass_root": "amass_root",
    "sources.include": "subsets_include",
    "sources.exclude": "subsets_exclude",
    "sources.fps_overrides": "fps_overrides",
    "body_model.dir": "body_model_dir",
    "body_model.type": "body_model_type",
    "body_model.num_betas": "num_betas",
    "body_model.h36m_regressor": "h36m_regressor",
    "hands": "hands",
    "sampling.target_fps": "target_fps",
    "sampling.target_meshes": "target_meshes",
    "cameras": "cameras",
    "rig": "rig",
    "store.chunk_meshes": "chunk_meshes",
    "store.shard_meshes": "shard_meshes",
    "store.batch_size": "batch_size",
}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in ("sources.fps_overrides", "splits.subsets"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unknown_key_message(key: str, known) -> str:
    """`unknown key 'x'; did you mean 'y'? known keys: [...]` for a key not in ``known`` (recipes, mixtures)."""
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r}{hint} known keys: {sorted(known)}"


def read_yaml(path: Path, error: type[Exception]) -> Any:
    """The YAML document in ``path``; a syntax error raises ``error`` naming the file, line and problem."""
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{path}: not valid YAML{where}: {problem}") from exc


def manifest_splits(manifest: str | Path) -> dict[str, str]:
    """{subset: split} declared in a data manifest's `sources.amass.subsets` list."""
    path = Path(manifest)
    if not path.is_file():
        raise RecipeError(f"splits.from: manifest {str(path)!r} not found (a relative path is relative to the recipe file)")
    data = read_yaml(path, RecipeError) or {}
    subsets = (((data.get("sources") or {}).get("amass") or {}).get("subsets")) or []
    return {s["name"]: s.get("split", "train") for s in subsets}


# The package that holds the recipes of `pipelines/` once installed (pyproject.toml maps the folder into it).
RECIPES_PACKAGE = "mpt_data.pipelines"
RECIPE_SUFFIX = ".yaml"


def packaged_recipes() -> dict[str, Path]:
    """{name: file} of the recipes installed with the package (`pipelines/*.yaml`, named without `.yaml`)."""
    from importlib import resources

    try:
        root = resources.files(RECIPES_PACKAGE)
    except ModuleNotFoundError as err:
        raise RecipeError(f"this installation of mpt has no packaged recipes ({RECIPES_PACKAGE} is missing): "
                          "reinstall it (pip install -e . in a checkout), or give the path of a recipe file") from err
    folder = Path(str(root))
    if not folder.is_dir():  # a zipped install: a recipe needs a real folder, its split manifest lies beside it
        raise RecipeError(f"the packaged recipes at {root} are not in a folder; give the path of a recipe file")
    found = {f.name[: -len(RECIPE_SUFFIX)]: f for f in folder.glob(f"*{RECIPE_SUFFIX}")}
    return {name: found[name] for name in sorted(found)}


def find_recipe(recipe: str | Path) -> Path:
    """The recipe file `recipe` names: an existing file, a path (anything with a folder or a `.yaml`/`.yml`
    suffix), or the bare name of a packaged recipe (`amass-mpt`). RecipeError naming it otherwise."""
    p = Path(recipe)
    if p.is_file():
        return p
    text = str(recipe)
    if p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        raise RecipeError(f"recipe {text!r} not found")
    known = packaged_recipes()
    if text not in known:
        raise RecipeError(f"no recipe file or packaged recipe named {text!r}; packaged recipes: "
                          f"{', '.join(known) or '(none)'} (or give the path of a YAML file)")
    return known[text]


def load_recipe(path: str | Path | None = None, **overrides: Any) -> BuildConfig:
    """Read a recipe into a BuildConfig; keyword overrides (BuildConfig field names, None = keep) win.

    `path` is a YAML file or the bare name of a packaged recipe (see `find_recipe`). A `target_fps` override
    replaces a recipe's `target_meshes` and vice versa.
    """
    fields: dict[str, Any] = {}
    if path is not None:
        p = find_recipe(path)
        raw = read_yaml(p, RecipeError) or {}
        if not isinstance(raw, dict):
            raise RecipeError(f"recipe {p}: top level must be a mapping")
        flat = _flatten(raw)
        splits: dict[str, str] = {}
        if "splits.from" in flat:  # the manifest belongs to the project: relative to the recipe file
            splits.update(manifest_splits(p.parent / flat.pop("splits.from")))
        splits.update(flat.pop("splits.subsets", None) or {})
        for key, value in flat.items():
            if key not in _RECIPE_KEYS:
                raise RecipeError(f"recipe {p}: {unknown_key_message(key, [*_RECIPE_KEYS, 'splits.from', 'splits.subsets'])}")
            fields[_RECIPE_KEYS[key]] = value
        fields["splits"] = splits
        if "rig" in fields:  # a rig file named in a recipe is relative to the recipe file, like splits.from
            fields["rig"] = _rig_path(str(fields["rig"]), p.parent)
    if overrides.get("rig") is not None:  # --rig: relative to the current directory
        overrides = {**overrides, "rig": _rig_path(str(overrides["rig"]), Path.cwd())}
        if overrides.get("cameras") is None and overrides["rig"] not in ("h36m", "sphere"):
            fields.pop("cameras", None)  # the recipe's camera count was for its own rig: the file decides
    # A sampling flag replaces the recipe's sampling rule, whichever of the two the recipe used.
    if overrides.get("target_meshes") is not None:
        fields.pop("target_fps", None)
    if overrides.get("target_fps") is not None:
        fields.pop("target_meshes", None)
    for k, v in overrides.items():
        if v is not None:
            fields[k] = v
    for k in ("subsets_include", "subsets_exclude", "hands"):
        if k in fields:
            fields[k] = tuple(fields[k] or ())
    if isinstance(fields.get("fps_overrides"), dict):
        fields["fps_overrides"] = tuple(sorted((str(a), float(b)) for a, b in fields["fps_overrides"].items()))
    if isinstance(fields.get("splits"), dict):
        fields["splits"] = tuple(sorted(fields["splits"].items()))
    if "cameras" not in fields and fields.get("rig", "h36m") not in ("h36m", "sphere"):
        from mpt_data.rigs import resolve_rig

        fields["cameras"] = len(resolve_rig(str(fields["rig"]), 0).cameras)  # a rig file: its camera count
    names = {f.name for f in dataclasses.fields(BuildConfig)}
    unknown = set(fields) - names
    if unknown:
        raise RecipeError(f"unknown option(s) {sorted(unknown)}")
    try:
        return BuildConfig(**fields)
    except TypeError as err:
        raise RecipeError(str(err)) from err


def _rig_path(spec: str, base: Path) -> str:
    """A rig spec with a file path made absolute against ``base``; names (h36m, sphere, packaged) unchanged."""
    from mpt_data.rigs import is_rig_path

    if not is_rig_path(spec):
        return spec
    p = Path(spec).expanduser()
    return str(p if p.is_absolute() else (base / p).absolute())


def recipe_hash(cfg: BuildConfig, model_files: dict[str, str]) -> str:
    """SHA-256 of what decides the store's content besides the motion files: the recipe without its paths
    and the hashes of the body-model files used (the motion files' hashes are in sequences.parquet).

    The rig enters by its content (`rigs.rig_digest`), not its name or path; a rig with the content of the
    Human3.6M rig of the same camera count adds nothing, so `rig: h36m` hashes as before rigs existed and the
    same as its packaged copy (`rig: h36m-s1`, 4 cameras)."""
    from mpt_data.rigs import rig_digest, standard_rig

    recipe = cfg.recipe()
    for k in BuildConfig.PATH_FIELDS:
        recipe.pop(k)
    recipe.pop("name")
    recipe.pop("rig")
    if cfg.rig != "h36m":
        digest = rig_digest(cfg.camera_rig())
        if cfg.cameras not in CAMERA_COUNTS or digest != rig_digest(standard_rig(cfg.cameras)):
            recipe["rig_digest"] = digest
    blob = json.dumps({"recipe": recipe, "model_files": model_files, "schema": schema.SCHEMA_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
