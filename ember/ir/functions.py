"""The functional front end of every registry op.

These functions normalize arguments (dims, shapes, Python scalars) and hand the call
to whichever value class owns the operands: eager tensors run it, tracing proxies
record it. Gradient rules and decompositions are written with these functions, so the
same rule runs eagerly and traces into a backward graph. ``ember.exp``, ``ember.sum``
and friends are these functions.

    >>> import ember
    >>> ember.sum(ember.tensor([[1.0, 2.0], [3.0, 4.0]]), dim=0).tolist()
    [4.0, 6.0]
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Sequence
from typing import Any

from ember.errors import DTypeError, IndexingError, ShapeError
from ember.ir import dtypes, layout
from ember.ir.dispatch import call
from ember.ir.registry import get_op

Value = Any
Dims = int | Sequence[int] | None


def _unary(name: str):
    op = get_op(name)

    def fn(x: Value) -> Value:
        return call(op, (x,))

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"Elementwise {op.doc}."
    return fn


def _binary(name: str):
    op = get_op(name)

    def fn(x: Value, y: Value) -> Value:
        return call(op, (x, y))

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"Elementwise {op.doc}, with broadcasting and type promotion."
    return fn


neg = _unary("neg")
abs = _unary("abs")  # noqa: A001 - mirrors torch.abs
exp = _unary("exp")
log = _unary("log")
sqrt = _unary("sqrt")
rsqrt = _unary("rsqrt")
relu = _unary("relu")
sigmoid = _unary("sigmoid")
tanh = _unary("tanh")
erf = _unary("erf")
gelu = _unary("gelu")
logical_not = _unary("logical_not")

add = _binary("add")
sub = _binary("sub")
mul = _binary("mul")
div = _binary("div")
pow = _binary("pow")  # noqa: A001 - mirrors torch.pow
maximum = _binary("maximum")
minimum = _binary("minimum")
eq = _binary("eq")
ne = _binary("ne")
lt = _binary("lt")
le = _binary("le")
gt = _binary("gt")
ge = _binary("ge")
logical_and = _binary("logical_and")
logical_or = _binary("logical_or")
matmul = _binary("matmul")


def where(condition: Value, x: Value, y: Value) -> Value:
    """``x`` where ``condition`` holds, else ``y`` (numbers allowed for x and y)."""
    return call("where", (condition, x, y))


def clamp(x: Value, min: Any = None, max: Any = None) -> Value:  # noqa: A002
    """Limit ``x`` to ``[min, max]``; either bound may be None.

    Number bounds are attributes of one ``clamp`` op; tensor bounds broadcast
    against ``x`` through ``maximum`` and ``minimum``, as in PyTorch.
    """
    if _is_value(min) or _is_value(max):
        result = x if min is None else maximum(x, min)
        return result if max is None else minimum(result, max)
    return call("clamp", (x,), {"min": min, "max": max})


def cast(x: Value, dtype: Any) -> Value:
    """``x`` converted to ``dtype`` (always a new dense tensor)."""
    return call("cast", (x,), {"dtype": dtypes.as_dtype(dtype)})


def contiguous(x: Value) -> Value:
    """``x`` itself when dense row-major (at any storage offset), else a dense copy."""
    return x if _meta(x, "contiguous").is_contiguous() else call("copy", (x,))


def clone(x: Value) -> Value:
    """A dense copy of ``x`` that shares no memory with it."""
    return call("copy", (x,))


def _is_value(value: Any) -> bool:
    return hasattr(type(value), "__ember_priority__")


def _meta(x: Value, op: str) -> Any:
    """The meta of a tensor operand, or a DTypeError for anything else."""
    if not _is_value(x):
        raise DTypeError(
            f"{op}: expected a tensor, got {type(x).__name__}",
            op=op,
            expected="an ember tensor",
            actual=repr(x)[:80],
            hint="wrap the value with ember.tensor(...)",
        )
    return x.meta


def _dim_attr(x: Value, dim: Any, op: str) -> int:
    meta = _meta(x, op)
    return layout.normalize_dim(dim, meta.ndim, op, shape=meta.shape)


def _dims_attr(x: Value, dim: Dims, op: str) -> tuple[int, ...]:
    meta = _meta(x, op)
    dims = layout.normalize_dims(dim, meta.ndim, op, shape=meta.shape)
    # A 0-d tensor accepts dim 0 or -1, but has no axis to reduce.
    return dims if meta.ndim else ()


def sum(x: Value, dim: Dims = None, keepdim: bool = False) -> Value:  # noqa: A001
    """Sum over ``dim`` (an int, a tuple, or None for every dim)."""
    return call(
        "sum", (x,), {"dims": _dims_attr(x, dim, "sum"), "keepdim": bool(keepdim)}
    )


def mean(x: Value, dim: Dims = None, keepdim: bool = False) -> Value:
    """Arithmetic mean over ``dim`` (floating point only)."""
    return call(
        "mean", (x,), {"dims": _dims_attr(x, dim, "mean"), "keepdim": bool(keepdim)}
    )


def amax(x: Value, dim: Dims = None, keepdim: bool = False) -> Value:
    """Maximum over ``dim``."""
    return call(
        "amax", (x,), {"dims": _dims_attr(x, dim, "amax"), "keepdim": bool(keepdim)}
    )


def amin(x: Value, dim: Dims = None, keepdim: bool = False) -> Value:
    """Minimum over ``dim``."""
    return call(
        "amin", (x,), {"dims": _dims_attr(x, dim, "amin"), "keepdim": bool(keepdim)}
    )


def argmax(x: Value, dim: int | None = None, keepdim: bool = False) -> Value:
    """Index of the first maximum along ``dim`` (of the flattened tensor for None)."""
    if dim is not None:
        dim = _dim_attr(x, dim, "argmax")
    return call("argmax", (x,), {"dim": dim, "keepdim": bool(keepdim)})


def argmin(x: Value, dim: int | None = None, keepdim: bool = False) -> Value:
    """Index of the first minimum along ``dim`` (of the flattened tensor for None)."""
    if dim is not None:
        dim = _dim_attr(x, dim, "argmin")
    return call("argmin", (x,), {"dim": dim, "keepdim": bool(keepdim)})


def var(
    x: Value, dim: Dims = None, *, correction: int = 1, keepdim: bool = False
) -> Value:
    """Variance over ``dim``, divided by ``N - correction``."""
    attrs = {
        "dims": _dims_attr(x, dim, "var"),
        "correction": correction,
        "keepdim": bool(keepdim),
    }
    return call("var", (x,), attrs)


def softmax(x: Value, dim: int) -> Value:
    """Softmax along ``dim``, computed stably (the maximum is subtracted first)."""
    return call("softmax", (x,), {"dim": _dim_attr(x, dim, "softmax")})


def log_softmax(x: Value, dim: int) -> Value:
    """Log of the softmax along ``dim``, computed stably."""
    dim = _dim_attr(x, dim, "log_softmax")
    return call("log_softmax", (x,), {"dim": dim})


def linear(x: Value, weight: Value, bias: Value | None = None) -> Value:
    """``x @ weight.T + bias`` with ``weight`` shaped (out_features, in_features)."""
    return call("linear", (x, weight) if bias is None else (x, weight, bias))


def _loss(name: str, pred: Value, target: Value, reduction: str, **extra: Any) -> Value:
    return call(name, (pred, target), {"reduction": reduction, **extra})


def mse_loss(pred: Value, target: Value, reduction: str = "mean") -> Value:
    """Mean (or sum, or none) of squared differences."""
    return _loss("mse_loss", pred, target, reduction)


def l1_loss(pred: Value, target: Value, reduction: str = "mean") -> Value:
    """Mean (or sum, or none) of absolute differences."""
    return _loss("l1_loss", pred, target, reduction)


def huber_loss(
    pred: Value, target: Value, reduction: str = "mean", delta: float = 1.0
) -> Value:
    """Quadratic below ``delta``, linear above: the robust regression loss."""
    return _loss("huber_loss", pred, target, reduction, delta=float(delta))


# Views ------------------------------------------------------------------------------


def _unpack(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``f(2, 3)`` and ``f((2, 3))`` alike: one tuple or list stands for its items."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return args


def _shape_arg(shape: tuple[Any, ...], op: str) -> tuple[int, ...]:
    """Sizes as Python ints; a float, a bool or a dtype is a ShapeError."""
    sizes = _unpack(shape)
    for size in sizes:
        if not layout.is_int_like(size):
            raise ShapeError(
                f"{op}: sizes must be ints, got {size!r} in {sizes}",
                op=op,
                expected="ints (and at most one -1 for view and reshape)",
                actual=sizes,
                hint="ember has no dtype views; use .to(dtype) to convert"
                if isinstance(size, dtypes.DType)
                else None,
            )
    return tuple(operator.index(s) for s in sizes)


def _index_arg(value: Any, what: str, op: str) -> int:
    """An int argument (index, start, length): ints and int-likes, never bools."""
    if not layout.is_int_like(value):
        raise IndexingError(
            f"{op}: {what} must be an int, got {type(value).__name__}",
            op=op,
            expected="an int",
            actual=repr(value)[:80],
        )
    return operator.index(value)


def view(x: Value, *shape: Any) -> Value:
    """The same elements in ``shape`` without a copy; StrideError when impossible."""
    numel = _meta(x, "view").numel
    new_shape = layout.infer_shape(_shape_arg(shape, "view"), numel, "view")
    return call("view", (x,), {"shape": new_shape})


def reshape(x: Value, *shape: Any) -> Value:
    """Like :func:`view`, but copies to a dense layout when a view is impossible."""
    meta = _meta(x, "reshape")
    new_shape = layout.infer_shape(_shape_arg(shape, "reshape"), meta.numel, "reshape")
    if layout.view_strides(meta.shape, meta.strides, new_shape) is None:
        x = call("copy", (x,))
    return call("view", (x,), {"shape": new_shape})


def permute(x: Value, *dims: Any) -> Value:
    """Reorder dimensions: ``permute(x, 1, 0)`` swaps the two dims of a matrix."""
    return call("permute", (x,), {"dims": _unpack(dims)})


def transpose(x: Value, dim0: int, dim1: int) -> Value:
    """Swap two dimensions."""
    a = _dim_attr(x, dim0, "transpose")
    b = _dim_attr(x, dim1, "transpose")
    ndim = x.meta.ndim
    if ndim == 0:
        return x
    order = list(range(ndim))
    order[a], order[b] = order[b], order[a]
    return call("permute", (x,), {"dims": tuple(order)})


def expand(x: Value, *shape: Any) -> Value:
    """Broadcast size-1 dims to ``shape`` (``-1`` keeps a size) without copying."""
    return call("expand", (x,), {"shape": _shape_arg(shape, "expand")})


def broadcast_to(x: Value, shape: Sequence[int]) -> Value:
    """Broadcast ``x`` to ``shape`` (a view with stride 0 on expanded dims)."""
    return call("expand", (x,), {"shape": _shape_arg((shape,), "broadcast_to")})


def unsqueeze(x: Value, dim: int) -> Value:
    """Insert a dimension of size 1 at ``dim``."""
    dim = layout.normalize_dim(dim, _meta(x, "unsqueeze").ndim + 1, "unsqueeze")
    return call("unsqueeze", (x,), {"dim": dim})


def squeeze(x: Value, dim: Dims = None) -> Value:
    """Drop size-1 dims (only those in ``dim`` when given)."""
    return call("squeeze", (x,), {"dims": _dims_attr(x, dim, "squeeze")})


def flatten(x: Value, start_dim: int = 0, end_dim: int = -1) -> Value:
    """Merge dims ``start_dim..end_dim`` into one (a view when the layout allows)."""
    start = _dim_attr(x, start_dim, "flatten")
    end = _dim_attr(x, end_dim, "flatten")
    shape = x.meta.shape
    if not shape:
        return reshape(x, 1)
    if start > end:
        raise IndexingError(
            f"flatten: start_dim {start_dim} comes after end_dim {end_dim}",
            op="flatten",
        )
    merged = layout.numel(shape[start : end + 1])
    return reshape(x, shape[:start] + (merged,) + shape[end + 1 :])


def slice(
    x: Value, dim: int, start: int | None, stop: int | None, step: int = 1
) -> Value:  # noqa: A001
    """``x[..., start:stop:step, ...]`` along ``dim``; bounds clamp like Python's.

    The step must be positive: ember has no negative strides (docs/layout.md, L1).
    """
    meta = _meta(x, "slice")
    if meta.ndim == 0:
        raise IndexingError(
            "slice: cannot slice a 0-d tensor",
            op="slice",
            hint="use .item() to read its value",
        )
    dim = _dim_attr(x, dim, "slice")
    start = None if start is None else _index_arg(start, "slice start", "slice")
    stop = None if stop is None else _index_arg(stop, "slice stop", "slice")
    step = 1 if step is None else _index_arg(step, "slice step", "slice")
    layout.check_slice_step(step, "slice")
    begin, end, _ = builtins.slice(start, stop, step).indices(meta.shape[dim])
    end = builtins.max(begin, end)
    return call("slice", (x,), {"dim": dim, "start": begin, "stop": end, "step": step})


def narrow(x: Value, dim: int, start: int, length: int) -> Value:
    """``length`` elements of ``dim`` from ``start`` (a view)."""
    if _meta(x, "narrow").ndim == 0:
        raise IndexingError(
            "narrow: cannot narrow a 0-d tensor",
            op="narrow",
            hint="use .item() to read its value",
        )
    dim = _dim_attr(x, dim, "narrow")
    start = _index_arg(start, "start", "narrow")
    length = _index_arg(length, "length", "narrow")
    size = x.meta.shape[dim]
    if start < 0:
        start += size
    if not (0 <= start <= size and 0 <= length <= size - start):
        raise IndexingError(
            f"narrow: start {start} and length {length} exceed dimension {dim} of "
            f"size {size}",
            op="narrow",
            expected=f"0 <= start and start + length <= {size}",
            actual=(start, length),
        )
    return call(
        "slice", (x,), {"dim": dim, "start": start, "stop": start + length, "step": 1}
    )


def select(x: Value, dim: int, index: int) -> Value:
    """The slice at ``index`` along ``dim``, with that dim removed."""
    dim = _dim_attr(x, dim, "select")
    index = _index_arg(index, "index", "select")
    return call("select", (x,), {"dim": dim, "index": index})


def cat(tensors: Sequence[Value], dim: int = 0) -> Value:
    """Concatenate along an existing ``dim``."""
    tensors = tuple(tensors)
    if not tensors:
        raise ShapeError("cat: expected a non-empty list of tensors", op="cat")
    for t in tensors:
        _meta(t, "cat")
    return call("cat", tensors, {"dim": _dim_attr(tensors[0], dim, "cat")})


def stack(tensors: Sequence[Value], dim: int = 0) -> Value:
    """Join along a new ``dim``."""
    tensors = tuple(tensors)
    if not tensors:
        raise ShapeError("stack: expected a non-empty list of tensors", op="stack")
    for t in tensors:
        _meta(t, "stack")
    dim = layout.normalize_dim(dim, tensors[0].meta.ndim + 1, "stack")
    return call("stack", tensors, {"dim": dim})


def scatter_slice(
    src: Value, shape: Sequence[int], dim: int, start: int, step: int
) -> Value:
    """Zeros of ``shape`` with ``src`` at ``start::step`` along ``dim``."""
    attrs = {"shape": tuple(shape), "dim": dim, "start": start, "step": step}
    return call("scatter_slice", (src,), attrs)


def sum_to_shape(x: Value, shape: Sequence[int]) -> Value:
    """Sum a broadcast result back to ``shape``: the adjoint of broadcasting."""
    shape = tuple(shape)
    current = x.meta.shape
    if current == shape:
        return x
    lead = len(current) - len(shape)
    dims = tuple(range(lead)) + tuple(
        i + lead for i, size in enumerate(shape) if size == 1 and current[i + lead] != 1
    )
    reduced = sum(x, dims, keepdim=True) if dims else x
    return view(reduced, shape) if reduced.meta.shape != shape else reduced
