"""Restricted unpickling of FLAME asset files, and a writer of chumpy-style pickles.

The official FLAME ``generic_model.pkl`` is a Python-2 pickle whose arrays are partly
chumpy ``Ch`` objects and whose ``J_regressor`` is a scipy sparse matrix;
``landmark_embedding.npy`` is a pickled dict holding numpy arrays and torch tensors.
Unpickling runs whatever callable a file names, so these files are untrusted input.
:func:`safe_load_pickle` resolves globals through an allowlist only:

- numpy array/dtype/scalar reconstruction;
- harmless builtins (``set``, ``frozenset``, ``OrderedDict``, ...);
- chumpy ``Ch`` objects and scipy sparse matrices, rebuilt as inert shim objects
  (chumpy and scipy's classes are never imported or called);
- torch tensors, whose storages are re-read with ``torch.load(weights_only=True)``
  (torch's own rules for untrusted checkpoints).

Any other global (``os.system``, ``builtins.eval``, ...) raises :class:`UnsafePickleError`
before anything is called. :func:`to_numpy` turns every value of a loaded file into a plain
numpy array.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import io
import os
import pickle
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "ChumpyArray",
    "SparseMatrix",
    "UnsafePickleError",
    "dump_chumpy_style_pickle",
    "safe_load_npy",
    "safe_load_pickle",
    "to_numpy",
]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global outside the allowlist; nothing it names was called."""


class ChumpyArray:
    """Inert stand-in for ``chumpy.ch.Ch``: keeps the pickled state, computes nothing.

    A plain ``Ch`` stores its value in ``x``; derived chumpy expressions (sums, reorderings)
    would need chumpy to evaluate and are reported as unsupported by :func:`to_numpy`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}
        self.class_name = "chumpy.ch.Ch"

    def __setstate__(self, state: Any) -> None:
        self.state = dict(state) if isinstance(state, dict) else {"state": state}

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if "x" not in self.state:
            raise ValueError(
                f"chumpy object of class {self.class_name} holds an expression, not an array; "
                "it cannot be evaluated without chumpy"
            )
        return np.asarray(self.state["x"], dtype=dtype)


class SparseMatrix:
    """Inert stand-in for a pickled scipy sparse matrix (csc, csr or coo)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}
        self.format = "csc"

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    def toarray(self) -> np.ndarray:
        import scipy.sparse

        s = self.state
        shape = tuple(int(v) for v in s.get("_shape", s.get("shape")))
        if self.format == "coo":
            row = s.get("row", s.get("coords", (None, None))[0])
            col = s.get("col", s.get("coords", (None, None))[1])
            return scipy.sparse.coo_matrix((s["data"], (row, col)), shape=shape).toarray()
        cls = scipy.sparse.csc_matrix if self.format == "csc" else scipy.sparse.csr_matrix
        return cls((s["data"], s["indices"], s["indptr"]), shape=shape).toarray()


def _sparse_class(fmt: str) -> type[SparseMatrix]:
    return type(f"{fmt}_matrix_shim", (SparseMatrix,), {"format": fmt})


def _load_torch_storage(data: bytes) -> Any:
    """Rebuild a torch storage pickled by ``TypedStorage.__reduce__``, weights-only."""
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


def _rebuild_tensor(*args: Any) -> Any:
    import torch._utils

    return torch._utils._rebuild_tensor_v2(*args)


_SAFE_BUILTINS = {
    "set": set, "frozenset": frozenset, "list": list, "dict": dict, "tuple": tuple,
    "complex": complex, "bytearray": bytearray, "slice": slice, "range": range,
}


def _resolve(module: str, name: str) -> Any:
    """The allowlist: return the object a (module, name) global may resolve to, or None."""
    if module in ("builtins", "__builtin__"):
        return _SAFE_BUILTINS.get(name)
    if module == "collections" and name == "OrderedDict":
        return OrderedDict
    if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        from numpy.core import multiarray

        return {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar}.get(name)
    if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
        from numpy.core import numeric

        return numeric._frombuffer
    if module == "numpy":
        return {"ndarray": np.ndarray, "dtype": np.dtype}.get(name)
    if module.startswith("numpy.dtypes") and name.endswith("DType"):
        return np.dtype  # numpy 2 pickles dtypes by their class; numpy.dtype builds the same
    if module == "chumpy.ch" and name == "Ch":
        return ChumpyArray
    if module.startswith("chumpy"):
        return type(name, (ChumpyArray,), {"class_name": f"{module}.{name}"})
    if module.startswith("scipy.sparse") and name in ("csc_matrix", "csr_matrix", "coo_matrix"):
        return _sparse_class(name[:3])
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
        return _rebuild_tensor
    if module == "torch.storage" and name == "_load_from_bytes":
        return _load_torch_storage
    if module == "_codecs" and name == "encode":
        # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, "latin1").
        import _codecs

        return _codecs.encode
    if module == "copyreg" and name == "_reconstructor":
        return copyreg._reconstructor
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python-2 pickles name e.g. __builtin__/copy_reg; map them like pickle's fix_imports.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = _resolve(module, name)
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: refusing to unpickle global '{module}.{name}' "
                "(not an array, chumpy, scipy.sparse or torch tensor type)"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: persistent ids are not allowed ({pid!r})")


def _load_from(f: BinaryIO, source: str) -> Any:
    try:
        return _RestrictedUnpickler(f, source).load()
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, RuntimeError) as err:
        raise pickle.UnpicklingError(
            f"{source}: not a readable pickle (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from err


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` through the allowlist of this module.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafePickleError: the file names a global outside the allowlist.
        pickle.UnpicklingError: the file is truncated or not a pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with open(path, "rb") as f:
        return _load_from(f, str(path))


def safe_load_npy(path: str | os.PathLike) -> Any:
    """Load a ``.npy`` file; an object array (``np.save`` of a dict) goes through the allowlist.

    Returns the array, or for a 0-d object array its single element (``np.load(...)[()]``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            shape, fortran_order, dtype = np.lib.format._read_array_header(f, version)
        except ValueError as err:
            raise ValueError(f"{path}: not a .npy file: {err}") from err
        if dtype.hasobject:
            value = _load_from(f, str(path))
        else:
            f.seek(0)
            try:
                value = np.lib.format.read_array(f, allow_pickle=False)
            except ValueError as err:
                raise ValueError(f"{path}: truncated or corrupt .npy file: {err}") from err
    if isinstance(value, np.ndarray) and value.dtype.hasobject and value.shape == ():
        return value[()]
    return value


def to_numpy(value: Any, dtype: Any = None) -> np.ndarray:
    """A plain numpy array from any value a FLAME file holds (shim, sparse, tensor, list)."""
    if isinstance(value, SparseMatrix):
        array = value.toarray()
    elif isinstance(value, ChumpyArray):
        array = np.asarray(value)
    elif hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        array = value.detach().cpu().numpy()
    elif hasattr(value, "toarray"):  # a real scipy sparse matrix from a plain pickle
        array = value.toarray()
    else:
        array = np.asarray(value)
    return array.astype(dtype) if dtype is not None else array


class _ChWriter:
    """Pickled exactly as chumpy pickles a plain ``Ch``: NEWOBJ of chumpy.ch.Ch + state."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __reduce_ex__(self, protocol: int) -> tuple:
        # Ch.__getstate__ is __dict__ minus the weak-ref caches.
        state = {
            "_dirty_vars": {"x"}, "_itr": None, "_make_dense": False, "_make_sparse": False,
            "_depends_on_deps": {}, "x": self.x,
        }
        return (copyreg.__newobj__, (_ChWriter,), state)


class _ChumpyStylePickler(pickle._Pickler):  # the pure-Python pickler lets us name the class
    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is _ChWriter:
            self.write(pickle.GLOBAL + b"chumpy.ch\nCh\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def dump_chumpy_style_pickle(
    obj: dict[str, Any], path: str | os.PathLike, chumpy_keys: Iterable[str] = ()
) -> None:
    """Write ``obj`` as the official FLAME files are written: protocol 2, chumpy ``Ch`` values.

    Args:
        obj: the model dict (numpy arrays, scipy sparse matrices, strings).
        path: output file, written atomically.
        chumpy_keys: keys whose arrays are stored as ``chumpy.ch.Ch`` objects.
    """
    from emoca_pipeline.io.atomic import atomic_output

    chumpy_keys = set(chumpy_keys)
    missing = chumpy_keys - set(obj)
    if missing:
        raise KeyError(f"chumpy_keys not in the model dict: {sorted(missing)}")
    data = {k: _ChWriter(np.asarray(v)) if k in chumpy_keys else v for k, v in obj.items()}
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        _ChumpyStylePickler(f, protocol=2).dump(data)
