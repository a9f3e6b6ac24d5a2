"""Tensor factories and the seeded random generator.

``ember.manual_seed(n)`` reseeds the global generator that ``rand``, ``randn`` and
the ``nn.init`` functions draw from. Without a call, the generator starts from a fixed
seed (:data:`DEFAULT_SEED`), so a fresh process is reproducible.

    >>> import ember
    >>> _ = ember.manual_seed(0)
    >>> a = ember.randn(3)
    >>> _ = ember.manual_seed(0)
    >>> bool((a == ember.randn(3)).numpy().all())
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ember.errors import DTypeError, LayoutError, ShapeError
from ember.ir import dtypes, layout
from ember.ir.dtypes import DType
from ember.ir.meta import TensorMeta
from ember.runtime.tensor import Storage, Tensor

DEFAULT_SEED = 20260101
_generator = np.random.Generator(np.random.PCG64(DEFAULT_SEED))


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the global generator; returns it."""
    global _generator
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DTypeError(f"manual_seed expects a non-negative int, got {seed!r}")
    _generator = np.random.Generator(np.random.PCG64(int(seed)))
    return _generator


def generator() -> np.random.Generator:
    """The global generator (for ember's own initializers and data loaders)."""
    return _generator


def _shape(args: tuple[Any, ...]) -> tuple[int, ...]:
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    for size in args:
        if (
            not isinstance(size, (int, np.integer))
            or isinstance(size, bool)
            or size < 0
        ):
            raise ShapeError(
                f"invalid shape {args}: sizes must be non-negative ints",
                expected="non-negative ints",
                actual=args,
            )
    return tuple(int(s) for s in args)


def _finish(array: np.ndarray, requires_grad: bool) -> Tensor:
    # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
    if not array.flags.c_contiguous:
        array = np.array(array, order="C")
    t = Tensor._from_array(array)
    if requires_grad:
        t.requires_grad_(True)
    return t


def tensor(data: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of ``data`` (numbers, nested lists, arrays, tensors).

    Python floats become float32, ints int64, bools bool; numpy arrays keep their
    dtype when ember supports it.
    """
    if isinstance(data, Tensor):
        array = data.numpy().copy()
    else:
        try:
            array = np.array(data)
        except ValueError as exc:
            raise ShapeError(
                f"tensor(): data is not rectangular: {exc}",
                hint="every row must have the same length",
            ) from None
        if array.dtype.kind == "f" and not isinstance(data, np.ndarray):
            array = array.astype(dtypes.default_float.np_dtype)
        elif array.dtype.kind in "iu" and not isinstance(data, np.ndarray):
            array = array.astype(np.int64)
    if dtype is not None:
        array = array.astype(dtypes.as_dtype(dtype).np_dtype)
    elif array.dtype.kind not in "fiub":
        raise DTypeError(
            f"tensor(): cannot make a tensor from {array.dtype} data",
            expected="numbers or bools",
            actual=str(array.dtype),
        )
    else:
        dtypes.from_numpy_dtype(array.dtype)
    return _finish(array.copy(order="C"), requires_grad)


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with ``array`` (writes show on both sides).

    Negative or non-element-aligned strides cannot be shared (docs/layout.md rule
    L1) and raise LayoutError.
    """
    if not isinstance(array, np.ndarray):
        raise DTypeError(
            f"from_numpy expects a numpy array, got {type(array).__name__}"
        )
    if not array.dtype.isnative:
        raise DTypeError(
            "from_numpy: byte-swapped arrays are not supported",
            hint="call arr.astype(arr.dtype.newbyteorder('='))",
        )
    dtype = dtypes.from_numpy_dtype(array.dtype)
    item = array.itemsize
    if any(s < 0 or s % item for s in array.strides):
        raise LayoutError(
            f"from_numpy: strides {array.strides} (bytes) cannot be shared: ember "
            "strides are non-negative multiples of the element size",
            expected="non-negative strides",
            actual=array.strides,
            hint="pass np.ascontiguousarray(arr) (a copy)",
        )
    strides = tuple(s // item for s in array.strides)
    if array.size == 0:
        return Tensor._from_array(np.empty(array.shape, array.dtype))
    _, stop = layout.span(array.shape, strides, 0)
    flat = np.lib.stride_tricks.as_strided(array, shape=(stop,), strides=(item,))
    return Tensor._make(Storage(flat), TensorMeta(array.shape, dtype, strides, 0))


def _dtype_or(dtype: Any, default: DType) -> DType:
    return default if dtype is None else dtypes.as_dtype(dtype)


def empty(*shape: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """An uninitialized tensor (ember zero-fills it: numpy memory is never garbage)."""
    return zeros(*shape, dtype=dtype, requires_grad=requires_grad)


def zeros(*shape: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros."""
    d = _dtype_or(dtype, dtypes.default_float)
    return _finish(np.zeros(_shape(shape), d.np_dtype), requires_grad)


def ones(*shape: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """A tensor of ones."""
    d = _dtype_or(dtype, dtypes.default_float)
    return _finish(np.ones(_shape(shape), d.np_dtype), requires_grad)


def full(
    shape: Sequence[int],
    fill_value: Any,
    dtype: Any = None,
    requires_grad: bool = False,
) -> Tensor:
    """A tensor filled with ``fill_value`` (dtype inferred from it when not given)."""
    d = _dtype_or(dtype, dtypes.default_dtype_for_scalar(fill_value))
    return _finish(np.full(_shape((shape,)), fill_value, d.np_dtype), requires_grad)


def arange(
    start: Any,
    end: Any = None,
    step: Any = 1,
    dtype: Any = None,
    requires_grad: bool = False,
) -> Tensor:
    """Values from ``start`` up to (not including) ``end`` by ``step``."""
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ShapeError("arange: step must be non-zero", op="arange")
    default = dtypes.result_type([], [], [start, end, step])
    d = _dtype_or(dtype, default)
    return _finish(np.arange(start, end, step).astype(d.np_dtype), requires_grad)


def rand(*shape: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1) from the global generator."""
    d = _dtype_or(dtype, dtypes.default_float)
    _require_float(d, "rand")
    return _finish(_generator.random(_shape(shape)).astype(d.np_dtype), requires_grad)


def randn(*shape: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """Standard normal samples from the global generator."""
    d = _dtype_or(dtype, dtypes.default_float)
    _require_float(d, "randn")
    return _finish(
        _generator.standard_normal(_shape(shape)).astype(d.np_dtype), requires_grad
    )


def _require_float(d: DType, op: str) -> None:
    if not d.is_floating_point:
        raise DTypeError(
            f"{op}: needs a floating dtype, got {d.name}",
            op=op,
            expected="float32 or float64",
            actual=d.name,
        )


def _like(fn: Any, x: Tensor, dtype: Any, requires_grad: bool, *args: Any) -> Tensor:
    return fn(*args, dtype=dtype or x.dtype, requires_grad=requires_grad)


def zeros_like(x: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _like(zeros, x, dtype, requires_grad, x.shape)


def ones_like(x: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _like(ones, x, dtype, requires_grad, x.shape)


def empty_like(x: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _like(empty, x, dtype, requires_grad, x.shape)


def rand_like(x: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _like(rand, x, dtype, requires_grad, x.shape)


def randn_like(x: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _like(randn, x, dtype, requires_grad, x.shape)


def full_like(
    x: Tensor, fill_value: Any, dtype: Any = None, requires_grad: bool = False
) -> Tensor:
    return full(
        x.shape, fill_value, dtype=dtype or x.dtype, requires_grad=requires_grad
    )
