"""The dispatch protocol that connects registry ops to the values they run on.

A value class takes part by defining three class-level members:

- ``__ember_priority__``: an int; when an op's inputs mix classes, the class with the
  highest priority handles the call (tracing proxies outrank eager tensors, so a
  captured eager tensor becomes a constant of the trace);
- ``__ember_call__(op, inputs, attrs)``: run or record the op and return the result;
- ``__ember_constant__(value, dtype)``: turn a Python scalar operand into a value of
  that class.

An *interceptor* (installed with :func:`intercept`) sees every call after the
handler is chosen and before it runs. Tracing installs one so that ops applied to
module parameters, which are eager tensors, are recorded in the graph even when no
proxy is among the operands; it passes every other call on to the handler.

A *writer* (installed with :func:`intercept_writes`) sees every in-place write into
an eager tensor before memory changes, and may take it over: tracing a training
step records the optimizer's writes into parameters and state as new graph values
instead of writing memory.

The runtime never imports the compiler: both only import this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ember.errors import DTypeError
from ember.ir import dtypes
from ember.ir.registry import Attrs, OpDef, get_op

#: ``interceptor(op, inputs, attrs, handler)`` returns the call's result.
Interceptor = Callable[[OpDef, tuple[Any, ...], Attrs, Any], Any]

# A plain list keeps the eager fast path to one truth test; an interceptor that cares
# about threads checks the calling thread itself.
_interceptors: list[Interceptor] = []

#: ``writer(target, value, op)`` records a write into ``target`` and returns True, or
#: returns False to let the write into memory happen.
Writer = Callable[[Any, Any, str], bool]

_writers: list[Writer] = []


@contextlib.contextmanager
def intercept(interceptor: Interceptor) -> Iterator[None]:
    """Route every op call through ``interceptor`` while the block runs (innermost
    wins); it receives the chosen handler and may call its ``__ember_call__``."""
    _interceptors.append(interceptor)
    try:
        yield
    finally:
        _interceptors.remove(interceptor)


@contextlib.contextmanager
def intercept_writes(writer: Writer) -> Iterator[None]:
    """Offer every in-place write into an eager tensor to ``writer`` while the block
    runs (innermost wins)."""
    _writers.append(writer)
    try:
        yield
    finally:
        _writers.remove(writer)


def intercepted_write(target: Any, value: Any, op: str) -> bool:
    """True when a writer took over writing ``value`` into ``target``."""
    return bool(_writers) and _writers[-1](target, value, op)


def is_scalar(value: Any) -> bool:
    """True for Python (and numpy) numbers, which ops may take in place of tensors."""
    return isinstance(value, (int, float, bool)) or (
        hasattr(value, "dtype")
        and not hasattr(value, "__ember_priority__")
        and getattr(value, "ndim", 1) == 0
    )


def handler_of(inputs: Sequence[Any]) -> Any:
    """The value class with the highest priority among ``inputs``, or None."""
    best = None
    best_priority = -1
    for value in inputs:
        priority = getattr(type(value), "__ember_priority__", -1)
        if priority > best_priority:
            best, best_priority = type(value), priority
    return best


def scalar_dtype(op: OpDef, inputs: Sequence[Any]) -> dtypes.DType:
    """The dtype a Python scalar operand takes: the op's promoted result type."""
    tensors: list[tuple[dtypes.DType, int]] = []
    zero_dim: list[tuple[dtypes.DType, int]] = []
    scalars: list[Any] = []
    for value in inputs[op.promote_from :]:
        if hasattr(type(value), "__ember_priority__"):
            meta = value.meta
            (tensors if meta.shape else zero_dim).append((meta.dtype, meta.ndim))
        else:
            scalars.append(value)
    return dtypes.result_type(tensors, zero_dim, scalars)


def call(name: str | OpDef, inputs: Sequence[Any], attrs: Attrs | None = None) -> Any:
    """Run registry op ``name`` on ``inputs`` through the handler that owns them."""
    op = name if isinstance(name, OpDef) else get_op(name)
    handler = handler_of(inputs)
    if handler is None:
        raise DTypeError(
            f"{op.name}: expected at least one tensor operand, got "
            f"{', '.join(type(v).__name__ for v in inputs) or 'none'}",
            op=op.name,
            hint="wrap the value with ember.tensor(...)",
        )
    if any(not hasattr(type(v), "__ember_priority__") for v in inputs):
        inputs = _materialize_scalars(op, handler, inputs)
    if _interceptors:
        return _interceptors[-1](op, tuple(inputs), attrs or {}, handler)
    return handler.__ember_call__(op, tuple(inputs), attrs or {})


def _materialize_scalars(op: OpDef, handler: Any, inputs: Sequence[Any]) -> list[Any]:
    for value in inputs:
        if not hasattr(type(value), "__ember_priority__") and not is_scalar(value):
            raise DTypeError(
                f"{op.name}: expected a tensor or a Python number, got "
                f"{type(value).__name__}",
                op=op.name,
                actual=repr(value)[:80],
                hint="convert it with ember.tensor(...) or ember.from_numpy(...)",
            )
    if not op.accepts_scalars:
        raise DTypeError(
            f"{op.name}: every operand must be a tensor, got a Python number",
            op=op.name,
            hint="wrap the number with ember.tensor(...)",
        )
    dtype = scalar_dtype(op, inputs)
    return [
        v
        if hasattr(type(v), "__ember_priority__")
        else handler.__ember_constant__(v, dtype)
        for v in inputs
    ]
