"""Composite ops: registered with a meta rule and a reference so eager execution and
the IR show them by name, and with a decomposition into primitives that the compiler
applies before fusion. Decompositions are written with ember functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir.layout import broadcast_shapes, normalize_dim
from ember.ir.meta import TensorMeta
from ember.ir.ops.matmul import matmul_shape
from ember.ir.ops.pointwise import erf_reference, promoted
from ember.ir.ops.reduction import require_float
from ember.ir.registry import Attrs, OpDef, OpKind, register


def _softmax_meta(op: str):
    def meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
        (x,) = metas
        require_float(metas, op)
        normalize_dim(attrs["dim"], x.ndim, op)
        return TensorMeta.contiguous(x.shape, x.dtype)

    return meta


def _softmax_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    (x,) = arrays
    if x.size == 0:
        return x.copy()
    shifted = x - np.max(x, axis=attrs["dim"], keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=attrs["dim"], keepdims=True)


def _log_softmax_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    (x,) = arrays
    if x.size == 0:
        return x.copy()
    shifted = x - np.max(x, axis=attrs["dim"], keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=attrs["dim"], keepdims=True))


def _gelu_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    require_float(metas, "gelu")
    return TensorMeta.contiguous(metas[0].shape, metas[0].dtype)


def _gelu_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    (x,) = arrays
    return (0.5 * x * (1.0 + erf_reference(x / math.sqrt(2.0)))).astype(x.dtype)


def _linear_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    x, w = metas[0], metas[1]
    if w.ndim != 2:
        raise ShapeError(
            f"linear: weight must be 2-d (out_features, in_features), got {w.shape}",
            op="linear",
            actual=w.shape,
        )
    shape = matmul_shape(x.shape, (w.shape[1], w.shape[0]))
    if len(metas) == 3:
        shape = broadcast_shapes(shape, metas[2].shape, op="linear")
    require_float(metas, "linear")
    if len({m.dtype for m in metas}) != 1:
        raise DTypeError(
            "linear: input, weight and bias must share a dtype, got "
            + ", ".join(m.dtype.name for m in metas),
            op="linear",
            hint="convert the input with .to(weight.dtype)",
        )
    return TensorMeta.contiguous(shape, x.dtype)


def _linear_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    out = np.matmul(arrays[0], arrays[1].T)
    return out + arrays[2] if len(arrays) == 3 else out


_REDUCTIONS = ("mean", "sum", "none")


def _loss_meta(op: str):
    def meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
        pred, target = metas
        require_float(metas, op)
        if pred.shape != target.shape:
            raise ShapeError(
                f"{op}: prediction shape {pred.shape} differs from target shape "
                f"{target.shape}",
                op=op,
                expected=pred.shape,
                actual=target.shape,
                hint="reshape the target (for example target.view(-1, 1)) so the "
                "shapes match exactly; ember does not broadcast inside losses",
            )
        reduction = attrs.get("reduction", "mean")
        if reduction not in _REDUCTIONS:
            raise ShapeError(
                f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}",
                op=op,
            )
        if attrs.get("delta", 1.0) <= 0:
            raise ShapeError(f"{op}: delta must be positive", op=op)
        dtype = promoted(metas)
        shape = pred.shape if reduction == "none" else ()
        return TensorMeta.contiguous(shape, dtype)

    return meta


def _reduce(values: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "mean":
        # sum / size rather than np.mean, which warns on empty input; 0 / 0 is NaN.
        return np.asarray(np.sum(values) / values.size)
    if reduction == "sum":
        return np.asarray(np.sum(values))
    return values


def _loss_reference(elementwise):
    def reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
        pred, target = arrays
        dtype = np.promote_types(pred.dtype, target.dtype)
        diff = pred.astype(dtype) - target.astype(dtype)
        values = elementwise(diff, attrs).astype(dtype)
        return _reduce(values, attrs.get("reduction", "mean")).astype(dtype)

    return reference


def _huber(diff: np.ndarray, attrs: Attrs) -> np.ndarray:
    delta = attrs.get("delta", 1.0)
    a = np.abs(diff)
    return np.where(a < delta, 0.5 * diff * diff, delta * (a - 0.5 * delta))


def _composite(name, meta, ref, doc, num_inputs=1, **kw: Any) -> None:
    register(
        OpDef(name, OpKind.COMPOSITE, meta, ref, num_inputs=num_inputs, doc=doc, **kw)
    )


_composite(
    "softmax",
    _softmax_meta("softmax"),
    _softmax_reference,
    "exp(x - max) / sum(exp(x - max)) along dim",
)
_composite(
    "log_softmax",
    _softmax_meta("log_softmax"),
    _log_softmax_reference,
    "x - max - log(sum(exp(x - max))) along dim",
)
_composite("gelu", _gelu_meta, _gelu_reference, "x * Phi(x), the exact (erf) form")
_composite(
    "linear", _linear_meta, _linear_reference, "x @ weight.T + bias", num_inputs=None
)
_composite(
    "mse_loss",
    _loss_meta("mse_loss"),
    _loss_reference(lambda d, a: d * d),
    "mean squared error",
    num_inputs=2,
)
_composite(
    "l1_loss",
    _loss_meta("l1_loss"),
    _loss_reference(lambda d, a: np.abs(d)),
    "mean absolute error",
    num_inputs=2,
)
_composite(
    "huber_loss",
    _loss_meta("huber_loss"),
    _loss_reference(_huber),
    "quadratic below delta, linear above",
    num_inputs=2,
)
