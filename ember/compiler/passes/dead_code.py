"""``eliminate_dead_code``: drop values that no output needs."""

from __future__ import annotations

import logging

from ember.compiler.passes.base import GraphPass
from ember.ir.graph import Graph, Node

logger = logging.getLogger(__name__)

#: Node kinds that form the program's signature and stay even when unused.
SIGNATURE_KINDS = ("input", "param", "buffer", "output")


class EliminateDeadCode(GraphPass):
    """Erase call and const nodes whose values reach no output.

    Liveness flows backwards from the output node through ``inputs``; every call or
    const outside that set is erased, users before the values they read.

    Changes: dead call and const nodes disappear. Keeps: every live node, its name
    and location, the order of the rest, and all input, param and buffer nodes even
    when unused, because they are the compiled program's arguments.

    Before::

        %a: f32[3] = exp(%x)
        %b: f32[3] = log(%x)
        output(%a)

    after::

        %a: f32[3] = exp(%x)
        output(%a)
    """

    name = "eliminate_dead_code"

    def run(self, graph: Graph) -> None:
        live = live_nodes(graph)
        dead = [
            n for n in graph.nodes if n.kind not in SIGNATURE_KINDS and n not in live
        ]
        for node in reversed(dead):
            graph.erase(node)
        logger.debug("eliminate_dead_code: erased %d nodes", len(dead))


def live_nodes(graph: Graph) -> set[Node]:
    """The nodes whose values an output depends on (the output node included)."""
    live: set[Node] = set()
    pending = [graph.output_node]
    while pending:
        node = pending.pop()
        if node not in live:
            live.add(node)
            pending.extend(node.inputs)
    return live


eliminate_dead_code = EliminateDeadCode()
