"""``TensorMeta``: everything about a tensor except its values.

Meta rules of the op registry map input metas to an output meta; the IR stores one
on every value; eager tensors expose theirs as ``Tensor.meta``.

    >>> m = TensorMeta.contiguous((2, 3), float32)
    >>> m
    f32[2, 3]
    >>> m.strides
    (3, 1)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ember.ir import layout
from ember.ir.dtypes import DType, float32
from ember.ir.layout import Shape, Strides

__all__ = ["TensorMeta", "float32"]


@dataclass(frozen=True)
class TensorMeta:
    """Shape, dtype, strides (in elements) and storage offset of a tensor."""

    shape: Shape
    dtype: DType
    strides: Strides
    offset: int = 0

    @staticmethod
    def contiguous(shape: Shape, dtype: DType) -> TensorMeta:
        """A dense row-major meta for ``shape``."""
        return _contiguous(tuple(shape), dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return layout.numel(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def is_contiguous(self) -> bool:
        return layout.is_contiguous(self.shape, self.strides)

    def storage_span(self) -> tuple[int, int]:
        """The half-open range of storage elements this layout addresses."""
        return layout.span(self.shape, self.strides, self.offset)

    def type_str(self) -> str:
        """``f32[2, 3]``: the dtype and shape, as the IR text shows them."""
        return f"{self.dtype.short}[{', '.join(map(str, self.shape))}]"

    def __repr__(self) -> str:
        text = self.type_str()
        if not self.is_contiguous() or self.offset:
            text += f" strides={self.strides}"
        if self.offset:
            text += f" offset={self.offset}"
        return text


@functools.lru_cache(maxsize=4096)
def _contiguous(shape: Shape, dtype: DType) -> TensorMeta:
    # Metas are immutable, so eager ops can share one per (shape, dtype).
    return TensorMeta(shape, dtype, layout.contiguous_strides(shape), 0)
