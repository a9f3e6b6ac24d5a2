"""The op registry and the eager ops, against numpy.

Part one walks ``ember.ir.registry.all_ops()``: for every registered op, random inputs
(strided, zero-size and 0-d included) go through the op's meta rule and its numpy
reference, and the two must agree on shape, dtype and, for views, strides and offset.
A new pointwise op is covered without any change here; any other new op makes
``test_every_op_has_a_sampler`` fail until a sampler is added to ``SAMPLERS``.

Part two checks the eager ops users call (operators, casts, reductions, matmul,
softmax, cat, stack) against numpy computations written independently of the
references, with PyTorch's type promotion as the expected dtype.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tensor_strategies import (
    DTYPES,
    NUMERIC_DTYPES,
    Pair,
    arrays,
    expected_result_dtype,
    numpy_strides,
    pointer_offset,
    reshapes_of,
    shapes,
    significant,
    strided_pairs,
)

import ember
from ember.errors import DTypeError, EmberError, ShapeError
from ember.ir import dtypes, layout
from ember.ir.dtypes import DType
from ember.ir.registry import OpDef, OpKind, all_ops, get_op
from ember.runtime import eager

# Part one: every registry op ----------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """What a sampler may draw: dtypes, empty tensors, strided layouts."""

    dtypes: tuple[DType, ...] = DTYPES
    nonempty: bool = False
    strided: bool = True


Sample = tuple[list[ember.Tensor], dict[str, Any]]
SAMPLERS: dict[str, Callable[[Config], st.SearchStrategy[Sample]]] = {}


def sampler(*names: str) -> Callable[[Any], Any]:
    """Register a hypothesis strategy factory that draws inputs for ``names``."""

    def install(factory: Any) -> Any:
        for name in names:
            SAMPLERS[name] = factory
        return factory

    return install


def _low(cfg: Config) -> int:
    return 1 if cfg.nonempty else 0


def _dense(draw: st.DrawFn, dtype: DType, shape: Sequence[int]) -> ember.Tensor:
    return ember.tensor(draw(arrays(dtype, shape)), dtype=dtype)


def _any_layout(
    draw: st.DrawFn, cfg: Config, dtype: DType | None = None
) -> ember.Tensor:
    dtype = dtype or draw(st.sampled_from(cfg.dtypes))
    if cfg.strided:
        return draw(strided_pairs(dtype=dtype, nonempty=cfg.nonempty)).tensor
    return _dense(draw, dtype, draw(shapes(min_side=_low(cfg))))


def _broadcastable(draw: st.DrawFn, count: int, cfg: Config) -> list[tuple[int, ...]]:
    found = draw(
        hnp.mutually_broadcastable_shapes(
            num_shapes=count, max_dims=3, min_side=_low(cfg), max_side=4
        )
    )
    return list(found.input_shapes)


@st.composite
def pointwise_sample(draw: st.DrawFn, op: OpDef, cfg: Config) -> Sample:
    """Broadcastable operands of independently drawn dtypes, no attributes."""
    assert op.num_inputs is not None
    shapes_ = _broadcastable(draw, op.num_inputs, cfg)
    return [_dense(draw, draw(st.sampled_from(cfg.dtypes)), s) for s in shapes_], {}


@sampler("gelu")
@st.composite
def _unary_composite(draw: st.DrawFn, cfg: Config) -> Sample:
    return [_any_layout(draw, cfg)], {}


@sampler("where")
@st.composite
def _where(draw: st.DrawFn, cfg: Config) -> Sample:
    cond_shape, x_shape, y_shape = _broadcastable(draw, 3, cfg)
    cond = _dense(draw, dtypes.bool_, cond_shape)
    x = _dense(draw, draw(st.sampled_from(cfg.dtypes)), x_shape)
    return [cond, x, _dense(draw, draw(st.sampled_from(cfg.dtypes)), y_shape)], {}


@sampler("cast")
@st.composite
def _cast(draw: st.DrawFn, cfg: Config) -> Sample:
    return [_any_layout(draw, cfg)], {"dtype": draw(st.sampled_from(DTYPES))}


@sampler("clamp")
@st.composite
def _clamp(draw: st.DrawFn, cfg: Config) -> Sample:
    bound = st.none() | st.integers(-5, 5) | st.floats(-5, 5, width=32)
    low, high = draw(bound), draw(bound)
    if low is None and high is None:
        low = 0
    return [_any_layout(draw, cfg)], {"min": low, "max": high}


def _dim_of(draw: st.DrawFn, ndim: int) -> int:
    return draw(st.integers(-max(ndim, 1), max(ndim, 1) - 1))


@sampler("softmax", "log_softmax")
@st.composite
def _softmax(draw: st.DrawFn, cfg: Config) -> Sample:
    x = _any_layout(draw, cfg)
    return [x], {"dim": layout.normalize_dim(_dim_of(draw, x.ndim), x.ndim, "softmax")}


@sampler("linear")
@st.composite
def _linear(draw: st.DrawFn, cfg: Config) -> Sample:
    dtype = draw(st.sampled_from(cfg.dtypes))
    low = _low(cfg)
    batch = draw(shapes(max_dims=2, min_side=low, max_side=3))
    n_in, n_out = draw(st.integers(low, 4)), draw(st.integers(low, 4))
    inputs = [_dense(draw, dtype, batch + (n_in,)), _dense(draw, dtype, (n_out, n_in))]
    if draw(st.booleans()):
        inputs.append(_dense(draw, dtype, (n_out,)))
    return inputs, {}


@sampler("mse_loss", "l1_loss", "huber_loss")
@st.composite
def _loss(draw: st.DrawFn, cfg: Config) -> Sample:
    shape = draw(shapes(max_dims=3, min_side=_low(cfg)))
    pred = _dense(draw, draw(st.sampled_from(cfg.dtypes)), shape)
    target = _dense(draw, draw(st.sampled_from(cfg.dtypes)), shape)
    attrs: dict[str, Any] = {
        "reduction": draw(st.sampled_from(["mean", "sum", "none"]))
    }
    if draw(st.booleans()):
        attrs["delta"] = draw(st.floats(0.1, 3))
    return [pred, target], attrs


@sampler("cat")
@st.composite
def _cat(draw: st.DrawFn, cfg: Config) -> Sample:
    shape = list(draw(shapes(min_dims=1, max_dims=3, min_side=_low(cfg))))
    dim = draw(st.integers(0, len(shape) - 1))
    tensors = []
    for _ in range(draw(st.integers(1, 3))):
        shape[dim] = draw(st.integers(_low(cfg), 3))
        tensors.append(_dense(draw, draw(st.sampled_from(cfg.dtypes)), shape))
    return tensors, {"dim": dim}


@sampler("stack")
@st.composite
def _stack(draw: st.DrawFn, cfg: Config) -> Sample:
    shape = draw(shapes(max_dims=3, min_side=_low(cfg)))
    count = draw(st.integers(1, 3))
    tensors = [
        _dense(draw, draw(st.sampled_from(cfg.dtypes)), shape) for _ in range(count)
    ]
    return tensors, {"dim": draw(st.integers(0, len(shape)))}


@sampler("scatter_slice")
@st.composite
def _scatter_slice(draw: st.DrawFn, cfg: Config) -> Sample:
    src = _any_layout(draw, cfg)
    assume(src.ndim >= 1)
    dim = draw(st.integers(0, src.ndim - 1))
    start, step = draw(st.integers(0, 2)), draw(st.integers(1, 3))
    need = start + (src.shape[dim] - 1) * step + 1 if src.shape[dim] else start
    shape = src.shape[:dim] + (need + draw(st.integers(0, 2)),) + src.shape[dim + 1 :]
    return [src], {"shape": shape, "dim": dim, "start": start, "step": step}


def _dims_subset(draw: st.DrawFn, ndim: int) -> tuple[int, ...]:
    if ndim == 0:
        return ()
    chosen = draw(st.lists(st.integers(0, ndim - 1), min_size=1, unique=True))
    return tuple(d - ndim if draw(st.booleans()) else d for d in chosen)


@sampler("sum", "amax", "amin", "mean", "var")
@st.composite
def _reduction(draw: st.DrawFn, cfg: Config) -> Sample:
    x = _any_layout(draw, cfg)
    dims = tuple(range(x.ndim)) if draw(st.booleans()) else _dims_subset(draw, x.ndim)
    attrs: dict[str, Any] = {"dims": dims, "keepdim": draw(st.booleans())}
    if draw(st.booleans()):
        attrs["correction"] = draw(st.integers(0, 2))
    return [x], attrs


@sampler("argmax", "argmin")
@st.composite
def _arg_reduction(draw: st.DrawFn, cfg: Config) -> Sample:
    x = _any_layout(draw, cfg)
    dim = None if draw(st.booleans()) else _dim_of(draw, x.ndim)
    return [x], {"dim": dim, "keepdim": draw(st.booleans())}


@sampler("matmul")
@st.composite
def _matmul(draw: st.DrawFn, cfg: Config) -> Sample:
    found = draw(
        hnp.mutually_broadcastable_shapes(
            signature=np.matmul.signature,
            max_dims=2,
            min_side=max(_low(cfg), 1),
            max_side=4,
        )
    )
    dtype = draw(st.sampled_from(cfg.dtypes))
    return [_dense(draw, dtype, s) for s in found.input_shapes], {}


@sampler("view")
@st.composite
def _view(draw: st.DrawFn, cfg: Config) -> Sample:
    x = _any_layout(draw, cfg)
    return [x], {"shape": draw(reshapes_of(x.shape))}


@sampler("permute")
@st.composite
def _permute(draw: st.DrawFn, cfg: Config) -> Sample:
    x = _any_layout(draw, cfg)
    order = draw(st.permutations(range(x.ndim)))
    return [x], {"dims": tuple(d - x.ndim if draw(st.booleans()) else d for d in order)}


@sampler("expand")
@st.composite
def _expand(draw: st.DrawFn, cfg: Config) -> Sample:
    x = _any_layout(draw, cfg)
    low = _low(cfg)
    target = tuple(draw(st.integers(low, 3)) if s == 1 else s for s in x.shape)
    requested = tuple(
        -1 if size == old and draw(st.booleans()) else size
        for size, old in zip(target, x.shape)
    )
    lead = tuple(draw(st.lists(st.integers(max(low, 1), 3), max_size=2)))
    return [x], {"shape": lead + requested}


def _with_dim(draw: st.DrawFn, cfg: Config) -> tuple[ember.Tensor, int, int]:
    """A tensor with at least one dim, one of its dims, and that dim's size."""
    x = _any_layout(draw, cfg)
    assume(x.ndim >= 1)
    dim = draw(st.integers(0, x.ndim - 1))
    return x, dim, x.shape[dim]


@sampler("slice")
@st.composite
def _slice(draw: st.DrawFn, cfg: Config) -> Sample:
    x, dim, size = _with_dim(draw, cfg)
    start = draw(st.integers(0, max(size - _low(cfg), 0)))
    stop = draw(st.integers(min(start + _low(cfg), size), size))
    return [x], {
        "dim": dim,
        "start": start,
        "stop": stop,
        "step": draw(st.integers(1, 3)),
    }


@sampler("select")
@st.composite
def _select(draw: st.DrawFn, cfg: Config) -> Sample:
    x, dim, size = _with_dim(draw, cfg)
    index = draw(st.integers(-size, size - 1)) if size else 0
    return [x], {"dim": dim, "index": index}


@sampler("unsqueeze")
@st.composite
def _unsqueeze(draw: st.DrawFn, cfg: Config) -> Sample:
    x = _any_layout(draw, cfg)
    return [x], {"dim": draw(st.integers(0, x.ndim))}


@sampler("squeeze")
@st.composite
def _squeeze(draw: st.DrawFn, cfg: Config) -> Sample:
    x = _any_layout(draw, cfg)
    return [x], {"dims": _dims_subset(draw, x.ndim)}


def sample(op: OpDef, cfg: Config) -> st.SearchStrategy[Sample]:
    """The sampler of ``op``: its own, or the generic one for attribute-free
    pointwise ops."""
    if op.name in SAMPLERS:
        return SAMPLERS[op.name](cfg)
    if op.kind is OpKind.POINTWISE and op.num_inputs and not op.attr_defaults:
        return pointwise_sample(op, cfg)
    raise LookupError(op.name)


OP_NAMES = [op.name for op in all_ops()]
# Two properties per op and dozens of ops: each gets a quarter of the profile's
# examples (10 under CI), which keeps the whole file fast.
PER_OP = settings(max_examples=max(10, settings.default.max_examples // 4))


def test_every_op_has_a_sampler() -> None:
    missing = []
    for op in all_ops():
        try:
            sample(op, Config())
        except LookupError:
            missing.append(op.name)
    assert not missing, (
        f"ops without a sampler: {missing}; add one to SAMPLERS in tests/test_ops.py "
        "so that their meta rule is checked against their reference"
    )


@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_fills_the_registry_slots(name: str) -> None:
    op = get_op(name)
    assert isinstance(op.kind, OpKind)
    assert callable(op.meta) and callable(op.reference)
    assert op.doc, f"{name} has no doc line"
    if op.differentiable:
        assert callable(op.grad), f"{name} is differentiable but has no gradient rule"


def _check_against_reference(
    op: OpDef, tensors: list[ember.Tensor], attrs: dict
) -> None:
    """The meta rule and the reference agree, and eager execution matches both."""
    metas = [t.meta for t in tensors]
    try:
        meta = op.meta(metas, attrs)
    except EmberError as error:
        with pytest.raises(type(error)):
            eager.execute(op, tensors, attrs)
        return
    inputs = [t.numpy() for t in tensors]
    try:
        out = op.reference(inputs, attrs)
    except EmberError as error:
        # A value-dependent refusal (an integer to a negative power): typed, too.
        with pytest.raises(type(error)):
            eager.execute(op, tensors, attrs)
        return
    assert out.shape == meta.shape
    assert out.dtype == meta.dtype.np_dtype
    if op.kind is OpKind.VIEW:
        if out.size:
            assert np.shares_memory(out, inputs[0])
            got = significant(meta.shape, meta.strides)
            assert got == significant(out.shape, numpy_strides(out))
            assert meta.offset == tensors[0].storage_offset() + pointer_offset(
                out, inputs[0]
            )
    else:
        assert meta.strides == layout.contiguous_strides(meta.shape)
        assert meta.offset == 0
    result = eager.execute(op, tensors, attrs)
    assert result.meta == meta
    np.testing.assert_array_equal(result.numpy(), out)
    if op.kind is not OpKind.VIEW:
        for t in tensors:
            assert not np.shares_memory(result.numpy(), t.numpy())


@pytest.mark.parametrize("name", OP_NAMES)
@PER_OP
@given(data=st.data())
def test_meta_rule_agrees_with_the_reference(name: str, data: st.DataObject) -> None:
    op = get_op(name)
    tensors, attrs = data.draw(sample(op, Config()))
    _check_against_reference(op, tensors, attrs)


@pytest.mark.parametrize("name", OP_NAMES)
@PER_OP
@given(data=st.data())
def test_meta_rule_accepts_valid_float_inputs(name: str, data: st.DataObject) -> None:
    op = get_op(name)
    cfg = Config(dtypes=(dtypes.float32,), nonempty=True, strided=False)
    tensors, attrs = data.draw(sample(op, cfg))
    meta = op.meta([t.meta for t in tensors], attrs)
    assert meta.numel == math.prod(meta.shape)


# Part two: eager ops against independent numpy computations ---------------------------


def _close(actual: ember.Tensor, expected: np.ndarray, dtype: DType) -> None:
    assert actual.dtype is dtype
    assert actual.shape == expected.shape
    got = actual.numpy()
    if dtype.is_floating_point:
        tol = 2e-6 if dtype is dtypes.float32 else 1e-12
        np.testing.assert_allclose(got, expected.astype(got.dtype), rtol=tol, atol=tol)
    else:
        np.testing.assert_array_equal(got, expected.astype(got.dtype))


OPERATORS: dict[
    str, tuple[Callable[[Any, Any], Any], Callable[..., np.ndarray], str]
] = {
    "+": (lambda a, b: a + b, np.add, "same"),
    "-": (lambda a, b: a - b, np.subtract, "same"),
    "*": (lambda a, b: a * b, np.multiply, "same"),
    "/": (lambda a, b: a / b, np.true_divide, "float"),
    "**": (lambda a, b: a**b, np.power, "same"),
    "==": (lambda a, b: a == b, np.equal, "bool"),
    "!=": (lambda a, b: a != b, np.not_equal, "bool"),
    "<": (lambda a, b: a < b, np.less, "bool"),
    "<=": (lambda a, b: a <= b, np.less_equal, "bool"),
    ">": (lambda a, b: a > b, np.greater, "bool"),
    ">=": (lambda a, b: a >= b, np.greater_equal, "bool"),
}


def _operand(draw: st.DrawFn, shape: tuple[int, ...], kind: str) -> Any:
    """A tensor of a random dtype, or a Python number of a random kind."""
    if kind == "scalar":
        return draw(st.booleans() | st.integers(-4, 4) | st.floats(-4, 4, width=32))
    return ember.tensor(draw(arrays(draw(st.sampled_from(DTYPES)), shape)))


def _describe(value: Any) -> tuple[str, Any]:
    if isinstance(value, ember.Tensor):
        return ("tensor" if value.ndim else "zero_dim"), value.dtype
    return "scalar", value


def _as_float64(value: Any) -> Any:
    return (
        value.numpy().astype(np.float64) if isinstance(value, ember.Tensor) else value
    )


@given(st.sampled_from(sorted(OPERATORS)), st.data())
def test_operators_promote_like_pytorch_and_compute_like_numpy(
    symbol: str, data: st.DataObject
) -> None:
    fn, numpy_fn, rule = OPERATORS[symbol]
    (sa, sb), _ = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3))
    kinds = data.draw(st.sampled_from([("t", "t"), ("t", "scalar"), ("scalar", "t")]))
    a, b = _operand(data.draw, sa, kinds[0]), _operand(data.draw, sb, kinds[1])
    promoted = expected_result_dtype([_describe(a), _describe(b)])
    out_dtype = {"same": promoted, "bool": dtypes.bool_}.get(rule) or (
        promoted if promoted.is_floating_point else dtypes.float32
    )
    bool_tensor = any(
        isinstance(v, ember.Tensor) and v.dtype is dtypes.bool_ for v in (a, b)
    )
    if symbol in ("-", "**") and bool_tensor:
        with pytest.raises(DTypeError, match="bool tensors are not supported"):
            fn(a, b)
        return
    if symbol == "**" and not promoted.is_floating_point:
        exponent = _as_float64(b)
        if np.any(np.asarray(exponent) < 0):
            with pytest.raises(DTypeError, match="negative integer powers"):
                fn(a, b)
            return
    with np.errstate(all="ignore"):
        compute = np.float64 if out_dtype.is_floating_point else promoted.np_dtype
        left = np.asarray(_as_float64(a)).astype(compute)
        right = np.asarray(_as_float64(b)).astype(compute)
        expected = np.asarray(numpy_fn(left, right))
    _close(fn(a, b), expected.astype(out_dtype.np_dtype), out_dtype)


_erf = np.vectorize(math.erf, otypes=[np.float64])

UNARY: dict[str, tuple[Callable[[ember.Tensor], ember.Tensor], Callable[..., Any]]] = {
    "neg": (lambda t: -t, lambda x: -x),
    "abs": (abs, np.abs),
    "exp": (ember.exp, np.exp),
    "log": (ember.log, np.log),
    "sqrt": (ember.sqrt, np.sqrt),
    "rsqrt": (ember.rsqrt, lambda x: 1 / np.sqrt(x)),
    "relu": (ember.relu, lambda x: np.where(x > 0, x, 0 * x)),
    "sigmoid": (ember.sigmoid, lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (ember.tanh, lambda x: np.sinh(x) / np.cosh(x)),
    "erf": (ember.erf, lambda x: _erf(x)),
    "gelu": (ember.gelu, lambda x: x * 0.5 * (1 + _erf(x / 2**0.5))),
}
FLOAT_ONLY = {"exp", "log", "sqrt", "rsqrt", "sigmoid", "tanh", "erf"}


@given(st.sampled_from(sorted(UNARY)), st.sampled_from(NUMERIC_DTYPES), st.data())
def test_unary_ops_match_float64_formulas(
    name: str, dtype: DType, data: st.DataObject
) -> None:
    fn, formula = UNARY[name]
    pair = data.draw(strided_pairs(dtype=dtype))
    if name == "gelu" and not dtype.is_floating_point:
        with pytest.raises(DTypeError, match="gelu: needs a floating-point tensor"):
            fn(pair.tensor)
        return
    out_dtype = (
        dtype
        if (dtype.is_floating_point or name not in FLOAT_ONLY)
        else (dtypes.float32)
    )
    with np.errstate(all="ignore"):
        expected = np.asarray(formula(pair.array.astype(np.float64)))
    _close(fn(pair.tensor), expected.astype(out_dtype.np_dtype), out_dtype)


@given(strided_pairs(dtype=dtypes.float32), st.data())
def test_maximum_minimum_clamp_and_where_match_numpy(
    pair: Pair, data: st.DataObject
) -> None:
    t, a = pair.tensor, pair.array
    other = data.draw(arrays(dtypes.float32, a.shape))
    o = ember.tensor(other)
    _close(ember.maximum(t, o), np.maximum(a, other), dtypes.float32)
    _close(ember.minimum(t, o), np.minimum(a, other), dtypes.float32)
    _close(t.max(o), np.maximum(a, other), dtypes.float32)
    low, high = sorted(data.draw(st.lists(st.integers(-5, 5), min_size=2, max_size=2)))
    _close(t.clamp(low, high), np.clip(a, low, high), dtypes.float32)
    _close(t.clamp(min=low), np.maximum(a, low), dtypes.float32)
    _close(t.clamp(max=o), np.minimum(a, other), dtypes.float32)
    _close(ember.where(t > o, t, 0.5), np.where(a > other, a, 0.5), dtypes.float32)
    _close(ember.where(t > 0, 1, 0), np.where(a > 0, 1, 0), dtypes.int64)


def test_clamp_promotes_an_integer_tensor_with_float_bounds() -> None:
    t = ember.tensor([-3, 0, 7])
    _close(
        t.clamp(-1.5, 2.5), np.clip(np.array([-3, 0, 7.0]), -1.5, 2.5), dtypes.float32
    )
    _close(t.clamp(0, 5), np.clip(np.array([-3, 0, 7]), 0, 5), dtypes.int64)


@given(strided_pairs(), st.sampled_from(DTYPES))
def test_casts_match_numpy_astype(pair: Pair, target: DType) -> None:
    with np.errstate(all="ignore"):
        expected = pair.array.astype(target.np_dtype)
    _close(pair.tensor.to(target), expected, target)
    _close(pair.tensor.to(target.name), expected, target)
    method = {
        dtypes.float32: "float",
        dtypes.float64: "double",
        dtypes.int32: "int",
        dtypes.int64: "long",
        dtypes.bool_: "bool",
    }[target]
    _close(getattr(pair.tensor, method)(), expected, target)
    if target is pair.tensor.dtype:
        assert pair.tensor.to(target) is pair.tensor


REDUCTIONS: dict[str, tuple[Callable[..., Any], Callable[..., Any], bool]] = {
    "sum": (ember.sum, np.sum, False),
    "mean": (ember.mean, np.mean, False),
    "amax": (ember.amax, np.max, True),
    "amin": (ember.amin, np.min, True),
    "var": (
        ember.var,
        lambda a, axis, keepdims: np.var(a, axis=axis, keepdims=keepdims, ddof=1),
        False,
    ),
}


@given(st.sampled_from(sorted(REDUCTIONS)), st.sampled_from(DTYPES), st.data())
def test_reductions_match_numpy(name: str, dtype: DType, data: st.DataObject) -> None:
    fn, numpy_fn, needs_elements = REDUCTIONS[name]
    pair = data.draw(strided_pairs(dtype=dtype, nonempty=needs_elements))
    a, t = pair.array, pair.tensor
    form = data.draw(st.sampled_from(["all", "int", "tuple"]))
    keepdim = data.draw(st.booleans())
    if a.ndim == 0:
        dim, axis = data.draw(st.sampled_from([None, 0, -1])), None
    elif form == "all":
        dim, axis = None, None
    elif form == "int":
        dim = data.draw(st.integers(-a.ndim, a.ndim - 1))
        axis = dim
    else:
        dim = tuple(
            data.draw(st.lists(st.integers(0, a.ndim - 1), min_size=1, unique=True))
        )
        axis = dim
    if name in ("mean", "var") and not dtype.is_floating_point:
        with pytest.raises(DTypeError, match=f"{name}: needs a floating-point tensor"):
            fn(t, dim, keepdim=keepdim)
        return
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's empty-slice notes
        expected = np.asarray(
            numpy_fn(a.astype(np.float64), axis=axis, keepdims=keepdim)
        )
    out_dtype = dtype
    if name == "sum" and not dtype.is_floating_point:
        out_dtype = dtypes.int64
    _close(fn(t, dim, keepdim=keepdim), expected, out_dtype)


@given(strided_pairs(dtype=dtypes.float32, nonempty=True), st.data())
def test_max_min_argmax_with_a_dim_return_values_and_first_indices(
    pair: Pair, data: st.DataObject
) -> None:
    a, t = pair.array, pair.tensor
    _close(t.max(), np.asarray(a.max()), dtypes.float32)
    _close(t.argmax(), np.asarray(np.argmax(a)), dtypes.int64)
    _close(t.argmin(), np.asarray(np.argmin(a)), dtypes.int64)
    if a.ndim == 0:
        return
    dim = data.draw(st.integers(-a.ndim, a.ndim - 1))
    keepdim = data.draw(st.booleans())
    values, indices = t.max(dim, keepdim=keepdim)
    _close(values, np.max(a, axis=dim, keepdims=keepdim), dtypes.float32)
    _close(indices, np.argmax(a, axis=dim, keepdims=keepdim), dtypes.int64)
    values, indices = t.min(dim, keepdim)
    _close(values, np.min(a, axis=dim, keepdims=keepdim), dtypes.float32)
    _close(indices, np.argmin(a, axis=dim, keepdims=keepdim), dtypes.int64)


@given(
    hnp.mutually_broadcastable_shapes(
        signature=np.matmul.signature, max_dims=3, max_side=4
    ),
    st.sampled_from(NUMERIC_DTYPES),
    st.data(),
)
def test_matmul_broadcasts_batches_like_numpy(
    found: Any, dtype: DType, data: st.DataObject
) -> None:
    sa, sb = found.input_shapes
    a, b = data.draw(arrays(dtype, sa)), data.draw(arrays(dtype, sb))
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    ta, tb = ember.tensor(a), ember.tensor(b)
    _close(ta @ tb, expected, dtype)
    _close(ember.matmul(ta, tb), expected, dtype)
    if ta.ndim >= 2:
        _close(ta.mT.mT @ tb, expected, dtype)


@given(strided_pairs(dtype=dtypes.float64, nonempty=True), st.data())
def test_softmax_and_log_softmax_match_the_definition(
    pair: Pair, data: st.DataObject
) -> None:
    a, t = pair.array, pair.tensor
    dim = data.draw(st.integers(-max(a.ndim, 1), max(a.ndim, 1) - 1))
    axis = None if a.ndim == 0 else dim
    e = np.exp(a)
    expected = e / np.sum(e, axis=axis, keepdims=True)
    _close(t.softmax(dim), expected, dtypes.float64)
    _close(t.log_softmax(dim), np.log(expected), dtypes.float64)
    _close(ember.softmax(t.float(), dim), expected, dtypes.float32)


@given(st.data())
def test_cat_and_stack_match_numpy_with_promotion(data: st.DataObject) -> None:
    shape = list(data.draw(shapes(min_dims=1, max_dims=3)))
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    pieces = []
    for _ in range(data.draw(st.integers(1, 3))):
        shape[dim] = data.draw(st.integers(0, 3))
        pieces.append(data.draw(arrays(data.draw(st.sampled_from(DTYPES)), shape)))
    tensors = [ember.tensor(p) for p in pieces]
    promoted = expected_result_dtype([("tensor", t.dtype) for t in tensors])
    expected = np.concatenate([p.astype(np.float64) for p in pieces], axis=dim)
    _close(ember.cat(tensors, dim), expected.astype(promoted.np_dtype), promoted)
    same = [ember.tensor(data.draw(arrays(t.dtype, pieces[0].shape))) for t in tensors]
    stack_dim = data.draw(st.integers(-len(shape) - 1, len(shape)))
    expected = np.stack([s.numpy().astype(np.float64) for s in same], axis=stack_dim)
    _close(ember.stack(same, stack_dim), expected.astype(promoted.np_dtype), promoted)


def test_non_view_results_are_fresh_dense_tensors() -> None:
    x = ember.arange(12.0).view(3, 4).T[1:]
    for result in (
        x + 1,
        x.exp(),
        x.sum(0),
        x @ x.T,
        x.softmax(0),
        x.clone(),
        ember.cat([x, x]),
        x.to(ember.float64),
    ):
        assert result.is_contiguous() and result.storage_offset() == 0
        assert result.untyped_storage_id() != x.untyped_storage_id()


def test_shape_errors_name_the_op_and_both_shapes() -> None:
    with pytest.raises(
        ShapeError,
        match=r"add: shapes \(2, 3\) and \(2,\) cannot be "
        "broadcast",
    ):
        ember.zeros(2, 3) + ember.zeros(2)
    with pytest.raises(
        ShapeError,
        match=r"matmul: shapes \(2, 3\) and \(2, 3\) do not "
        "line up: 3 columns against 2 rows",
    ):
        ember.zeros(2, 3) @ ember.zeros(2, 3)


def test_a_matmul_reaching_inf_times_zero_gives_nan_without_a_numpy_warning():
    a = ember.tensor(np.array([[np.inf, 1.0]], np.float32))
    b = ember.tensor(np.array([[0.0], [1.0]], np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        product = (a @ b).numpy()
    assert np.isnan(product).all()


def test_every_reference_runs_without_numpy_floating_point_warnings():
    from ember.ir.registry import all_ops

    assert all(getattr(op.reference, "__ember_quiet__", False) for op in all_ops())
    x = ember.tensor(np.array([[np.inf, -np.inf], [0.0, 0.0]], np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sums = x.sum(1).numpy()
        ratios = (x / x).numpy()
    assert np.isnan(sums[0]) and sums[1] == 0.0
    assert np.isnan(ratios).all()
