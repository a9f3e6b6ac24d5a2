"""Symbolic tracing: run a model once on proxies and record every op into a Graph.

:func:`trace` calls the model (an ``nn.Module`` or any function of tensors) with a
:class:`Proxy` in place of each example tensor. A proxy has the tensor's meta (shape,
dtype, strides) but no values; every registry op, tensor method and operator applied
to it becomes a ``call`` node, computed by the same meta rule eager execution uses,
so views trace with exactly the strides they have at run time.

What becomes what:

- each tensor argument is an ``input`` node, named after the forward parameter;
- each parameter and buffer of the module (found by duck typing on
  ``named_parameters``/``named_buffers``) is a ``param``/``buffer`` node named by its
  qualified name, such as ``layers.0.weight``; ops applied to parameters alone
  (``self.weight.T``) are recorded too, through a dispatch interceptor;
- any other eager tensor the model captures (a closure, a global, an attribute that
  is not a buffer) becomes a ``const`` node holding a copy of its values;
- a call made inside submodule ``layers.0`` is named ``layers.0.<op>``;
- every node records the user's source line that created it.

Python control flow on shapes, dtypes and attributes runs normally and is baked
into the graph. A decision on a tensor *value* (``if x.sum() > 0``, ``float(x)``,
``x.item()``, iterating, handing it to numpy) raises :class:`~ember.errors.TraceError`
quoting the user's line and saying what to write instead.

    >>> import ember
    >>> def f(x, w):
    ...     return (x @ w.T).relu().sum(1)
    >>> g = trace(f, ember.ones(4, 3), ember.ones(5, 3))
    >>> [n.op or n.kind for n in g.nodes]
    ['input', 'input', 'permute', 'matmul', 'relu', 'sum', 'output']
    >>> g.node("permute").meta
    f32[3, 5] strides=(1, 3)
"""

from __future__ import annotations

import inspect
import linecache
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ember.errors import EmberError, SourceLocation, TraceError, user_location
from ember.ir import dispatch
from ember.ir.graph import Graph, Node
from ember.ir.meta import TensorMeta
from ember.ir.registry import Attrs, OpDef, OpKind, get_op
from ember.runtime.tensor import Tensor
from ember.runtime.tensor_methods import TensorMethods

logger = logging.getLogger(__name__)

#: How a nested argument or result was laid out; see :func:`flatten`.
Spec = tuple[Any, ...]


# Nested arguments and results -------------------------------------------------------


def flatten(value: Any, is_leaf: Callable[[Any], bool]) -> tuple[list[Any], Spec]:
    """The leaves of a nest of tuples, lists and dicts, and a spec to rebuild it.

    Leaves are the values ``is_leaf`` accepts; anything else is kept in the spec as a
    literal. ``unflatten(spec, leaves)`` rebuilds the nest.

    >>> leaves, spec = flatten((1.5, [2, {"a": 3}]), lambda v: v == 3)
    >>> leaves, unflatten(spec, ["three"])
    ([3], (1.5, [2, {'a': 'three'}]))
    """
    leaves: list[Any] = []

    def walk(item: Any) -> Spec:
        if is_leaf(item):
            leaves.append(item)
            return ("leaf", len(leaves) - 1)
        if isinstance(item, (tuple, list)):
            return ("seq", type(item), tuple(walk(v) for v in item))
        if isinstance(item, dict):
            return ("dict", type(item), tuple((k, walk(v)) for k, v in item.items()))
        return ("literal", item)

    return leaves, walk(value)


def unflatten(spec: Spec, leaves: Sequence[Any]) -> Any:
    """The nest that ``spec`` describes, with ``leaves`` put back in order."""
    tag = spec[0]
    if tag == "leaf":
        return leaves[spec[1]]
    if tag == "literal":
        return spec[1]
    cls = spec[1]
    if tag == "dict":
        return cls((key, unflatten(s, leaves)) for key, s in spec[2])
    items = [unflatten(s, leaves) for s in spec[2]]
    if hasattr(cls, "_fields"):  # a namedtuple, such as the result of x.max(dim)
        return cls(*items)
    return cls(items)


# Proxies ----------------------------------------------------------------------------


class Proxy(TensorMethods):
    """A tensor being traced: it has a meta and a graph node, but no values.

    Every method of the tensor surface that only applies ops works on a proxy and
    records nodes; methods that need values raise :class:`TraceError`.
    """

    # Above eager tensors (10): a captured tensor mixed in becomes a const node.
    __ember_priority__ = 20
    __slots__ = ("node", "tracer")

    node: Node
    tracer: Tracer

    def __init__(self, node: Node, tracer: Tracer) -> None:
        self.node = node
        self.tracer = tracer

    @property
    def _meta(self) -> TensorMeta:  # type: ignore[override]
        assert self.node.meta is not None, f"%{self.node.name} has no meta"
        return self.node.meta

    # Dispatch protocol (see ember.ir.dispatch) --------------------------------------

    @classmethod
    def __ember_call__(cls, op: OpDef, inputs: Sequence[Any], attrs: Attrs) -> Proxy:
        tracer = next(v.tracer for v in inputs if isinstance(v, Proxy))
        return tracer.record(op, inputs, attrs)

    @classmethod
    def __ember_constant__(cls, value: Any, dtype: Any) -> Tensor:
        # A Python number operand: an eager scalar, which the tracer makes a const.
        return Tensor.__ember_constant__(value, dtype)

    # In-place updates ---------------------------------------------------------------

    def _write(self, result: Any, op: str) -> Proxy:
        """Record ``x.add_(y)`` and ``x += y`` as ``x = x + y``.

        Rebinding the proxy is only equivalent to writing memory when nothing else
        sees that memory: the value must be computed by an op in the trace (not an
        input, parameter or constant) and must neither be a view nor have views.
        """
        self._check_write(result, op)
        aliased = _aliasing(self.node)
        if aliased:
            raise TraceError(
                f"`{_code()}` writes in place into %{self.node.name}, {aliased}; "
                "tracing records values, not memory, so other views of that memory "
                "would not see the write",
                op=op,
                hint="use the out-of-place form (x = x + y), or .clone() the tensor "
                "before writing into it",
            )
        if result.dtype is not self.dtype:
            result = result.to(self.dtype)
        self.tracer.overwritten.setdefault(self.node.name, user_location())
        self.node = self.tracer.node_of(result)
        return self

    def backward(self, gradient: Any = None, retain_graph: bool = False) -> None:
        """Differentiate the trace so far: only a traced training step can (see
        :mod:`ember.compiler.step`)."""
        self.tracer.backward(self, gradient)

    def __setitem__(self, index: Any, value: Any) -> None:
        raise _value_error(
            self,
            "writes into part of",
            "setitem",
            "build the result out of place, for example with ember.where(mask, value, "
            "x) or ember.cat",
        )

    # What needs values ----------------------------------------------------------------

    def __bool__(self) -> bool:
        raise _value_error(
            self,
            "asks for the truth value of",
            "bool",
            "choose between values with ember.where(condition, a, b), which records "
            "both branches; decisions on shapes (x.shape[0] > 1) are fine",
        )

    def item(self) -> Any:
        raise _value_error(self, "asks for the Python number in", "item", _KEEP_TENSOR)

    def __float__(self) -> float:
        raise _value_error(self, "converts to a float", "float", _KEEP_TENSOR)

    def __int__(self) -> int:
        raise _value_error(self, "converts to an int", "int", _KEEP_TENSOR)

    def __index__(self) -> int:
        raise _value_error(
            self,
            "uses as an index",
            "index",
            "index with Python ints or slices; indices that depend on tensor values "
            "cannot be traced",
        )

    def __iter__(self) -> Iterator[Any]:
        raise _value_error(
            self,
            "iterates over",
            "iter",
            "index explicitly: for i in range(x.shape[0]): ... x[i] ...",
        )

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise _value_error(self, "hands to numpy", "numpy", _USE_EMBER)

    def __array_ufunc__(
        self, ufunc: Any, method: str, *args: Any, **kwargs: Any
    ) -> Any:
        raise _value_error(
            self, f"applies numpy.{ufunc.__name__} to", "numpy", _USE_EMBER
        )

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        raise _value_error(
            self, f"applies numpy.{func.__name__} to", "numpy", _USE_EMBER
        )

    def numpy(self) -> np.ndarray:
        raise _value_error(self, "asks for the numpy array of", "numpy", _USE_EMBER)

    def tolist(self) -> list[Any]:
        raise _value_error(self, "asks for the values of", "tolist", _KEEP_TENSOR)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the proxy lacks: say why when a tensor has them.
        if not name.startswith("__") and hasattr(Tensor, name):
            raise TraceError(
                f"`{_code()}` uses Tensor.{name} on %{self.node.name}, which tracing "
                "does not support: it needs values, storage or autograd state",
                op=name,
                hint="keep the traced code to ember ops; do this outside the traced "
                "function, on its inputs or results",
            )
        raise AttributeError(f"'Proxy' object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"Proxy(%{self.node.name}: {self.node.meta!r})"


_KEEP_TENSOR = (
    "keep the value a tensor (a 0-d tensor mixes with others in arithmetic), or pass "
    "the number in as an argument; decisions on shapes (x.shape) are fine"
)
_USE_EMBER = (
    "use the ember function of the same name (ember.exp, ember.matmul, ember.where, "
    "...), so the op is recorded in the graph"
)


def _code() -> str:
    """The text of the user's line that is running, for error messages."""
    loc = user_location()
    return loc.code if loc is not None and loc.code else "<unknown line>"


def _value_error(proxy: Proxy, action: str, op: str, hint: str) -> TraceError:
    node = proxy.node
    return TraceError(
        f"`{_code()}` {action} %{node.name} ({node.meta!r}), a traced tensor; while "
        "tracing, tensors have shapes and dtypes but no values, so Python code "
        "cannot depend on them",
        op=op,
        hint=hint,
    )


def _aliasing(node: Node) -> str:
    """Why writing into ``node`` would have to reach other values ("" when safe)."""
    if node.kind != "call":
        return f"which is a graph {node.kind}"
    if get_op(node.op or "").kind is OpKind.VIEW:
        return f"which is a view ({node.op}) of %{node.inputs[0].name}"
    views = [
        u
        for u in node.users
        if u.kind == "call" and get_op(u.op or "").kind is OpKind.VIEW
    ]
    if views:
        return f"which has a view %{views[0].name}"
    return ""


# The tracer -------------------------------------------------------------------------


class Tracer:
    """Records the ops of one trace into ``graph``; see the module docstring.

    A tracer is used once, on the thread that created it. ``finish`` closes it:
    a proxy that outlives its trace cannot add nodes afterwards.
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.thread = threading.get_ident()
        self.finished = False
        # id(tensor) -> (kind, qualified name, tensor) for parameters and buffers.
        self._tracked: dict[int, tuple[str, str, Tensor]] = {}
        # id(tensor) -> (node, tensor); the tensor is held so its id stays unique.
        self._lifted: dict[int, tuple[Node, Any]] = {}
        self._scalars: dict[tuple[str, bytes] | None, Node] = {}
        self._scopes: dict[int, str] = {}
        #: Values written in place (by name), and the user's line that wrote them.
        self.overwritten: dict[str, SourceLocation | None] = {}

    # Setting up ---------------------------------------------------------------------

    def add_module(self, module: Any) -> None:
        """Track ``module``'s parameters, buffers and submodule names."""
        for kind, method in (
            ("param", "named_parameters"),
            ("buffer", "named_buffers"),
        ):
            if hasattr(module, method):
                for name, tensor in getattr(module, method)():
                    if isinstance(tensor, Tensor):
                        self._tracked.setdefault(id(tensor), (kind, name, tensor))
        if hasattr(module, "named_modules"):
            for name, sub in module.named_modules():
                self._scopes.setdefault(id(sub), name)
        else:
            self._scopes[id(module)] = ""

    def input(self, name: str, tensor: Tensor, loc: SourceLocation | None) -> Proxy:
        """A new graph input standing for ``tensor``."""
        meta = tensor.meta
        # The input starts at its own first element, wherever that lies in storage.
        meta = TensorMeta(meta.shape, meta.dtype, meta.strides, 0)
        return Proxy(self.graph.input(name, meta, loc=loc), self)

    def backward(self, root: Proxy, gradient: Any) -> None:
        """``root.backward()`` inside the traced code: a model cannot do that."""
        raise TraceError(
            f"`{_code()}` calls Tensor.backward on %{root.node.name} inside a traced "
            "model",
            op="backward",
            hint="call backward() outside the traced function, or compile the whole "
            "training step (forward, backward and optimizer.step()) as one function",
        )

    # Recording ----------------------------------------------------------------------

    def intercept(
        self, op: OpDef, inputs: tuple[Any, ...], attrs: Attrs, handler: Any
    ) -> Any:
        """The dispatch interceptor: record calls that touch traced values."""
        if threading.get_ident() == self.thread and any(
            isinstance(v, Proxy) or id(v) in self._tracked for v in inputs
        ):
            return self.record(op, inputs, attrs)
        return handler.__ember_call__(op, inputs, attrs)

    def record(self, op: OpDef, inputs: Sequence[Any], attrs: Attrs) -> Proxy:
        """Add a call of ``op`` on ``inputs`` to the graph and return its proxy."""
        if self.finished:
            raise TraceError(
                f"`{_code()}` applies {op.name} to a traced value of a finished trace",
                op=op.name,
                hint="a proxy was kept (on self, in a global) after tracing ended; "
                "do not store traced values outside the traced call",
            )
        nodes = [self.node_of(v) for v in inputs]
        node = self.graph.call(
            op.name, nodes, attrs, loc=user_location(), name=self._scoped(op.name)
        )
        return Proxy(node, self)

    def node_of(self, value: Any) -> Node:
        """The graph node for an operand: a proxy's node, a param or a const."""
        if isinstance(value, Proxy):
            if value.tracer is not self:
                raise TraceError(
                    f"`{_code()}` mixes %{value.node.name} of another trace into this "
                    "one",
                    hint="do not keep traced values between traces",
                )
            return value.node
        if not isinstance(value, Tensor):
            raise TraceError(
                f"`{_code()}` passes a {type(value).__name__} where a tensor is needed",
                hint="convert it with ember.tensor(...)",
            )
        found = self._lifted.get(id(value))
        if found is not None:
            return found[0]
        tracked = self._tracked.get(id(value))
        if tracked is not None:
            kind, name, _ = tracked
            meta = TensorMeta(value.shape, value.dtype, value.strides, 0)
            node = self.graph.param(name, meta, kind=kind, loc=user_location())
        else:
            node = self._constant(value)
        self._lifted[id(value)] = (node, value)
        return node

    def _constant(self, tensor: Tensor) -> Node:
        """A const node holding a copy of ``tensor`` (dense, whatever its layout)."""
        array = tensor.numpy()
        key = (tensor.dtype.name, array.tobytes()) if array.ndim == 0 else None
        if key in self._scalars:  # numbers repeat (x * 2, y + 1e-5): one node each
            return self._scalars[key]
        meta = TensorMeta.contiguous(array.shape, tensor.dtype)
        node = self.graph.const(
            array, meta, name=self._scoped("const"), loc=user_location()
        )
        if key is not None:
            self._scalars[key] = node
        return node

    def _scoped(self, name: str) -> str:
        """``name`` prefixed with the qualified name of the innermost module running."""
        if len(self._scopes) <= 1:
            return name
        frame = sys._getframe(1)
        while frame is not None:
            code = frame.f_code
            if code.co_argcount and code.co_varnames[0] == "self":
                scope = self._scopes.get(id(frame.f_locals.get("self")))
                if scope is not None:
                    return f"{scope}.{name}" if scope else name
            frame = frame.f_back  # type: ignore[assignment]
        return name


# Entry points -----------------------------------------------------------------------


@dataclass
class TraceResult:
    """A trace: the graph, how to pass arguments to it and how to rebuild results.

    ``input_spec`` lays out the call's arguments (tensors are the graph inputs, in
    order; other values were baked into the graph); ``output_spec`` rebuilds the
    model's result from the graph's outputs. ``overwritten`` names the values the
    model wrote in place (recorded as new values), with the line of the write:
    autodiff refuses to save them, as eager backward would.
    """

    graph: Graph
    input_spec: Spec
    output_spec: Spec
    overwritten: dict[str, SourceLocation | None] = field(default_factory=dict)


def trace(
    model: Callable[..., Any], *example_inputs: Any, **example_kwargs: Any
) -> Graph:
    """Trace ``model`` (a module or a function of tensors) on example inputs.

    Tensors among the inputs (also inside tuples, lists and dicts) become graph
    inputs; other arguments are treated as constants of this trace. See the module
    docstring for what each value becomes.

    >>> import ember
    >>> g = trace(lambda x: x[:, 1:].exp(), ember.ones(2, 3))
    >>> [(n.name, n.meta) for n in g.calls()]
    [('slice', f32[2, 2] strides=(3, 1) offset=1), ('exp', f32[2, 2])]
    """
    return trace_call(model, example_inputs, example_kwargs).graph


def trace_call(
    model: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None = None,
) -> TraceResult:
    """Trace ``model(*args, **kwargs)``; the full result behind :func:`trace`."""
    kwargs = dict(kwargs or {})
    forward = getattr(model, "forward", model)
    graph = Graph(model_name(model))
    tracer = Tracer(graph)
    if hasattr(model, "named_parameters") or hasattr(model, "named_buffers"):
        tracer.add_module(model)

    leaves, input_spec = flatten((tuple(args), kwargs), _is_tensor)
    names = _input_names(forward, args, kwargs, input_spec)
    loc = _definition_line(forward)
    proxies = [tracer.input(name, t, loc) for name, t in zip(names, leaves)]
    call_args, call_kwargs = unflatten(input_spec, proxies)
    try:
        with dispatch.intercept(tracer.intercept):
            result = model(*call_args, **call_kwargs)
    except EmberError as error:
        raise _in_trace(error, graph.name) from None
    finally:
        tracer.finished = True

    outputs, output_spec = flatten(result, lambda v: isinstance(v, (Proxy, Tensor)))
    graph.output([tracer.node_of(v) for v in outputs])
    logger.debug("traced %s: %d nodes", graph.name, len(graph))
    return TraceResult(graph, input_spec, output_spec, tracer.overwritten)


def _is_tensor(value: Any) -> bool:
    return isinstance(value, Tensor)


def model_name(model: Any) -> str:
    """The name a trace of ``model`` carries: its class, or the function's name."""
    if hasattr(model, "named_parameters") or not hasattr(model, "__name__"):
        return type(model).__name__
    name = model.__name__
    return "lambda" if name == "<lambda>" else name


def _input_names(
    forward: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    spec: Spec,
) -> list[str]:
    """A name for every tensor leaf: the forward parameter it was passed as."""
    try:
        bound = inspect.signature(forward).bind(*args, **kwargs).arguments
        positional = list(bound)[: len(args)]
    except (TypeError, ValueError):
        positional = []
    names: list[str] = []

    def walk(item: Spec, name: str) -> None:
        if item[0] == "leaf":
            names.append(name)
        elif item[0] == "seq":
            for i, sub in enumerate(item[2]):
                walk(sub, f"{name}_{i}")
        elif item[0] == "dict":
            for key, sub in item[2]:
                walk(sub, f"{name}_{key}")

    args_spec, kwargs_spec = spec[2]
    for i, sub in enumerate(args_spec[2]):
        walk(sub, positional[i] if i < len(positional) else f"input{i}")
    for key, sub in kwargs_spec[2]:
        walk(sub, str(key))
    return names


def _definition_line(fn: Callable[..., Any]) -> SourceLocation | None:
    """Where ``fn`` is defined: the location given to the graph's inputs."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if code is None:
        return None
    text = linecache.getline(code.co_filename, code.co_firstlineno).strip()
    return SourceLocation(code.co_filename, code.co_firstlineno, text)


def _in_trace(error: EmberError, name: str) -> EmberError:
    """``error`` again, same class and fields, with the trace named in its message."""
    return type(error)(
        f"while tracing {name}: {error.message}",
        op=error.op,
        expected=error.expected,
        actual=error.actual,
        hint=error.hint,
        location=error.location,
    )
