"""View ops against numpy: same values, same layout, shared storage.

Every property runs on inputs that are already strided: random chains of permutes,
stepped slices, selects, unsqueezes and expands (``tensor_strategies.strided_pairs``).
A view must alias its base (writes show through), and its strides must be the ones
numpy computes for the same view; ``view`` must fail exactly when a brute-force
search over storage offsets finds no strides for the new shape.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from tensor_strategies import (
    Pair,
    assert_same_view,
    brute_overlaps,
    brute_view_strides,
    np_index,
    numpy_strides,
    pointer_offset,
    reshapes_of,
    significant,
    strided_pairs,
    writable_alias,
)

import ember
from ember.errors import IndexingError, LayoutError, ShapeError, StrideError


def assert_aliases(view: ember.Tensor, pair: Pair, array_view: np.ndarray) -> None:
    """``view`` shares storage with the pair's base, starting where numpy's does."""
    assert view.untyped_storage_id() == pair.base_tensor.untyped_storage_id()
    if view.numel():
        expected = pointer_offset(array_view, pair.base_array)
        start = view.data_ptr() - pair.base_tensor.data_ptr()
        assert start == expected * view.dtype.itemsize


# The strategy itself: strided inputs match numpy exactly ------------------------------


@given(strided_pairs())
def test_strided_inputs_match_numpy_strides_and_offsets(pair: Pair) -> None:
    assert_same_view(pair.tensor, pair.array)
    # numpy gives a new axis (and a size-1 dim "expanded" to size 1) stride 0; ember
    # keeps the stride a dense tensor would have there, as PyTorch does. Both are
    # valid: the dim has one element. Otherwise the strides must match exactly.
    if pair.tensor.numel() and not any(
        s.startswith(("unsqueeze", "expand")) for s in pair.steps
    ):
        assert pair.tensor.strides == numpy_strides(pair.array)
    assert_aliases(pair.tensor, pair, pair.array)


# view and reshape ---------------------------------------------------------------------


@given(st.data(), strided_pairs())
def test_view_succeeds_exactly_when_strides_exist(
    data: st.DataObject, pair: Pair
) -> None:
    t = pair.tensor
    new_shape = data.draw(reshapes_of(t.shape))
    expected = brute_view_strides(t.shape, t.strides, new_shape)
    reference = pair.array.reshape(new_shape)
    if expected is None:
        pattern = (
            r"(?s)view\(.*: dimension \d+ of the new shape \(size \d+\) spans "
            r"dimensions .* not contiguous .*\.reshape\(\).*contiguous"
        )
        with pytest.raises(StrideError, match=pattern):
            t.view(new_shape)
        return
    v = t.view(new_shape)
    assert_same_view(v, reference)
    if v.numel():
        assert significant(v.shape, v.strides) == expected
    assert_aliases(v, pair, pair.array)
    assert v.storage_offset() == t.storage_offset() or v.numel() == 0


@given(st.data(), strided_pairs())
def test_reshape_is_a_view_when_possible_and_a_copy_otherwise(
    data: st.DataObject, pair: Pair
) -> None:
    t = pair.tensor
    new_shape = data.draw(reshapes_of(t.shape))
    r = t.reshape(new_shape)
    np.testing.assert_array_equal(r.numpy(), pair.array.reshape(new_shape))
    shares = r.untyped_storage_id() == t.untyped_storage_id()
    assert shares == (brute_view_strides(t.shape, t.strides, new_shape) is not None)
    if not shares:
        assert r.is_contiguous() and r.storage_offset() == 0


@given(st.data(), strided_pairs(max_steps=2))
def test_view_infers_one_minus_one(data: st.DataObject, pair: Pair) -> None:
    t = pair.tensor.contiguous()
    new_shape = list(data.draw(reshapes_of(t.shape)))
    assume(new_shape and 0 not in new_shape)
    i = data.draw(st.integers(0, len(new_shape) - 1))
    new_shape[i] = -1
    np.testing.assert_array_equal(
        t.view(*new_shape).numpy(), pair.array.reshape(new_shape)
    )


def test_view_error_names_the_shapes_strides_and_remedies() -> None:
    x = ember.zeros(4, 6).T
    with pytest.raises(StrideError) as info:
        x.view(24)
    text = str(info.value)
    assert (
        "view(24,) on f32[6, 4] with strides (1, 6): dimension 0 of the new shape "
        "(size 24) spans dimensions 0, 1 (strides 1, 6), which are not contiguous"
    ) in text
    assert ".reshape()" in text and ".contiguous()" in text
    assert info.value.code == "E-STRIDE"
    assert isinstance(info.value, LayoutError)


def test_view_with_the_wrong_element_count_is_a_shape_error() -> None:
    with pytest.raises(
        ShapeError,
        match=r"view: shape \(4, 4\) is invalid for a tensor "
        r"of 6 elements",
    ):
        ember.zeros(2, 3).view(4, 4)


# permute, transpose, .T, .mT ----------------------------------------------------------


@given(st.data(), strided_pairs())
def test_permute_matches_numpy_transpose(data: st.DataObject, pair: Pair) -> None:
    order = data.draw(st.permutations(range(pair.array.ndim)))
    negative = [d - pair.array.ndim if data.draw(st.booleans()) else d for d in order]
    v = pair.tensor.permute(*negative)
    expected = pair.array.transpose(order)
    assert_same_view(v, expected)
    assert_aliases(v, pair, expected)


@given(st.data(), strided_pairs())
def test_transpose_swaps_two_dims(data: st.DataObject, pair: Pair) -> None:
    ndim = pair.array.ndim
    assume(ndim >= 1)
    d0 = data.draw(st.integers(-ndim, ndim - 1))
    d1 = data.draw(st.integers(-ndim, ndim - 1))
    v = pair.tensor.transpose(d0, d1)
    expected = np.swapaxes(pair.array, d0, d1)
    assert_same_view(v, expected)
    assert_aliases(v, pair, expected)


@given(strided_pairs())
def test_T_reverses_dims_and_mT_swaps_the_last_two(pair: Pair) -> None:
    assert_same_view(pair.tensor.T, pair.array.T)
    if pair.array.ndim >= 2:
        assert_same_view(pair.tensor.mT, np.swapaxes(pair.array, -1, -2))
    else:
        with pytest.raises(ShapeError, match=r"\.mT needs at least 2 dimensions"):
            pair.tensor.mT  # noqa: B018 - the property raises


# expand and broadcast_to --------------------------------------------------------------


@given(st.data(), strided_pairs())
def test_expand_matches_numpy_broadcast_to(data: st.DataObject, pair: Pair) -> None:
    shape = pair.array.shape
    target = [data.draw(st.integers(0, 3)) if s == 1 else s for s in shape]
    # -1 keeps an existing size, as in PyTorch.
    requested = [
        -1 if size == old and data.draw(st.booleans()) else size
        for size, old in zip(target, shape)
    ]
    lead = data.draw(st.lists(st.integers(0, 3), max_size=2))
    requested = lead + requested
    expected = np.broadcast_to(pair.array, tuple(lead) + tuple(target))
    v = pair.tensor.expand(*requested)
    assert_same_view(v, expected)
    assert_aliases(v, pair, expected)
    assert_same_view(pair.tensor.broadcast_to(expected.shape), expected)


@given(strided_pairs())
def test_expand_rejects_sizes_other_than_one(pair: Pair) -> None:
    shape = pair.array.shape
    assume(any(s > 1 for s in shape))
    bad = tuple(s + 1 if s > 1 else s for s in shape)
    with pytest.raises(ShapeError, match="only size-1 dimensions expand"):
        pair.tensor.expand(*bad)


def test_expand_to_fewer_dims_or_minus_one_in_a_new_dim_fails() -> None:
    x = ember.zeros(2, 1)
    with pytest.raises(
        ShapeError,
        match=r"expand: cannot expand shape \(2, 1\) to "
        r"fewer dimensions \(2,\)",
    ):
        x.expand(2)
    with pytest.raises(ShapeError, match="-1 is only allowed for existing dimensions"):
        x.expand(-1, 2, 3)


# squeeze, unsqueeze, flatten ----------------------------------------------------------


@given(st.data(), strided_pairs())
def test_squeeze_matches_numpy(data: st.DataObject, pair: Pair) -> None:
    a, t = pair.array, pair.tensor
    assert_same_view(t.squeeze(), np.squeeze(a))
    if a.ndim:
        dim = data.draw(st.integers(-a.ndim, a.ndim - 1))
        expected = np.squeeze(a, dim) if a.shape[dim] == 1 else a
        v = t.squeeze(dim)
        assert_same_view(v, expected)
        assert_aliases(v, pair, expected)


@given(st.data(), strided_pairs())
def test_unsqueeze_matches_numpy_expand_dims(data: st.DataObject, pair: Pair) -> None:
    ndim = pair.array.ndim
    dim = data.draw(st.integers(-ndim - 1, ndim))
    v = pair.tensor.unsqueeze(dim)
    expected = np.expand_dims(pair.array, dim)
    assert_same_view(v, expected)
    assert_aliases(v, pair, expected)
    assert v.squeeze(dim).strides == pair.tensor.strides


@given(st.data(), strided_pairs())
def test_flatten_matches_numpy_reshape(data: st.DataObject, pair: Pair) -> None:
    a = pair.array
    if a.ndim == 0:
        assert_same_view(pair.tensor.flatten(), a.reshape(1))
        return
    start = data.draw(st.integers(0, a.ndim - 1))
    end = data.draw(st.integers(start, a.ndim - 1))
    shape = (
        a.shape[:start] + (int(np.prod(a.shape[start : end + 1])),) + a.shape[end + 1 :]
    )
    v = pair.tensor.flatten(start, end - a.ndim)
    np.testing.assert_array_equal(v.numpy(), a.reshape(shape))
    viewable = brute_view_strides(a.shape, pair.tensor.strides, shape) is not None
    assert (v.untyped_storage_id() == pair.base_tensor.untyped_storage_id()) == viewable


# narrow, select, indexing -------------------------------------------------------------


@given(st.data(), strided_pairs())
def test_narrow_matches_slicing(data: st.DataObject, pair: Pair) -> None:
    a = pair.array
    assume(a.ndim >= 1)
    dim = data.draw(st.integers(0, a.ndim - 1))
    size = a.shape[dim]
    start = data.draw(st.integers(-size, size)) if size else 0
    first = start % size if size and start < 0 else start
    length = data.draw(st.integers(0, size - first))
    expected = a[(slice(None),) * dim + (slice(first, first + length),)]
    v = pair.tensor.narrow(dim, start, length)
    assert_same_view(v, expected)
    assert_aliases(v, pair, expected)


@given(st.data(), strided_pairs())
def test_select_matches_integer_indexing(data: st.DataObject, pair: Pair) -> None:
    a = pair.array
    assume(a.ndim >= 1)
    dim = data.draw(st.integers(-a.ndim, a.ndim - 1))
    size = a.shape[dim]
    if size == 0:
        with pytest.raises(IndexingError, match="out of range"):
            pair.tensor.select(dim, 0)
        return
    index = data.draw(st.integers(-size, size - 1))
    expected = np_index(a, (slice(None),) * (dim % a.ndim) + (index,))
    v = pair.tensor.select(dim, index)
    assert_same_view(v, expected)
    assert_aliases(v, pair, expected)


def _index_item(draw: st.DrawFn, size: int) -> object:
    kind = draw(
        st.sampled_from(["int", "slice", "full"] if size else ["slice", "full"])
    )
    if kind == "int":
        return draw(st.integers(-size, size - 1))
    if kind == "full":
        return slice(None)
    bound = st.none() | st.integers(-size - 2, size + 2)
    return slice(draw(bound), draw(bound), draw(st.none() | st.integers(1, 3)))


@st.composite
def basic_indices(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[object, ...]:
    """A basic index for ``shape``: ints, positive-step slices, None and one `...`.

    Items index dims from the front; with an ellipsis, items after it index dims
    from the back.
    """
    front = draw(st.integers(0, len(shape)))
    items = [_index_item(draw, size) for size in shape[:front]]
    if draw(st.booleans()):
        back = draw(st.integers(0, len(shape) - front))
        items.append(Ellipsis)
        items += [_index_item(draw, size) for size in shape[len(shape) - back :]]
    for _ in range(draw(st.integers(0, 2))):
        items.insert(draw(st.integers(0, len(items))), None)
    return tuple(items)


@given(st.data(), strided_pairs())
def test_basic_indexing_matches_numpy(data: st.DataObject, pair: Pair) -> None:
    index = data.draw(basic_indices(pair.array.shape))
    expected = np_index(pair.array, index)
    v = pair.tensor[index]
    assert_same_view(v, expected)
    assert_aliases(v, pair, expected)


@given(st.data(), strided_pairs(allow_expand=False))
def test_setitem_writes_through_views_like_numpy(
    data: st.DataObject, pair: Pair
) -> None:
    index = data.draw(basic_indices(pair.array.shape))
    base = pair.base_array.copy()
    target = writable_alias(pair.array, pair.base_array, base)
    value = data.draw(st.integers(-5, 5))
    target[index] = value
    pair.tensor[index] = value
    np.testing.assert_array_equal(pair.base_tensor.numpy(), base)


def test_indexing_errors_are_typed() -> None:
    x = ember.arange(6.0).view(2, 3)
    with pytest.raises(
        IndexingError,
        match=r"select: index 2 is out of range for "
        r"dimension 0 \(size 2\) of a tensor of shape \(2, 3\)",
    ):
        x[2]
    with pytest.raises(IndexingError, match=r"select: index -4 is out of range"):
        x[:, -4]
    with pytest.raises(
        IndexingError,
        match=r"too many indices for a tensor of shape "
        r"\(2, 3\): got 3",
    ):
        x[0, 0, 0]
    with pytest.raises(IndexingError, match="single ellipsis"):
        x[..., ...]
    with pytest.raises(IndexingError, match="float is not a valid index"):
        x[1.5]
    with pytest.raises(IndexingError, match="slice start must be an int"):
        x[0.5:]
    with pytest.raises(IndexingError, match="step cannot be zero"):
        x[::0]


# contiguous, clone, is_contiguous -----------------------------------------------------


@given(strided_pairs())
def test_is_contiguous_agrees_with_numpy(pair: Pair) -> None:
    assert pair.tensor.is_contiguous() == pair.array.flags.c_contiguous


@given(strided_pairs())
def test_contiguous_returns_self_or_a_dense_copy(pair: Pair) -> None:
    t = pair.tensor
    c = t.contiguous()
    np.testing.assert_array_equal(c.numpy(), pair.array)
    assert c.is_contiguous()
    if t.is_contiguous():
        assert c is t
    else:
        assert c.untyped_storage_id() != t.untyped_storage_id()
        assert c.storage_offset() == 0


@given(strided_pairs())
def test_clone_is_dense_and_independent(pair: Pair) -> None:
    c = pair.tensor.clone()
    np.testing.assert_array_equal(c.numpy(), pair.array)
    assert (
        c.is_contiguous() and c.untyped_storage_id() != pair.tensor.untyped_storage_id()
    )
    before = pair.base_tensor.numpy().copy()
    c.zero_()
    np.testing.assert_array_equal(pair.base_tensor.numpy(), before)


# In-place writes through views --------------------------------------------------------


IN_PLACE = {
    "fill_": (lambda t: t.fill_(3), lambda a: a.fill(3)),
    "zero_": (lambda t: t.zero_(), lambda a: a.fill(0)),
    "add_": (lambda t: t.add_(2), lambda a: np.add(a, 2, out=a, casting="unsafe")),
    "mul_": (lambda t: t.mul_(3), lambda a: np.multiply(a, 3, out=a, casting="unsafe")),
    "sub_": (lambda t: t.sub_(1), lambda a: np.subtract(a, 1, out=a, casting="unsafe")),
    "copy_": (
        lambda t: t.copy_(ember.ones(t.shape[-1:], dtype=t.dtype)),
        lambda a: a.__setitem__(Ellipsis, 1),
    ),
}


@given(st.sampled_from(sorted(IN_PLACE)), strided_pairs())
def test_in_place_ops_write_through_views_or_refuse_overlap(
    name: str, pair: Pair
) -> None:
    ember_op, numpy_op = IN_PLACE[name]
    t = pair.tensor
    assume(t.dtype is not ember.bool or name in ("fill_", "zero_", "copy_"))
    if brute_overlaps(t.shape, t.strides):
        before = pair.base_tensor.numpy().copy()
        with pytest.raises(
            LayoutError,
            match=rf"{name}: cannot write into .*share one "
            "memory location",
        ):
            ember_op(t)
        np.testing.assert_array_equal(pair.base_tensor.numpy(), before)
        return
    base = pair.base_array.copy()
    numpy_op(writable_alias(pair.array, pair.base_array, base))
    version = t._storage.version
    result = ember_op(t)
    assert result is t
    np.testing.assert_array_equal(pair.base_tensor.numpy(), base)
    assert t._storage.version == version + 1


def test_in_place_through_a_transposed_slice_reaches_the_base() -> None:
    base = ember.zeros(3, 4)
    base.T[1:3, ::2].add_(ember.tensor([1.0, 2.0]))
    expected = np.zeros((3, 4), np.float32)
    expected.T[1:3, ::2] += np.array([1.0, 2.0], np.float32)
    np.testing.assert_array_equal(base.numpy(), expected)


# Zero-size, 0-d and negative indices --------------------------------------------------


def test_zero_d_tensors_behave_like_numpy_scalars_arrays() -> None:
    a = np.array(2.5, dtype=np.float32)
    t = ember.tensor(2.5)
    assert t.shape == () and t.strides == () and t.ndim == 0 and t.numel() == 1
    assert_same_view(t[None], a[None])
    assert_same_view(t[...], a[...])
    assert_same_view(t.unsqueeze(0), np.expand_dims(a, 0))
    assert_same_view(t.unsqueeze(-1), np.expand_dims(a, -1))
    assert_same_view(t.view(1, 1), a.reshape(1, 1))
    assert_same_view(t.reshape(()), a.reshape(()))
    assert_same_view(t.expand(2, 3), np.broadcast_to(a, (2, 3)))
    assert_same_view(t.squeeze(), a)
    assert_same_view(t.squeeze(0), a)
    assert_same_view(t.T, a.T)
    assert_same_view(t.transpose(0, -1), a)
    assert_same_view(t.flatten(), a.reshape(1))
    assert t.item() == 2.5
    with pytest.raises(
        IndexingError,
        match=r"too many indices for a tensor of shape "
        r"\(\): got 1[\s\S]*\.item\(\)",
    ):
        t[0]
    with pytest.raises(IndexingError, match="cannot narrow a 0-d tensor"):
        t.narrow(0, 0, 1)
    with pytest.raises(
        IndexingError,
        match=r"dimension 1 is out of range for a tensor "
        r"of shape \(\)",
    ):
        t.transpose(0, 1)
    with pytest.raises(TypeError, match="len"):
        len(t)


@given(st.data(), strided_pairs(max_dims=3))
def test_zero_size_views_keep_numpy_shapes(data: st.DataObject, pair: Pair) -> None:
    a, t = pair.array, pair.tensor
    assume(a.ndim >= 1)
    dim = data.draw(st.integers(0, a.ndim - 1))
    empty_index = (slice(None),) * dim + (slice(2, 1),)
    assert_same_view(t[empty_index], a[empty_index])
    e = t[empty_index]
    assert e.numel() == 0 and e.is_contiguous()
    assert_same_view(e.permute(*reversed(range(e.ndim))), a[empty_index].T)
    new_shape = data.draw(reshapes_of(e.shape))
    assert_same_view(e.view(new_shape), a[empty_index].reshape(new_shape))


@given(st.data(), strided_pairs())
def test_negative_dims_and_indices_count_from_the_end(
    data: st.DataObject, pair: Pair
) -> None:
    a = pair.array
    assume(a.ndim >= 1 and a.shape[-1] >= 1)
    i = data.draw(st.integers(1, a.shape[-1]))
    assert_same_view(pair.tensor[..., -i], a[..., -i])
    assert_same_view(pair.tensor.select(-1, -i), a[..., -i])
    if a.size:
        assert_same_view(pair.tensor[(-1,) * a.ndim], np_index(a, (-1,) * a.ndim))
    assert_same_view(pair.tensor.narrow(-1, -i, 1), a[..., a.shape[-1] - i :][..., :1])


# Negative strides: forbidden (docs/layout.md, rule L1) --------------------------------


def test_negative_slice_steps_raise_layout_error() -> None:
    x = ember.arange(5)
    with pytest.raises(
        LayoutError,
        match=r"slice: step -1 would need a negative "
        r"stride.*rule L1",
    ) as info:
        x[::-1]
    assert not isinstance(info.value, StrideError)
    with pytest.raises(LayoutError, match="step -2"):
        x.view(1, 5)[:, 4:0:-2]


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(6.0)[::-1],
        lambda: np.arange(12).reshape(3, 4)[:, ::-2],
        lambda: np.arange(12.0, dtype=np.float32).reshape(3, 4)[::-1].T,
    ],
    ids=["reversed", "negative-column-step", "reversed-then-transposed"],
)
def test_from_numpy_refuses_negative_strides(make) -> None:  # noqa: ANN001
    array = make()
    with pytest.raises(LayoutError, match=r"from_numpy: strides .* cannot be shared"):
        ember.from_numpy(array)
    copy = ember.from_numpy(np.ascontiguousarray(array))
    np.testing.assert_array_equal(copy.numpy(), array)


@given(strided_pairs(allow_expand=False))
def test_from_numpy_shares_memory_of_positive_stride_views(pair: Pair) -> None:
    array = writable_alias(pair.array, pair.base_array, pair.base_array.copy())
    t = ember.from_numpy(array)
    assert t.shape == array.shape
    if t.numel():
        assert t.strides == numpy_strides(array)
        assert np.shares_memory(t.numpy(), array)
        t.fill_(1)
        np.testing.assert_array_equal(array, np.ones_like(array))
