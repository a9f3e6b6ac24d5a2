"""``fold_constants``: evaluate calls on constants at compile time."""

from __future__ import annotations

import logging

import numpy as np

from ember.compiler.passes.base import GraphPass, describe, meta_of, op_of
from ember.compiler.passes.meta_propagation import refresh_metas
from ember.errors import EmberError
from ember.ir.graph import Graph, Node
from ember.ir.meta import TensorMeta

logger = logging.getLogger(__name__)

#: Largest result, in elements, that folding writes into the graph. Constants live in
#: the IR text and in every dump, so a fold that would materialize a big tensor (an
#: ``expand`` of a scalar to an activation's shape) is left for the kernels.
MAX_FOLDED_ELEMENTS = 1024


class FoldConstants(GraphPass):
    """Replace each call whose inputs are all constants by a constant of its result.

    The value comes from the op's numpy reference, so folding agrees with eager
    execution bit for bit. Calls whose result has more than ``max_elements``
    elements (default :data:`MAX_FOLDED_ELEMENTS`) stay, and so do calls whose
    reference raises (the error then surfaces when the program runs, as it would
    eagerly); both are logged. Folding runs in topological order, so chains of
    constant calls fold completely.

    Changes: foldable call nodes become dense ``const`` nodes; views downstream of a
    folded view get their metas recomputed (a folded constant is dense, the view it
    replaced may not have been). Keeps: every value, the outputs, inputs and params.

    Before::

        %c: f32[] = const 2.0
        %d: f32[] = mul(%c, %c)

    after (``%c`` is left for eliminate_dead_code)::

        %c: f32[] = const 2.0
        %d_const: f32[] = const 4.0
    """

    name = "fold_constants"

    def __init__(self, max_elements: int = MAX_FOLDED_ELEMENTS) -> None:
        self.max_elements = max_elements

    def run(self, graph: Graph) -> None:
        folded = 0
        for node in graph:
            if node.kind == "call" and all(v.kind == "const" for v in node.inputs):
                folded += self._fold(graph, node)
        if folded:
            refresh_metas(graph, self.name)
        logger.debug("fold_constants: folded %d calls", folded)

    def _fold(self, graph: Graph, node: Node) -> int:
        meta = meta_of(node)
        if meta.numel > self.max_elements:
            logger.debug(
                "fold_constants: kept %s: %d elements exceed the limit of %d",
                describe(node),
                meta.numel,
                self.max_elements,
            )
            return 0
        try:
            arrays = [v.value for v in node.inputs if v.value is not None]
            value = op_of(node).reference(arrays, node.attrs)
        except (EmberError, ArithmeticError) as error:
            logger.debug(
                "fold_constants: kept %s: its reference raised %s",
                describe(node),
                error,
            )
            return 0
        value = np.array(value, dtype=meta.dtype.np_dtype, order="C")
        assert value.shape == meta.shape, (describe(node), value.shape, meta.shape)
        with graph.inserting_before(node):
            const = graph.const(
                value,
                TensorMeta.contiguous(meta.shape, meta.dtype),
                name=f"{node.name}_const",
                loc=node.loc,
            )
        node.replace_all_uses_with(const)
        graph.erase(node)
        return 1


fold_constants = FoldConstants()
