"""``propagate_meta``: recompute every call node's meta from the registry's rules."""

from __future__ import annotations

import logging

from ember.compiler.passes.base import GraphPass, in_node, meta_of, op_of
from ember.errors import EmberError
from ember.ir.graph import Graph

logger = logging.getLogger(__name__)


class PropagateMeta(GraphPass):
    """Recompute the shape, dtype, strides and offset of every call node.

    Walks the graph in topological order and sets each call node's meta to what its
    op's meta rule gives for its inputs' (possibly new) metas, so a graph whose input
    metas changed becomes consistent again. A rule that rejects its inputs raises its
    own typed error (``ShapeError``, ``DTypeError``, ``StrideError``...) naming the
    pass, the node and the source line that created it.

    Changes: the metas of call nodes, nothing else. Keeps: nodes, edges, names,
    attributes and source locations; input, param, buffer and const metas.

    Before (``%x`` was ``f32[4, 3]`` when traced)::

        %x: f32[2, 3] = input
        %y: f32[4] = sum(%x) {dims=(1,), keepdim=False}

    after::

        %x: f32[2, 3] = input
        %y: f32[2] = sum(%x) {dims=(1,), keepdim=False}

    and ``%z: f32[12] = view(%x) {shape=(12,)}`` would now raise a ShapeError at the
    user's line that called ``view``.
    """

    name = "propagate_meta"

    def run(self, graph: Graph) -> None:
        changed = refresh_metas(graph, self.name)
        logger.debug(
            "propagate_meta: %d of %d call metas changed",
            changed,
            sum(1 for _ in graph.calls()),
        )


def refresh_metas(graph: Graph, stage: str) -> int:
    """Set every call node's meta from its op's rule; return how many changed.

    Other passes call this after an edit that may change strides downstream (for
    example replacing a view by a dense constant); ``stage`` names the pass in errors.
    """
    changed = 0
    for node in graph.calls():
        try:
            meta = op_of(node).meta([meta_of(v) for v in node.inputs], node.attrs)
        except EmberError as error:
            raise in_node(error, node, stage) from error
        if meta != node.meta:
            node.meta = meta
            changed += 1
    return changed


propagate_meta = PropagateMeta()
