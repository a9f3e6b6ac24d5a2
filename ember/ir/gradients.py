"""Gradient rules of every differentiable op, written with ember functions.

A rule receives a :class:`~ember.ir.registry.GradContext` and the gradient of the
op's output and returns one gradient per input: None exactly for the inputs whose
``ctx.needs_input_grad`` is False. A rule may return a gradient in the broadcast
shape of the output: :func:`fit_gradient` sums it back to the input's shape and casts
it to the input's dtype, for the eager engine and the graph autodiff alike. Because
rules only call ember functions, the same rule runs on eager tensors and traces into
backward graphs.

Each rule also declares what it reads (``saves``): which inputs, and whether the
output, must be kept alive until backward. Everything else is dropped at once, so a
graph holds only the activations backward needs, and an in-place write into a value
no rule reads is not an error. The declaration may depend on which inputs need a
gradient (``x * w`` keeps ``w`` only to compute the gradient of ``x``).
:func:`save_plan` answers it; a rule reading an input it did not declare finds a
placeholder with only ``.meta``, and the gradient checks of every op catch that.

    >>> save_plan("mul", (True, False))
    ((1,), False)
    >>> save_plan("exp", (True,))
    ((), True)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from ember.errors import GradientMismatchError
from ember.ir import functions as F
from ember.ir import layout
from ember.ir.meta import TensorMeta
from ember.ir.ops.matmul import matmul_shape
from ember.ir.ops.reduction import reduced_shape
from ember.ir.registry import GradContext, GradRule, register_grad

Value = Any
Needs = tuple[bool, ...]
#: The inputs (by position) a rule reads, and whether it reads the output.
SavePlan = tuple[tuple[int, ...], bool]
SaveSpec = Callable[[Needs], SavePlan]

_SAVES: dict[str, SaveSpec] = {}


def _nothing(need: Needs) -> SavePlan:
    return (), False


def _output(need: Needs) -> SavePlan:
    return (), True


def _inputs(*positions: int) -> SaveSpec:
    def spec(need: Needs) -> SavePlan:
        return positions, False

    return spec


def _partners(need: Needs) -> SavePlan:
    """Bilinear ops (mul, matmul, linear): each operand's gradient reads the other."""
    return tuple(i for i, j in ((0, 1), (1, 0)) if need[j]), False


def gradient(name: str, saves: SaveSpec = _nothing) -> Callable[[GradRule], GradRule]:
    """Register ``rule`` as the gradient of op ``name``, reading what ``saves`` says."""

    def install(rule: GradRule) -> GradRule:
        register_grad(name)(rule)
        _SAVES[name] = saves
        return rule

    return install


@functools.cache
def save_plan(name: str, needs: Needs) -> SavePlan:
    """The inputs and output the gradient rule of ``name`` reads, given ``needs``.

    An op without a rule saves nothing; backward through it then raises.
    """
    return _SAVES.get(name, _nothing)(needs)


def fit_gradient(grad: Value, meta: TensorMeta, op: str) -> Value:
    """Sum a broadcast gradient back to ``meta.shape`` and cast it to ``meta.dtype``.

    A gradient whose shape does not broadcast onto the input's exactly is a bug in
    the rule of ``op`` and raises GradientMismatchError.
    """
    shape = grad.meta.shape
    if shape != meta.shape:
        if not _broadcasts_onto(meta.shape, shape):
            raise GradientMismatchError(
                f"the gradient rule of {op} produced shape {shape} for an input of "
                f"shape {meta.shape}",
                op=op,
                expected=meta.shape,
                actual=shape,
                hint="a rule returns the input's shape or a shape it broadcasts to",
            )
        grad = F.sum_to_shape(grad, meta.shape)
    if grad.meta.dtype is not meta.dtype:
        grad = F.cast(grad, meta.dtype)
    return grad


def _broadcasts_onto(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
    lead = len(big) - len(small)
    return lead >= 0 and all(s == b or s == 1 for s, b in zip(small, big[lead:]))


def _expand_reduced(grad: Value, ctx: GradContext) -> Value:
    """Broadcast the gradient of a reduction back over the reduced dims."""
    x = ctx.inputs[0].meta
    kept = reduced_shape(x.shape, ctx.attrs["dims"], True)
    if grad.meta.shape != kept:
        grad = F.reshape(grad, kept)
    return F.expand(grad, x.shape)


def _count(ctx: GradContext) -> int:
    shape = ctx.inputs[0].meta.shape
    return layout.numel(shape[d] for d in ctx.attrs["dims"])


def _if(need: bool, make: Callable[[], Value]) -> Value:
    return make() if need else None


# Pointwise --------------------------------------------------------------------------


@gradient("neg")
def _neg(ctx: GradContext, g: Value):
    return (F.neg(g),)


def _sign(x: Value) -> Value:
    """-1, 0 or 1 in ``x``'s dtype: the subgradient ember uses at kinks is 0."""
    return F.sub(F.cast(F.gt(x, 0), x.meta.dtype), F.cast(F.lt(x, 0), x.meta.dtype))


@gradient("abs", _inputs(0))
def _abs(ctx: GradContext, g: Value):
    return (F.mul(g, _sign(ctx.inputs[0])),)


@gradient("exp", _output)
def _exp(ctx: GradContext, g: Value):
    return (F.mul(g, ctx.output),)


@gradient("log", _inputs(0))
def _log(ctx: GradContext, g: Value):
    return (F.div(g, ctx.inputs[0]),)


@gradient("sqrt", _output)
def _sqrt(ctx: GradContext, g: Value):
    return (F.div(g, F.mul(ctx.output, 2.0)),)


@gradient("rsqrt", _output)
def _rsqrt(ctx: GradContext, g: Value):
    # d/dx x**-0.5 = -0.5 x**-1.5 = -0.5 out**3
    out = ctx.output
    return (F.mul(g, F.mul(F.mul(F.mul(out, out), out), -0.5)),)


@gradient("relu", _inputs(0))
def _relu(ctx: GradContext, g: Value):
    return (F.where(F.gt(ctx.inputs[0], 0), g, 0.0),)


@gradient("sigmoid", _output)
def _sigmoid(ctx: GradContext, g: Value):
    out = ctx.output
    return (F.mul(g, F.mul(out, F.sub(1.0, out))),)


@gradient("tanh", _output)
def _tanh(ctx: GradContext, g: Value):
    out = ctx.output
    return (F.mul(g, F.sub(1.0, F.mul(out, out))),)


@gradient("erf", _inputs(0))
def _erf(ctx: GradContext, g: Value):
    x = ctx.inputs[0]
    return (F.mul(g, F.mul(F.exp(F.neg(F.mul(x, x))), 2.0 / math.sqrt(math.pi))),)


@gradient("gelu", _inputs(0))
def _gelu(ctx: GradContext, g: Value):
    # d/dx x Phi(x) = Phi(x) + x phi(x)
    x = ctx.inputs[0]
    cdf = F.mul(F.add(F.erf(F.mul(x, 1.0 / math.sqrt(2.0))), 1.0), 0.5)
    pdf = F.mul(F.exp(F.mul(F.mul(x, x), -0.5)), 1.0 / math.sqrt(2.0 * math.pi))
    return (F.mul(g, F.add(cdf, F.mul(x, pdf))),)


@gradient("copy")
def _copy(ctx: GradContext, g: Value):
    return (g,)


@gradient("cast")
def _cast(ctx: GradContext, g: Value):
    # fit_gradient casts back to the input's dtype.
    return (g,)


@gradient("add")
def _add(ctx: GradContext, g: Value):
    need = ctx.needs_input_grad
    return (_if(need[0], lambda: g), _if(need[1], lambda: g))


@gradient("sub")
def _sub(ctx: GradContext, g: Value):
    need = ctx.needs_input_grad
    return (_if(need[0], lambda: g), _if(need[1], lambda: F.neg(g)))


@gradient("mul", _partners)
def _mul(ctx: GradContext, g: Value):
    x, y = ctx.inputs
    need = ctx.needs_input_grad
    return (_if(need[0], lambda: F.mul(g, y)), _if(need[1], lambda: F.mul(g, x)))


@gradient("div", lambda need: ((1,), need[1]))
def _div(ctx: GradContext, g: Value):
    # d/dy x / y = -(x / y) / y = -out / y
    y = ctx.inputs[1]
    need = ctx.needs_input_grad
    gx = _if(need[0], lambda: F.div(g, y))
    gy = _if(need[1], lambda: F.neg(F.div(F.mul(g, ctx.output), y)))
    return gx, gy


@gradient("pow", lambda need: ((0, 1) if need[0] else (0,), need[1]))
def _pow(ctx: GradContext, g: Value):
    x, y = ctx.inputs
    need = ctx.needs_input_grad
    gx = gy = None
    if need[0]:
        # y x**(y-1), and 0 where y == 0 (x**0 is constant even at x == 0).
        slope = F.mul(y, F.pow(x, F.sub(y, 1)))
        gx = F.mul(g, F.where(F.eq(y, 0), 0.0, slope))
    if need[1]:
        # x**y log x, and 0 where x == 0 (the limit for y > 0), as PyTorch does.
        zero = F.eq(x, 0)
        log_x = F.log(F.where(zero, 1.0, x))
        gy = F.mul(g, F.where(zero, 0.0, F.mul(ctx.output, log_x)))
    return gx, gy


def _split_extreme(ctx: GradContext, g: Value, wins: Callable) -> tuple[Value, Value]:
    x, y = ctx.inputs
    # Ties send half of the gradient to each side, as PyTorch does.
    share = F.where(wins(x, y), 1.0, F.where(F.eq(x, y), 0.5, 0.0))
    need = ctx.needs_input_grad
    return (
        _if(need[0], lambda: F.mul(g, share)),
        _if(need[1], lambda: F.mul(g, F.sub(1.0, share))),
    )


@gradient("maximum", _inputs(0, 1))
def _maximum(ctx: GradContext, g: Value):
    return _split_extreme(ctx, g, F.gt)


@gradient("minimum", _inputs(0, 1))
def _minimum(ctx: GradContext, g: Value):
    return _split_extreme(ctx, g, F.lt)


@gradient("where", _inputs(0))
def _where(ctx: GradContext, g: Value):
    cond = ctx.inputs[0]
    need = ctx.needs_input_grad
    return (
        None,
        _if(need[1], lambda: F.where(cond, g, 0.0)),
        _if(need[2], lambda: F.where(cond, 0.0, g)),
    )


@gradient("clamp", _inputs(0))
def _clamp(ctx: GradContext, g: Value):
    # The gradient passes where min <= x <= max, boundaries included (PyTorch's choice).
    x = ctx.inputs[0]
    low, high = ctx.attrs.get("min"), ctx.attrs.get("max")
    inside = F.ge(x, low) if low is not None else None
    if high is not None:
        upper = F.le(x, high)
        inside = upper if inside is None else F.logical_and(inside, upper)
    return (F.where(inside, g, 0.0),)


# Reductions -------------------------------------------------------------------------


@gradient("sum")
def _sum(ctx: GradContext, g: Value):
    return (_expand_reduced(g, ctx),)


@gradient("mean")
def _mean(ctx: GradContext, g: Value):
    return (F.div(_expand_reduced(g, ctx), float(max(_count(ctx), 1))),)


def _extreme_grad(ctx: GradContext, g: Value):
    x = ctx.inputs[0]
    dims = ctx.attrs["dims"]
    kept = reduced_shape(x.meta.shape, dims, True)
    mask = F.cast(F.eq(x, F.reshape(ctx.output, kept)), x.meta.dtype)
    # Ties share the gradient evenly, as PyTorch's amax and amin do.
    count = F.sum(mask, dims, keepdim=True)
    return (F.mul(F.div(mask, count), F.reshape(g, kept)),)


gradient("amax", lambda need: ((0,), True))(_extreme_grad)
gradient("amin", lambda need: ((0,), True))(_extreme_grad)


@gradient("var", _inputs(0))
def _var(ctx: GradContext, g: Value):
    # d/dx_i sum_j (x_j - mean)^2 / (N - c) = 2 (x_i - mean) / (N - c)
    x = ctx.inputs[0]
    dims = ctx.attrs["dims"]
    denom = _count(ctx) - ctx.attrs.get("correction", 1)
    centered = F.sub(x, F.mean(x, dims, keepdim=True))
    scale = 2.0 / denom if denom > 0 else math.nan
    return (F.mul(F.mul(centered, scale), _expand_reduced(g, ctx)),)


@gradient("softmax", _output)
def _softmax(ctx: GradContext, g: Value):
    out, dim = ctx.output, ctx.attrs["dim"]
    inner = F.sum(F.mul(g, out), dim, keepdim=True)
    return (F.mul(out, F.sub(g, inner)),)


@gradient("log_softmax", _output)
def _log_softmax(ctx: GradContext, g: Value):
    out, dim = ctx.output, ctx.attrs["dim"]
    return (F.sub(g, F.mul(F.exp(out), F.sum(g, dim, keepdim=True))),)


# Matmul and linear ------------------------------------------------------------------


@gradient("matmul", _partners)
def _matmul(ctx: GradContext, g: Value):
    a, b = ctx.inputs
    need = ctx.needs_input_grad
    # Work on the 2-d-or-more forms: a vector a is a row (1, k), a vector b a column
    # (k, 1), and the gradient takes the full (..., m, n) shape of their product.
    a2 = (1,) + a.meta.shape if a.meta.ndim == 1 else a.meta.shape
    b2 = b.meta.shape + (1,) if b.meta.ndim == 1 else b.meta.shape
    g2 = F.reshape(g, matmul_shape(a2, b2))
    ga = gb = None
    if need[0]:
        ga = F.matmul(g2, F.transpose(F.reshape(b, b2), -1, -2))
        ga = F.reshape(F.sum_to_shape(ga, a2), a.meta.shape)
    if need[1]:
        gb = F.matmul(F.transpose(F.reshape(a, a2), -1, -2), g2)
        gb = F.reshape(F.sum_to_shape(gb, b2), b.meta.shape)
    return ga, gb


@gradient("linear", _partners)
def _linear(ctx: GradContext, g: Value):
    x, w = ctx.inputs[0], ctx.inputs[1]
    need = ctx.needs_input_grad
    out_features, in_features = w.meta.shape
    gx = _if(need[0], lambda: F.matmul(g, w))
    gw = None
    if need[1]:
        g2 = F.reshape(g, -1, out_features)
        gw = F.matmul(F.transpose(g2, 0, 1), F.reshape(x, -1, in_features))
    if len(ctx.inputs) == 2:
        return gx, gw
    return gx, gw, _if(need[2], lambda: g)


# Losses -----------------------------------------------------------------------------


def _loss_grad(ctx: GradContext, g: Value, local: Value):
    pred = ctx.inputs[0]
    if ctx.attrs.get("reduction", "mean") == "mean":
        local = F.div(local, float(max(pred.meta.numel, 1)))
    grad = F.mul(local, g)
    need = ctx.needs_input_grad
    return (_if(need[0], lambda: grad), _if(need[1], lambda: F.neg(grad)))


def _diff(ctx: GradContext) -> Value:
    return F.sub(ctx.inputs[0], ctx.inputs[1])


@gradient("mse_loss", _inputs(0, 1))
def _mse(ctx: GradContext, g: Value):
    return _loss_grad(ctx, g, F.mul(_diff(ctx), 2.0))


@gradient("l1_loss", _inputs(0, 1))
def _l1(ctx: GradContext, g: Value):
    return _loss_grad(ctx, g, _sign(_diff(ctx)))


@gradient("huber_loss", _inputs(0, 1))
def _huber(ctx: GradContext, g: Value):
    # The derivative of the loss in the difference d is d clamped to [-delta, delta].
    delta = ctx.attrs.get("delta", 1.0)
    return _loss_grad(ctx, g, F.clamp(_diff(ctx), -delta, delta))


# Views and gathers ------------------------------------------------------------------


@gradient("view")
def _view(ctx: GradContext, g: Value):
    return (F.reshape(g, ctx.inputs[0].meta.shape),)


gradient("squeeze")(_view)
gradient("unsqueeze")(_view)


@gradient("permute")
def _permute(ctx: GradContext, g: Value):
    dims = ctx.attrs["dims"]
    inverse = [0] * len(dims)
    for i, d in enumerate(dims):
        inverse[d % len(dims)] = i
    return (F.permute(g, *inverse),)


@gradient("expand")
def _expand(ctx: GradContext, g: Value):
    return (F.sum_to_shape(g, ctx.inputs[0].meta.shape),)


@gradient("slice")
def _slice(ctx: GradContext, g: Value):
    a = ctx.attrs
    shape = ctx.inputs[0].meta.shape
    return (F.scatter_slice(g, shape, a["dim"], a["start"], a["step"]),)


@gradient("select")
def _select(ctx: GradContext, g: Value):
    shape = ctx.inputs[0].meta.shape
    dim = ctx.attrs["dim"]
    index = ctx.attrs["index"] % shape[dim]
    return (F.scatter_slice(F.unsqueeze(g, dim), shape, dim, index, 1),)


@gradient("scatter_slice")
def _scatter_slice(ctx: GradContext, g: Value):
    a = ctx.attrs
    length = ctx.inputs[0].meta.shape[a["dim"]]
    stop = a["start"] + a["step"] * (length - 1) + 1 if length else a["start"]
    return (F.slice(g, a["dim"], a["start"], stop, a["step"]),)


@gradient("cat")
def _cat(ctx: GradContext, g: Value):
    dim = ctx.attrs["dim"]
    grads, start = [], 0
    for value, need in zip(ctx.inputs, ctx.needs_input_grad):
        size = value.meta.shape[dim]
        grads.append(F.narrow(g, dim, start, size) if need else None)
        start += size
    return tuple(grads)


@gradient("stack")
def _stack(ctx: GradContext, g: Value):
    dim = ctx.attrs["dim"]
    return tuple(
        F.select(g, dim, i) if need else None
        for i, need in enumerate(ctx.needs_input_grad)
    )
