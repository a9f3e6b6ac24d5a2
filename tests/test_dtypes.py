"""dtypes and type promotion, against PyTorch's documented rules.

The oracle is ``tensor_strategies.expected_result_dtype``: torch.promote_types as a
table over ember's five dtypes plus PyTorch's three operand tiers (dimensioned
tensors, 0-d tensors, Python numbers), written independently of ember.ir.dtypes.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tensor_strategies import DTYPES, PROMOTE, expected_result_dtype

import ember
from ember.errors import DTypeError
from ember.ir import dtypes
from ember.ir.dtypes import DType

dtype_st = st.sampled_from(DTYPES)
scalar_st = st.booleans() | st.integers(-3, 3) | st.floats(-3, 3)


@pytest.mark.parametrize("a", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("b", DTYPES, ids=lambda d: d.name)
def test_promote_types_is_torch_promote_types(a: DType, b: DType) -> None:
    assert dtypes.promote_types(a, b).name == PROMOTE[a.name, b.name]


@given(dtype_st, dtype_st, dtype_st)
def test_promotion_is_symmetric_associative_and_idempotent(
    a: DType, b: DType, c: DType
) -> None:
    p = dtypes.promote_types
    assert p(a, b) is p(b, a)
    assert p(p(a, b), c) is p(a, p(b, c))
    assert p(a, a) is a


@st.composite
def operand_lists(draw: st.DrawFn) -> list[tuple[str, Any]]:
    kinds = st.sampled_from(["tensor", "zero_dim", "scalar"])
    result = []
    for kind in draw(st.lists(kinds, min_size=1, max_size=4)):
        value = draw(scalar_st) if kind == "scalar" else draw(dtype_st)
        result.append((kind, value))
    if all(kind == "scalar" for kind, _ in result):
        result.append(("tensor", draw(dtype_st)))
    return result


@given(operand_lists())
def test_result_type_follows_the_three_tiers(operands: list[tuple[str, Any]]) -> None:
    tensors = [(d, 1) for kind, d in operands if kind == "tensor"]
    zero_dim = [(d, 0) for kind, d in operands if kind == "zero_dim"]
    scalars = [v for kind, v in operands if kind == "scalar"]
    assert dtypes.result_type(tensors, zero_dim, scalars) is expected_result_dtype(
        operands
    )


def _operand(kind: str, value: Any) -> Any:
    if kind == "scalar":
        return value
    shape = (2,) if kind == "tensor" else ()
    return ember.ones(shape, dtype=value)


KIND_PAIRS = [
    (a, b)
    for a in ("tensor", "zero_dim", "scalar")
    for b in ("tensor", "zero_dim", "scalar")
    if (a, b) != ("scalar", "scalar")
]


@given(st.sampled_from(KIND_PAIRS), st.data())
def test_operators_apply_the_promoted_dtype(
    kinds: tuple[str, str], data: st.DataObject
) -> None:
    operands = [
        (kind, data.draw(scalar_st if kind == "scalar" else dtype_st)) for kind in kinds
    ]
    result = ember.maximum(_operand(*operands[0]), _operand(*operands[1]))
    assert result.dtype is expected_result_dtype(operands)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.5, dtypes.float32),
        (2, dtypes.int64),
        (True, dtypes.bool_),
        ([1, 2.5], dtypes.float32),
        ([[1, 2]], dtypes.int64),
        ([], dtypes.float32),
    ],
)
def test_python_data_gets_pytorch_default_dtypes(value: Any, expected: DType) -> None:
    t = ember.tensor(value)
    assert t.dtype is expected
    assert t.shape == np.shape(value)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_numpy_arrays_keep_their_dtype(dtype: DType) -> None:
    array = np.zeros((2, 1), dtype=dtype.np_dtype)
    assert ember.tensor(array).dtype is dtype
    assert ember.from_numpy(array).dtype is dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_names_short_names_numpy_dtypes_and_pickles_round_trip(dtype: DType) -> None:
    assert dtypes.by_name(dtype.name) is dtype
    assert dtypes.by_name(dtype.short) is dtype
    assert dtypes.as_dtype(dtype.np_dtype) is dtype
    assert dtypes.as_dtype(dtype.name) is dtype
    assert dtypes.from_numpy_dtype(dtype.np_dtype) is dtype
    assert pickle.loads(pickle.dumps(dtype)) is dtype
    assert repr(dtype) == f"ember.{dtype.name}"
    assert dtype.itemsize == dtype.np_dtype.itemsize


def test_python_types_map_to_default_dtypes() -> None:
    assert dtypes.as_dtype(float) is dtypes.float32
    assert dtypes.as_dtype(int) is dtypes.int64
    assert dtypes.as_dtype(bool) is dtypes.bool_
    assert ember.bool is dtypes.bool_


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dtypes.by_name("float16"), r"unknown dtype 'float16'"),
        (
            lambda: dtypes.as_dtype(complex),
            r"cannot interpret <class 'complex'> as a dtype",
        ),
        (
            lambda: dtypes.from_numpy_dtype(np.float16),
            r"numpy dtype float16 has no ember equivalent",
        ),
        (
            lambda: ember.tensor(np.zeros(2, np.uint8)),
            r"numpy dtype uint8 has no ember",
        ),
        (
            lambda: ember.tensor(["a"]),
            r"tensor\(\): cannot make a tensor from <U1 data",
        ),
        (
            lambda: dtypes.scalar_category("x"),
            r"expected a tensor or a Python number, "
            "got str",
        ),
        (lambda: dtypes.result_type([], [], []), r"no operand to infer a dtype from"),
    ],
    ids=[
        "name",
        "python-type",
        "numpy-dtype",
        "tensor-uint8",
        "tensor-str",
        "scalar",
        "empty",
    ],
)
def test_dtype_errors_are_typed(call: Any, message: str) -> None:
    with pytest.raises(DTypeError, match=message) as info:
        call()
    assert isinstance(info.value, TypeError)
    assert info.value.code == "E-DTYPE"


def test_categories_and_is_floating_point() -> None:
    floating = {d for d in DTYPES if d.is_floating_point}
    assert floating == {dtypes.float32, dtypes.float64}
    assert dtypes.default_dtype_for_scalar(2.0) is dtypes.float32
    assert dtypes.default_dtype_for_scalar(2) is dtypes.int64
    assert dtypes.default_dtype_for_scalar(False) is dtypes.bool_
