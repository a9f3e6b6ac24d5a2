"""The graph interpreter: run a Graph on the eager runtime, node by node.

Each ``call`` node goes through :func:`ember.ir.dispatch.call` with eager tensors, so
the interpreter computes exactly what eager execution computes (views share storage,
autograd records when parameters require grad). It is the reference every compiled
backend is checked against, and the ``"interpret"`` backend of :func:`ember.compile`.

Inputs bind in order, parameters and buffers by qualified name. A bound tensor must
have the shape, dtype and strides its node declares (a graph is specialized to the
layouts it was traced with; see :func:`layout_key` for which strides count); anything
else is a :class:`~ember.errors.SignatureError`.

    >>> import ember
    >>> from ember.compiler.trace import trace
    >>> g = trace(lambda x, y: (x * y).sum(0), ember.ones(2, 3), ember.ones(3))
    >>> interpret(g, [ember.ones(2, 3), ember.arange(3.0)])[0].tolist()
    [0.0, 2.0, 4.0]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ember.errors import SignatureError
from ember.ir import dispatch
from ember.ir.graph import Graph, Node
from ember.ir.meta import TensorMeta
from ember.runtime.factories import from_numpy
from ember.runtime.tensor import Tensor

logger = logging.getLogger(__name__)


def interpret(
    graph: Graph,
    inputs: Sequence[Tensor],
    params: Mapping[str, Tensor] | None = None,
) -> list[Tensor]:
    """Run ``graph`` on ``inputs`` (and ``params`` by name); return its outputs."""
    params = params or {}
    graph_inputs = graph.inputs
    if len(inputs) != len(graph_inputs):
        raise SignatureError(
            f"graph {graph.name} takes {len(graph_inputs)} inputs "
            f"({', '.join('%' + n.name for n in graph_inputs)}), got {len(inputs)}",
            expected=len(graph_inputs),
            actual=len(inputs),
        )
    env: dict[Node, Tensor] = {}
    for node, value in zip(graph_inputs, inputs):
        env[node] = _checked(node, value, f"input %{node.name}")
    last_use = _last_uses(graph)

    for index, node in enumerate(graph.nodes):
        if node.kind == "param" or node.kind == "buffer":
            env[node] = _checked(
                node, _param(graph, node, params), f"{node.kind} {node.target!r}"
            )
        elif node.kind == "const":
            # A fresh tensor each run: a caller that writes into a result cannot
            # change the graph's constant.
            env[node] = from_numpy(node.value.copy())  # type: ignore[union-attr]
        elif node.kind == "call":
            assert node.op is not None, f"%{node.name} is a call without an op"
            env[node] = dispatch.call(
                node.op, [env[v] for v in node.inputs], node.attrs
            )
        elif node.kind == "output":
            return [env[v] for v in node.inputs]
        for operand in set(node.inputs):
            if last_use[operand] == index:
                del env[operand]
    raise SignatureError(f"graph {graph.name} has no output node")


def _last_uses(graph: Graph) -> dict[Node, int]:
    """For each value, the index of the last node that reads it."""
    last: dict[Node, int] = {}
    for index, node in enumerate(graph.nodes):
        for value in node.inputs:
            last[value] = index
    return last


def _param(graph: Graph, node: Node, params: Mapping[str, Tensor]) -> Tensor:
    value = params.get(node.target or "")
    if value is None:
        raise SignatureError(
            f"graph {graph.name} reads {node.kind} {node.target!r}, which the model "
            "does not have",
            expected=node.target,
            actual=sorted(params)[:8],
            hint="bind the model the graph was traced from, or trace this model again",
        )
    return value


def layout_key(meta: TensorMeta) -> tuple[Any, ...]:
    """Shape, dtype and the strides that matter: those of dims with more than one
    element (none at all for an empty tensor). Two tensors with equal keys read the
    same elements the same way, so one traced graph serves both."""
    if meta.numel == 0:
        return meta.shape, meta.dtype
    strides = tuple(
        st if size > 1 else None for size, st in zip(meta.shape, meta.strides)
    )
    return meta.shape, meta.dtype, strides


def _checked(node: Node, value: Any, what: str) -> Tensor:
    """``value`` when it is a tensor laid out as ``node`` declares."""
    meta = node.meta
    assert meta is not None, f"%{node.name} has no meta"
    if not hasattr(type(value), "__ember_priority__"):  # a tensor, or a proxy
        raise SignatureError(
            f"{what}: expected a tensor, got {type(value).__name__}",
            expected=meta.type_str(),
            actual=type(value).__name__,
        )
    got = value.meta
    if layout_key(got) != layout_key(meta):
        raise SignatureError(
            f"{what}: the graph was built for {meta.type_str()} with strides "
            f"{meta.strides}, got {got.type_str()} with strides {got.strides}",
            expected=f"{meta.type_str()} strides={meta.strides}",
            actual=f"{got.type_str()} strides={got.strides}",
            hint="trace again for these inputs (ember.compile does so by itself)",
        )
    return value
