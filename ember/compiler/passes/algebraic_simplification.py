"""``simplify_algebra``: remove operations that leave their operand unchanged."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ember.compiler.passes.base import GraphPass, describe, is_view, meta_of, op_of
from ember.ir.graph import Graph, Node
from ember.ir.registry import Attrs, get_op

logger = logging.getLogger(__name__)

#: A rule's verdict: forward an existing node, build ``op(node, attrs)``, or nothing.
Rewrite = Node | tuple[str, Node, Attrs] | None

#: Rewrites can enable each other (a forwarded cast exposes a double permute), so the
#: rules run again until nothing changes, at most this many times.
MAX_ROUNDS = 4

# op -> (identity element, the operand positions it may take).
_IDENTITIES: dict[str, tuple[float, tuple[int, ...]]] = {
    "add": (0.0, (0, 1)),
    "sub": (0.0, (1,)),
    "mul": (1.0, (0, 1)),
    "div": (1.0, (1,)),
    "pow": (1.0, (1,)),
}

# View ops that keep the row-major order of elements, so a view of them is a view of
# their input.
_ORDER_KEEPING_VIEWS = ("view", "squeeze", "unsqueeze")


class SimplifyAlgebra(GraphPass):
    """Apply algebraic identities that make a node equal to a simpler value.

    - ``x*1``, ``1*x``, ``x+0``, ``0+x``, ``x-0``, ``x/1``, ``x**1`` become ``x``,
      where the ``0`` or ``1`` is a constant filled with that value, and only when the
      result has ``x``'s shape and dtype (no broadcasting, no promotion);
    - ``permute(permute(x))`` becomes one permute, or ``x`` when the orders cancel;
    - a ``view`` of a ``view``, ``squeeze`` or ``unsqueeze`` becomes one view of the
      first input, and a view to the same shape becomes ``x``;
    - ``expand`` to the shape ``x`` already has, and ``cast`` to ``x``'s dtype,
      become ``x``.

    A node is replaced by ``x`` only when nothing observes the difference: if the
    layouts differ (``x`` strided, the node dense), no view and no output may read
    the node; and a non-view node that is a graph output is not replaced by an
    input, a constant or a view (the program would return an alias where eager code
    returns a fresh tensor), nor by a value that is already an output. Declined
    rewrites are logged with the reason. In IEEE arithmetic ``-0.0 + 0`` is
    ``0.0``; dropping ``+ 0`` keeps ``-0.0`` (``docs/limitations.md``).

    Changes: matching nodes are erased (their users read the simpler value) or
    replaced by one new view; the nodes they read are left for eliminate_dead_code.
    Keeps: every value, every meta of the remaining nodes, outputs and inputs.
    """

    name = "simplify_algebra"

    def run(self, graph: Graph) -> None:
        total = 0
        for _ in range(MAX_ROUNDS):
            changed = sum(
                _simplify(graph, node) for node in graph if node.kind == "call"
            )
            total += changed
            if not changed:
                break
        logger.debug("simplify_algebra: %d rewrites", total)


def _simplify(graph: Graph, node: Node) -> int:
    rule = _RULES.get(op_of(node).name)
    rewrite = rule(node) if rule is not None else None
    if rewrite is None:
        return 0
    if isinstance(rewrite, Node):
        reason = _forward_blocker(node, rewrite)
        if reason is not None:
            logger.debug("simplify_algebra: kept %s: %s", describe(node), reason)
            return 0
        replacement = rewrite
    else:
        op, source, attrs = rewrite
        if get_op(op).meta([meta_of(source)], attrs) != node.meta:
            logger.debug(
                "simplify_algebra: kept %s: the merged %s has another layout",
                describe(node),
                op,
            )
            return 0
        with graph.inserting_before(node):
            replacement = graph.call(op, [source], attrs, meta=node.meta, loc=node.loc)
    node.replace_all_uses_with(replacement)
    graph.erase(node)
    return 1


def _forward_blocker(node: Node, x: Node) -> str | None:
    """Why ``node`` cannot be replaced by ``x``, or None when it can."""
    old, new = meta_of(node), meta_of(x)
    if (new.shape, new.dtype) != (old.shape, old.dtype):
        return (
            f"the {new.type_str()} operand differs from the {old.type_str()} result "
            "(broadcasting or promotion)"
        )
    readers = [u for u in node.users if u.kind == "output" or is_view(u)]
    if new != old and readers:
        return f"{new!r} has another layout than {old!r}, and a view or output reads it"
    output = node.graph.output_node
    if node in output.inputs and not is_view(node):
        if x in output.inputs:
            return "the operand is already an output; two outputs would alias"
        if x.kind != "call" or is_view(x):
            return "the output would alias an input, a constant or a view"
    return None


def _filled_with(node: Node, value: float) -> bool:
    return (
        node.kind == "const"
        and node.value is not None
        and node.value.size > 0
        and bool(np.all(node.value == value))
    )


def _identity_operand(node: Node) -> Rewrite:
    identity, positions = _IDENTITIES[op_of(node).name]
    for position in positions:
        if _filled_with(node.inputs[position], identity):
            return node.inputs[1 - position]
    return None


def _double_permute(node: Node) -> Rewrite:
    order = tuple(node.attrs["dims"])
    inner = node.inputs[0]
    if inner.kind == "call" and inner.op == "permute":
        first = tuple(inner.attrs["dims"])
        order = tuple(first[d] for d in order)
        inner = inner.inputs[0]
    if order == tuple(range(len(order))):
        return inner
    return ("permute", inner, {"dims": order}) if inner is not node.inputs[0] else None


def _view_of_view(node: Node) -> Rewrite:
    shape = tuple(node.attrs["shape"])
    source = node.inputs[0]
    while source.kind == "call" and source.op in _ORDER_KEEPING_VIEWS:
        source = source.inputs[0]
    if meta_of(source).shape == shape:
        return source
    return ("view", source, {"shape": shape}) if source is not node.inputs[0] else None


def _same_shape_expand(node: Node) -> Rewrite:
    x = node.inputs[0]
    return x if meta_of(x).shape == meta_of(node).shape else None


def _same_dtype_cast(node: Node) -> Rewrite:
    x = node.inputs[0]
    return x if node.attrs["dtype"] is meta_of(x).dtype else None


_RULES: dict[str, Callable[[Node], Rewrite]] = {
    **{op: _identity_operand for op in _IDENTITIES},
    "permute": _double_permute,
    "view": _view_of_view,
    "expand": _same_shape_expand,
    "cast": _same_dtype_cast,
}

simplify_algebra = SimplifyAlgebra()
