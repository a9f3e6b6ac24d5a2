"""Element types and the type-promotion rules of ember.

Five dtypes exist: ``float32`` (the default), ``float64``, ``int32``, ``int64`` and
``bool``. Promotion follows PyTorch: a higher category (bool < integer < floating)
wins; within a category the wider type wins; zero-dimensional tensors and Python
scalars only decide the result when they raise the category::

    >>> promote_types(int32, float32).name
    'float32'
    >>> result_type([(float32, 1)], [(float64, 0)], [2]).name
    'float32'
    >>> result_type([(int64, 1)], [], [2.5]).name
    'float32'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember.errors import DTypeError

BOOL, INTEGER, FLOATING = 0, 1, 2


@dataclass(frozen=True, eq=False)
class DType:
    """An element type: its name, numpy dtype, byte size and category."""

    name: str
    np_dtype: np.dtype
    itemsize: int
    category: int
    short: str

    @property
    def is_floating_point(self) -> bool:
        return self.category == FLOATING

    def __repr__(self) -> str:
        return f"ember.{self.name}"

    def __reduce__(self) -> Any:
        return (by_name, (self.name,))


float32 = DType("float32", np.dtype(np.float32), 4, FLOATING, "f32")
float64 = DType("float64", np.dtype(np.float64), 8, FLOATING, "f64")
int32 = DType("int32", np.dtype(np.int32), 4, INTEGER, "i32")
int64 = DType("int64", np.dtype(np.int64), 8, INTEGER, "i64")
bool_ = DType("bool", np.dtype(np.bool_), 1, BOOL, "bool")

ALL_DTYPES: tuple[DType, ...] = (float32, float64, int32, int64, bool_)
_BY_NAME = {d.name: d for d in ALL_DTYPES} | {d.short: d for d in ALL_DTYPES}
_BY_NUMPY = {d.np_dtype: d for d in ALL_DTYPES}
_DEFAULT_FOR_CATEGORY = {BOOL: bool_, INTEGER: int64, FLOATING: float32}

#: The dtype of new floating tensors when none is given.
default_float = float32


def by_name(name: str) -> DType:
    """The dtype called ``name`` (``float32`` or its short form ``f32``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise DTypeError(
            f"unknown dtype {name!r}",
            expected=sorted(d.name for d in ALL_DTYPES),
            actual=name,
        ) from None


def from_numpy_dtype(np_dtype: Any) -> DType:
    """The ember dtype for a numpy dtype, or a DTypeError naming the supported ones."""
    key = np.dtype(np_dtype)
    found = _BY_NUMPY.get(key)
    if found is None:
        raise DTypeError(
            f"numpy dtype {key} has no ember equivalent",
            expected=[d.name for d in ALL_DTYPES],
            actual=str(key),
            hint="convert the array first, e.g. arr.astype(np.float32)",
        )
    return found


def as_dtype(value: Any) -> DType:
    """Accept an ember dtype, its name, a numpy dtype or a Python type."""
    if isinstance(value, DType):
        return value
    if isinstance(value, str):
        return by_name(value)
    if value is float:
        return default_float
    if value is int:
        return int64
    if value is bool:
        return bool_
    try:
        return from_numpy_dtype(value)
    except TypeError:
        raise DTypeError(f"cannot interpret {value!r} as a dtype") from None


def promote_types(a: DType, b: DType) -> DType:
    """The smallest dtype both ``a`` and ``b`` convert to without losing category."""
    if a is b:
        return a
    if a.category != b.category:
        return a if a.category > b.category else b
    return a if a.itemsize >= b.itemsize else b


def scalar_category(value: Any) -> int:
    """The category of a Python scalar, or a DTypeError for anything else."""
    if isinstance(value, (bool, np.bool_)):
        return BOOL
    if isinstance(value, (int, np.integer)):
        return INTEGER
    if isinstance(value, (float, np.floating)):
        return FLOATING
    raise DTypeError(
        f"expected a tensor or a Python number, got {type(value).__name__}",
        actual=repr(value)[:60],
    )


def _promote_all(dtypes: Iterable[DType]) -> DType | None:
    result: DType | None = None
    for d in dtypes:
        result = d if result is None else promote_types(result, d)
    return result


def result_type(
    tensors: Sequence[tuple[DType, int]],
    zero_dim: Sequence[tuple[DType, int]],
    scalars: Sequence[Any],
) -> DType:
    """PyTorch's three-tier promotion.

    ``tensors`` and ``zero_dim`` hold ``(dtype, ndim)`` pairs of dimensioned and
    zero-dimensional tensors; ``scalars`` holds Python numbers. A lower tier only
    matters when it lifts the category of the tiers above it.
    """
    result = _promote_all(d for d, _ in tensors)
    zero = _promote_all(d for d, _ in zero_dim)
    if result is None:
        result = zero
    elif zero is not None and zero.category > result.category:
        result = zero
    if scalars:
        category = max(scalar_category(s) for s in scalars)
        if result is None or category > result.category:
            result = _DEFAULT_FOR_CATEGORY[category]
    if result is None:
        raise DTypeError("no operand to infer a dtype from")
    return result


def default_dtype_for_scalar(value: Any) -> DType:
    """The dtype ``ember.tensor(value)`` gives a Python number."""
    return _DEFAULT_FOR_CATEGORY[scalar_category(value)]
