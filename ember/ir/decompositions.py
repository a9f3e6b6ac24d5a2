"""Decompositions of the composite ops into primitives, written with ember functions.

Importing this module fills ``OpDef.decompose`` of every composite op. A
decomposition takes the op's inputs (eager tensors, tracing proxies or graph values)
and its attributes, and returns the op's result computed with other registry ops, so
the same function runs eagerly (tests compare it to the op's numpy reference) and
records the primitive graph that the compiler's ``decompose`` pass substitutes. A
decomposition may call another composite; the pass decomposes again until only
primitives remain.

    >>> import ember
    >>> from ember.ir.registry import get_op
    >>> x = ember.tensor([1.0, 2.0, 4.0])
    >>> mean = get_op("mean").decompose((x,), {"dims": (0,), "keepdim": False})
    >>> round(mean.item(), 4)
    2.3333

Numerical choices: softmax and log_softmax subtract the maximum first, so ``exp``
never overflows, and softmax multiplies by the reciprocal of the row sum; gelu uses
the exact erf form; ``mean`` multiplies the sum by ``1/n`` (a constant the backend
folds into the loop) instead of dividing every element.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ember.ir import functions as F
from ember.ir import layout
from ember.ir.registry import Attrs, Decomposition, get_op

Value = Any


def decomposes(name: str) -> Callable[[Decomposition], Decomposition]:
    """Decorator that fills the ``decompose`` slot of composite op ``name``."""

    def install(fn: Decomposition) -> Decomposition:
        op = get_op(name)
        assert op.decompose is None, f"decomposition of {name} registered twice"
        op.decompose = fn
        return fn

    return install


def _count(x: Value, dims: Sequence[int]) -> int:
    # A 0-d tensor accepts dim 0 but has no axis: its count is 1.
    shape = x.meta.shape
    return layout.numel(shape[d] for d in dims if d < len(shape))


def _scale(total: Value, count: int) -> Value:
    """``total / count`` as a multiply by ``1/count`` (0/0 gives NaN, as numpy does)."""
    if count == 0:
        return F.div(total, 0.0)
    return F.mul(total, 1.0 / count)


@decomposes("mean")
def _mean(inputs: Sequence[Value], attrs: Attrs) -> Value:
    (x,) = inputs
    dims = tuple(attrs["dims"])
    return _scale(F.sum(x, dims, keepdim=attrs["keepdim"]), _count(x, dims))


@decomposes("var")
def _var(inputs: Sequence[Value], attrs: Attrs) -> Value:
    # Two passes (mean, then squared deviations): stable where E[x^2] - E[x]^2 is not.
    (x,) = inputs
    dims = tuple(attrs["dims"])
    deviation = F.sub(x, F.mean(x, dims, keepdim=True))
    squares = F.sum(F.mul(deviation, deviation), dims, keepdim=attrs["keepdim"])
    return _scale(squares, max(_count(x, dims) - attrs.get("correction", 1), 0))


def _minus_max(x: Value, dim: int) -> Value:
    """``x`` minus its maximum along ``dim``: its ``exp`` never overflows."""
    return F.sub(x, F.amax(x, dim, keepdim=True))


@decomposes("softmax")
def _softmax(inputs: Sequence[Value], attrs: Attrs) -> Value:
    (x,) = inputs
    if x.meta.numel == 0:
        return F.clone(x)
    powers = F.exp(_minus_max(x, attrs["dim"]))
    # One division per row, then a multiply per element (as torch's CPU kernel
    # does): within an ulp of dividing every element, and far cheaper.
    return F.mul(powers, F.div(1.0, F.sum(powers, attrs["dim"], keepdim=True)))


@decomposes("log_softmax")
def _log_softmax(inputs: Sequence[Value], attrs: Attrs) -> Value:
    (x,) = inputs
    if x.meta.numel == 0:
        return F.clone(x)
    shifted = _minus_max(x, attrs["dim"])
    total = F.sum(F.exp(shifted), attrs["dim"], keepdim=True)
    return F.sub(shifted, F.log(total))


@decomposes("gelu")
def _gelu(inputs: Sequence[Value], attrs: Attrs) -> Value:
    (x,) = inputs
    cdf = F.mul(F.add(F.erf(F.mul(x, 1.0 / math.sqrt(2.0))), 1.0), 0.5)
    return F.mul(x, cdf)


@decomposes("linear")
def _linear(inputs: Sequence[Value], attrs: Attrs) -> Value:
    x, weight = inputs[0], inputs[1]
    out = F.matmul(x, F.permute(weight, 1, 0))
    return F.add(out, inputs[2]) if len(inputs) == 3 else out


def _reduce_loss(values: Value, attrs: Attrs) -> Value:
    reduction = attrs.get("reduction", "mean")
    if reduction == "mean":
        return F.mean(values)
    if reduction == "sum":
        return F.sum(values)
    return values


@decomposes("mse_loss")
def _mse_loss(inputs: Sequence[Value], attrs: Attrs) -> Value:
    diff = F.sub(inputs[0], inputs[1])
    return _reduce_loss(F.mul(diff, diff), attrs)


@decomposes("l1_loss")
def _l1_loss(inputs: Sequence[Value], attrs: Attrs) -> Value:
    return _reduce_loss(F.abs(F.sub(inputs[0], inputs[1])), attrs)


@decomposes("huber_loss")
def _huber_loss(inputs: Sequence[Value], attrs: Attrs) -> Value:
    delta = attrs.get("delta", 1.0)
    diff = F.sub(inputs[0], inputs[1])
    size = F.abs(diff)
    quadratic = F.mul(F.mul(diff, 0.5), diff)
    linear = F.mul(F.sub(size, 0.5 * delta), delta)
    return _reduce_loss(F.where(F.lt(size, delta), quadratic, linear), attrs)


@decomposes("stack")
def _stack(inputs: Sequence[Value], attrs: Attrs) -> Value:
    dim = attrs["dim"]
    return F.cat([F.unsqueeze(x, dim) for x in inputs], dim)
