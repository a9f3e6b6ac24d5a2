"""Gradient rules of every differentiable op, written with ember functions.

A rule receives a :class:`~ember.ir.registry.GradContext` and the gradient of the
op's output and returns one gradient (or None) per input. Rules may return a gradient
in the broadcast shape of the output: :func:`fit_gradient` sums it back to the input's
shape and casts it to the input's dtype, for the eager engine and the graph autodiff
alike. Because rules only call ember functions, the same rule runs on eager tensors
and traces into backward graphs.
"""

from __future__ import annotations

import math
from typing import Any

from ember.errors import GradientMismatchError
from ember.ir import functions as F
from ember.ir import layout
from ember.ir.meta import TensorMeta
from ember.ir.ops.reduction import reduced_shape
from ember.ir.registry import GradContext, register_grad

Value = Any


def fit_gradient(grad: Value, meta: TensorMeta, op: str) -> Value:
    """Sum a broadcast gradient back to ``meta.shape`` and cast it to ``meta.dtype``."""
    shape = grad.meta.shape
    if shape != meta.shape:
        try:
            target = layout.broadcast_shapes(shape, meta.shape, op=op)
        except Exception:
            target = None
        if target != shape:
            raise GradientMismatchError(
                f"the gradient rule of {op} produced shape {shape} for an input of "
                f"shape {meta.shape}",
                op=op,
                expected=meta.shape,
                actual=shape,
            )
        grad = F.sum_to_shape(grad, meta.shape)
    if grad.meta.dtype is not meta.dtype:
        grad = F.cast(grad, meta.dtype)
    return grad


def _expand_reduced(grad: Value, ctx: GradContext) -> Value:
    """Broadcast the gradient of a reduction back over the reduced dims."""
    x = ctx.inputs[0].meta
    dims = ctx.attrs["dims"]
    kept = reduced_shape(x.shape, dims, True)
    if grad.meta.shape != kept:
        grad = F.reshape(grad, kept)
    return F.expand(grad, x.shape)


def _count(ctx: GradContext) -> int:
    shape = ctx.inputs[0].meta.shape
    return layout.numel(shape[d] for d in ctx.attrs["dims"])


# Pointwise --------------------------------------------------------------------------


@register_grad("neg")
def _neg(ctx: GradContext, g: Value):
    return (F.neg(g),)


@register_grad("abs")
def _abs(ctx: GradContext, g: Value):
    x = ctx.inputs[0]
    return (F.where(F.gt(x, 0), g, F.where(F.lt(x, 0), F.neg(g), 0.0)),)


@register_grad("exp")
def _exp(ctx: GradContext, g: Value):
    return (F.mul(g, ctx.output),)


@register_grad("log")
def _log(ctx: GradContext, g: Value):
    return (F.div(g, ctx.inputs[0]),)


@register_grad("sqrt")
def _sqrt(ctx: GradContext, g: Value):
    return (F.div(g, F.mul(ctx.output, 2.0)),)


@register_grad("rsqrt")
def _rsqrt(ctx: GradContext, g: Value):
    out = ctx.output
    return (F.mul(g, F.mul(F.mul(F.mul(out, out), out), -0.5)),)


@register_grad("relu")
def _relu(ctx: GradContext, g: Value):
    return (F.where(F.gt(ctx.inputs[0], 0), g, 0.0),)


@register_grad("sigmoid")
def _sigmoid(ctx: GradContext, g: Value):
    out = ctx.output
    return (F.mul(g, F.mul(out, F.sub(1.0, out))),)


@register_grad("tanh")
def _tanh(ctx: GradContext, g: Value):
    out = ctx.output
    return (F.mul(g, F.sub(1.0, F.mul(out, out))),)


@register_grad("erf")
def _erf(ctx: GradContext, g: Value):
    x = ctx.inputs[0]
    return (F.mul(g, F.mul(F.exp(F.neg(F.mul(x, x))), 2.0 / math.sqrt(math.pi))),)


@register_grad("copy")
def _copy(ctx: GradContext, g: Value):
    return (g,)


@register_grad("cast")
def _cast(ctx: GradContext, g: Value):
    return (g,)


@register_grad("add")
def _add(ctx: GradContext, g: Value):
    return (g, g)


@register_grad("sub")
def _sub(ctx: GradContext, g: Value):
    return (g, F.neg(g) if ctx.needs_input_grad[1] else None)


@register_grad("mul")
def _mul(ctx: GradContext, g: Value):
    x, y = ctx.inputs
    need = ctx.needs_input_grad
    return (F.mul(g, y) if need[0] else None, F.mul(g, x) if need[1] else None)


@register_grad("div")
def _div(ctx: GradContext, g: Value):
    _, y = ctx.inputs
    need = ctx.needs_input_grad
    gx = F.div(g, y) if need[0] else None
    gy = F.neg(F.div(F.mul(g, ctx.output), y)) if need[1] else None
    return gx, gy


@register_grad("pow")
def _pow(ctx: GradContext, g: Value):
    x, y = ctx.inputs
    need = ctx.needs_input_grad
    gx = F.mul(g, F.mul(y, F.pow(x, F.sub(y, 1)))) if need[0] else None
    gy = None
    if need[1]:
        # d/dy x**y = x**y log x; PyTorch's convention makes it 0 where x == 0.
        safe = F.where(F.eq(x, 0), 1.0, x)
        gy = F.where(F.eq(x, 0), 0.0, F.mul(g, F.mul(ctx.output, F.log(safe))))
    return gx, gy


def _split_extreme(ctx: GradContext, g: Value, wins) -> tuple[Value, Value]:
    x, y = ctx.inputs
    # Ties send half of the gradient to each side, as PyTorch does.
    share = F.where(wins(x, y), 1.0, F.where(F.eq(x, y), 0.5, 0.0))
    return F.mul(g, share), F.mul(g, F.sub(1.0, share))


@register_grad("maximum")
def _maximum(ctx: GradContext, g: Value):
    return _split_extreme(ctx, g, F.gt)


@register_grad("minimum")
def _minimum(ctx: GradContext, g: Value):
    return _split_extreme(ctx, g, F.lt)


@register_grad("where")
def _where(ctx: GradContext, g: Value):
    cond = ctx.inputs[0]
    need = ctx.needs_input_grad
    return (
        None,
        F.where(cond, g, 0.0) if need[1] else None,
        F.where(cond, 0.0, g) if need[2] else None,
    )


@register_grad("clamp")
def _clamp(ctx: GradContext, g: Value):
    x = ctx.inputs[0]
    low, high = ctx.attrs.get("min"), ctx.attrs.get("max")
    inside = None
    if low is not None:
        inside = F.ge(x, low)
    if high is not None:
        upper = F.le(x, high)
        inside = upper if inside is None else F.logical_and(inside, upper)
    return (F.where(inside, g, 0.0),)


@register_grad("gelu")
def _gelu(ctx: GradContext, g: Value):
    x = ctx.inputs[0]
    cdf = F.mul(F.add(F.erf(F.mul(x, 1.0 / math.sqrt(2.0))), 1.0), 0.5)
    pdf = F.mul(F.exp(F.mul(F.mul(x, x), -0.5)), 1.0 / math.sqrt(2.0 * math.pi))
    return (F.mul(g, F.add(cdf, F.mul(x, pdf))),)


# Reductions -------------------------------------------------------------------------


@register_grad("sum")
def _sum(ctx: GradContext, g: Value):
    return (_expand_reduced(g, ctx),)


@register_grad("mean")
def _mean(ctx: GradContext, g: Value):
    return (F.div(_expand_reduced(g, ctx), float(max(_count(ctx), 1))),)


def _extreme_grad(ctx: GradContext, g: Value):
    x = ctx.inputs[0]
    dims = ctx.attrs["dims"]
    kept = reduced_shape(x.meta.shape, dims, True)
    out = F.reshape(ctx.output, kept)
    mask = F.cast(F.eq(x, out), x.meta.dtype)
    # Ties share the gradient evenly, as PyTorch's amax/amin do.
    count = F.sum(mask, dims, keepdim=True)
    return (F.mul(F.div(mask, count), F.reshape(g, kept)),)


register_grad("amax")(_extreme_grad)
register_grad("amin")(_extreme_grad)


@register_grad("var")
def _var(ctx: GradContext, g: Value):
    x = ctx.inputs[0]
    dims = ctx.attrs["dims"]
    denom = max(_count(ctx) - ctx.attrs.get("correction", 1), 0)
    centered = F.sub(x, F.mean(x, dims, keepdim=True))
    scale = 2.0 / denom if denom else math.nan
    return (F.mul(F.mul(centered, scale), _expand_reduced(g, ctx)),)


@register_grad("softmax")
def _softmax(ctx: GradContext, g: Value):
    out, dim = ctx.output, ctx.attrs["dim"]
    inner = F.sum(F.mul(g, out), dim, keepdim=True)
    return (F.mul(out, F.sub(g, inner)),)


@register_grad("log_softmax")
def _log_softmax(ctx: GradContext, g: Value):
    out, dim = ctx.output, ctx.attrs["dim"]
    return (F.sub(g, F.mul(F.exp(out), F.sum(g, dim, keepdim=True))),)


# Matmul and linear ------------------------------------------------------------------


@register_grad("matmul")
def _matmul(ctx: GradContext, g: Value):
    a, b = ctx.inputs
    need = ctx.needs_input_grad
    a2 = F.unsqueeze(a, 0) if a.meta.ndim == 1 else a
    b2 = F.unsqueeze(b, -1) if b.meta.ndim == 1 else b
    g2 = g
    if a.meta.ndim == 1:
        g2 = F.unsqueeze(g2, -2)
    if b.meta.ndim == 1:
        g2 = F.unsqueeze(g2, -1)
    ga = gb = None
    if need[0]:
        ga = F.matmul(g2, F.transpose(b2, -1, -2))
        ga = F.reshape(F.sum_to_shape(ga, a2.meta.shape), a.meta.shape)
    if need[1]:
        gb = F.matmul(F.transpose(a2, -1, -2), g2)
        gb = F.reshape(F.sum_to_shape(gb, b2.meta.shape), b.meta.shape)
    return ga, gb


@register_grad("linear")
def _linear(ctx: GradContext, g: Value):
    x, w = ctx.inputs[0], ctx.inputs[1]
    need = ctx.needs_input_grad
    out_features, in_features = w.meta.shape
    gx = F.matmul(g, w) if need[0] else None
    gw = None
    if need[1]:
        g2 = F.reshape(g, -1, out_features)
        x2 = F.reshape(x, -1, in_features)
        gw = F.matmul(F.transpose(g2, 0, 1), x2)
    grads = [gx, gw]
    if len(ctx.inputs) == 3:
        grads.append(g if need[2] else None)
    return tuple(grads)


# Losses -----------------------------------------------------------------------------


def _loss_grad(ctx: GradContext, g: Value, local: Value):
    pred = ctx.inputs[0]
    reduction = ctx.attrs.get("reduction", "mean")
    if reduction == "mean":
        local = F.div(local, float(max(pred.meta.numel, 1)))
    grad = F.mul(local, g)
    need = ctx.needs_input_grad
    return (grad if need[0] else None, F.neg(grad) if need[1] else None)


def _diff(ctx: GradContext) -> Value:
    return F.sub(ctx.inputs[0], ctx.inputs[1])


@register_grad("mse_loss")
def _mse(ctx: GradContext, g: Value):
    return _loss_grad(ctx, g, F.mul(_diff(ctx), 2.0))


@register_grad("l1_loss")
def _l1(ctx: GradContext, g: Value):
    d = _diff(ctx)
    return _loss_grad(ctx, g, F.where(F.gt(d, 0), 1.0, F.where(F.lt(d, 0), -1.0, 0.0)))


@register_grad("huber_loss")
def _huber(ctx: GradContext, g: Value):
    d = _diff(ctx)
    delta = ctx.attrs.get("delta", 1.0)
    local = F.where(F.lt(F.abs(d), delta), d, F.clamp(d, -delta, delta))
    return _loss_grad(ctx, g, local)


# Views and gathers ------------------------------------------------------------------


@register_grad("view")
def _view(ctx: GradContext, g: Value):
    return (F.reshape(g, ctx.inputs[0].meta.shape),)


register_grad("squeeze")(_view)
register_grad("unsqueeze")(_view)


@register_grad("permute")
def _permute(ctx: GradContext, g: Value):
    dims = ctx.attrs["dims"]
    inverse = [0] * len(dims)
    for i, d in enumerate(dims):
        inverse[d % len(dims)] = i
    return (F.permute(g, *inverse),)


@register_grad("expand")
def _expand(ctx: GradContext, g: Value):
    return (F.sum_to_shape(g, ctx.inputs[0].meta.shape),)


@register_grad("slice")
def _slice(ctx: GradContext, g: Value):
    a = ctx.attrs
    return (F.scatter_slice(g, ctx.inputs[0].meta.shape, a["dim"], a["start"], a["step"]),)


@register_grad("select")
def _select(ctx: GradContext, g: Value):
    shape = ctx.inputs[0].meta.shape
    dim = ctx.attrs["dim"]
    index = ctx.attrs["index"] % shape[dim]
    return (F.scatter_slice(F.unsqueeze(g, dim), shape, dim, index, 1),)


@register_grad("scatter_slice")
def _scatter_slice(ctx: GradContext, g: Value):
    a = ctx.attrs
    length = ctx.inputs[0].meta.shape[a["dim"]]
    stop = a["start"] + a["step"] * (length - 1) + 1 if length else a["start"]
    return (F.slice(g, a["dim"], a["start"], stop, a["step"]),)


@register_grad("cat")
def _cat(ctx: GradContext, g: Value):
    dim = ctx.attrs["dim"]
    grads, start = [], 0
    for value, need in zip(ctx.inputs, ctx.needs_input_grad):
        size = value.meta.shape[dim]
        grads.append(F.narrow(g, dim, start, size) if need else None)
        start += size
    return tuple(grads)


@register_grad("stack")
def _stack(ctx: GradContext, g: Value):
    dim = ctx.attrs["dim"]
    return tuple(
        F.select(g, dim, i) if need else None
        for i, need in enumerate(ctx.needs_input_grad)
    )
