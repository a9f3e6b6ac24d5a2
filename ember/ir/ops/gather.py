"""Ops that assemble an output from pieces: ``cat``, ``stack`` and ``scatter_slice``.

``scatter_slice`` is the adjoint of ``slice``: a zero tensor of ``shape`` with the
source written at ``start::step`` along ``dim``. Gradient rules of ``slice`` and
``select`` use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir.layout import normalize_dim
from ember.ir.meta import TensorMeta
from ember.ir.ops.pointwise import promoted
from ember.ir.registry import Attrs, OpDef, OpKind, register


def _check_same_shapes(metas: Sequence[TensorMeta], dim: int | None, op: str) -> None:
    first = metas[0]
    for i, m in enumerate(metas[1:], start=1):
        same_rank = m.ndim == first.ndim
        mismatch = [
            d
            for d in range(first.ndim)
            if same_rank and d != dim and m.shape[d] != first.shape[d]
        ]
        if not same_rank or mismatch:
            raise ShapeError(
                f"{op}: tensor {i} has shape {m.shape}, tensor 0 has {first.shape}; "
                + (
                    "all sizes but the concatenated dim must match"
                    if dim is not None
                    else "all shapes must be equal"
                ),
                op=op,
                expected=first.shape,
                actual=m.shape,
            )


def _cat_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    if not metas:
        raise ShapeError("cat: expected a non-empty list of tensors", op="cat")
    if metas[0].ndim == 0:
        raise ShapeError(
            "cat: zero-dimensional tensors cannot be concatenated",
            op="cat",
            hint="use ember.stack instead",
        )
    dim = normalize_dim(attrs["dim"], metas[0].ndim, "cat")
    _check_same_shapes(metas, dim, "cat")
    size = sum(m.shape[dim] for m in metas)
    shape = metas[0].shape[:dim] + (size,) + metas[0].shape[dim + 1 :]
    return TensorMeta.contiguous(shape, promoted(metas))


def _cat_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    out = _cat_meta(
        [TensorMeta.contiguous(a.shape, _dtype(a)) for a in arrays], attrs
    ).dtype.np_dtype
    return np.concatenate(
        [a.astype(out, copy=False) for a in arrays], axis=attrs["dim"]
    )


def _dtype(a: np.ndarray):
    from ember.ir.dtypes import from_numpy_dtype

    return from_numpy_dtype(a.dtype)


def _stack_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    if not metas:
        raise ShapeError("stack: expected a non-empty list of tensors", op="stack")
    _check_same_shapes(metas, None, "stack")
    dim = normalize_dim(attrs["dim"], metas[0].ndim + 1, "stack")
    shape = metas[0].shape[:dim] + (len(metas),) + metas[0].shape[dim:]
    return TensorMeta.contiguous(shape, promoted(metas))


def _stack_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    out = promoted([TensorMeta.contiguous(a.shape, _dtype(a)) for a in arrays]).np_dtype
    return np.stack([a.astype(out, copy=False) for a in arrays], axis=attrs["dim"])


def _scatter_slice_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    (src,) = metas
    shape = tuple(attrs["shape"])
    dim, start, step = attrs["dim"], attrs["start"], attrs["step"]
    if not 0 <= dim < len(shape) or step <= 0 or start < 0:
        raise ShapeError(
            f"scatter_slice: bad slice attributes {attrs}", op="scatter_slice"
        )
    fits = src.ndim == len(shape) and all(
        src.shape[d] == shape[d] for d in range(len(shape)) if d != dim
    )
    if fits and src.shape[dim]:
        fits = start + (src.shape[dim] - 1) * step < shape[dim]
    if not fits:
        raise ShapeError(
            f"scatter_slice: source shape {src.shape} does not fit slice "
            f"{start}::{step} of dim {dim} in {shape}",
            op="scatter_slice",
            expected=f"{len(shape)} dims matching {shape} outside dim {dim}",
            actual=src.shape,
        )
    if src.dtype.category == 0:
        raise DTypeError(
            "scatter_slice: bool sources are not supported", op="scatter_slice"
        )
    return TensorMeta.contiguous(shape, src.dtype)


def _scatter_slice_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    (src,) = arrays
    out = np.zeros(attrs["shape"], dtype=src.dtype)
    index = [slice(None)] * out.ndim
    dim, start, step = attrs["dim"], attrs["start"], attrs["step"]
    index[dim] = slice(start, start + step * src.shape[dim], step)
    out[tuple(index)] = src
    return out


register(
    OpDef(
        "cat",
        OpKind.GATHER,
        _cat_meta,
        _cat_reference,
        doc="concatenate along an existing dim",
    )
)
register(
    OpDef(
        "stack",
        OpKind.COMPOSITE,
        _stack_meta,
        _stack_reference,
        doc="join along a new dim (unsqueeze each, then cat)",
    )
)
register(
    OpDef(
        "scatter_slice",
        OpKind.GATHER,
        _scatter_slice_meta,
        _scatter_slice_reference,
        num_inputs=1,
        doc="zeros of attrs['shape'] with the source at start::step along dim",
    )
)
