"""Tensors as users see them: factories, conversions, identity, in-place updates and
the PyTorch conveniences, each against numpy."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tensor_strategies import (
    DTYPES,
    Pair,
    arrays,
    numpy_strides,
    shapes,
    strided_pairs,
)

import ember
from ember.errors import (
    AutogradError,
    DTypeError,
    IndexingError,
    LayoutError,
    ShapeError,
)
from ember.ir import dtypes
from ember.ir.dtypes import DType

# Factories ----------------------------------------------------------------------------


@given(shapes(), st.sampled_from(DTYPES))
def test_zeros_ones_full_and_empty_match_numpy(
    shape: tuple[int, ...], dtype: DType
) -> None:
    for made, expected in [
        (ember.zeros(shape, dtype=dtype), np.zeros(shape, dtype.np_dtype)),
        (ember.zeros(*shape, dtype=dtype), np.zeros(shape, dtype.np_dtype)),
        (ember.ones(shape, dtype=dtype), np.ones(shape, dtype.np_dtype)),
        (ember.full(shape, 3, dtype=dtype), np.full(shape, 3, dtype.np_dtype)),
        (ember.empty(shape, dtype=dtype), np.zeros(shape, dtype.np_dtype)),
    ]:
        assert made.shape == shape and made.dtype is dtype
        assert made.is_contiguous() and made.storage_offset() == 0
        np.testing.assert_array_equal(made.numpy(), expected)


@given(arrays(dtypes.float64, (3,)).map(tuple), st.data())
def test_like_factories_copy_shape_and_dtype(
    values: tuple, data: st.DataObject
) -> None:
    pair = data.draw(strided_pairs())
    t = pair.tensor
    for made, fill in [
        (ember.zeros_like(t), 0),
        (ember.ones_like(t), 1),
        (ember.full_like(t, 1), 1),
        (ember.empty_like(t), 0),
    ]:
        assert made.shape == t.shape and made.dtype is t.dtype and made.is_contiguous()
        np.testing.assert_array_equal(
            made.numpy(), np.full(t.shape, fill, t.dtype.np_dtype)
        )
    assert ember.zeros_like(t, dtype=ember.float64).dtype is ember.float64


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((5,), {}),
        ((2, 9), {}),
        ((1, 2, 0.25), {}),
        ((5.0,), {}),
        ((3, 0, -1), {}),
        ((0, 4), {"dtype": ember.float64}),
        ((0, 1, 0.1), {}),
    ],
)
def test_arange_matches_numpy_with_pytorch_dtypes(args: tuple, kwargs: dict) -> None:
    made = ember.arange(*args, **kwargs)
    floating = any(isinstance(a, float) for a in args)
    default = ember.float32 if floating else ember.int64
    assert made.dtype is kwargs.get("dtype", default)
    np.testing.assert_allclose(
        made.numpy(), np.arange(*args).astype(made.dtype.np_dtype)
    )


@given(st.sampled_from([0, 1, 2, 3]), st.data())
def test_tensor_copies_nested_data_and_keeps_0d_shapes(
    ndim: int, data: st.DataObject
) -> None:
    array = data.draw(arrays(data.draw(st.sampled_from(DTYPES)), (2,) * ndim))
    t = ember.tensor(array.tolist())
    assert t.shape == array.shape
    np.testing.assert_array_equal(t.numpy(), array)
    assert not np.shares_memory(ember.tensor(array).numpy(), array)


def test_scalars_become_0d_tensors() -> None:
    for value in (2.5, 3, True, np.float64(1.5), np.int32(4)):
        t = ember.tensor(value)
        assert t.shape == () and t.ndim == 0 and t.numel() == 1
        assert t.item() == value
    assert ember.full((), 7).shape == ()
    assert ember.zeros(()).shape == ()


def test_manual_seed_makes_rand_and_randn_reproducible() -> None:
    ember.manual_seed(7)
    first = (ember.rand(3, 2), ember.randn(4))
    ember.manual_seed(7)
    second = (ember.rand(3, 2), ember.randn(4))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert first[0].dtype is ember.float32
    assert 0 <= first[0].numpy().min() and first[0].numpy().max() < 1
    assert ember.randn(2, dtype=ember.float64).dtype is ember.float64


# from_numpy and numpy() share memory --------------------------------------------------


@given(strided_pairs(allow_expand=False, nonempty=True))
def test_numpy_shares_memory_with_the_tensor(pair: Pair) -> None:
    view = pair.tensor.numpy()
    assert np.shares_memory(view, pair.base_tensor.numpy())
    assert numpy_strides(view) == pair.tensor.strides
    np.testing.assert_array_equal(np.asarray(pair.tensor), pair.array)


def test_from_numpy_shares_memory_both_ways() -> None:
    array = np.arange(6, dtype=np.int32).reshape(2, 3)
    t = ember.from_numpy(array)
    array[0, 0] = 100
    assert t[0, 0].item() == 100
    t[1, 2] = -5
    assert array[1, 2] == -5
    assert t.dtype is ember.int32


def test_from_numpy_of_a_broadcast_array_reads_but_refuses_writes() -> None:
    t = ember.from_numpy(np.broadcast_to(np.arange(3.0), (2, 3)))
    assert t.strides == (0, 1)
    np.testing.assert_array_equal(t.sum(0).numpy(), [0.0, 2.0, 4.0])
    with pytest.raises(LayoutError):
        t.add_(1)


def test_from_numpy_refuses_read_only_writes_before_computing() -> None:
    array = np.arange(4.0)
    array.setflags(write=False)
    t = ember.from_numpy(array)
    assert t.sum().item() == 6.0
    with pytest.raises(LayoutError, match="its memory is read-only"):
        t.fill_(0)
    with pytest.raises(LayoutError, match="its memory is read-only"):
        t[0] = 1.0
    np.testing.assert_array_equal(array, np.arange(4.0))


# Identity and aliasing ----------------------------------------------------------------


def test_data_ptr_and_storage_identity_follow_aliasing() -> None:
    x = ember.arange(12.0).view(3, 4)
    row = x[1]
    assert row.data_ptr() == x.data_ptr() + 4 * x.element_size()
    assert row.untyped_storage_id() == x.untyped_storage_id()
    assert x.T.data_ptr() == x.data_ptr()
    assert x.detach().data_ptr() == x.data_ptr()
    assert x.clone().data_ptr() != x.data_ptr()
    assert row.numpy().__array_interface__["data"][0] == row.data_ptr()
    row.mul_(10)
    np.testing.assert_array_equal(x.numpy()[1], np.arange(4.0, 8.0) * 10)


def test_metadata_queries() -> None:
    x = ember.zeros(2, 3, 4, dtype=ember.float64)[:, 1:, ::2]
    assert x.size() == (2, 2, 2) and x.size(-1) == 2 and x.dim() == 3 and x.ndim == 3
    assert x.stride() == (12, 4, 2) and x.stride(0) == 12
    assert x.storage_offset() == 4
    assert x.numel() == 8 and len(x) == 2
    assert x.element_size() == 8 and x.itemsize == 8 and x.nbytes == 64
    assert x.is_floating_point() and not ember.arange(3).is_floating_point()
    with pytest.raises(IndexingError, match=r"size: dimension 3 is out of range"):
        x.size(3)


# Conversions --------------------------------------------------------------------------


def test_python_conversions() -> None:
    assert float(ember.tensor([2.5])) == 2.5
    assert int(ember.tensor(7)) == 7
    assert [10, 20, 30][ember.tensor(1)] == 20
    assert bool(ember.tensor([True])) is True
    assert ember.arange(6).view(2, 3).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert [t.tolist() for t in ember.arange(4).view(2, 2)] == [[0, 1], [2, 3]]
    with pytest.raises(
        DTypeError, match="only integer tensors can be used as an index"
    ):
        [1, 2][ember.tensor(1.0)]
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        iter(ember.tensor(1.0))


def test_repr_shows_values_and_non_default_dtypes() -> None:
    assert repr(ember.tensor([1.0, 2.0])) == "tensor([1., 2.])"
    assert repr(ember.tensor([1, 2], dtype=ember.int32)) == (
        "tensor([1, 2], dtype=ember.int32)"
    )
    assert "requires_grad=True" in repr(ember.ones(2, requires_grad=True))


# Scalars in expressions ---------------------------------------------------------------


def test_python_ints_that_do_not_fit_the_tensor_dtype_are_refused() -> None:
    small = ember.ones(2, dtype=ember.int32)
    assert (small + (2**31 - 1)).dtype is ember.int32
    with pytest.raises(DTypeError, match="does not fit int32"):
        small * 2**31
    with pytest.raises(DTypeError, match="does not fit int64"):
        ember.arange(2) - 2**70


def test_float_scalars_beyond_float32_round_to_infinity() -> None:
    t = ember.tensor([1.0, -1.0]) * 1e300
    assert t.dtype is ember.float32
    np.testing.assert_array_equal(t.numpy(), [np.inf, -np.inf])


def test_comparing_with_none_or_other_objects_is_false_not_an_error() -> None:
    t = ember.tensor([1.0])
    assert (t == None) is False  # noqa: E711 - the operator is what is tested
    assert (t != None) is True  # noqa: E711
    assert (t == "text") is False
    assert t in [t]


@given(arrays(dtypes.bool_, (2, 3)), arrays(dtypes.bool_, (3,)))
def test_logical_operators_on_bool_tensors_match_numpy(
    a: np.ndarray, b: np.ndarray
) -> None:
    ta, tb = ember.tensor(a), ember.tensor(b)
    np.testing.assert_array_equal((ta & tb).numpy(), a & b)
    np.testing.assert_array_equal((ta | tb).numpy(), a | b)
    np.testing.assert_array_equal((ta ^ tb).numpy(), a ^ b)
    np.testing.assert_array_equal((~ta).numpy(), ~a)
    np.testing.assert_array_equal((True & tb).numpy(), True & b)
    np.testing.assert_array_equal((ta | False).numpy(), a | False)


def test_logical_operators_refuse_non_bool_tensors() -> None:
    with pytest.raises(
        DTypeError,
        match=r"\|: logical or is defined for bool tensors "
        r"only, got i64\[2\]",
    ):
        ember.arange(2) | ember.tensor([True, False])
    with pytest.raises(DTypeError, match=r"\^: logical xor is defined for bool"):
        ember.tensor([True]) ^ 1


# In-place updates ---------------------------------------------------------------------

IN_PLACE: dict[str, tuple[Any, Any]] = {
    "add_": (lambda t, o: t.add_(o), np.add),
    "sub_": (lambda t, o: t.sub_(o), np.subtract),
    "mul_": (lambda t, o: t.mul_(o), np.multiply),
    "div_": (lambda t, o: t.div_(o), np.true_divide),
    "+=": (lambda t, o: t.__iadd__(o), np.add),
    "*=": (lambda t, o: t.__imul__(o), np.multiply),
}


@given(
    st.sampled_from(sorted(IN_PLACE)),
    strided_pairs(dtype=dtypes.float64, allow_expand=False),
    st.data(),
)
def test_in_place_ops_broadcast_the_operand_like_numpy(
    name: str, pair: Pair, data: st.DataObject
) -> None:
    ember_op, numpy_op = IN_PLACE[name]
    shape = pair.array.shape
    trailing = shape[data.draw(st.integers(0, len(shape))) :]
    operand = data.draw(arrays(dtypes.float64, trailing)) + 9
    expected = pair.array.copy()
    with np.errstate(all="ignore"):
        numpy_op(expected, operand, out=expected)
    result = ember_op(pair.tensor, ember.tensor(operand))
    assert result is pair.tensor
    np.testing.assert_allclose(pair.tensor.numpy(), expected)


def test_in_place_ops_with_alpha_clamp_and_relu() -> None:
    x = ember.tensor([-2.0, 0.5, 3.0])
    x.add_(ember.tensor([1.0, 1.0, 1.0]), alpha=2)
    np.testing.assert_array_equal(x.numpy(), [0.0, 2.5, 5.0])
    x.sub_(1, alpha=0.5)
    np.testing.assert_array_equal(x.numpy(), [-0.5, 2.0, 4.5])
    x.clamp_(-0.25, 4)
    np.testing.assert_array_equal(x.numpy(), [-0.25, 2.0, 4.0])
    x.relu_()
    np.testing.assert_array_equal(x.numpy(), [0.0, 2.0, 4.0])


def test_in_place_ops_cast_within_the_kind_and_refuse_to_change_it() -> None:
    ints = ember.arange(3, dtype=ember.int32)
    ints.add_(ember.arange(3))  # int64 values stored as int32, as in PyTorch
    assert ints.dtype is ember.int32 and ints.tolist() == [0, 2, 4]
    with pytest.raises(
        DTypeError, match="div_: result type float32 cannot be stored in a int32 tensor"
    ):
        ints.div_(2)
    floats = ember.zeros(2)
    floats.copy_(ember.tensor([1, 2]))
    assert floats.tolist() == [1.0, 2.0]
    floats.fill_(ember.tensor(2.5, dtype=ember.float64))
    assert floats.tolist() == [2.5, 2.5]
    ints.fill_(2.7)
    assert ints.tolist() == [2, 2, 2]


def test_copy_accepts_arrays_lists_and_numbers() -> None:
    x = ember.zeros(2, 2)
    x.copy_(np.array([[1, 2], [3, 4]]))
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    x.copy_([5, 6])
    assert x.tolist() == [[5.0, 6.0], [5.0, 6.0]]
    x[0] = 0
    assert x.tolist() == [[0.0, 0.0], [5.0, 6.0]]
    with pytest.raises(DTypeError, match="copy_: cannot convert the value to int32"):
        ember.zeros(1, dtype=ember.int32).copy_([2**70])
    with pytest.raises(DTypeError, match="copy_: cannot convert the value to float32"):
        x.copy_([["a", "b"]])
    with pytest.raises(
        DTypeError, match="fill_: the value must be a number or a 0-d tensor, got list"
    ):
        x.fill_([1, 2])


def test_in_place_updates_bump_the_storage_version_once() -> None:
    x = ember.zeros(4)
    view = x[1:3]
    before = x._storage.version
    view.add_(1)
    view.zero_()
    x[0] = 3.0
    assert x._storage.version == before + 3
    assert x.tolist() == [3.0, 0.0, 0.0, 0.0]


def test_in_place_on_a_tensor_that_requires_grad_is_refused_unless_no_grad() -> None:
    w = ember.ones(2, requires_grad=True)
    with pytest.raises(
        AutogradError, match="add_: in-place operation on a tensor that requires grad"
    ):
        w.add_(1)
    with ember.no_grad():
        w.add_(1)
    assert w.tolist() == [2.0, 2.0]


def test_in_place_reads_an_overlapping_source_before_writing() -> None:
    x = ember.arange(5.0)
    x[1:].copy_(x[:-1])
    np.testing.assert_array_equal(x.numpy(), [0.0, 0.0, 1.0, 2.0, 3.0])
    y = ember.arange(4.0)
    y[1:].add_(y[:-1])
    np.testing.assert_array_equal(y.numpy(), [0.0, 1.0, 3.0, 5.0])


# PyTorch conveniences -----------------------------------------------------------------


@given(strided_pairs(dtype=dtypes.float64), st.data())
def test_any_all_and_std_match_numpy(pair: Pair, data: st.DataObject) -> None:
    a = np.where(np.abs(pair.array) < 3, 0, pair.array)  # plenty of zeros
    t = ember.tensor(a)
    dim = (
        None
        if a.ndim == 0 or data.draw(st.booleans())
        else data.draw(st.integers(-a.ndim, a.ndim - 1))
    )
    keepdim = data.draw(st.booleans())
    for method, oracle in [("any", np.any), ("all", np.all)]:
        got = getattr(t, method)(dim, keepdim=keepdim)
        assert got.dtype is ember.bool
        np.testing.assert_array_equal(
            got.numpy(), oracle(a, axis=dim, keepdims=keepdim)
        )
    bools = ember.tensor(a > 0)
    np.testing.assert_array_equal(bools.any(dim).numpy(), np.any(a > 0, axis=dim))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # one element: 0 / 0
        expected = np.std(a, axis=dim, keepdims=keepdim, ddof=1)
    np.testing.assert_allclose(t.std(dim, keepdim=keepdim).numpy(), expected)


@given(strided_pairs(), st.data())
def test_unbind_split_and_chunk_are_views_matching_numpy(
    pair: Pair, data: st.DataObject
) -> None:
    a, t = pair.array, pair.tensor
    if a.ndim == 0:
        return
    dim = data.draw(st.integers(-a.ndim, a.ndim - 1))
    size = a.shape[dim]
    pieces = t.unbind(dim)
    assert len(pieces) == size
    for i, piece in enumerate(pieces):
        np.testing.assert_array_equal(piece.numpy(), np.take(a, i, axis=dim))
        assert piece.untyped_storage_id() == t.untyped_storage_id()
    step = data.draw(st.integers(1, 4))
    bounds = list(range(step, size, step))
    expected = np.split(a, bounds, axis=dim)
    got = t.split(step, dim)
    assert [p.shape for p in got] == [e.shape for e in expected]
    for piece, e in zip(got, expected):
        np.testing.assert_array_equal(piece.numpy(), e)
    sizes = [len(range(b, min(b + step, size))) for b in range(0, size, step)] or [0]
    assert [p.shape[dim] for p in t.split(sizes, dim)] == sizes
    chunks = data.draw(st.integers(1, 4))
    per = max(-(-size // chunks), 1)
    assert [p.shape[dim] for p in t.chunk(chunks, dim)] == [
        p.shape[dim] for p in t.split(per, dim)
    ]
    assert len(t.chunk(chunks, dim)) <= chunks


def test_split_and_chunk_refuse_bad_sizes() -> None:
    x = ember.arange(6)
    with pytest.raises(
        ShapeError,
        match=r"split: sizes \(2, 2\) do not add up to "
        r"dimension 0 of shape \(6,\)",
    ):
        x.split([2, 2])
    with pytest.raises(ShapeError, match="split: split_size must be a positive int"):
        x.split(0)
    with pytest.raises(ShapeError, match="chunk: chunks must be a positive int"):
        x.chunk(0)
    with pytest.raises(IndexingError, match="unbind: a 0-d tensor has no dimension"):
        ember.tensor(1).unbind()


def test_t_view_as_and_reshape_as() -> None:
    x = ember.arange(6.0).view(2, 3)
    np.testing.assert_array_equal(x.t().numpy(), np.arange(6.0).reshape(2, 3).T)
    assert x.t().data_ptr() == x.data_ptr()
    assert x[0].t().shape == (3,) and ember.tensor(1.0).t().shape == ()
    with pytest.raises(
        ShapeError,
        match=r"t\(\): expects a tensor with at most 2 "
        r"dimensions, got shape \(1, 2, 3\)",
    ):
        x.view(1, 2, 3).t()
    target = ember.zeros(3, 2)
    assert x.view_as(target).shape == (3, 2)
    assert x.T.reshape_as(ember.zeros(6)).tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
