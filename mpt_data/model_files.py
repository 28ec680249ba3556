"""Body-model files: read SMPL / SMPL+H ``.npz`` and ``.pkl`` files safely, as plain numpy arrays.

The official SMPL ``.pkl`` files contain chumpy objects and scipy sparse matrices, and chumpy breaks on
current numpy; they are read by a restricted unpickler that admits only numpy's array reconstruction,
scipy's CSC/CSR matrices (rebuilt as dense arrays without importing scipy) and chumpy's ``Ch`` (replaced
by its underlying array, without chumpy installed). Any other global in a pickle is refused with an error
naming the file, so a model file cannot run code. AMASS's SMPL+H ``model.npz`` files have no hand PCA
keys; they load too. What the arrays mean is ``mpt_data.body``'s business.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


class ModelFileError(ValueError):
    """A body-model file that is missing, unreadable, unsafe or malformed."""


# ---------------------------------------------------------------------------------------
# Restricted unpickling


class _PickledSparse:
    """Stand-in for a pickled scipy CSC/CSR matrix: keeps its state, becomes dense."""

    layout = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def dense(self) -> np.ndarray:
        st = self.state if isinstance(self.state, dict) else {}
        shape = st.get("_shape", st.get("shape"))
        if shape is None or not all(k in st for k in ("data", "indices", "indptr")):
            raise ModelFileError("pickled sparse matrix without data/indices/indptr/shape")
        data = np.asarray(st["data"])
        indices = np.asarray(st["indices"], dtype=np.int64)
        indptr = np.asarray(st["indptr"], dtype=np.int64)
        out = np.zeros(tuple(int(s) for s in shape), dtype=data.dtype)
        outer = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
        if self.layout == "csc":
            np.add.at(out, (indices, outer), data)
        else:
            np.add.at(out, (outer, indices), data)
        return out


class _PickledCsc(_PickledSparse):
    layout = "csc"


class _PickledCsr(_PickledSparse):
    layout = "csr"


class _PickledChumpy:
    """Stand-in for a chumpy ``Ch``: its underlying value is the ``x`` attribute."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def array(self) -> np.ndarray:
        if not isinstance(self.state, dict) or "x" not in self.state:
            raise ModelFileError("pickled chumpy object without an 'x' array")
        return np.asarray(self.state["x"])


_STAND_INS = (_PickledCsc, _PickledCsr, _PickledChumpy)


def _safe_reconstructor(cls: type, base: type, state: Any) -> Any:
    # copyreg._reconstructor restricted to our stand-ins built on plain object.
    if cls not in _STAND_INS or base is not object:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r} from {base!r}")
    return object.__new__(cls)


def _safe_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles of bytes at protocols 0-2 call _codecs.encode(text, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    core = getattr(np, "_core", None) or np.core  # numpy >= 2 keeps internals in _core
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    ("_codecs", "encode"): _safe_encode,
    ("copy_reg", "_reconstructor"): _safe_reconstructor,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("chumpy.ch", "Ch"): _PickledChumpy,
    ("chumpy", "Ch"): _PickledChumpy,
    **{(m, n): _PickledCsc for m in ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse")
       for n in ("csc_matrix", "csc_array")},
    **{(m, n): _PickledCsr for m in ("scipy.sparse.csr", "scipy.sparse._csr", "scipy.sparse")
       for n in ("csr_matrix", "csr_array")},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a model file") from None


def _plain(value: Any, key: str) -> np.ndarray | None:
    """A pickled value as an array; None for metadata that is not array-like (dicts)."""
    if isinstance(value, _PickledSparse):
        return value.dense()
    if isinstance(value, _PickledChumpy):
        return value.array()
    if isinstance(value, np.ndarray) and value.dtype.hasobject and value.shape == ():
        return _plain(value.item(), key)
    if isinstance(value, (dict, type(None))):
        return None
    arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise ModelFileError(f"key {key!r} holds Python objects, not an array")
    return arr


def _unpickle(stream: io.BufferedIOBase | io.BytesIO, where: str) -> Any:
    try:
        return _RestrictedUnpickler(stream, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise ModelFileError(f"{where}: {e}") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ModelFileError(f"{where}: unreadable pickle ({type(e).__name__}: {e})") from e


def _read_npz(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with zipfile.ZipFile(path) as zf:
        for member in zf.namelist():
            if not member.endswith(".npy"):
                continue
            key = member[: -len(".npy")]
            with zf.open(member) as f:
                raw = io.BytesIO(f.read())
            version = np.lib.format.read_magic(raw)
            if version == (1, 0):
                dtype = np.lib.format.read_array_header_1_0(raw)[2]
            elif version == (2, 0):
                dtype = np.lib.format.read_array_header_2_0(raw)[2]
            else:
                raise ModelFileError(f"{path} [{key}]: unsupported .npy format version {version}")
            if dtype.hasobject:
                out[key] = _unpickle(raw, f"{path} [{key}]")
            else:
                raw.seek(0)
                out[key] = np.lib.format.read_array(raw, allow_pickle=False)
    return out


def load_model_file(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a body-model file (``.npz`` or ``.pkl``), as plain numpy arrays.

    Sparse matrices become dense, chumpy values become their arrays, strings stay 0-d
    string arrays; non-array metadata (dicts, None) is left out. Raises
    ``FileNotFoundError`` for a missing file and ``ModelFileError`` (naming the file) for an
    unreadable one or a pickle that references anything outside the allowed globals.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"body-model file {path} does not exist")
    try:
        if path.suffix == ".npz":
            raw = _read_npz(path)
        elif path.suffix == ".pkl":
            with open(path, "rb") as f:
                raw = _unpickle(f, str(path))
            if not isinstance(raw, dict):
                raise ModelFileError(f"{path}: expected a pickled dict, got {type(raw).__name__}")
        else:
            raise ModelFileError(f"{path}: unknown model file type (expected .npz or .pkl)")
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelFileError(f"{path}: unreadable model file ({e})") from e
    out = {}
    for key, value in raw.items():
        try:
            arr = _plain(value, key)
        except ModelFileError as e:
            raise ModelFileError(f"{path}: {e}") from e
        if arr is not None:
            out[str(key)] = arr
    return out
