"""Hypothesis strategies and brute-force layout oracles for ember's foundation tests.

Two kinds of helpers live here:

- strategies that build the same strided tensor twice, as a numpy view of a numpy
  base and as an ember view of an ember copy of that base, through a random chain of
  permutes, stepped slices, selects and expands (:func:`strided_pairs`);
- oracles that decide layout questions by enumerating every element's storage
  offset (:func:`element_offsets`), independent of ``ember.ir.layout``.

numpy is the reference for values, shapes, strides and aliasing throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import strategies as st

import ember
from ember.ir import dtypes

DTYPES = dtypes.ALL_DTYPES
FLOAT_DTYPES = (dtypes.float32, dtypes.float64)
NUMERIC_DTYPES = (dtypes.float32, dtypes.float64, dtypes.int32, dtypes.int64)


# Values -------------------------------------------------------------------------------


def elements(dtype: dtypes.DType) -> st.SearchStrategy[Any]:
    """Element values that keep every op finite and exact enough to compare."""
    if dtype is dtypes.bool_:
        return st.booleans()
    if dtype.is_floating_point:
        width = 32 if dtype is dtypes.float32 else 64
        return st.floats(-8, 8, width=width, allow_subnormal=False)
    return st.integers(-20, 20)


def values(dtype: dtypes.DType, shape: Sequence[int], seed: int) -> np.ndarray:
    """A dense array of small values: eighths in [-8, 8] for floats (exact in every
    float dtype, so sums and products compare exactly), ints in [-20, 20], and
    bools; zeros and repeats are common, so ties and signs get exercised."""
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    if dtype is dtypes.bool_:
        drawn = rng.random(shape) < 0.5
    elif dtype.is_floating_point:
        drawn = rng.integers(-64, 65, shape) / 8
    else:
        drawn = rng.integers(-20, 21, shape)
    # np.array, not astype: for a 0-d shape numpy hands back scalars, not arrays.
    return np.array(drawn, dtype=dtype.np_dtype)


def arrays(dtype: dtypes.DType, shape: Sequence[int]) -> st.SearchStrategy[np.ndarray]:
    """A dense numpy array of ``dtype`` and ``shape`` (values from a drawn seed:
    much faster to generate than element by element, and still reproducible)."""
    return st.integers(0, 2**32 - 1).map(lambda seed: values(dtype, shape, seed))


def shapes(
    min_dims: int = 0, max_dims: int = 4, min_side: int = 0, max_side: int = 4
) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes, including zero-size and 0-d ones unless excluded."""
    return hnp.array_shapes(
        min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side
    )


# Strided pairs ------------------------------------------------------------------------


@dataclass
class Pair:
    """The same tensor as a numpy view and an ember view, with both bases."""

    array: np.ndarray
    tensor: ember.Tensor
    base_array: np.ndarray
    base_tensor: ember.Tensor
    steps: list[str]

    def __repr__(self) -> str:
        return (
            f"Pair(shape={self.array.shape}, strides={self.tensor.strides}, "
            f"steps={self.steps})"
        )


def writable_alias(
    view: np.ndarray, base: np.ndarray, target: np.ndarray
) -> np.ndarray:
    """The layout of ``view`` (a view of ``base``) over ``target``'s memory, writable.

    ``target`` is a dense array shaped like ``base`` (typically a copy of it), so that
    numpy can act as the oracle for writes, even through views that
    ``np.broadcast_to`` made read-only.
    """
    if view.size == 0:
        return np.empty(view.shape, view.dtype)
    offset = pointer_offset(view, base)
    return np.lib.stride_tricks.as_strided(
        target.reshape(-1)[offset:], shape=view.shape, strides=view.strides
    )


def np_index(array: np.ndarray, index: tuple[Any, ...]) -> np.ndarray:
    """``array[index]`` as a view even when every dim is taken by an int.

    numpy returns a scalar copy for a full integer index; a trailing ``...`` keeps a
    0-d view instead, which is what ember returns.
    """
    if any(item is Ellipsis for item in index):
        return array[index]
    return array[index + (Ellipsis,)]


@st.composite
def _step(
    draw: st.DrawFn, a: np.ndarray, t: ember.Tensor, allow_expand: bool, low: int
) -> Any:
    choices = ["permute", "unsqueeze"]
    if a.ndim:
        choices += ["slice", "select"]
    if allow_expand:
        choices.append("expand")
    kind = draw(st.sampled_from(choices))
    if kind == "permute":
        order = draw(st.permutations(range(a.ndim)))
        return f"permute{tuple(order)}", a.transpose(order), t.permute(*order)
    if kind == "unsqueeze":
        dim = draw(st.integers(0, a.ndim))
        return f"unsqueeze({dim})", np.expand_dims(a, dim), t.unsqueeze(dim)
    dim = draw(st.integers(0, a.ndim - 1)) if a.ndim else 0
    size = a.shape[dim] if a.ndim else 0
    if kind == "slice":
        start = draw(st.integers(0, size - low))
        stop = draw(st.integers(start + low, size))
        step = draw(st.integers(1, 3))
        index = (slice(None),) * dim + (slice(start, stop, step),)
        return f"[{'..., ' * bool(dim)}{start}:{stop}:{step}]", a[index], t[index]
    if kind == "select":
        if size == 0:
            return "noop", a, t
        i = draw(st.integers(-size, size - 1))
        view = np_index(a, (slice(None),) * dim + (i,))
        return f"select({dim}, {i})", view, t.select(dim, i)
    target = tuple(draw(st.integers(low, 3)) if s == 1 else s for s in a.shape)
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
    target = lead + target
    return f"expand{target}", np.broadcast_to(a, target), t.expand(*target)


@st.composite
def strided_pairs(
    draw: st.DrawFn,
    dtype: dtypes.DType | None = None,
    max_steps: int = 3,
    allow_expand: bool = True,
    max_dims: int = 4,
    nonempty: bool = False,
) -> Pair:
    """A random strided view built the same way in numpy and ember.

    The base is dense; zero to ``max_steps`` view steps follow (permutes, stepped
    slices, selects, unsqueezes and, when allowed, expands), so the result may be
    permuted, strided, offset, zero-size (unless ``nonempty``), 0-d or overlapping.
    """
    low = 1 if nonempty else 0
    dtype = dtype or draw(st.sampled_from(DTYPES))
    shape = draw(shapes(max_dims=max_dims, min_side=low, max_side=5))
    base = draw(arrays(dtype, shape))
    base_tensor = ember.tensor(base.copy())
    a, t, steps = base, base_tensor, []
    for _ in range(draw(st.integers(0, max_steps))):
        if a.ndim >= max_dims + 1:
            break
        label, a, t = draw(_step(a, t, allow_expand, low))
        steps.append(label)
    return Pair(a, t, base, base_tensor, steps)


# Type promotion oracle ----------------------------------------------------------------

# torch.promote_types over the dtypes ember has, as PyTorch documents it: a higher
# category (bool < integer < floating) wins, then the wider type.
_PROMOTION_TABLE = """
         bool     int32    int64    float32  float64
bool     bool     int32    int64    float32  float64
int32    int32    int32    int64    float32  float64
int64    int64    int64    int64    float32  float64
float32  float32  float32  float32  float32  float64
float64  float64  float64  float64  float64  float64
"""


def _parse_table(text: str) -> dict[tuple[str, str], str]:
    rows = [line.split() for line in text.strip().splitlines()]
    header = rows[0]
    return {
        (row[0], col): cell for row in rows[1:] for col, cell in zip(header, row[1:])
    }


PROMOTE = _parse_table(_PROMOTION_TABLE)
_CATEGORY = {"bool": 0, "int32": 1, "int64": 1, "float32": 2, "float64": 2}
_SCALAR_DEFAULT = {0: "bool", 1: "int64", 2: "float32"}


def _scalar_category(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    return 1 if isinstance(value, int) else 2


def expected_result_dtype(operands: Sequence[tuple[str, Any]]) -> dtypes.DType:
    """PyTorch's result type for ``(kind, dtype-or-number)`` operands.

    ``kind`` is ``"tensor"`` (at least one dimension), ``"zero_dim"`` or ``"scalar"``
    (a Python number). Dimensioned tensors decide; 0-d tensors only when they are of
    a higher category, and then among themselves; Python numbers only when they are
    of a higher category still, and then with the default dtype of their category.
    """

    def fold(names: list[str]) -> str | None:
        result = None
        for name in names:
            result = name if result is None else PROMOTE[result, name]
        return result

    result = fold([d.name for kind, d in operands if kind == "tensor"])
    zero = fold([d.name for kind, d in operands if kind == "zero_dim"])
    if result is None or (zero is not None and _CATEGORY[zero] > _CATEGORY[result]):
        result = zero if zero is not None else result
    scalars = [_scalar_category(v) for kind, v in operands if kind == "scalar"]
    if scalars and (result is None or max(scalars) > _CATEGORY[result]):
        result = _SCALAR_DEFAULT[max(scalars)]
    assert result is not None
    return dtypes.by_name(result)


# Layout oracles -----------------------------------------------------------------------


def element_offsets(
    shape: Sequence[int], strides: Sequence[int], offset: int = 0
) -> np.ndarray:
    """The storage offset of every element, in row-major order of ``shape``."""
    if math.prod(shape) == 0:
        return np.zeros(0, dtype=np.int64)
    if not shape:
        return np.array([offset], dtype=np.int64)
    index = np.indices(shape).reshape(len(shape), -1)
    return offset + (np.asarray(strides, dtype=np.int64)[:, None] * index).sum(axis=0)


def numpy_strides(array: np.ndarray) -> tuple[int, ...]:
    """numpy's byte strides in elements."""
    return tuple(s // array.itemsize for s in array.strides)


def significant(shape: Sequence[int], strides: Sequence[int]) -> tuple[Any, ...]:
    """Strides of the dims with more than one element; the others never matter."""
    return tuple(st if size > 1 else None for size, st in zip(shape, strides))


def brute_view_strides(
    shape: Sequence[int], strides: Sequence[int], new_shape: Sequence[int]
) -> tuple[Any, ...] | None:
    """The strides (None for dims of size 1) that show the elements of a layout in
    ``new_shape`` without a copy, or None when no strides can.

    A view exists exactly when the storage offsets, read in row-major order, are an
    affine function of the new multi-index; that is checked element by element.
    """
    offsets = element_offsets(shape, strides)
    if offsets.size == 0:
        return tuple(None for _ in new_shape)
    result: list[Any] = []
    for d, size in enumerate(new_shape):
        if size > 1:
            unit = math.prod(new_shape[d + 1 :])
            result.append(int(offsets[unit] - offsets[0]))
        else:
            result.append(None)
    rebuilt = element_offsets(new_shape, [s or 0 for s in result], int(offsets[0]))
    return tuple(result) if np.array_equal(rebuilt, offsets) else None


def brute_overlaps(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Do two different indices address one storage element?"""
    offsets = element_offsets(shape, strides)
    return len(np.unique(offsets)) != len(offsets)


@st.composite
def reshapes_of(draw: st.DrawFn, shape: Sequence[int]) -> tuple[int, ...]:
    """A random shape with the same number of elements as ``shape``."""
    count = math.prod(shape)
    ndim = draw(st.integers(0 if count == 1 else 1, 4))
    if count == 0:
        sizes = draw(st.lists(st.integers(0, 3), min_size=ndim, max_size=ndim))
        if 0 not in sizes:
            sizes[draw(st.integers(0, ndim - 1))] = 0
        return tuple(sizes)
    sizes = [1] * ndim
    for prime in _prime_factors(count):
        sizes[draw(st.integers(0, ndim - 1))] *= prime
    return tuple(sizes)


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors + ([n] if n > 1 else [])


def assert_same_view(t: ember.Tensor, a: np.ndarray) -> None:
    """``t`` holds ``a``'s values with the same shape, dtype and layout."""
    assert t.shape == a.shape
    assert t.dtype.np_dtype == a.dtype
    np.testing.assert_array_equal(t.numpy(), a)
    if a.size:
        assert significant(t.shape, t.strides) == significant(a.shape, numpy_strides(a))


def pointer_offset(view: np.ndarray, base: np.ndarray) -> int:
    """How many elements ``view`` starts after ``base`` in memory."""
    delta = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return delta // base.itemsize
