"""``decompose``: rewrite composite ops into the primitive set fusion understands."""

from __future__ import annotations

import logging

from ember.compiler.passes.base import GraphPass, describe, in_node, meta_of, op_of
from ember.compiler.passes.graph_builder import GraphBuilder, NodeValue
from ember.errors import EmberError, IRError, LoweringError
from ember.ir import decompositions  # noqa: F401  (fills OpDef.decompose)
from ember.ir import functions as F
from ember.ir.graph import Graph, Node
from ember.ir.registry import OpKind

logger = logging.getLogger(__name__)

#: How many times a decomposition may produce composites that need decomposing again.
MAX_ROUNDS = 8


class Decompose(GraphPass):
    """Replace every composite call by the primitives of its registry decomposition.

    Each composite node (``OpKind.COMPOSITE``: softmax, mean, linear, the losses...)
    is replaced by the nodes that tracing ``OpDef.decompose`` records right before
    it; the new nodes carry the composite's source location, so errors and dumps
    still point at the user's line. Composites produced by a decomposition (``var``
    uses ``mean``) are decomposed in the next round.

    Changes: composite call nodes become subgraphs of primitive calls and 0-d
    constants. Keeps: the value of every remaining node and of the outputs (same
    shape, dtype and dense layout), inputs, params and their order.

    Before::

        %m: f32[4] = mean(%x) {dims=(1,), keepdim=False}

    after (``%x`` is ``f32[4, 8]``)::

        %sum: f32[4] = sum(%x) {dims=(1,), keepdim=False}
        %const: f32[] = const 0.125
        %mul: f32[4] = mul(%sum, %const)
    """

    name = "decompose"

    def run(self, graph: Graph) -> None:
        for _ in range(MAX_ROUNDS):
            composites = [n for n in graph.calls() if _is_composite(n)]
            if not composites:
                return
            for node in composites:
                decompose_node(graph, node, self.name)
        left = sorted({op_of(n).name for n in graph.calls() if _is_composite(n)})
        raise IRError(
            f"decompose: composite ops {left} remain after {MAX_ROUNDS} rounds; a "
            "decomposition produces its own op again",
            actual=left,
            hint="make each decomposition in ember/ir/decompositions.py use only "
            "ops that are simpler than the op it decomposes",
        )


def _is_composite(node: Node) -> bool:
    return op_of(node).kind is OpKind.COMPOSITE


def decompose_node(graph: Graph, node: Node, stage: str = "decompose") -> Node:
    """Replace the composite ``node`` by its decomposition; return the result node."""
    op = op_of(node)
    if op.decompose is None:
        raise in_node(
            LoweringError(
                f"composite op {op.name} has no decomposition into primitives",
                op=op.name,
                hint="register one with @decomposes in ember/ir/decompositions.py",
            ),
            node,
            stage,
        )
    with GraphBuilder(graph, before=node, loc=node.loc) as builder:
        try:
            inputs = tuple(builder.value(value) for value in node.inputs)
            result = _dense_like(op.decompose(inputs, dict(node.attrs)), node)
        except EmberError as error:
            raise in_node(error, node, stage) from error
    logger.debug("decompose: %s became %d nodes", describe(node), len(builder.created))
    node.replace_all_uses_with(result.node)
    graph.erase(node)
    return result.node


def _dense_like(result: NodeValue, node: Node) -> NodeValue:
    """``result`` checked against the composite's meta, copied if its layout differs."""
    expected, found = meta_of(node), result.meta
    if (found.shape, found.dtype) != (expected.shape, expected.dtype):
        raise IRError(
            f"the decomposition of {node.op} produced {found.type_str()}, but the op's "
            f"meta rule says {expected.type_str()}",
            op=node.op,
            expected=expected.type_str(),
            actual=found.type_str(),
            hint="fix the decomposition in ember/ir/decompositions.py",
        )
    if found != expected:
        result = F.clone(result)
    return result


decompose = Decompose()
