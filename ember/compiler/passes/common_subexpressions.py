"""``eliminate_common_subexpressions``: compute each distinct value once."""

from __future__ import annotations

import logging
from collections.abc import Hashable

from ember.compiler.passes.base import GraphPass
from ember.ir.compare import attr_key
from ember.ir.graph import Graph, Node

logger = logging.getLogger(__name__)

#: Constants up to this many elements are compared by value; bigger ones are kept
#: apart rather than hashed byte by byte.
MAX_COMPARED_CONST_ELEMENTS = 1024


class EliminateCommonSubexpressions(GraphPass):
    """Merge call nodes that apply the same op to the same inputs with equal attrs.

    Walking in topological order, a call whose (op, inputs, attrs, meta) matches an
    earlier one is replaced by it; since inputs are compared after earlier merges,
    whole repeated chains collapse. Small constants with the same dtype, shape and
    bytes merge too (decomposition leaves many copies of ``0.5`` or ``1/n``).
    Attributes compare by type and value (``ember.ir.compare.attr_key``), so ``1``
    and ``1.0``, or ``0.0`` and ``-0.0``, stay apart.

    Changes: duplicates are erased and their users read the first occurrence, whose
    name and source location survive. Keeps: every value, the outputs, inputs and
    params (which are never merged: each is its own runtime argument).

    Before::

        %a: f32[3] = exp(%x)
        %b: f32[3] = exp(%x)
        %c: f32[3] = add(%a, %b)

    after::

        %a: f32[3] = exp(%x)
        %c: f32[3] = add(%a, %a)
    """

    name = "eliminate_common_subexpressions"

    def run(self, graph: Graph) -> None:
        seen: dict[Hashable, Node] = {}
        merged = 0
        for node in graph:
            key = _key(node)
            if key is None:
                continue
            first = seen.setdefault(key, node)
            if first is not node:
                node.replace_all_uses_with(first)
                graph.erase(node)
                merged += 1
        logger.debug("eliminate_common_subexpressions: merged %d nodes", merged)


def _key(node: Node) -> Hashable | None:
    if node.kind == "call":
        inputs = tuple(id(value) for value in node.inputs)
        attrs = tuple(sorted((k, attr_key(v)) for k, v in node.attrs.items()))
        return ("call", node.op, inputs, attrs, node.meta)
    if node.kind == "const" and node.value is not None:
        if node.value.size > MAX_COMPARED_CONST_ELEMENTS:
            return None
        return ("const", node.meta, node.value.dtype.str, node.value.tobytes())
    return None


eliminate_common_subexpressions = EliminateCommonSubexpressions()
