"""Record calls of ember functions as nodes of an existing graph.

Decompositions (and any rewrite written with :mod:`ember.ir.functions`) run on
:class:`NodeValue` operands inside a :class:`GraphBuilder`: each registry op they call
becomes a ``call`` node at the builder's insertion point, carrying the builder's
source location, and each Python number they use becomes a 0-d ``const`` node.

    >>> from ember.ir import functions as F
    >>> from ember.ir.dtypes import float32
    >>> from ember.ir.graph import Graph
    >>> from ember.ir.meta import TensorMeta
    >>> g = Graph()
    >>> x = g.input("x", TensorMeta.contiguous((3,), float32))
    >>> with GraphBuilder(g) as builder:
    ...     y = F.mul(F.exp(builder.value(x)), 2.0)
    >>> [n.op or n.kind for n in g.nodes]
    ['input', 'exp', 'const', 'mul']
    >>> y.meta
    f32[3]
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ember.errors import IRError, SourceLocation
from ember.ir.dtypes import DType, from_numpy_dtype
from ember.ir.graph import Graph, Node
from ember.ir.meta import TensorMeta
from ember.ir.registry import Attrs, OpDef

# The builders open on each thread, innermost last: a Python number operand has no
# node to say which graph it belongs to, so it goes to the innermost builder.
_local = threading.local()


class NodeValue:
    """A graph node seen as an ember value: ops applied to it record new nodes.

    Its dispatch priority (20) outranks eager tensors (10), so an eager tensor mixed
    into a recorded call becomes a ``const`` node of the graph.
    """

    __ember_priority__ = 20
    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node

    @property
    def meta(self) -> TensorMeta:
        assert self.node.meta is not None, f"%{self.node.name} has no meta"
        return self.node.meta

    @classmethod
    def __ember_call__(
        cls, op: OpDef, inputs: Sequence[Any], attrs: Attrs
    ) -> NodeValue:
        return _current().call(op, inputs, attrs)

    @classmethod
    def __ember_constant__(cls, value: Any, dtype: DType) -> NodeValue:
        return _current().constant(np.asarray(value, dtype=dtype.np_dtype))

    def __repr__(self) -> str:
        return f"NodeValue(%{self.node.name}: {self.meta!r})"


class GraphBuilder:
    """Where recorded calls go: a graph, an insertion point and a source location.

    ``before`` is the node the new nodes go in front of (the end of the graph when
    None); ``loc`` is stamped on every new node, so a decomposed op keeps the user's
    line. ``created`` lists the nodes added so far, in order.
    """

    def __init__(
        self,
        graph: Graph,
        before: Node | None = None,
        loc: SourceLocation | None = None,
    ) -> None:
        self.graph = graph
        self.before = before
        self.loc = loc
        self.created: list[Node] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> GraphBuilder:
        if self.before is not None:
            self._stack.enter_context(self.graph.inserting_before(self.before))
        _builders().append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _builders().remove(self)
        self._stack.close()

    def value(self, node: Node) -> NodeValue:
        """``node`` as an operand of ember functions."""
        if node.graph is not self.graph:
            raise IRError(f"%{node.name} belongs to another graph than this builder's")
        return NodeValue(node)

    def call(self, op: OpDef, inputs: Sequence[Any], attrs: Attrs) -> NodeValue:
        """Record ``op`` on ``inputs`` (values of any class) as a call node."""
        nodes = [self._node_of(v) for v in inputs]
        node = self.graph.call(op.name, nodes, attrs, loc=self.loc)
        self.created.append(node)
        return NodeValue(node)

    def constant(self, array: np.ndarray) -> NodeValue:
        """A ``const`` node holding ``array`` (its dtype must be an ember dtype)."""
        meta = TensorMeta.contiguous(array.shape, from_numpy_dtype(array.dtype))
        node = self.graph.const(array, meta, loc=self.loc)
        self.created.append(node)
        return NodeValue(node)

    def _node_of(self, value: Any) -> Node:
        if isinstance(value, NodeValue):
            if value.node.graph is not self.graph:
                raise IRError(f"%{value.node.name} belongs to another graph")
            return value.node
        # A value of a lower-priority class, such as an eager tensor a rule captured.
        return self.constant(np.array(value, order="C")).node


def _builders() -> list[GraphBuilder]:
    if not hasattr(_local, "builders"):
        _local.builders = []
    return _local.builders


def _current() -> GraphBuilder:
    active = _builders()
    if not active:
        raise IRError(
            "an op was applied to a graph node outside a GraphBuilder",
            hint="wrap the code that calls ember functions on NodeValues in "
            "`with GraphBuilder(graph, before=node):`",
        )
    return active[-1]
