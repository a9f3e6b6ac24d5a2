"""View ops: new shape, strides and offset over the same storage, never a copy.

Each meta rule computes the exact layout of the view (``docs/layout.md``); eager
execution builds the view from that meta alone, and the numpy reference exists so
tests can check the meta against numpy's own view semantics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.errors import IndexingError, ShapeError, StrideError
from ember.ir.layout import (
    check_slice_step,
    expand_strides,
    normalize_dim,
    normalize_dims,
    numel,
    view_strides,
)
from ember.ir.meta import TensorMeta
from ember.ir.registry import Attrs, OpDef, OpKind, register


def _view_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    (x,) = metas
    shape = tuple(attrs["shape"])
    if numel(shape) != x.numel:
        raise ShapeError(
            f"view{shape}: shape is invalid for {x.type_str()} with {x.numel} elements",
            op="view",
            expected=f"{x.numel} elements",
            actual=numel(shape),
        )
    strides = view_strides(x.shape, x.strides, shape)
    if strides is None:
        raise StrideError(
            f"view{shape} on {x.type_str()} with strides {x.strides}: "
            f"{_view_conflict(x, shape)}",
            op="view",
            expected="dimensions to merge or split that are contiguous with each other",
            actual=f"strides {x.strides}",
            hint="call .reshape() (copies when needed) or .contiguous() first",
        )
    return TensorMeta(shape, x.dtype, strides, x.offset)


def _view_conflict(x: TensorMeta, shape: tuple[int, ...]) -> str:
    """Name the first new dimension whose elements no single stride can step through.

    In row-major order, dim ``d`` of a shape steps over blocks of ``prod(shape[d+1:])``
    elements. A new dim can be a view only if the old dims whose blocks it overlaps
    are contiguous with each other (docs/layout.md, rule L3).
    """
    old = [i for i, size in enumerate(x.shape) if size > 1]

    def block(dims: Sequence[int], d: int) -> tuple[int, int]:
        inner = numel(dims[d + 1 :])
        return inner, inner * dims[d]

    for d, size in enumerate(shape):
        if size <= 1:
            continue
        low, high = block(shape, d)
        spanned = [
            i for i in old if block(x.shape, i)[0] < high and low < block(x.shape, i)[1]
        ]
        pairs = zip(spanned, spanned[1:])
        if any(x.strides[a] != x.strides[b] * x.shape[b] for a, b in pairs):
            names = ", ".join(map(str, spanned))
            strides = ", ".join(str(x.strides[i]) for i in spanned)
            return (
                f"dimension {d} of the new shape (size {size}) spans dimensions "
                f"{names} (strides {strides}), which are not contiguous with each other"
            )
    return "the existing strides cannot express the new shape"


def _permute_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    (x,) = metas
    dims = tuple(attrs["dims"])
    if len(dims) != x.ndim:
        raise IndexingError(
            f"permute{dims}: expected {x.ndim} dims for a tensor of shape {x.shape}",
            op="permute",
            expected=x.ndim,
            actual=len(dims),
        )
    dims = normalize_dims(dims, x.ndim, "permute")
    return TensorMeta(
        tuple(x.shape[d] for d in dims),
        x.dtype,
        tuple(x.strides[d] for d in dims),
        x.offset,
    )


def _expand_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    (x,) = metas
    requested = tuple(attrs["shape"])
    lead = len(requested) - x.ndim
    shape = tuple(
        x.shape[i - lead] if size == -1 and i >= lead else size
        for i, size in enumerate(requested)
    )
    if any(s < 0 for s in shape):
        raise ShapeError(
            f"expand{requested}: -1 is only allowed for existing dimensions",
            op="expand",
            actual=requested,
        )
    strides = expand_strides(x.shape, x.strides, shape, "expand")
    return TensorMeta(shape, x.dtype, strides, x.offset)


def _slice_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    (x,) = metas
    if x.ndim == 0:
        raise IndexingError("slice: cannot slice a 0-d tensor", op="slice")
    dim = normalize_dim(attrs["dim"], x.ndim, "slice", shape=x.shape)
    start, stop, step = attrs["start"], attrs["stop"], attrs["step"]
    size = x.shape[dim]
    check_slice_step(step, "slice")
    if not 0 <= start <= stop <= size:
        raise IndexingError(
            f"slice: range [{start}:{stop}] is outside dimension {dim} of size {size}",
            op="slice",
            expected=f"0 <= start <= stop <= {size}",
            actual=(start, stop),
        )
    length = max(0, (stop - start + step - 1) // step)
    shape = x.shape[:dim] + (length,) + x.shape[dim + 1 :]
    strides = x.strides[:dim] + (x.strides[dim] * step,) + x.strides[dim + 1 :]
    offset = x.offset + (start * x.strides[dim] if length else 0)
    return TensorMeta(shape, x.dtype, strides, offset)


def _select_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    (x,) = metas
    if x.ndim == 0:
        raise IndexingError(
            "select: cannot index a 0-d tensor",
            op="select",
            hint="use .item() to read its value",
        )
    dim = normalize_dim(attrs["dim"], x.ndim, "select")
    index, size = attrs["index"], x.shape[dim]
    if not -size <= index < size:
        raise IndexingError(
            f"select: index {index} is out of range for dimension {dim} (size {size}) "
            f"of a tensor of shape {x.shape}",
            op="select",
            expected=f"an index in [{-size}, {size - 1}]",
            actual=index,
        )
    index %= size
    return TensorMeta(
        x.shape[:dim] + x.shape[dim + 1 :],
        x.dtype,
        x.strides[:dim] + x.strides[dim + 1 :],
        x.offset + index * x.strides[dim],
    )


def _unsqueeze_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    (x,) = metas
    dim = normalize_dim(attrs["dim"], x.ndim + 1, "unsqueeze")
    inner = x.strides[dim] * x.shape[dim] if dim < x.ndim else 1
    return TensorMeta(
        x.shape[:dim] + (1,) + x.shape[dim:],
        x.dtype,
        x.strides[:dim] + (inner,) + x.strides[dim:],
        x.offset,
    )


def _squeeze_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    (x,) = metas
    dims = normalize_dims(attrs.get("dims"), x.ndim, "squeeze")
    keep = [i for i in range(x.ndim) if not (i in dims and x.shape[i] == 1)]
    return TensorMeta(
        tuple(x.shape[i] for i in keep),
        x.dtype,
        tuple(x.strides[i] for i in keep),
        x.offset,
    )


def _ref_view(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    return arrays[0].reshape(attrs["shape"])


def _ref_permute(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    return arrays[0].transpose(attrs["dims"])


def _ref_expand(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x = arrays[0]
    lead = len(attrs["shape"]) - x.ndim
    shape = [x.shape[i - lead] if s == -1 else s for i, s in enumerate(attrs["shape"])]
    return np.broadcast_to(x, shape)


def _ref_slice(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    index = [slice(None)] * arrays[0].ndim
    index[attrs["dim"]] = slice(attrs["start"], attrs["stop"], attrs["step"])
    return arrays[0][tuple(index)]


def _ref_select(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    # Basic indexing, not np.take: the result must be a view, and the trailing
    # ellipsis keeps a 0-d result a view too (a full integer index gives a scalar).
    index = (slice(None),) * attrs["dim"] + (attrs["index"], Ellipsis)
    return arrays[0][index]


def _ref_unsqueeze(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x = arrays[0]
    return np.expand_dims(x, normalize_dim(attrs["dim"], x.ndim + 1, "unsqueeze"))


def _ref_squeeze(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    x = arrays[0]
    dims = normalize_dims(attrs.get("dims"), x.ndim, "squeeze")
    return np.squeeze(x, axis=tuple(d for d in dims if x.shape[d] == 1))


for _name, _meta, _ref, _doc in [
    ("view", _view_meta, _ref_view, "same elements in a new shape, no copy"),
    ("permute", _permute_meta, _ref_permute, "reorder dimensions"),
    ("expand", _expand_meta, _ref_expand, "broadcast size-1 dims with stride 0"),
    ("slice", _slice_meta, _ref_slice, "start:stop:step along one dim"),
    ("select", _select_meta, _ref_select, "one index along a dim, dropping it"),
    ("unsqueeze", _unsqueeze_meta, _ref_unsqueeze, "insert a size-1 dim"),
    ("squeeze", _squeeze_meta, _ref_squeeze, "drop size-1 dims"),
]:
    register(OpDef(_name, OpKind.VIEW, _meta, _ref, num_inputs=1, doc=_doc))
