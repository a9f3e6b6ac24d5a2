"""Reductions over one or several dims, with ``keepdim``.

Attributes: ``dims`` (a tuple of normalized dims; every dim when all are reduced),
``keepdim`` (bool). ``argmax``/``argmin`` take ``dim`` (an int, or None for the
flattened tensor). ``mean`` and ``var`` are composites that decompose into ``sum``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir import dtypes
from ember.ir.layout import normalize_dim, normalize_dims, numel
from ember.ir.meta import TensorMeta
from ember.ir.registry import Attrs, OpDef, OpKind, register


def reduced_shape(
    shape: Sequence[int], dims: Sequence[int], keepdim: bool
) -> tuple[int, ...]:
    """The shape left after reducing ``dims`` (kept as size 1 with ``keepdim``)."""
    if keepdim:
        return tuple(1 if i in dims else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in dims)


def _dims(meta: TensorMeta, attrs: Attrs, op: str) -> tuple[int, ...]:
    return normalize_dims(attrs.get("dims"), meta.ndim, op)


def require_float(metas: Sequence[TensorMeta], op: str) -> None:
    """DTypeError unless every meta is floating point (mean, var, softmax, ...)."""
    for meta in metas:
        if not meta.dtype.is_floating_point:
            raise DTypeError(
                f"{op}: needs a floating-point tensor, got {meta.type_str()}",
                op=op,
                expected="float32 or float64",
                actual=meta.dtype.name,
                hint="convert with .float() first",
            )


def _axes(x: np.ndarray, attrs: Attrs) -> tuple[int, ...] | None:
    """The numpy ``axis`` for ``attrs['dims']``: a 0-d tensor reduces no axis."""
    dims = attrs.get("dims")
    if dims is None:
        return None
    return () if x.ndim == 0 else tuple(dims)


def _count(x: np.ndarray, axes: tuple[int, ...] | None) -> int:
    return x.size if axes is None else numel(x.shape[d] for d in axes)


def _require_nonempty(meta: TensorMeta, dims: Sequence[int], op: str) -> None:
    # A 0-d tensor accepts dim 0 or -1 but has no dimension to be empty.
    if any(meta.shape[d] == 0 for d in dims if d < meta.ndim):
        raise ShapeError(
            f"{op}: cannot reduce an empty dimension of shape {meta.shape} "
            "(the result has no identity)",
            op=op,
            actual=meta.shape,
            hint="check the input is not empty, or use sum, which returns 0",
        )


def _sum_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    (x,) = metas
    dims = _dims(x, attrs, "sum")
    dtype = x.dtype if x.dtype.is_floating_point else dtypes.int64
    return TensorMeta.contiguous(reduced_shape(x.shape, dims, attrs["keepdim"]), dtype)


def _sum_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    (x,) = arrays
    out = x.dtype if x.dtype.kind == "f" else np.int64
    return np.asarray(
        np.sum(x, axis=_axes(x, attrs), keepdims=attrs["keepdim"], dtype=out)
    )


def _extreme_meta(op: str):
    def meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
        (x,) = metas
        dims = _dims(x, attrs, op)
        _require_nonempty(x, dims, op)
        return TensorMeta.contiguous(
            reduced_shape(x.shape, dims, attrs["keepdim"]), x.dtype
        )

    return meta


def _extreme_reference(fn):
    def reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
        x = arrays[0]
        return np.asarray(fn(x, axis=_axes(x, attrs), keepdims=attrs["keepdim"]))

    return reference


def _arg_meta(op: str):
    def meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
        (x,) = metas
        if x.dtype is dtypes.bool_:
            raise DTypeError(
                f"{op}: bool tensors are not supported, got {x.type_str()}",
                op=op,
                hint="convert with .int() first",
            )
        dim = attrs.get("dim")
        if dim is None:
            _require_nonempty(x, range(x.ndim), op)
            shape = (1,) * x.ndim if attrs["keepdim"] else ()
        else:
            dim = normalize_dim(dim, x.ndim, op)
            _require_nonempty(x, (dim,) if x.ndim else (), op)
            shape = reduced_shape(x.shape, (dim,) if x.ndim else (), attrs["keepdim"])
        return TensorMeta.contiguous(shape, dtypes.int64)

    return meta


def _arg_reference(fn):
    def reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
        (x,) = arrays
        dim = attrs.get("dim")
        if dim is None or x.ndim == 0:
            index = fn(x.reshape(-1))
            shape = (1,) * x.ndim if attrs["keepdim"] else ()
            return np.full(shape, index, dtype=np.int64)
        return np.asarray(fn(x, axis=dim, keepdims=attrs["keepdim"]), dtype=np.int64)

    return reference


def _mean_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    (x,) = metas
    require_float([x], "mean")
    dims = _dims(x, attrs, "mean")
    return TensorMeta.contiguous(
        reduced_shape(x.shape, dims, attrs["keepdim"]), x.dtype
    )


def _mean_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    (x,) = arrays
    axes = _axes(x, attrs)
    # sum / count rather than np.mean, which warns on empty input; 0 / 0 is NaN.
    total = np.sum(x, axis=axes, keepdims=attrs["keepdim"])
    return np.asarray(total / _count(x, axes)).astype(x.dtype, copy=False)


def _var_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    (x,) = metas
    require_float([x], "var")
    dims = _dims(x, attrs, "var")
    correction = attrs.get("correction", 1)
    if not isinstance(correction, int) or correction < 0:
        raise ShapeError(
            f"var: correction must be a non-negative int, got {correction!r}", op="var"
        )
    return TensorMeta.contiguous(
        reduced_shape(x.shape, dims, attrs["keepdim"]), x.dtype
    )


def _var_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    (x,) = arrays
    axes = _axes(x, attrs)
    count = _count(x, axes)
    # Two passes, as np.var does, but without its warnings (np.var warns on a
    # divisor of 0, where this gives inf or NaN as PyTorch does).
    divisor = max(count - attrs.get("correction", 1), 0)
    mean = np.sum(x, axis=axes, keepdims=True) / count
    squares = np.sum(np.square(x - mean), axis=axes, keepdims=attrs["keepdim"])
    return np.asarray(squares / divisor).astype(x.dtype, copy=False)


register(
    OpDef(
        "sum",
        OpKind.REDUCTION,
        _sum_meta,
        _sum_reference,
        num_inputs=1,
        doc="sum over dims (ints and bools sum to int64)",
    )
)
register(
    OpDef(
        "amax",
        OpKind.REDUCTION,
        _extreme_meta("amax"),
        _extreme_reference(np.max),
        num_inputs=1,
        doc="maximum over dims",
    )
)
register(
    OpDef(
        "amin",
        OpKind.REDUCTION,
        _extreme_meta("amin"),
        _extreme_reference(np.min),
        num_inputs=1,
        doc="minimum over dims",
    )
)
register(
    OpDef(
        "argmax",
        OpKind.REDUCTION,
        _arg_meta("argmax"),
        _arg_reference(np.argmax),
        num_inputs=1,
        differentiable=False,
        doc="index of the first maximum",
    )
)
register(
    OpDef(
        "argmin",
        OpKind.REDUCTION,
        _arg_meta("argmin"),
        _arg_reference(np.argmin),
        num_inputs=1,
        differentiable=False,
        doc="index of the first minimum",
    )
)
register(
    OpDef(
        "mean",
        OpKind.COMPOSITE,
        _mean_meta,
        _mean_reference,
        num_inputs=1,
        doc="arithmetic mean over dims (floating point only)",
    )
)
register(
    OpDef(
        "var",
        OpKind.COMPOSITE,
        _var_meta,
        _var_reference,
        num_inputs=1,
        doc="variance over dims with Bessel's correction by default",
    )
)
