"""``Tensor``: a strided view on flat numpy storage.

A tensor is a :class:`Storage` (a flat numpy buffer plus a version counter shared by
every view of it) and a :class:`~ember.ir.meta.TensorMeta` (shape, dtype, strides in
elements, offset). View ops build new tensors over the same storage; every other op
writes a fresh dense tensor. The layout rules are in ``docs/layout.md``.

    >>> import ember
    >>> x = ember.arange(6.0).view(2, 3)
    >>> x.T.strides
    (1, 3)
    >>> x.T.is_contiguous()
    False
    >>> x[1, ::2].tolist()
    [3.0, 5.0]
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ember.errors import (
    AutogradError,
    DTypeError,
    LayoutError,
    ShapeError,
)
from ember.ir import dispatch, dtypes, layout
from ember.ir import functions as F
from ember.ir.dispatch import is_scalar
from ember.ir.dtypes import DType
from ember.ir.meta import TensorMeta
from ember.ir.registry import Attrs, OpDef
from ember.runtime import eager
from ember.runtime.tensor_methods import TensorMethods

_INT_BOUNDS = {
    d: (int(np.iinfo(d.np_dtype).min), int(np.iinfo(d.np_dtype).max))
    for d in (dtypes.int32, dtypes.int64)
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class Storage:
    """A flat numpy buffer shared by a tensor and all of its views.

    ``version`` counts in-place writes; autograd compares it to detect a saved value
    that was modified after it was saved.
    """

    __slots__ = ("data", "version")

    def __init__(self, data: np.ndarray) -> None:
        assert data.ndim == 1
        self.data = data
        self.version = 0

    @property
    def size(self) -> builtins.int:
        return int(self.data.shape[0])


class Tensor(TensorMethods):
    """An n-dimensional array with PyTorch-like semantics on numpy storage."""

    __ember_priority__ = 10
    __slots__ = (
        "_storage",
        "_meta",
        "_array",
        "requires_grad",
        "grad",
        "grad_fn",
        "_retains_grad",
        "__weakref__",
    )

    _storage: Storage
    _meta: TensorMeta
    _array: np.ndarray | None
    requires_grad: builtins.bool
    grad: Tensor | None
    grad_fn: Any
    _retains_grad: builtins.bool

    # Construction -------------------------------------------------------------------

    @classmethod
    def _make(cls, storage: Storage, meta: TensorMeta) -> Tensor:
        """A tensor over existing storage (a view); the layout must fit in it."""
        assert layout.within_bounds(meta.shape, meta.strides, meta.offset, storage.size)
        return cls._new(storage, meta, None)

    @classmethod
    def _from_array(cls, array: np.ndarray, meta: TensorMeta | None = None) -> Tensor:
        """Wrap a dense array this tensor will own (no copy)."""
        if meta is None:
            meta = TensorMeta.contiguous(
                array.shape, dtypes.from_numpy_dtype(array.dtype)
            )
        assert array.shape == meta.shape and array.flags.c_contiguous
        return cls._new(Storage(array.reshape(-1)), meta, array)

    @classmethod
    def _new(
        cls, storage: Storage, meta: TensorMeta, array: np.ndarray | None
    ) -> Tensor:
        t = object.__new__(cls)
        t._storage = storage
        t._meta = meta
        t._array = array
        t.requires_grad = False
        t.grad = None
        t.grad_fn = None
        t._retains_grad = False
        return t

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "create tensors with ember.tensor(...), ember.zeros(...) and friends"
        )

    # Dispatch protocol (see ember.ir.dispatch) --------------------------------------

    @classmethod
    def __ember_call__(
        cls, op: OpDef, inputs: Sequence[Tensor], attrs: Attrs
    ) -> Tensor:
        return eager.execute(op, inputs, attrs)

    @classmethod
    def __ember_constant__(cls, value: Any, dtype: DType) -> Tensor:
        bounds = _INT_BOUNDS.get(dtype)
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            raise DTypeError(
                f"the Python int {value} does not fit {dtype.name}, the dtype of the "
                "tensor it is combined with",
                expected=f"an int in [{bounds[0]}, {bounds[1]}]",
                actual=value,
                hint="convert the tensor first, e.g. .long() or .double()",
            )
        if (
            dtype is dtypes.float32
            and isinstance(value, float)
            and (abs(value) > _FLOAT32_MAX)
        ):
            # Rounds to infinity, as in PyTorch; numpy would warn about it.
            value = np.inf if value > 0 else -np.inf
        return cls._from_array(np.asarray(value, dtype=dtype.np_dtype))

    # Storage ------------------------------------------------------------------------

    def data_ptr(self) -> builtins.int:
        """Address of this tensor's first element: equal for aliasing views."""
        base = self._storage.data.__array_interface__["data"][0]
        return base + self._meta.offset * self.dtype.itemsize

    def untyped_storage_id(self) -> builtins.int:
        """An identity of the storage; views of one tensor share it."""
        return id(self._storage)

    @property
    def is_leaf(self) -> builtins.bool:
        return self.grad_fn is None

    # Data access --------------------------------------------------------------------

    def numpy(self) -> np.ndarray:
        """A numpy array sharing memory with this tensor (any ember layout fits)."""
        if self._array is None:
            meta = self._meta
            if meta.numel == 0:
                self._array = np.empty(meta.shape, meta.dtype.np_dtype)
            else:
                item = meta.dtype.itemsize
                self._array = np.ndarray(
                    meta.shape,
                    meta.dtype.np_dtype,
                    buffer=self._storage.data,
                    offset=meta.offset * item,
                    strides=tuple(s * item for s in meta.strides),
                )
        return self._array

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def item(self) -> Any:
        meta = self._meta
        if meta.numel == 1:
            # The one element sits at the offset of the flat storage.
            return self._storage.data[meta.offset].item()
        if self.numel() != 1:
            raise ShapeError(
                f"item(): only one-element tensors convert to a Python number, this "
                f"one has shape {self.shape}",
                op="item",
                expected="1 element",
                actual=self.numel(),
            )
        return self.numpy().reshape(()).item()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def __float__(self) -> builtins.float:
        return float(self.item())

    def __int__(self) -> builtins.int:
        return int(self.item())

    def __index__(self) -> builtins.int:
        if self.dtype.category != dtypes.INTEGER:
            raise DTypeError("only integer tensors can be used as an index", op="index")
        return int(self.item())

    def __bool__(self) -> builtins.bool:
        if self.numel() != 1:
            raise ShapeError(
                f"the truth value of a tensor with {self.numel()} elements is ambiguous",
                op="bool",
                hint="use (x).any() or (x).all(), or compare a reduction",
            )
        return bool(self.item())

    def __iter__(self) -> Iterator[Tensor]:
        if not self.shape:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self) -> str:
        body = np.array2string(
            self.numpy(), separator=", ", precision=4, prefix="tensor("
        )
        extra = []
        if self.dtype not in (dtypes.float32, dtypes.int64, dtypes.bool_):
            extra.append(f"dtype={self.dtype!r}")
        if self.grad_fn is not None:
            extra.append(f"grad_fn=<{self.grad_fn.name}>")
        elif self.requires_grad:
            extra.append("requires_grad=True")
        return f"tensor({body}{''.join(', ' + e for e in extra)})"

    # In-place -----------------------------------------------------------------------

    def _check_target(self, op: str) -> None:
        """This tensor can be written: autograd allows it, its memory is writable
        and none of its elements share memory (docs/layout.md, L4)."""
        from ember.runtime import autograd

        if autograd.is_grad_enabled() and self.requires_grad:
            raise AutogradError(
                f"{op}: in-place operation on a tensor that requires grad",
                op=op,
                hint="wrap the update in `with ember.no_grad():`, or use the "
                "out-of-place form (x = x + y)",
            )
        if not self._storage.data.flags.writeable:
            raise LayoutError(
                f"{op}: cannot write into {self._meta.type_str()}: its memory is "
                "read-only",
                op=op,
                expected="writable memory",
                actual="a read-only numpy buffer (from_numpy)",
                hint="from_numpy shares the array's memory; pass a writable array, "
                "e.g. arr.copy()",
            )
        super()._check_target(op)

    def _write(self, result: Any, op: str) -> Tensor:
        """Write ``result`` into this tensor's memory, through any view."""
        from ember.runtime import autograd

        self._check_target(op)
        if dispatch.intercepted_write(self, result, op):
            return self
        if autograd.is_grad_enabled() and result.requires_grad:
            # ember records no in-place ops, so the written value's gradient would
            # be lost without a trace.
            raise AutogradError(
                f"{op}: writing a value that requires grad into {self.meta.type_str()}, "
                "which does not: autograd does not track in-place writes",
                op=op,
                hint="build the tensor out of place (ember.cat, ember.stack, "
                "ember.where), or write value.detach() if no gradient is wanted",
            )
        # The target was checked above: only the result's dtype and shape remain.
        self._check_result(result.dtype, result.shape, op)
        target = self.numpy()
        source = result.numpy()
        if np.shares_memory(source, target):
            source = source.copy()
        target[...] = source
        self._storage.version += 1
        return self

    def __setitem__(self, index: Any, value: Any) -> None:
        from ember.runtime.indexing import apply_index

        apply_index(self, index).copy_(value)

    def copy_(self, src: Any) -> Tensor:
        """Copy ``src`` (a tensor, array or number; broadcast and cast) into this one."""
        return self._copy_from(src, "copy_")

    def fill_(self, value: Any) -> Tensor:
        """Set every element to ``value``: a number or a 0-d tensor."""
        if isinstance(value, Tensor) and value.ndim:
            raise ShapeError(
                f"fill_: the value must be a number or a 0-d tensor, got shape "
                f"{value.shape}",
                op="fill_",
                expected="a number or a 0-d tensor",
                actual=value.shape,
                hint="use copy_() to write a tensor of values",
            )
        if not isinstance(value, Tensor) and not is_scalar(value):
            raise DTypeError(
                f"fill_: the value must be a number or a 0-d tensor, got "
                f"{type(value).__name__}",
                op="fill_",
                expected="a number or a 0-d tensor",
                actual=repr(value)[:80],
            )
        return self._copy_from(value, "fill_")

    def zero_(self) -> Tensor:
        """Set every element to zero."""
        return self._copy_from(0, "zero_")

    def _copy_from(self, src: Any, op: str) -> Tensor:
        self._check_target(op)
        # A traced value too (see ember.ir.dispatch): a writer may take it over.
        if isinstance(src, Tensor) or hasattr(type(src), "__ember_priority__"):
            self._check_result(self.dtype, src.shape, op)
            if src.dtype is not self.dtype:
                src = F.cast(src, self.dtype)
            return self._write(src, op)
        if not (is_scalar(src) or isinstance(src, (list, tuple, np.ndarray))):
            raise DTypeError(
                f"{op}: expected a tensor, an array or a number, got "
                f"{type(src).__name__}",
                op=op,
                expected="a tensor, a numpy array, a (nested) list or a number",
                actual=repr(src)[:80],
            )
        try:
            array = np.asarray(src)
            if array.dtype.kind not in "biuf":
                raise TypeError(f"elements of type {array.dtype}")
            array = np.array(array, dtype=self.dtype.np_dtype, order="C")
        except (TypeError, ValueError, OverflowError) as exc:
            raise DTypeError(
                f"{op}: cannot convert the value to {self.dtype.name}: {exc}",
                op=op,
                expected=f"numbers that fit {self.dtype.name}",
                actual=repr(src)[:80],
            ) from None
        return self._write(Tensor._from_array(array), op)

    # Autograd -----------------------------------------------------------------------

    def requires_grad_(self, requires_grad: builtins.bool = True) -> Tensor:
        from ember.runtime import autograd

        autograd.set_requires_grad(self, requires_grad)
        return self

    def detach(self) -> Tensor:
        """A tensor sharing this one's storage, cut from the autograd graph."""
        return Tensor._make(self._storage, self._meta)

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after backward."""
        self._retains_grad = True

    def backward(
        self, gradient: Tensor | None = None, retain_graph: builtins.bool = False
    ) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``."""
        from ember.runtime import autograd

        autograd.backward(self, gradient, retain_graph=retain_graph)
