"""What every graph pass shares: the :class:`GraphPass` contract and error context.

A pass is a small named object with one entry point, ``run(graph)``, that returns a
new graph or None after changing ``graph`` in place. Its docstring says what it
changes and what it keeps true; the pass manager checks the common promise, that the
graph verifies after the pass when it verified before.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from ember.errors import EmberError
from ember.ir.graph import Graph, Node
from ember.ir.meta import TensorMeta
from ember.ir.registry import OpDef, OpKind, get_op


class GraphPass(abc.ABC):
    """A named graph transformation; ``name`` is its stage name in dumps."""

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def run(self, graph: Graph) -> Graph | None:
        """Transform ``graph``: return a new graph, or None when changed in place."""

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


def op_of(node: Node) -> OpDef:
    """The registry entry of a call node's op."""
    assert node.kind == "call" and node.op is not None, node
    return get_op(node.op)


def meta_of(node: Node) -> TensorMeta:
    """A value's meta (every value of a verified graph has one)."""
    assert node.meta is not None, node
    return node.meta


def is_view(node: Node) -> bool:
    """True for a call of a view op, which reads its input's storage in place."""
    return node.kind == "call" and op_of(node).kind is OpKind.VIEW


def describe(node: Node) -> str:
    """A node as one short line of IR: ``%y = matmul(%x, %w)``."""
    if node.kind != "call":
        return f"%{node.name} = {node.kind}"
    args = ", ".join(f"%{value.name}" for value in node.inputs)
    return f"%{node.name} = {node.op}({args})"


def in_node(error: EmberError, node: Node, stage: str) -> EmberError:
    """``error`` raised again with the stage, the node and its source line attached.

    The result has the same class and structured fields, so callers that catch
    ``ShapeError`` (or ``ValueError``) still do.
    """
    return type(error)(
        f"in pass {stage}, at {describe(node)}: {error.message}",
        op=error.op or node.op,
        expected=error.expected,
        actual=error.actual,
        hint=error.hint,
        location=node.loc if node.loc is not None else error.location,
    )
