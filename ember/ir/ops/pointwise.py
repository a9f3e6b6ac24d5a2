"""Pointwise ops: broadcasting, PyTorch type promotion, dense outputs.

Every pointwise op computes in a *compute dtype* (the promoted type of its operands,
raised to float32 for ops such as ``exp`` that need floating point) and writes its
*output dtype* (bool for comparisons). Outputs are always dense row-major.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ember.errors import DTypeError
from ember.ir import dtypes
from ember.ir.dtypes import DType
from ember.ir.layout import broadcast_shapes
from ember.ir.meta import TensorMeta
from ember.ir.registry import Attrs, OpDef, OpKind, register

# How an op derives its (compute dtype, output dtype) from the promoted input dtype.
SAME, FLOAT, COMPARE, LOGICAL = "same", "float", "compare", "logical"


def promoted(metas: Sequence[TensorMeta]) -> DType:
    """PyTorch promotion over tensor operands (0-d tensors form the weak tier)."""
    first = metas[0].dtype
    if all(m.dtype is first for m in metas):
        return first
    return dtypes.result_type(
        [(m.dtype, m.ndim) for m in metas if m.shape],
        [(m.dtype, 0) for m in metas if not m.shape],
        [],
    )


def dtype_plan(rule: str, metas: Sequence[TensorMeta], op: str) -> tuple[DType, DType]:
    """The compute and output dtypes of a pointwise op under ``rule``."""
    common = promoted(metas)
    if rule == SAME:
        return common, common
    if rule == FLOAT:
        compute = common if common.is_floating_point else dtypes.default_float
        return compute, compute
    if rule == COMPARE:
        return common, dtypes.bool_
    return dtypes.bool_, dtypes.bool_


def pointwise_meta(rule: str, name: str, allow_bool: bool = True) -> Callable:
    """A meta rule: broadcast the shapes, plan the dtypes, dense output."""

    def meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
        shape = broadcast_shapes(*(m.shape for m in metas), op=name)
        _, out = dtype_plan(rule, metas, name)
        if not allow_bool and any(m.dtype is dtypes.bool_ for m in metas):
            raise DTypeError(
                f"{name}: bool tensors are not supported, got "
                f"{', '.join(m.type_str() for m in metas)}",
                op=name,
                actual="bool",
                hint="convert with .int() or .float() first",
            )
        return TensorMeta.contiguous(shape, out)

    return meta


def pointwise_reference(rule: str, fn: Callable[..., np.ndarray]) -> Callable:
    """A numpy reference: cast operands to the compute dtype, apply, cast the result."""

    def reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
        first = arrays[0].dtype
        if rule == SAME and all(a.dtype == first for a in arrays):
            return np.asarray(fn(*arrays, **attrs))
        metas = [
            TensorMeta((0,) * a.ndim, dtypes.from_numpy_dtype(a.dtype), ())
            for a in arrays
        ]
        compute, out = dtype_plan(rule, metas, "reference")
        cast = [
            a if a.dtype == compute.np_dtype else a.astype(compute.np_dtype)
            for a in arrays
        ]
        result = fn(*cast, **attrs)
        return np.asarray(result).astype(out.np_dtype, copy=False)

    return reference


def define(
    name: str,
    fn: Callable[..., np.ndarray],
    arity: int,
    rule: str = SAME,
    *,
    differentiable: bool = True,
    allow_bool: bool = True,
    doc: str = "",
    promote_from: int = 0,
) -> OpDef:
    """Register a pointwise op from a numpy function."""
    return register(
        OpDef(
            name=name,
            kind=OpKind.POINTWISE,
            meta=pointwise_meta(rule, name, allow_bool),
            reference=pointwise_reference(rule, fn),
            num_inputs=arity,
            accepts_scalars=True,
            differentiable=differentiable and rule in (SAME, FLOAT),
            promote_from=promote_from,
            doc=doc,
        )
    )


_erf_scalar = np.frompyfunc(math.erf, 1, 1)


def erf_reference(x: np.ndarray) -> np.ndarray:
    """The error function; exact to rounding (math.erf element by element)."""
    return np.asarray(_erf_scalar(x), dtype=np.float64).astype(x.dtype, copy=False)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so that exp never overflows.
    neg = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + neg), neg / (1.0 + neg)).astype(x.dtype)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.zeros((), dtype=x.dtype))


def _rsqrt(x: np.ndarray) -> np.ndarray:
    return (1.0 / np.sqrt(x)).astype(x.dtype)


def _pow(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if x.dtype.kind in "iu" and np.any(y < 0):
        raise DTypeError(
            "pow: integers cannot be raised to negative integer powers",
            op="pow",
            hint="convert the base with .float() first",
        )
    return np.power(x, y)


def _div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.true_divide(x, y)


# Unary
define("neg", np.negative, 1, allow_bool=False, doc="-x")
define("abs", np.abs, 1, doc="|x|")
define("exp", np.exp, 1, FLOAT, doc="e**x")
define("log", np.log, 1, FLOAT, doc="natural logarithm")
define("sqrt", np.sqrt, 1, FLOAT, doc="square root")
define("rsqrt", _rsqrt, 1, FLOAT, doc="1 / sqrt(x)")
define("relu", _relu, 1, allow_bool=False, doc="max(x, 0)")
define("sigmoid", _sigmoid, 1, FLOAT, doc="1 / (1 + exp(-x))")
define("tanh", np.tanh, 1, FLOAT, doc="hyperbolic tangent")
define("erf", erf_reference, 1, FLOAT, doc="error function")
define("copy", lambda x: np.array(x, copy=True), 1, doc="a dense copy (contiguous)")

# Binary
define("add", np.add, 2, doc="x + y")
define("sub", np.subtract, 2, allow_bool=False, doc="x - y")
define("mul", np.multiply, 2, doc="x * y")
define("div", _div, 2, FLOAT, doc="true division x / y")
define("pow", _pow, 2, allow_bool=False, doc="x ** y")
define("maximum", np.maximum, 2, doc="elementwise maximum (NaN propagates)")
define("minimum", np.minimum, 2, doc="elementwise minimum (NaN propagates)")
define("eq", np.equal, 2, COMPARE, doc="x == y")
define("ne", np.not_equal, 2, COMPARE, doc="x != y")
define("lt", np.less, 2, COMPARE, doc="x < y")
define("le", np.less_equal, 2, COMPARE, doc="x <= y")
define("gt", np.greater, 2, COMPARE, doc="x > y")
define("ge", np.greater_equal, 2, COMPARE, doc="x >= y")
define("logical_and", np.logical_and, 2, LOGICAL, doc="x and y")
define("logical_or", np.logical_or, 2, LOGICAL, doc="x or y")
define("logical_not", np.logical_not, 1, LOGICAL, doc="not x")


def _where_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    cond, x, y = metas
    if cond.dtype is not dtypes.bool_:
        raise DTypeError(
            f"where: the condition must be bool, got {cond.type_str()}",
            op="where",
            expected="bool",
            actual=cond.dtype.name,
            hint="compare first, e.g. where(x > 0, a, b)",
        )
    shape = broadcast_shapes(cond.shape, x.shape, y.shape, op="where")
    return TensorMeta.contiguous(shape, promoted([x, y]))


def _where_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    cond, x, y = arrays
    out = promoted(
        [
            TensorMeta((0,) * a.ndim, dtypes.from_numpy_dtype(a.dtype), ())
            for a in (x, y)
        ]
    )
    return np.where(cond, x, y).astype(out.np_dtype, copy=False)


register(
    OpDef(
        "where",
        OpKind.POINTWISE,
        _where_meta,
        _where_reference,
        num_inputs=3,
        accepts_scalars=True,
        promote_from=1,
        doc="cond ? x : y",
    )
)


def _cast_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    dtype = attrs["dtype"]
    if not isinstance(dtype, DType):
        raise DTypeError(f"cast: expected an ember dtype, got {dtype!r}", op="cast")
    return TensorMeta.contiguous(metas[0].shape, dtype)


def _cast_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    return arrays[0].astype(attrs["dtype"].np_dtype)


register(
    OpDef(
        "cast",
        OpKind.POINTWISE,
        _cast_meta,
        _cast_reference,
        num_inputs=1,
        doc="convert to attrs['dtype'] (float to int truncates toward zero)",
    )
)


def _clamp_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    (x,) = metas
    low, high = attrs.get("min"), attrs.get("max")
    if low is None and high is None:
        raise DTypeError("clamp: at least one of min and max must be given", op="clamp")
    scalars = [v for v in (low, high) if v is not None]
    for value in scalars:
        dtypes.scalar_category(value)
    dtype = dtypes.result_type(
        [(x.dtype, x.ndim)] if x.shape else [],
        [] if x.shape else [(x.dtype, 0)],
        scalars,
    )
    return TensorMeta.contiguous(x.shape, dtype)


def _clamp_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    (x,) = arrays
    out = _clamp_meta(
        [TensorMeta((1,) * x.ndim, dtypes.from_numpy_dtype(x.dtype), (1,) * x.ndim)],
        attrs,
    ).dtype.np_dtype
    x = x.astype(out, copy=False)
    low, high = attrs.get("min"), attrs.get("max")
    if low is not None:
        x = np.maximum(x, np.asarray(low, dtype=out))
    if high is not None:
        x = np.minimum(x, np.asarray(high, dtype=out))
    return np.asarray(x)


register(
    OpDef(
        "clamp",
        OpKind.POINTWISE,
        _clamp_meta,
        _clamp_reference,
        num_inputs=1,
        doc="min(max(x, attrs['min']), attrs['max']); either bound may be None",
    )
)
