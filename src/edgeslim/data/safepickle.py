"""An unpickler for pickled numpy arrays that can neither run code nor crash numpy.

Unpickling runs whatever callables a pickle names, so ``RestrictedUnpickler``
resolves only the three names a pickled ``ndarray`` uses, and none of them
reaches numpy's C code with pickle-controlled arguments:

* ``numpy.ndarray`` unpickles to a marker class, not the real class, so a
  pickle cannot call ``ndarray.__new__(ndarray, huge_shape)`` (NEWOBJ) to
  allocate an arbitrary amount of memory from a few bytes;
* ``numpy.dtype`` unpickles to a ``DtypeSpec`` that only records its
  arguments; a real dtype is made later, from a short list of plain numeric
  codes, so object dtypes never exist (numpy fills an object array whose
  pickled item list is too short with invalid pointers, and touching or freeing
  it segfaults the process);
* ``_reconstruct`` builds an empty ``CheckedArray`` whose ``__setstate__``
  checks the shape, dtype and byte count before numpy sees them, so memory is
  bounded by the bytes actually in the file.

Everything else a pickle names (``os.system``, ``builtins.eval``, any class)
is refused with ``pickle.UnpicklingError`` before it is imported.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np

_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array-rebuilding function
#: The dtypes a pickled array may have: plain numbers, never Python objects.
ALLOWED_DTYPES = frozenset({"b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8"})


class NdarrayName:
    """What the name ``numpy.ndarray`` unpickles to: a marker, not the class."""

    def __new__(cls, *args: Any, **kwargs: Any) -> NdarrayName:
        raise pickle.UnpicklingError(
            "refusing to call numpy.ndarray(...) from a pickle (it would allocate whatever shape "
            "the pickle asks for); numpy's own pickles rebuild arrays through _reconstruct"
        )

    def __setstate__(self, state: Any) -> None:  # BUILD on the class itself lands here too
        raise pickle.UnpicklingError("refusing to set attributes of numpy.ndarray")


class DtypeSpec:
    """What ``numpy.dtype(...)`` unpickles to: its code and byte order, as plain data."""

    code: Any = None  # class defaults: NEWOBJ creates instances without calling __init__
    order: str = "|"

    def __init__(self, code: Any = None, align: Any = False, copy: Any = False) -> None:
        self.code, self.order = code, "|"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]

    def to_dtype(self) -> np.dtype:
        if not isinstance(self.code, str) or self.code not in ALLOWED_DTYPES:
            raise pickle.UnpicklingError(
                f"refusing array dtype {self.code!r}: only plain numbers {sorted(ALLOWED_DTYPES)}"
            )
        dtype = np.dtype(self.code)
        return dtype.newbyteorder(self.order) if self.order in ("<", ">") else dtype


class CheckedArray(np.ndarray):
    """An ``ndarray`` whose unpickled state is checked before numpy reads it."""

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("refusing an array whose pickled state is not numpy's")
        version, shape, spec, fortran, raw = state
        if not isinstance(spec, DtypeSpec):
            raise pickle.UnpicklingError("refusing an array without a pickled numpy dtype")
        dtype = spec.to_dtype()
        ok_shape = isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)
        raw = raw.encode("latin1") if isinstance(raw, str) else raw  # Python 2 pickles
        if not ok_shape or not isinstance(raw, bytes):
            raise pickle.UnpicklingError(f"refusing an array of shape {shape!r}")
        if math.prod(shape) * dtype.itemsize != len(raw):
            raise pickle.UnpicklingError(
                f"refusing an array of shape {shape} ({dtype}): it needs "
                f"{math.prod(shape) * dtype.itemsize} bytes but the pickle holds {len(raw)}"
            )
        super().__setstate__((version, shape, dtype, bool(fortran), raw))


def _reconstruct(subtype: Any, shape: Any, code: Any) -> CheckedArray:
    """``numpy.core.multiarray._reconstruct``, for the empty arrays numpy's pickles start from."""
    if subtype is not NdarrayName or shape != (0,):
        raise pickle.UnpicklingError(
            f"refusing _reconstruct({subtype!r}, {shape!r}): numpy pickles pass (ndarray, (0,))"
        )
    return _RECONSTRUCT(CheckedArray, (0,), b"b")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): NdarrayName,
    ("numpy", "dtype"): DtypeSpec,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain numeric numpy arrays and builtin containers only.

    Arrays come back as ``CheckedArray`` (an ``ndarray`` subclass); take
    ``.view(np.ndarray)`` for a plain array.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: CIFAR batches hold only numpy "
                "arrays, lists and dicts"
            ) from None
