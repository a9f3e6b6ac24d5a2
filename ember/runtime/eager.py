"""Eager execution of registry ops on tensors.

A call computes the output meta with the op's meta rule first (so every bad input
raises a typed ember error before numpy sees it), then either builds a view over the
same storage (view ops) or runs the numpy reference and wraps its result. When
autograd is recording, the call is recorded for backward.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ember.ir.registry import Attrs, OpDef, OpKind

if TYPE_CHECKING:
    from ember.runtime.tensor import Tensor

logger = logging.getLogger(__name__)


def execute(op: OpDef, inputs: Sequence[Tensor], attrs: Attrs) -> Tensor:
    """Run ``op`` eagerly and record it for autograd when needed."""
    from ember.runtime import autograd  # the runtime modules import each other
    from ember.runtime.tensor import Tensor

    out_meta = op.meta([t._meta for t in inputs], attrs)
    if op.kind is OpKind.VIEW:
        out = Tensor._make(inputs[0]._storage, out_meta)
    else:
        result = op.reference([t.numpy() for t in inputs], attrs)
        out = Tensor._from_array(_as_owned(result, out_meta.dtype.np_dtype), out_meta)
    if autograd.is_recording(op, inputs):
        autograd.record(op, inputs, attrs, out)
    return out


def _as_owned(result: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A dense array of ``dtype`` that no other tensor shares."""
    if result.dtype != dtype:
        return result.astype(dtype, order="C")
    if result.flags.owndata and result.flags.c_contiguous:
        return result
    return result.copy(order="C")
