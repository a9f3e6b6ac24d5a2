"""``multiply_outer_products``: a matmul that sums one term becomes a broadcast mul."""

from __future__ import annotations

import logging

from ember.compiler.passes.base import GraphPass, describe, meta_of
from ember.ir.graph import Graph, Node
from ember.ir.meta import TensorMeta
from ember.ir.registry import Attrs, get_op

logger = logging.getLogger(__name__)

#: How to reach one ``mul`` operand: the value, then a squeeze that drops a dim or None.
Operand = tuple[Node, Attrs | None]


class MultiplyOuterProducts(GraphPass):
    """Rewrite every ``matmul`` whose contracted dimension has size 1 as a ``mul``.

    With one term, ``(a @ b)[..., i, j]`` is ``a[..., i, 0] * b[..., 0, j]``: ``a``
    of shape ``[..., m, 1]`` times ``b`` of shape ``[..., 1, n]`` under broadcasting
    has the matmul's shape, batch dims included (both broadcast them right-aligned).
    A 1-d operand's dim of size 1 is the contraction and leaves no dim in the result,
    so the other operand's contracted dim is squeezed away and the 1-d operand
    broadcasts against what is left; two 1-d operands are both squeezed to 0-d.

    Why: the gradient of an MLP's hidden activation when its last layer has one
    output is the outer product ``f32[256, 1] @ f32[1, 256]``. As a BLAS call plus
    an epilogue kernel for the ReLU mask, a compiled call of it took about 30 µs; as
    one fused pointwise kernel about 20 µs (one BLAS thread, a 2-CPU machine under
    load, call overhead included). Every element is one product in both forms, so the
    values are the same bit for bit, except the sign of a zero product: a matmul
    adds its product to ``0.0``, so ``-0.0 * 1.0`` comes out as ``0.0`` there and
    ``-0.0`` here.

    Before (``%g`` is ``f32[256, 1]``, ``%w`` is ``f32[1, 256]``)::

        %matmul: f32[256, 256] = matmul(%g, %w)  loc("mlp.py", 9, "h @ w")

    after::

        %mul: f32[256, 256] = mul(%g, %w)  loc("mlp.py", 9, "h @ w")

    Changes: each such matmul is erased; its users read the ``mul`` (after a
    ``squeeze`` of one or both operands in the 1-d cases), which carries the
    matmul's source location. A matmul whose ``mul`` would have another shape,
    dtype or layout under the registry's rules is kept, and the reason logged.
    Keeps: the meta of every value its users read (same shape, dtype, dense
    layout), the outputs, inputs and every other node.
    """

    name = "multiply_outer_products"

    def run(self, graph: Graph) -> None:
        matmuls = [n for n in graph.calls() if n.op == "matmul" and _contracts_one(n)]
        rewritten = sum(_rewrite(graph, node) for node in matmuls)
        logger.debug("multiply_outer_products: %d matmuls became muls", rewritten)


def _contracts_one(node: Node) -> bool:
    """True when the dimension ``node``'s matmul sums over has size 1."""
    return meta_of(node.inputs[0]).shape[-1] == 1


def _operands(node: Node) -> tuple[Operand, Operand]:
    """The two ``mul`` operands of ``node``'s product, each with its squeeze."""
    a, b = node.inputs
    a_ndim, b_ndim = meta_of(a).ndim, meta_of(b).ndim
    # A 1-d operand drops the other operand's dim from the result: a vector ``a``
    # drops the rows of ``b`` (its dim -2, or its only dim), a vector ``b`` the
    # columns of ``a``.
    a_squeeze = {"dims": (a_ndim - 1,)} if b_ndim == 1 else None
    b_squeeze = {"dims": (max(b_ndim - 2, 0),)} if a_ndim == 1 else None
    return (a, a_squeeze), (b, b_squeeze)


def _meta(operand: Operand) -> TensorMeta:
    value, squeeze = operand
    if squeeze is None:
        return meta_of(value)
    return get_op("squeeze").meta([meta_of(value)], squeeze)


def _rewrite(graph: Graph, node: Node) -> int:
    operands = _operands(node)
    product = get_op("mul").meta([_meta(o) for o in operands], {})
    if product != node.meta:
        logger.debug(
            "multiply_outer_products: kept %s: mul gives %r where the matmul gives %r",
            describe(node),
            product,
            node.meta,
        )
        return 0

    with graph.inserting_before(node):
        values = [
            value
            if squeeze is None
            else graph.call("squeeze", [value], squeeze, loc=node.loc)
            for value, squeeze in operands
        ]
        mul = graph.call("mul", values, meta=product, loc=node.loc)
    node.replace_all_uses_with(mul)
    graph.erase(node)
    return 1


multiply_outer_products = MultiplyOuterProducts()
