"""Basic indexing: ints, slices with positive steps, ``None`` and ``...``.

Every index becomes a chain of view ops (``select``, ``slice``, ``unsqueeze``), so the
result shares storage with the indexed tensor, exactly as in PyTorch and NumPy basic
indexing. Tensor and list indices (advanced indexing) are not supported yet.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ember.errors import IndexingError, UnsupportedError
from ember.ir import functions as F

# Index kinds that PyTorch accepts (gather-style indexing) but ember does not yet.
_ADVANCED = (list, np.ndarray)


def _expand_ellipsis(index: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[Any, ...]:
    ndim = len(shape)
    consuming = sum(1 for item in index if item is not None and item is not Ellipsis)
    ellipses = [i for i, item in enumerate(index) if item is Ellipsis]
    if len(ellipses) > 1:
        raise IndexingError(
            "index: an index can only have a single ellipsis ('...')", op="index"
        )
    if consuming > ndim:
        raise IndexingError(
            f"index: too many indices for a tensor of shape {shape}: got {consuming}",
            op="index",
            expected=f"at most {ndim} indices",
            actual=consuming,
            hint="read a 0-d tensor with .item()" if ndim == 0 else None,
        )
    if not ellipses:
        return index + (slice(None),) * (ndim - consuming)
    at = ellipses[0]
    return index[:at] + (slice(None),) * (ndim - consuming) + index[at + 1 :]


def apply_index(x: Any, index: Any) -> Any:
    """``x[index]`` as a view of ``x``."""
    if not isinstance(index, tuple):
        index = (index,)
    index = _expand_ellipsis(index, x.meta.shape)
    dim = 0
    for item in index:
        if item is None:
            x = F.unsqueeze(x, dim)
            dim += 1
        elif isinstance(item, slice):
            if item != slice(None):
                x = F.slice(
                    x, dim, item.start, item.stop, 1 if item.step is None else item.step
                )
            dim += 1
        elif isinstance(item, bool):
            raise UnsupportedError("indexing with a bool is not supported", op="index")
        elif isinstance(item, int) or (
            hasattr(item, "__index__") and not hasattr(item, "meta")
        ):
            x = F.select(x, dim, int(item))
        elif isinstance(item, _ADVANCED) or hasattr(item, "meta"):
            raise UnsupportedError(
                f"indexing with {type(item).__name__} (advanced indexing) is not "
                "supported: only ints, slices, None and ...",
                op="index",
                hint="use select/narrow, or convert to numpy for gather-style indexing",
            )
        else:
            raise IndexingError(
                f"index: {type(item).__name__} is not a valid index; use ints, "
                "slices, None and ...",
                op="index",
                expected="an int, a slice, None or ...",
                actual=repr(item)[:80],
            )
    return x
