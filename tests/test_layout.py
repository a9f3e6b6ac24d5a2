"""The layout rules of ``ember.ir.layout`` (docs/layout.md, rules L1-L8).

Each rule is checked against an oracle that does not share its code: numpy's own
strides, broadcasting and reshaping, or a brute-force enumeration of the storage
offset of every element (``tensor_strategies.element_offsets``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tensor_strategies import (
    Pair,
    brute_overlaps,
    brute_view_strides,
    element_offsets,
    numpy_strides,
    reshapes_of,
    shapes,
    significant,
    strided_pairs,
)

from ember.errors import IndexingError, LayoutError, ShapeError
from ember.ir import layout

# L1: strides are non-negative element counts ------------------------------------------


@given(strided_pairs())
def test_L1_every_view_has_non_negative_strides(pair: Pair) -> None:
    assert all(s >= 0 for s in pair.tensor.strides)
    assert pair.tensor.storage_offset() >= 0


@pytest.mark.parametrize("step", [-1, -2, -7])
def test_L1_negative_slice_steps_are_layout_errors(step: int) -> None:
    with pytest.raises(
        LayoutError,
        match=rf"slice: step {step} would need a negative "
        "stride",
    ):
        layout.check_slice_step(step, "slice")


def test_L1_a_zero_step_is_an_index_error() -> None:
    with pytest.raises(IndexingError, match="slice: step cannot be zero"):
        layout.check_slice_step(0, "slice")


# L2: storage bounds -------------------------------------------------------------------


@given(shapes(), st.data())
def test_L2_span_and_bounds_match_enumerated_offsets(
    shape: tuple[int, ...], data: st.DataObject
) -> None:
    strides = data.draw(
        st.lists(st.integers(0, 30), min_size=len(shape), max_size=len(shape))
    )
    offset = data.draw(st.integers(0, 10))
    offsets = element_offsets(shape, strides, offset)
    start, stop = layout.span(shape, strides, offset)
    if offsets.size == 0:
        assert start == stop
    else:
        assert (start, stop) == (offsets.min(), offsets.max() + 1)
    size = data.draw(st.integers(0, 200))
    inside = offsets.size == 0 or offsets.max() < size
    assert layout.within_bounds(shape, strides, offset, size) == inside


def test_L2_negative_strides_or_offsets_are_never_within_bounds() -> None:
    assert not layout.within_bounds((2,), (-1,), 1, 10)
    assert not layout.within_bounds((2,), (1,), -1, 10)


@given(strided_pairs())
def test_L2_every_view_stays_inside_its_storage(pair: Pair) -> None:
    t = pair.tensor
    assert layout.within_bounds(
        t.shape, t.strides, t.storage_offset(), pair.base_tensor.numel()
    )


# L3: views exist exactly when strides can express the new shape -----------------------


@given(st.data(), strided_pairs())
def test_L3_view_strides_match_the_brute_force_search(
    data: st.DataObject, pair: Pair
) -> None:
    t = pair.tensor
    new_shape = data.draw(reshapes_of(t.shape))
    found = layout.view_strides(t.shape, t.strides, new_shape)
    expected = brute_view_strides(t.shape, t.strides, new_shape)
    assert (found is None) == (expected is None)
    if found is not None:
        assert len(found) == len(new_shape)
        if math.prod(new_shape):
            assert significant(new_shape, found) == expected
            rebuilt = element_offsets(new_shape, found)
            assert np.array_equal(rebuilt, element_offsets(t.shape, t.strides))


@given(shapes(), st.data())
def test_L3_dense_layouts_view_as_any_shape(
    shape: tuple[int, ...], data: st.DataObject
) -> None:
    new_shape = data.draw(reshapes_of(shape))
    strides = layout.view_strides(shape, layout.contiguous_strides(shape), new_shape)
    assert strides is not None
    assert layout.is_contiguous(new_shape, strides)


def test_L3_view_strides_refuses_a_different_element_count() -> None:
    assert layout.view_strides((2, 3), (3, 1), (7,)) is None


# L4: overlap --------------------------------------------------------------------------


@given(strided_pairs())
def test_L4_overlap_is_exact_for_view_layouts(pair: Pair) -> None:
    t = pair.tensor
    assert layout.has_internal_overlap(t.shape, t.strides) == brute_overlaps(
        t.shape, t.strides
    )


@given(shapes(max_dims=3), st.data())
def test_L4_overlap_is_never_missed_for_any_strides(
    shape: tuple[int, ...], data: st.DataObject
) -> None:
    strides = data.draw(
        st.lists(st.integers(0, 12), min_size=len(shape), max_size=len(shape))
    )
    if brute_overlaps(shape, strides):
        assert layout.has_internal_overlap(shape, strides)


def test_L4_zero_size_layouts_never_overlap() -> None:
    assert not layout.has_internal_overlap((0, 3), (0, 0))


def test_L4_interleaved_layouts_are_refused_conservatively() -> None:
    # Sizes (3, 2) with strides (2, 3) address 0, 3, 2, 5, 4, 7: no overlap, but only
    # from_numpy can build it, and the check errs on the safe side (documented).
    assert not brute_overlaps((3, 2), (2, 3))
    assert layout.has_internal_overlap((3, 2), (2, 3))


# L5: contiguity -----------------------------------------------------------------------


@given(shapes(min_side=1))
def test_L5_contiguous_strides_match_numpy(shape: tuple[int, ...]) -> None:
    assert layout.contiguous_strides(shape) == numpy_strides(np.empty(shape, np.int8))


@pytest.mark.parametrize(
    ("shape", "strides"),
    [((2, 0, 3), (3, 3, 1)), ((0,), (1,)), ((0, 4), (4, 1)), ((3, 0), (1, 1))],
)
def test_L5_zero_size_dims_count_as_one_in_contiguous_strides(
    shape: tuple[int, ...], strides: tuple[int, ...]
) -> None:
    assert layout.contiguous_strides(shape) == strides


@given(strided_pairs())
def test_L5_is_contiguous_agrees_with_numpy_flags(pair: Pair) -> None:
    t = pair.tensor
    assert layout.is_contiguous(t.shape, t.strides) == pair.array.flags.c_contiguous


@given(shapes(), st.data())
def test_L5_contiguous_means_offsets_count_up_by_one(
    shape: tuple[int, ...], data: st.DataObject
) -> None:
    strides = data.draw(
        st.lists(st.integers(0, 6), min_size=len(shape), max_size=len(shape))
    )
    offsets = element_offsets(shape, strides)
    dense = np.array_equal(offsets, np.arange(offsets.size))
    assert layout.is_contiguous(shape, strides) == dense


# L6: broadcasting ---------------------------------------------------------------------


@given(st.lists(shapes(max_side=3), min_size=1, max_size=3))
def test_L6_broadcast_shapes_matches_numpy(shape_list: list[tuple[int, ...]]) -> None:
    try:
        expected = np.broadcast_shapes(*shape_list)
    except ValueError:
        with pytest.raises(ShapeError, match="add: shapes .* cannot be broadcast"):
            layout.broadcast_shapes(*shape_list, op="add")
        return
    assert layout.broadcast_shapes(*shape_list, op="add") == expected


@given(strided_pairs(), st.data())
def test_L6_expand_strides_match_numpy_broadcast_to(
    pair: Pair, data: st.DataObject
) -> None:
    t = pair.tensor
    target = tuple(data.draw(st.lists(st.integers(0, 3), max_size=2))) + tuple(
        data.draw(st.integers(0, 3)) if s == 1 else s for s in t.shape
    )
    strides = layout.expand_strides(t.shape, t.strides, target, "expand")
    expected = np.broadcast_to(pair.array, target)
    if expected.size:
        assert significant(target, strides) == significant(
            target, numpy_strides(expected)
        )


def test_L6_broadcast_error_names_the_op_the_shapes_and_the_dim() -> None:
    with pytest.raises(
        ShapeError,
        match=r"mul: shapes \(2, 3\) and \(4,\) cannot be "
        r"broadcast \(dimension -1 has sizes 3 and 4\)",
    ):
        layout.broadcast_shapes((2, 3), (4,), op="mul")


# L7: dims and shapes requested by users -----------------------------------------------


@given(st.integers(0, 5), st.data())
def test_L7_normalize_dim_wraps_negative_dims(ndim: int, data: st.DataObject) -> None:
    bound = max(ndim, 1)
    dim = data.draw(st.integers(-bound - 3, bound + 3))
    if -bound <= dim < bound:
        assert layout.normalize_dim(dim, ndim, "sum") == dim % bound
        assert layout.normalize_dim(np.int64(dim), ndim, "sum") == dim % bound
    else:
        with pytest.raises(
            IndexingError, match=rf"sum: dimension {dim} is out of range"
        ):
            layout.normalize_dim(dim, ndim, "sum")


def test_L7_dims_must_be_ints_and_distinct() -> None:
    with pytest.raises(IndexingError, match="sum: dim must be an int, got float"):
        layout.normalize_dim(1.0, 2, "sum")  # type: ignore[arg-type]
    with pytest.raises(IndexingError, match="sum: dim must be an int, got bool"):
        layout.normalize_dim(True, 2, "sum")
    with pytest.raises(
        IndexingError,
        match=r"dimension list \(0, -2\) names a "
        "dimension twice",
    ):
        layout.normalize_dims((0, -2), 2, "sum")
    with pytest.raises(IndexingError, match=r"of shape \(2, 3\)"):
        layout.normalize_dims(5, 2, "amax", shape=(2, 3))
    assert layout.normalize_dims(None, 3, "sum") == (0, 1, 2)


@given(shapes(), st.data())
def test_L7_infer_shape_matches_numpy_reshape(
    shape: tuple[int, ...], data: st.DataObject
) -> None:
    count = math.prod(shape)
    new_shape = list(data.draw(reshapes_of(shape)))
    if new_shape and data.draw(st.booleans()):
        new_shape[data.draw(st.integers(0, len(new_shape) - 1))] = -1
    try:
        expected = np.empty(shape, np.int8).reshape(new_shape).shape
    except ValueError:
        with pytest.raises(
            ShapeError,
            match=r"reshape: shape .* is invalid for a tensor "
            rf"of {count} elements",
        ):
            layout.infer_shape(new_shape, count, "reshape")
        return
    assert layout.infer_shape(new_shape, count, "reshape") == expected


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((-1, -1), r"only one dimension can be -1"),
        ((2, -3), r"invalid size -3"),
        ((2.0, 3), r"invalid size 2.0"),
        ((4, 4), r"shape \(4, 4\) is invalid for a tensor of 6 elements"),
    ],
)
def test_L7_infer_shape_rejects_bad_shapes(shape: tuple, message: str) -> None:
    with pytest.raises(ShapeError, match=message):
        layout.infer_shape(shape, 6, "view")


def test_numel_of_a_0d_shape_is_one() -> None:
    assert layout.numel(()) == 1
    assert layout.numel((3, 0, 2)) == 0
