"""The op-method surface shared by every ember value class.

:class:`TensorMethods` holds the methods and operators that only apply registry ops
(``x.view(2, 3)``, ``x.sum(0)``, ``x @ w``, ``x[1:]``) and the metadata queries that
only read the value's :class:`~ember.ir.meta.TensorMeta`. It is written once, against
the functional front end :mod:`ember.ir.functions`, so it works for any class that
takes part in the dispatch protocol: eager tensors run the ops, tracing proxies
record them. A class using the mixin provides ``_meta``.

Methods that need concrete values (``item``, ``numpy``), write in place (``add_``)
or touch autograd (``backward``) stay with the class that can honour them.

    >>> import ember
    >>> x = ember.arange(6.0).view(2, 3)
    >>> (x.T @ x).shape, x.sum(1).tolist()
    ((3, 3), [3.0, 12.0])
"""

from __future__ import annotations

import builtins
from collections import namedtuple
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from ember.errors import DTypeError, IndexingError, LayoutError, ShapeError
from ember.ir import dtypes, layout
from ember.ir import functions as F
from ember.ir.dispatch import is_scalar
from ember.ir.dtypes import DType
from ember.ir.meta import TensorMeta

MaxResult = namedtuple("MaxResult", ["values", "indices"])
V = TypeVar("V", bound="TensorMethods")


def _is_value(obj: Any) -> builtins.bool:
    """True for an instance of a dispatch value class (a tensor or a proxy)."""
    return hasattr(type(obj), "__ember_priority__")


def _split_sizes(
    split_size: Any,
    size: builtins.int,
    shape: tuple[builtins.int, ...],
    dim: builtins.int,
) -> list[builtins.int]:
    """The piece sizes of ``split``: a list as given, or an int repeated."""
    if isinstance(split_size, (list, tuple)):
        sizes = [builtins.int(n) for n in split_size]
        if builtins.sum(sizes) != size or builtins.any(n < 0 for n in sizes):
            raise ShapeError(
                f"split: sizes {tuple(sizes)} do not add up to dimension {dim} of shape "
                f"{shape}",
                op="split",
                expected=f"non-negative sizes that sum to {size}",
                actual=tuple(sizes),
            )
        return sizes
    if not _positive_int(split_size):
        raise ShapeError(
            f"split: split_size must be a positive int or a list of ints, "
            f"got {split_size!r}",
            op="split",
            expected="an int >= 1",
            actual=split_size,
        )
    full, rest = divmod(size, split_size)
    return [split_size] * full + ([rest] if rest else []) or [0]


def _operands(other: Any, alpha: Any) -> tuple[Any, ...]:
    """The operands ``add_``/``sub_`` check: ``alpha`` too unless it is the number 1
    (a traced ``alpha``, the learning rate of a compiled step, always counts)."""
    return (other,) if not _is_value(alpha) and alpha == 1 else (other, alpha)


def _scaled(other: Any, alpha: Any) -> Any:
    """``other * alpha`` for ``add_``/``sub_``; two numbers multiply in Python."""
    if not _is_value(alpha) and alpha == 1:
        return other
    return F.mul(other, alpha) if _is_value(other) else other * alpha


def _positive_int(value: Any) -> builtins.bool:
    return (
        isinstance(value, builtins.int)
        and not isinstance(value, builtins.bool)
        and value >= 1
    )


def _comparable(obj: Any) -> builtins.bool:
    """Values ``==`` compares elementwise; anything else is just not equal."""
    return (
        _is_value(obj) or is_scalar(obj) or isinstance(obj, (list, tuple, np.ndarray))
    )


def _bool_operands(symbol: str, name: str, *operands: Any) -> tuple[Any, ...]:
    """The operands of ``&``, ``|`` or ``^``, which must be bool tensors or bools."""
    for value in operands:
        dtype = value.dtype if _is_value(value) else None
        if not (dtype is dtypes.bool_ or isinstance(value, bool)):
            shown = value.meta.type_str() if _is_value(value) else type(value).__name__
            raise DTypeError(
                f"{symbol}: logical {name} is defined for bool tensors only, got {shown}",
                op=f"logical_{name}",
                expected="bool tensors",
                actual=shown,
                hint="ember has no bitwise ops; compare first, e.g. (x > 0) & (y > 0)",
            )
    return operands


class TensorMethods:
    """Metadata queries, views, reductions, pointwise ops and operators."""

    __slots__ = ()
    # Defining __eq__ (elementwise, below) would otherwise make values unhashable.
    __hash__ = object.__hash__

    _meta: TensorMeta

    # Metadata -----------------------------------------------------------------------

    @property
    def meta(self) -> TensorMeta:
        return self._meta

    @property
    def shape(self) -> tuple[builtins.int, ...]:
        return self._meta.shape

    @property
    def dtype(self) -> DType:
        return self._meta.dtype

    @property
    def strides(self) -> tuple[builtins.int, ...]:
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

    def is_floating_point(self) -> builtins.bool:
        """True for float32 and float64 tensors (a method, as in PyTorch)."""
        return self.dtype.is_floating_point

    def element_size(self) -> builtins.int:
        """Bytes per element."""
        return self.dtype.itemsize

    @property
    def itemsize(self) -> builtins.int:
        """Bytes per element."""
        return self.dtype.itemsize

    @property
    def nbytes(self) -> builtins.int:
        """Bytes the elements take (``numel() * element_size()``)."""
        return self._meta.nbytes

    def __len__(self) -> builtins.int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    # Copies and casts ---------------------------------------------------------------

    def contiguous(self: V) -> V:
        return F.contiguous(self)

    def clone(self: V) -> V:
        return F.clone(self)

    def to(self: V, dtype: Any) -> V:
        dtype = dtypes.as_dtype(dtype)
        return self if dtype is self.dtype else F.cast(self, dtype)

    def type_as(self: V, other: TensorMethods) -> V:
        return self.to(other.dtype)

    def float(self: V) -> V:
        return self.to(dtypes.float32)

    def double(self: V) -> V:
        return self.to(dtypes.float64)

    def int(self: V) -> V:
        return self.to(dtypes.int32)

    def long(self: V) -> V:
        return self.to(dtypes.int64)

    def bool(self: V) -> V:
        return self.to(dtypes.bool_)

    # Views --------------------------------------------------------------------------

    def view(self: V, *shape: Any) -> V:
        return F.view(self, *shape)

    def reshape(self: V, *shape: Any) -> V:
        return F.reshape(self, *shape)

    def permute(self: V, *dims: Any) -> V:
        return F.permute(self, *dims)

    def transpose(self: V, dim0: builtins.int, dim1: builtins.int) -> V:
        return F.transpose(self, dim0, dim1)

    @property
    def T(self: V) -> V:  # noqa: N802 - PyTorch's name
        return F.permute(self, *reversed(range(self.ndim)))

    @property
    def mT(self: V) -> V:  # noqa: N802 - PyTorch's name
        if self.ndim < 2:
            raise ShapeError(
                f".mT needs at least 2 dimensions, got shape {self.shape}", op="mT"
            )
        return F.transpose(self, -2, -1)

    def expand(self: V, *shape: Any) -> V:
        return F.expand(self, *shape)

    def expand_as(self: V, other: TensorMethods) -> V:
        return F.expand(self, other.shape)

    def broadcast_to(self: V, shape: Sequence[builtins.int]) -> V:
        return F.broadcast_to(self, shape)

    def squeeze(self: V, dim: Any = None) -> V:
        return F.squeeze(self, dim)

    def unsqueeze(self: V, dim: builtins.int) -> V:
        return F.unsqueeze(self, dim)

    def flatten(self: V, start_dim: builtins.int = 0, end_dim: builtins.int = -1) -> V:
        return F.flatten(self, start_dim, end_dim)

    def narrow(
        self: V, dim: builtins.int, start: builtins.int, length: builtins.int
    ) -> V:
        return F.narrow(self, dim, start, length)

    def select(self: V, dim: builtins.int, index: builtins.int) -> V:
        return F.select(self, dim, index)

    def t(self: V) -> V:
        """The transpose of a matrix; tensors with fewer than 2 dims come back as a
        view of themselves, as in PyTorch."""
        if self.ndim > 2:
            raise ShapeError(
                "t(): expects a tensor with at most 2 dimensions, got shape "
                f"{self.shape}",
                op="t",
                expected="at most 2 dimensions",
                actual=self.shape,
                hint="use .mT or .transpose(dim0, dim1) for batches of matrices",
            )
        return F.transpose(self, 0, -1) if self.ndim == 2 else F.view(self, self.shape)

    def view_as(self: V, other: TensorMethods) -> V:
        return F.view(self, other.shape)

    def reshape_as(self: V, other: TensorMethods) -> V:
        return F.reshape(self, other.shape)

    def unbind(self: V, dim: builtins.int = 0) -> tuple[V, ...]:
        """The views ``select(dim, i)`` for every index ``i``."""
        dim = layout.normalize_dim(dim, self.ndim, "unbind", shape=self.shape)
        if self.ndim == 0:
            raise IndexingError(
                "unbind: a 0-d tensor has no dimension to unbind",
                op="unbind",
                expected="a tensor with 1 dimension or more",
                actual=self.shape,
            )
        return tuple(F.select(self, dim, i) for i in range(self.shape[dim]))

    def split(self: V, split_size: Any, dim: builtins.int = 0) -> tuple[V, ...]:
        """Views of consecutive pieces along ``dim``: of ``split_size`` elements each
        (the last may be shorter), or of the sizes in a list."""
        dim = layout.normalize_dim(dim, self.ndim, "split", shape=self.shape)
        size = self.shape[dim] if self.ndim else 0
        sizes = _split_sizes(split_size, size, self.shape, dim)
        starts = [builtins.sum(sizes[:i]) for i in range(len(sizes))]
        return tuple(F.narrow(self, dim, a, n) for a, n in zip(starts, sizes))

    def chunk(self: V, chunks: builtins.int, dim: builtins.int = 0) -> tuple[V, ...]:
        """At most ``chunks`` views of equal size along ``dim`` (the last may be
        shorter, and fewer come back when the size does not allow more)."""
        if not _positive_int(chunks):
            raise ShapeError(
                f"chunk: chunks must be a positive int, got {chunks!r}",
                op="chunk",
                expected="an int >= 1",
                actual=chunks,
            )
        dim = layout.normalize_dim(dim, self.ndim, "chunk", shape=self.shape)
        size = self.shape[dim] if self.ndim else 0
        return self.split(builtins.max(-(-size // chunks), 1), dim)

    def __getitem__(self: V, index: Any) -> V:
        from ember.runtime.indexing import apply_index

        return apply_index(self, index)

    # Reductions ---------------------------------------------------------------------

    def sum(self: V, dim: Any = None, keepdim: builtins.bool = False) -> V:
        return F.sum(self, dim, keepdim)

    def mean(self: V, dim: Any = None, keepdim: builtins.bool = False) -> V:
        return F.mean(self, dim, keepdim)

    def var(
        self: V,
        dim: Any = None,
        *,
        correction: builtins.int = 1,
        keepdim: builtins.bool = False,
    ) -> V:
        return F.var(self, dim, correction=correction, keepdim=keepdim)

    def amax(self: V, dim: Any = None, keepdim: builtins.bool = False) -> V:
        return F.amax(self, dim, keepdim)

    def amin(self: V, dim: Any = None, keepdim: builtins.bool = False) -> V:
        return F.amin(self, dim, keepdim)

    def max(self, dim: Any = None, keepdim: builtins.bool = False) -> Any:
        """``max()`` of all elements, ``max(dim)`` as (values, indices), or
        ``max(other)`` elementwise, as in PyTorch."""
        if _is_value(dim):
            return F.maximum(self, dim)
        if dim is None:
            return F.amax(self)
        return MaxResult(F.amax(self, dim, keepdim), F.argmax(self, dim, keepdim))

    def min(self, dim: Any = None, keepdim: builtins.bool = False) -> Any:
        """``min()``, ``min(dim)`` as (values, indices), or ``min(other)``."""
        if _is_value(dim):
            return F.minimum(self, dim)
        if dim is None:
            return F.amin(self)
        return MaxResult(F.amin(self, dim, keepdim), F.argmin(self, dim, keepdim))

    def argmax(
        self: V, dim: builtins.int | None = None, keepdim: builtins.bool = False
    ) -> V:
        return F.argmax(self, dim, keepdim)

    def argmin(
        self: V, dim: builtins.int | None = None, keepdim: builtins.bool = False
    ) -> V:
        return F.argmin(self, dim, keepdim)

    def softmax(self: V, dim: builtins.int) -> V:
        return F.softmax(self, dim)

    def log_softmax(self: V, dim: builtins.int) -> V:
        return F.log_softmax(self, dim)

    def std(
        self: V,
        dim: Any = None,
        *,
        correction: builtins.int = 1,
        keepdim: builtins.bool = False,
    ) -> V:
        """Standard deviation: the square root of :meth:`var`."""
        return F.sqrt(F.var(self, dim, correction=correction, keepdim=keepdim))

    def any(self: V, dim: Any = None, keepdim: builtins.bool = False) -> V:
        """Whether any element (along ``dim``) is non-zero; False for no elements."""
        return F.gt(F.sum(F.ne(self, 0), dim, keepdim), 0)

    def all(self: V, dim: Any = None, keepdim: builtins.bool = False) -> V:
        """Whether every element (along ``dim``) is non-zero; True for no elements."""
        return F.eq(F.sum(F.eq(self, 0), dim, keepdim), 0)

    # Pointwise ----------------------------------------------------------------------

    def exp(self: V) -> V:
        return F.exp(self)

    def log(self: V) -> V:
        return F.log(self)

    def sqrt(self: V) -> V:
        return F.sqrt(self)

    def rsqrt(self: V) -> V:
        return F.rsqrt(self)

    def abs(self: V) -> V:
        return F.abs(self)

    def neg(self: V) -> V:
        return F.neg(self)

    def relu(self: V) -> V:
        return F.relu(self)

    def sigmoid(self: V) -> V:
        return F.sigmoid(self)

    def tanh(self: V) -> V:
        return F.tanh(self)

    def gelu(self: V) -> V:
        return F.gelu(self)

    def pow(self: V, exponent: Any) -> V:
        return F.pow(self, exponent)

    def clamp(self: V, min: Any = None, max: Any = None) -> V:  # noqa: A002
        return F.clamp(self, min, max)

    def maximum(self: V, other: Any) -> V:
        return F.maximum(self, other)

    def minimum(self: V, other: Any) -> V:
        return F.minimum(self, other)

    def matmul(self: V, other: TensorMethods) -> V:
        return F.matmul(self, other)

    __add__ = F.add
    __sub__ = F.sub
    __mul__ = F.mul
    __truediv__ = F.div
    __pow__ = F.pow
    __matmul__ = F.matmul
    __neg__ = F.neg
    __abs__ = F.abs
    __lt__ = F.lt
    __le__ = F.le
    __gt__ = F.gt
    __ge__ = F.ge
    add = F.add
    sub = F.sub
    mul = F.mul
    div = F.div

    def __radd__(self: V, other: Any) -> V:
        return F.add(other, self)

    def __rsub__(self: V, other: Any) -> V:
        return F.sub(other, self)

    def __rmul__(self: V, other: Any) -> V:
        return F.mul(other, self)

    def __rtruediv__(self: V, other: Any) -> V:
        return F.div(other, self)

    def __rpow__(self: V, other: Any) -> V:
        return F.pow(other, self)

    def __rmatmul__(self: V, other: Any) -> V:
        return F.matmul(other, self)

    def __eq__(self, other: Any) -> Any:  # type: ignore[override]
        # Like PyTorch, comparing with None or another non-number is simply False.
        if not _comparable(other):
            return NotImplemented
        return F.eq(self, other)

    def __ne__(self, other: Any) -> Any:  # type: ignore[override]
        if not _comparable(other):
            return NotImplemented
        return F.ne(self, other)

    # ember has no bitwise ops: &, | and ^ are the logical ops of bool tensors.
    def __and__(self: V, other: Any) -> V:
        return F.logical_and(*_bool_operands("&", "and", self, other))

    def __rand__(self: V, other: Any) -> V:
        return F.logical_and(*_bool_operands("&", "and", other, self))

    def __or__(self: V, other: Any) -> V:
        return F.logical_or(*_bool_operands("|", "or", self, other))

    def __ror__(self: V, other: Any) -> V:
        return F.logical_or(*_bool_operands("|", "or", other, self))

    def __xor__(self: V, other: Any) -> V:
        return F.ne(*_bool_operands("^", "xor", self, other))

    def __rxor__(self: V, other: Any) -> V:
        return F.ne(*_bool_operands("^", "xor", other, self))

    def __invert__(self: V) -> V:
        if self.dtype is not dtypes.bool_:
            raise DTypeError(
                "~ is only defined for bool tensors here",
                op="invert",
                actual=self.dtype.name,
            )
        return F.logical_not(self)

    # In-place updates ---------------------------------------------------------------

    def _write(self: V, result: Any, op: str) -> V:
        """Make ``result`` the new contents of this value (each class says how)."""
        raise NotImplementedError(f"{type(self).__name__} does not define _write")

    def _check_target(self, op: str) -> None:
        """This layout can take writes: no two of its elements share memory (L4)."""
        if layout.has_internal_overlap(self.shape, self.strides):
            raise LayoutError(
                f"{op}: cannot write into {self._meta!r}: several of its elements share "
                "one memory location (it was expanded or broadcast)",
                op=op,
                expected="a tensor without stride-0 dimensions",
                actual=f"strides {self.strides}",
                hint="call .clone() or .contiguous() first and write into the copy",
            )

    def _check_result(
        self, dtype: DType, shape: Sequence[builtins.int], op: str
    ) -> None:
        """A result of ``dtype`` and ``shape`` can be stored here: it keeps this
        value's kind of dtype and broadcasts to its shape."""
        if dtype.category > self.dtype.category:
            raise DTypeError(
                f"{op}: result type {dtype.name} cannot be stored in a "
                f"{self.dtype.name} tensor",
                op=op,
                expected=f"a value that casts to {self.dtype.name} without loss of kind",
                actual=dtype.name,
                hint=f"convert explicitly, e.g. other.to(ember.{self.dtype.name})",
            )
        try:
            fits = layout.broadcast_shapes(shape, self.shape, op=op) == self.shape
        except ShapeError:
            fits = False
        if not fits:
            raise ShapeError(
                f"{op}: a value of shape {tuple(shape)} cannot be written into a tensor "
                f"of shape {self.shape}",
                op=op,
                expected=f"a shape that broadcasts to {self.shape}",
                actual=tuple(shape),
            )

    def _check_write(self, result: Any, op: str) -> None:
        """The rules every in-place update obeys: this layout takes writes, and
        ``result`` keeps this value's kind of dtype and broadcasts to its shape."""
        self._check_target(op)
        self._check_result(result.dtype, result.shape, op)

    def _check_update(
        self, op: str, operands: Sequence[Any] = (), floating: builtins.bool = False
    ) -> None:
        """Check ``self <op>= operands`` before computing anything: the target, and the
        dtype and shape the result will have (PyTorch promotion; ``floating`` for ops
        such as division whose result is always floating point)."""
        self._check_target(op)
        values = [self] + [v for v in operands if _is_value(v)]
        dtype = dtypes.result_type(
            [(v.dtype, v.ndim) for v in values if v.ndim],
            [(v.dtype, 0) for v in values if not v.ndim],
            [v for v in operands if not _is_value(v)],
        )
        if floating and not dtype.is_floating_point:
            dtype = dtypes.default_float
        shapes = [v.shape for v in values]
        self._check_result(dtype, layout.broadcast_shapes(*shapes, op=op), op)

    def add_(self: V, other: Any, alpha: builtins.float = 1) -> V:
        self._check_update("add_", _operands(other, alpha))
        return self._write(F.add(self, _scaled(other, alpha)), "add_")

    def sub_(self: V, other: Any, alpha: builtins.float = 1) -> V:
        self._check_update("sub_", _operands(other, alpha))
        return self._write(F.sub(self, _scaled(other, alpha)), "sub_")

    def mul_(self: V, other: Any) -> V:
        self._check_update("mul_", (other,))
        return self._write(F.mul(self, other), "mul_")

    def div_(self: V, other: Any) -> V:
        self._check_update("div_", (other,), floating=True)
        return self._write(F.div(self, other), "div_")

    def clamp_(self: V, min: Any = None, max: Any = None) -> V:  # noqa: A002
        self._check_update("clamp_", [b for b in (min, max) if b is not None])
        return self._write(F.clamp(self, min, max), "clamp_")

    def relu_(self: V) -> V:
        self._check_update("relu_")
        return self._write(F.relu(self), "relu_")

    __iadd__ = add_
    __isub__ = sub_
    __imul__ = mul_
    __itruediv__ = div_
