"""``matmul`` with NumPy/PyTorch semantics: 1-d operands and batch broadcasting."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError
from ember.ir import dtypes
from ember.ir.layout import broadcast_shapes
from ember.ir.meta import TensorMeta
from ember.ir.registry import Attrs, OpDef, OpKind, register


def matmul_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """The result shape of ``a @ b``, or a ShapeError naming both shapes."""
    if not a or not b:
        raise ShapeError(
            f"matmul: both operands need at least one dimension, got shapes "
            f"{tuple(a)} and {tuple(b)}",
            op="matmul",
            hint="use * for scalar multiplication",
        )
    a2 = (1, a[0]) if len(a) == 1 else tuple(a)
    b2 = (b[0], 1) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        raise ShapeError(
            f"matmul: shapes {tuple(a)} and {tuple(b)} do not line up: "
            f"{a2[-1]} columns against {b2[-2]} rows",
            op="matmul",
            expected=f"the second operand's dimension -2 to be {a2[-1]}",
            actual=b2[-2],
            hint="transpose one operand (.mT) or check the layer sizes",
        )
    try:
        batch = broadcast_shapes(a2[:-2], b2[:-2], op="matmul")
    except ShapeError as error:
        raise ShapeError(
            f"matmul: the batch dimensions of shapes {tuple(a)} and {tuple(b)} cannot "
            f"be broadcast: {a2[:-2]} against {b2[:-2]}",
            op="matmul",
            expected="batch sizes that are equal or 1",
            actual=(a2[:-2], b2[:-2]),
            hint="unsqueeze or expand one operand's batch dimensions",
        ) from error
    shape = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        shape = shape[:-2] + shape[-1:]
    if len(b) == 1:
        shape = shape[:-1]
    return shape


def _matmul_meta(metas: Sequence[TensorMeta], attrs: Attrs) -> TensorMeta:
    a, b = metas
    if a.dtype is not b.dtype:
        raise DTypeError(
            f"matmul: operands must have the same dtype, got {a.type_str()} and "
            f"{b.type_str()}",
            op="matmul",
            expected=a.dtype.name,
            actual=b.dtype.name,
            hint=f"convert one operand, e.g. .to(ember.{a.dtype.name})",
        )
    if a.dtype is dtypes.bool_:
        raise DTypeError(
            f"matmul: bool tensors are not supported, got {a.type_str()} "
            f"and {b.type_str()}",
            op="matmul",
            hint="convert with .float() first",
        )
    return TensorMeta.contiguous(matmul_shape(a.shape, b.shape), a.dtype)


def _matmul_reference(arrays: Sequence[np.ndarray], attrs: Attrs) -> np.ndarray:
    return np.asarray(np.matmul(arrays[0], arrays[1]))


register(
    OpDef(
        "matmul",
        OpKind.MATMUL,
        _matmul_meta,
        _matmul_reference,
        num_inputs=2,
        doc="matrix product with batch broadcasting",
    )
)
