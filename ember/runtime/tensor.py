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
from collections import namedtuple
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ember.errors import (
    AutogradError,
    DTypeError,
    LayoutError,
    ShapeError,
)
from ember.ir import dtypes, layout
from ember.ir import functions as F
from ember.ir.dtypes import DType
from ember.ir.meta import TensorMeta
from ember.ir.registry import Attrs, OpDef
from ember.runtime import eager

MaxResult = namedtuple("MaxResult", ["values", "indices"])


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


class Tensor:
    """An n-dimensional array with PyTorch-like semantics on numpy storage."""

    __ember_priority__ = 10
    __slots__ = ("_storage", "_meta", "_array", "requires_grad", "grad", "grad_fn",
                 "_retains_grad", "__weakref__")
    __hash__ = object.__hash__

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
        assert layout.within_bounds(meta.shape, meta.strides, meta.offset, storage.size)
        t = object.__new__(cls)
        t._storage = storage
        t._meta = meta
        t._array = None
        t.requires_grad = False
        t.grad = None
        t.grad_fn = None
        t._retains_grad = False
        return t

    @classmethod
    def _from_array(cls, array: np.ndarray, meta: TensorMeta | None = None) -> Tensor:
        """Wrap a dense array this tensor will own (no copy)."""
        if meta is None:
            meta = TensorMeta.contiguous(array.shape, dtypes.from_numpy_dtype(array.dtype))
        assert array.shape == meta.shape and array.flags.c_contiguous
        t = object.__new__(cls)
        t._storage = Storage(array.reshape(-1))
        t._meta = meta
        t._array = array
        t.requires_grad = False
        t.grad = None
        t.grad_fn = None
        t._retains_grad = False
        return t

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("create tensors with ember.tensor(...), ember.zeros(...) and friends")

    # Dispatch protocol (see ember.ir.dispatch) --------------------------------------

    @classmethod
    def __ember_call__(cls, op: OpDef, inputs: Sequence[Tensor], attrs: Attrs) -> Tensor:
        return eager.execute(op, inputs, attrs)

    @classmethod
    def __ember_constant__(cls, value: Any, dtype: DType) -> Tensor:
        return cls._from_array(np.asarray(value, dtype=dtype.np_dtype))

    # Metadata -----------------------------------------------------------------------

    @property
    def meta(self) -> TensorMeta:
        return self._meta

    @property
    def shape(self) -> tuple[int, ...]:
        return self._meta.shape

    @property
    def dtype(self) -> DType:
        return self._meta.dtype

    @property
    def strides(self) -> tuple[int, ...]:
        return self._meta.strides

    @property
    def ndim(self) -> builtins.int:
        return len(self._meta.shape)

    def dim(self) -> builtins.int:
        return len(self._meta.shape)

    def size(self, dim: builtins.int | None = None) -> Any:
        if dim is None:
            return self._meta.shape
        return self._meta.shape[layout.normalize_dim(dim, self.ndim, "size")]

    def stride(self, dim: builtins.int | None = None) -> Any:
        if dim is None:
            return self._meta.strides
        return self._meta.strides[layout.normalize_dim(dim, self.ndim, "stride")]

    def numel(self) -> builtins.int:
        return self._meta.numel

    def storage_offset(self) -> builtins.int:
        return self._meta.offset

    def is_contiguous(self) -> builtins.bool:
        return self._meta.is_contiguous()

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

    @property
    def is_floating_point(self) -> builtins.bool:
        return self.dtype.is_floating_point

    def __len__(self) -> builtins.int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

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
        body = np.array2string(self.numpy(), separator=", ", precision=4,
                               prefix="tensor(")
        extra = []
        if self.dtype not in (dtypes.float32, dtypes.int64, dtypes.bool_):
            extra.append(f"dtype={self.dtype!r}")
        if self.grad_fn is not None:
            extra.append(f"grad_fn=<{self.grad_fn.name}>")
        elif self.requires_grad:
            extra.append("requires_grad=True")
        return f"tensor({body}{''.join(', ' + e for e in extra)})"

    # Copies and casts ---------------------------------------------------------------

    def contiguous(self) -> Tensor:
        return F.contiguous(self)

    def clone(self) -> Tensor:
        return F.clone(self)

    def to(self, dtype: Any) -> Tensor:
        dtype = dtypes.as_dtype(dtype)
        return self if dtype is self.dtype else F.cast(self, dtype)

    def type_as(self, other: Tensor) -> Tensor:
        return self.to(other.dtype)

    def float(self) -> Tensor:
        return self.to(dtypes.float32)

    def double(self) -> Tensor:
        return self.to(dtypes.float64)

    def int(self) -> Tensor:
        return self.to(dtypes.int32)

    def long(self) -> Tensor:
        return self.to(dtypes.int64)

    def bool(self) -> Tensor:
        return self.to(dtypes.bool_)

    # Views --------------------------------------------------------------------------

    def view(self, *shape: Any) -> Tensor:
        return F.view(self, *shape)

    def reshape(self, *shape: Any) -> Tensor:
        return F.reshape(self, *shape)

    def permute(self, *dims: Any) -> Tensor:
        return F.permute(self, *dims)

    def transpose(self, dim0: builtins.int, dim1: builtins.int) -> Tensor:
        return F.transpose(self, dim0, dim1)

    @property
    def T(self) -> Tensor:  # noqa: N802 - PyTorch's name
        return F.permute(self, *reversed(range(self.ndim)))

    @property
    def mT(self) -> Tensor:  # noqa: N802 - PyTorch's name
        if self.ndim < 2:
            raise ShapeError(f".mT needs at least 2 dimensions, got shape {self.shape}",
                             op="mT")
        return F.transpose(self, -2, -1)

    def expand(self, *shape: Any) -> Tensor:
        return F.expand(self, *shape)

    def expand_as(self, other: Tensor) -> Tensor:
        return F.expand(self, other.shape)

    def broadcast_to(self, shape: Sequence[builtins.int]) -> Tensor:
        return F.broadcast_to(self, shape)

    def squeeze(self, dim: Any = None) -> Tensor:
        return F.squeeze(self, dim)

    def unsqueeze(self, dim: builtins.int) -> Tensor:
        return F.unsqueeze(self, dim)

    def flatten(self, start_dim: builtins.int = 0, end_dim: builtins.int = -1) -> Tensor:
        return F.flatten(self, start_dim, end_dim)

    def narrow(self, dim: builtins.int, start: builtins.int, length: builtins.int) -> Tensor:
        return F.narrow(self, dim, start, length)

    def select(self, dim: builtins.int, index: builtins.int) -> Tensor:
        return F.select(self, dim, index)

    def __getitem__(self, index: Any) -> Tensor:
        from ember.runtime.indexing import apply_index

        return apply_index(self, index)

    def __setitem__(self, index: Any, value: Any) -> None:
        from ember.runtime.indexing import apply_index

        apply_index(self, index).copy_(value)

    # Reductions ---------------------------------------------------------------------

    def sum(self, dim: Any = None, keepdim: builtins.bool = False) -> Tensor:
        return F.sum(self, dim, keepdim)

    def mean(self, dim: Any = None, keepdim: builtins.bool = False) -> Tensor:
        return F.mean(self, dim, keepdim)

    def var(self, dim: Any = None, *, correction: builtins.int = 1,
        keepdim: builtins.bool = False,
    ) -> Tensor:
        return F.var(self, dim, correction=correction, keepdim=keepdim)

    def amax(self, dim: Any = None, keepdim: builtins.bool = False) -> Tensor:
        return F.amax(self, dim, keepdim)

    def amin(self, dim: Any = None, keepdim: builtins.bool = False) -> Tensor:
        return F.amin(self, dim, keepdim)

    def max(self, dim: Any = None, keepdim: builtins.bool = False) -> Any:
        """``max()`` of all elements, ``max(dim)`` as (values, indices), or
        ``max(other)`` elementwise, as in PyTorch."""
        if isinstance(dim, Tensor):
            return F.maximum(self, dim)
        if dim is None:
            return F.amax(self)
        return MaxResult(F.amax(self, dim, keepdim), F.argmax(self, dim, keepdim))

    def min(self, dim: Any = None, keepdim: builtins.bool = False) -> Any:
        """``min()``, ``min(dim)`` as (values, indices), or ``min(other)``."""
        if isinstance(dim, Tensor):
            return F.minimum(self, dim)
        if dim is None:
            return F.amin(self)
        return MaxResult(F.amin(self, dim, keepdim), F.argmin(self, dim, keepdim))

    def argmax(self, dim: builtins.int | None = None, keepdim: builtins.bool = False) -> Tensor:
        return F.argmax(self, dim, keepdim)

    def argmin(self, dim: builtins.int | None = None, keepdim: builtins.bool = False) -> Tensor:
        return F.argmin(self, dim, keepdim)

    def softmax(self, dim: builtins.int) -> Tensor:
        return F.softmax(self, dim)

    def log_softmax(self, dim: builtins.int) -> Tensor:
        return F.log_softmax(self, dim)

    # Pointwise ----------------------------------------------------------------------

    def exp(self) -> Tensor:
        return F.exp(self)

    def log(self) -> Tensor:
        return F.log(self)

    def sqrt(self) -> Tensor:
        return F.sqrt(self)

    def rsqrt(self) -> Tensor:
        return F.rsqrt(self)

    def abs(self) -> Tensor:
        return F.abs(self)

    def neg(self) -> Tensor:
        return F.neg(self)

    def relu(self) -> Tensor:
        return F.relu(self)

    def sigmoid(self) -> Tensor:
        return F.sigmoid(self)

    def tanh(self) -> Tensor:
        return F.tanh(self)

    def gelu(self) -> Tensor:
        return F.gelu(self)

    def pow(self, exponent: Any) -> Tensor:
        return F.pow(self, exponent)

    def clamp(self, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002
        return F.clamp(self, min, max)

    def maximum(self, other: Any) -> Tensor:
        return F.maximum(self, other)

    def minimum(self, other: Any) -> Tensor:
        return F.minimum(self, other)

    def matmul(self, other: Tensor) -> Tensor:
        return F.matmul(self, other)

    __add__ = F.add
    __sub__ = F.sub
    __mul__ = F.mul
    __truediv__ = F.div
    __pow__ = F.pow
    __matmul__ = F.matmul
    __neg__ = F.neg
    __abs__ = F.abs
    __eq__ = F.eq  # type: ignore[assignment]
    __ne__ = F.ne  # type: ignore[assignment]
    __lt__ = F.lt
    __le__ = F.le
    __gt__ = F.gt
    __ge__ = F.ge
    add = F.add
    sub = F.sub
    mul = F.mul
    div = F.div

    def __radd__(self, other: Any) -> Tensor:
        return F.add(other, self)

    def __rsub__(self, other: Any) -> Tensor:
        return F.sub(other, self)

    def __rmul__(self, other: Any) -> Tensor:
        return F.mul(other, self)

    def __rtruediv__(self, other: Any) -> Tensor:
        return F.div(other, self)

    def __rpow__(self, other: Any) -> Tensor:
        return F.pow(other, self)

    def __rmatmul__(self, other: Any) -> Tensor:
        return F.matmul(other, self)

    def __and__(self, other: Any) -> Tensor:
        return F.logical_and(self, other)

    def __or__(self, other: Any) -> Tensor:
        return F.logical_or(self, other)

    def __invert__(self) -> Tensor:
        if self.dtype is not dtypes.bool_:
            raise DTypeError("~ is only defined for bool tensors here", op="invert",
                             actual=self.dtype.name)
        return F.logical_not(self)

    # In-place -----------------------------------------------------------------------

    def _write(self, result: Any, op: str) -> Tensor:
        """Write ``result`` into this tensor's memory, through any view."""
        from ember.runtime import autograd

        if autograd.is_grad_enabled() and self.requires_grad:
            raise AutogradError(
                f"{op}: in-place operation on a tensor that requires grad",
                op=op,
                hint="wrap the update in `with ember.no_grad():`, or use the "
                "out-of-place form (x = x + y)",
            )
        if result.dtype.category > self.dtype.category:
            raise DTypeError(
                f"{op}: result type {result.dtype.name} cannot be stored in a "
                f"{self.dtype.name} tensor",
                op=op,
                expected=f"a value that casts to {self.dtype.name} without loss of kind",
                actual=result.dtype.name,
                hint=f"convert explicitly, e.g. other.to(ember.{self.dtype.name})",
            )
        if layout.has_internal_overlap(self.shape, self.strides):
            raise LayoutError(
                f"{op}: cannot write into {self._meta!r}: several of its elements share "
                "one memory location (it was expanded or broadcast)",
                op=op,
                expected="a tensor without stride-0 dimensions",
                actual=f"strides {self.strides}",
                hint="call .clone() or .contiguous() first and write into the copy",
            )
        target = self.numpy()
        try:
            shape = layout.broadcast_shapes(result.shape, self.shape, op=op)
        except ShapeError:
            shape = None
        if shape != self.shape:
            raise ShapeError(
                f"{op}: a value of shape {result.shape} cannot be written into a tensor "
                f"of shape {self.shape}",
                op=op,
                expected=f"a shape that broadcasts to {self.shape}",
                actual=result.shape,
            )
        source = result.numpy()
        if np.shares_memory(source, target):
            source = source.copy()
        target[...] = source
        self._storage.version += 1
        return self

    def copy_(self, src: Any) -> Tensor:
        """Copy ``src`` (a tensor, array or number; broadcast and cast) into this one."""
        if not isinstance(src, Tensor):
            src = Tensor._from_array(np.array(src, dtype=self.dtype.np_dtype, order="C"))
        elif src.dtype is not self.dtype:
            src = F.cast(src.detach(), self.dtype)
        return self._write(src, "copy_")

    def fill_(self, value: Any) -> Tensor:
        return self.copy_(value)

    def zero_(self) -> Tensor:
        return self.fill_(0)

    def add_(self, other: Any, alpha: builtins.float = 1) -> Tensor:
        return self._write(F.add(self, other if alpha == 1 else F.mul(other, alpha)), "add_")

    def sub_(self, other: Any, alpha: builtins.float = 1) -> Tensor:
        return self._write(F.sub(self, other if alpha == 1 else F.mul(other, alpha)), "sub_")

    def mul_(self, other: Any) -> Tensor:
        return self._write(F.mul(self, other), "mul_")

    def div_(self, other: Any) -> Tensor:
        return self._write(F.div(self, other), "div_")

    def clamp_(self, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002
        return self._write(F.clamp(self, min, max), "clamp_")

    def relu_(self) -> Tensor:
        return self._write(F.relu(self), "relu_")

    __iadd__ = add_
    __isub__ = sub_
    __imul__ = mul_
    __itruediv__ = div_

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

