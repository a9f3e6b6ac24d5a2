"""Layout rules: strides, contiguity, views, broadcasting, overlap and bounds.

Strides are counted in elements and are never negative (see ``docs/layout.md``, rule
L1). These functions are the single source of truth that eager views, the IR meta
rules and the compiler's layout validation all cite.

    >>> contiguous_strides((2, 3, 4))
    (12, 4, 1)
    >>> view_strides((4, 6), (6, 1), (2, 12))
    (12, 1)
    >>> view_strides((4, 6), (1, 4), (24,)) is None
    True
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Sequence

from ember.errors import IndexingError, LayoutError, ShapeError

Shape = tuple[int, ...]
Strides = tuple[int, ...]


def numel(shape: Iterable[int]) -> int:
    """The number of elements of a shape (1 for a 0-d shape)."""
    count = 1
    for size in shape:
        count *= size
    return count


def contiguous_strides(shape: Sequence[int]) -> Strides:
    """Row-major strides for ``shape``; a size-0 or size-1 dim gets the natural stride."""
    strides = [0] * len(shape)
    step = 1
    for i in range(len(shape) - 1, -1, -1):
        strides[i] = step
        step *= max(shape[i], 1)
    return tuple(strides)


def is_contiguous(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """True when the layout is row-major dense (size-1 dims may have any stride)."""
    if numel(shape) == 0:
        return True
    expected = 1
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def span(shape: Sequence[int], strides: Sequence[int], offset: int) -> tuple[int, int]:
    """The half-open range of storage elements a layout touches (empty for size 0)."""
    if numel(shape) == 0:
        return offset, offset
    last = offset + sum((size - 1) * stride for size, stride in zip(shape, strides))
    return offset, last + 1


def within_bounds(
    shape: Sequence[int], strides: Sequence[int], offset: int, storage_size: int
) -> bool:
    """Rule L2: every element a layout addresses lies inside its storage."""
    if any(s < 0 for s in strides) or offset < 0:
        return False
    start, stop = span(shape, strides, offset)
    return start == stop or (start >= 0 and stop <= storage_size)


def has_internal_overlap(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Rule L4: may two different indices address the same element?

    Exact for every layout ember's view ops can produce: a stride of 0 on a dim of
    size above 1 overlaps; otherwise the layout is overlap-free when, taking the dims
    in increasing stride order, each stride exceeds the extent of all smaller ones.
    For other layouts (only ``from_numpy`` can make them) the answer is conservative:
    it may report an overlap that is not there, never the reverse. A tensor without
    elements has no overlap. Answers are cached by layout: every in-place eager op
    asks, most often about the same few layouts.

        >>> has_internal_overlap((3, 4), (4, 1)), has_internal_overlap((3, 4), (0, 1))
        (False, True)
    """
    return _overlaps(tuple(shape), tuple(strides))


@functools.lru_cache(maxsize=4096)
def _overlaps(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    if numel(shape) == 0:
        return False
    dims = [(st, sz) for sz, st in zip(shape, strides) if sz > 1]
    if any(st == 0 for st, _ in dims):
        return True
    dims.sort()
    extent = 0
    for stride, size in dims:
        if stride <= extent:
            return True
        extent += (size - 1) * stride
    return False


def view_strides(
    shape: Sequence[int], strides: Sequence[int], new_shape: Sequence[int]
) -> Strides | None:
    """Strides that show the same elements in ``new_shape`` without a copy, or None.

    Rule L3: a view is possible when every group of new dims maps onto a run of old
    dims that are mutually contiguous (``stride[i] == stride[i+1] * size[i+1]``).
    """
    if numel(shape) != numel(new_shape):
        return None
    if numel(shape) == 0:
        return contiguous_strides(new_shape)
    old = [(sz, st) for sz, st in zip(shape, strides) if sz != 1]
    result = [0] * len(new_shape)
    new_i = len(new_shape) - 1
    old_i = len(old) - 1
    while old_i >= 0:
        # Take a maximal run of mutually contiguous old dims, from the inside out.
        chunk_size, chunk_stride = old[old_i]
        run_start = old_i
        while (
            run_start > 0
            and old[run_start - 1][1] == old[run_start][1] * old[run_start][0]
        ):
            run_start -= 1
            chunk_size *= old[run_start][0]
        old_i = run_start - 1
        # Cover that run with new dims, inside out.
        covered = 1
        stride = chunk_stride
        while covered < chunk_size:
            if new_i < 0:
                return None
            size = new_shape[new_i]
            result[new_i] = stride
            stride *= size
            covered *= size
            new_i -= 1
        if covered != chunk_size:
            return None
    while new_i >= 0:
        if new_shape[new_i] != 1:
            return None
        result[new_i] = 1
        new_i -= 1
    return _fill_unit_strides(new_shape, tuple(result))


def _fill_unit_strides(shape: Sequence[int], strides: Strides) -> Strides:
    """Give size-1 dims the stride a contiguous tensor would have there."""
    fixed = list(strides)
    step = 1
    for i in range(len(shape) - 1, -1, -1):
        if shape[i] == 1:
            fixed[i] = step
        else:
            step = fixed[i] * shape[i]
    return tuple(fixed)


def broadcast_shapes(*shapes: Sequence[int], op: str = "broadcast") -> Shape:
    """NumPy/PyTorch broadcasting of several shapes, or a ShapeError naming them."""
    first = shapes[0] if shapes else ()
    if all(s == first for s in shapes):
        return tuple(first)
    ndim = max((len(s) for s in shapes), default=0)
    result = [1] * ndim
    for shape in shapes:
        for i, size in enumerate(shape, start=ndim - len(shape)):
            if size == result[i] or size == 1:
                continue
            if result[i] == 1:
                result[i] = size
                continue
            raise ShapeError(
                f"{op}: shapes {' and '.join(str(tuple(s)) for s in shapes)} "
                f"cannot be broadcast (dimension {i - ndim} has sizes "
                f"{result[i]} and {size})",
                op=op,
                expected="sizes that are equal or 1 in every trailing dimension",
                actual=[tuple(s) for s in shapes],
                hint="reshape or unsqueeze one operand so that its sizes line up",
            )
    return tuple(result)


def expand_strides(
    shape: Sequence[int], strides: Sequence[int], new_shape: Sequence[int], op: str
) -> Strides:
    """Strides that broadcast a layout to ``new_shape`` (0 on every expanded dim)."""
    lead = len(new_shape) - len(shape)
    if lead < 0:
        raise ShapeError(
            f"{op}: cannot expand shape {tuple(shape)} to fewer dimensions "
            f"{tuple(new_shape)}",
            op=op,
            expected=f"at least {len(shape)} dimensions",
            actual=len(new_shape),
        )
    result = [0] * len(new_shape)
    for i, target in enumerate(new_shape):
        if i < lead:
            continue
        size, stride = shape[i - lead], strides[i - lead]
        if size == target:
            result[i] = stride
        elif size != 1:
            raise ShapeError(
                f"{op}: cannot expand shape {tuple(shape)} to {tuple(new_shape)}: "
                f"dimension {i} has size {size}, only size-1 dimensions expand",
                op=op,
                expected=f"size 1 or {target}",
                actual=size,
                hint="only dimensions of size 1 can be broadcast",
            )
    return tuple(result)


def check_slice_step(step: int, op: str) -> None:
    """Rule L1: a slice step is positive (zero is meaningless, negative would need a
    negative stride)."""
    if step == 0:
        raise IndexingError(
            f"{op}: step cannot be zero", op=op, expected="step >= 1", actual=step
        )
    if step < 0:
        raise LayoutError(
            f"{op}: step {step} would need a negative stride, which ember does "
            "not have (docs/layout.md, rule L1)",
            op=op,
            expected="step >= 1",
            actual=step,
            hint="slice with a positive step; to reverse, copy through numpy: "
            "ember.tensor(x.numpy()[::-1])",
        )


def is_int_like(value: object) -> bool:
    """True for ints and int-like objects (numpy integers), never for bools."""
    return hasattr(type(value), "__index__") and not isinstance(value, bool)


def normalize_dim(
    dim: int, ndim: int, op: str, *, shape: Sequence[int] | None = None
) -> int:
    """A dim in ``range(ndim)``; negative dims count from the end (0-d takes -1, 0).

    ``shape``, when given, is named in the error message.
    """
    if not is_int_like(dim):
        raise IndexingError(
            f"{op}: dim must be an int, got {type(dim).__name__}",
            op=op,
            expected="an int",
            actual=dim,
        )
    dim = operator.index(dim)
    bound = max(ndim, 1)
    if not -bound <= dim < bound:
        where = (
            f"of shape {tuple(shape)}"
            if shape is not None
            else f"with {ndim} dimension{'s' if ndim != 1 else ''}"
        )
        raise IndexingError(
            f"{op}: dimension {dim} is out of range for a tensor {where}",
            op=op,
            expected=f"a dim in [{-bound}, {bound - 1}]",
            actual=dim,
        )
    return dim % bound


def normalize_dims(
    dims: int | Sequence[int] | None,
    ndim: int,
    op: str,
    *,
    shape: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Normalize one dim, a sequence of dims (no repeats) or None (every dim)."""
    if dims is None:
        return tuple(range(ndim))
    if is_int_like(dims):
        listed: tuple[int, ...] = (dims,)  # type: ignore[assignment]
    elif isinstance(dims, (tuple, list)):
        listed = tuple(dims)
    else:
        raise IndexingError(
            f"{op}: dim must be an int, a tuple of ints or None, got "
            f"{type(dims).__name__}",
            op=op,
            expected="an int, a tuple of ints or None",
            actual=dims,
        )
    result = tuple(normalize_dim(d, ndim, op, shape=shape) for d in listed)
    if len(set(result)) != len(result):
        raise IndexingError(
            f"{op}: dimension list {listed} names a dimension twice",
            op=op,
            expected="distinct dimensions",
            actual=listed,
        )
    return result


def infer_shape(shape: Sequence[int], count: int, op: str) -> Shape:
    """Resolve one ``-1`` in a requested shape against ``count`` elements."""
    shape = tuple(shape)
    for size in shape:
        if not isinstance(size, int) or isinstance(size, bool) or size < -1:
            raise ShapeError(
                f"{op}: invalid size {size!r} in shape {shape}",
                op=op,
                expected="non-negative ints and at most one -1",
                actual=shape,
            )
    unknown = [i for i, s in enumerate(shape) if s == -1]
    if len(unknown) > 1:
        raise ShapeError(
            f"{op}: only one dimension can be -1, got shape {shape}",
            op=op,
            actual=shape,
        )
    known = numel(s for s in shape if s != -1)
    if unknown:
        if known == 0 or count % known:
            raise ShapeError(
                f"{op}: shape {shape} is invalid for a tensor of {count} elements",
                op=op,
                expected=f"a shape with {count} elements",
                actual=shape,
            )
        shape = shape[: unknown[0]] + (count // known,) + shape[unknown[0] + 1 :]
    elif known != count:
        raise ShapeError(
            f"{op}: shape {shape} is invalid for a tensor of {count} elements",
            op=op,
            expected=f"a shape with {count} elements",
            actual=shape,
        )
    return shape
