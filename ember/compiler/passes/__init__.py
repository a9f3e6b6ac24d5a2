"""Graph passes: the steps between the traced and the optimized graph.

Each pass is a small named object with one entry point, ``run(graph)``; its name is
the stage name that ``ember dump --stage`` and ``EMBER_DUMP_DIR`` use. :func:`optimize`
runs the default pipeline through a :class:`PassManager`, which verifies the graph
after every pass when ``EMBER_VERIFY=1`` and dumps it when ``EMBER_DUMP_DIR`` is set.

    >>> from ember.ir import functions as F
    >>> from ember.ir.dtypes import float32
    >>> from ember.ir.graph import Graph
    >>> from ember.ir.meta import TensorMeta
    >>> g = Graph()
    >>> x = g.input("x", TensorMeta.contiguous((2, 4), float32))
    >>> _ = g.output([g.call("softmax", [x], {"dim": 1})])
    >>> g = optimize(g, verify=False)
    >>> [n.op for n in g.calls()]
    ['amax', 'sub', 'exp', 'sum', 'div', 'mul']
"""

from __future__ import annotations

import os

from ember.compiler.passes.algebraic_simplification import simplify_algebra
from ember.compiler.passes.base import GraphPass
from ember.compiler.passes.common_subexpressions import eliminate_common_subexpressions
from ember.compiler.passes.constant_folding import fold_constants
from ember.compiler.passes.dead_code import eliminate_dead_code
from ember.compiler.passes.decomposition import decompose
from ember.compiler.passes.layout_validation import validate_layout
from ember.compiler.passes.manager import PassManager
from ember.compiler.passes.meta_propagation import propagate_meta
from ember.compiler.passes.outer_products import multiply_outer_products
from ember.errors import UnsupportedError
from ember.ir.graph import Graph

#: Every pass by name, in the order of the default pipeline.
PASSES: dict[str, GraphPass] = {
    p.name: p
    for p in (
        propagate_meta,
        validate_layout,
        decompose,
        multiply_outer_products,
        simplify_algebra,
        fold_constants,
        eliminate_common_subexpressions,
        eliminate_dead_code,
    )
}

#: The names of the passes :func:`optimize` runs, in order.
DEFAULT_PIPELINE: tuple[str, ...] = tuple(PASSES)


def get_pass(name: str) -> GraphPass:
    """The pass called ``name``, or an UnsupportedError listing the known names."""
    try:
        return PASSES[name]
    except KeyError:
        raise UnsupportedError(
            f"unknown pass {name!r}",
            expected=sorted(PASSES),
            actual=name,
            hint=f"use one of: {', '.join(PASSES)}",
        ) from None


def optimize(
    graph: Graph,
    *,
    passes: tuple[str, ...] = DEFAULT_PIPELINE,
    verify: bool | None = None,
    dump_dir: str | os.PathLike[str] | None = None,
    label: str = "",
) -> Graph:
    """Run ``passes`` (the default pipeline) on ``graph`` and return the result.

    ``verify`` and ``dump_dir`` default to the ``verify_passes`` and ``dump_dir``
    settings (``EMBER_VERIFY``, ``EMBER_DUMP_DIR``).
    """
    manager = PassManager(
        [get_pass(name) for name in passes],
        verify=verify,
        dump_dir=dump_dir,
        label=label,
    )
    return manager.run(graph)


__all__ = [
    "DEFAULT_PIPELINE",
    "PASSES",
    "GraphPass",
    "PassManager",
    "decompose",
    "eliminate_common_subexpressions",
    "eliminate_dead_code",
    "fold_constants",
    "get_pass",
    "multiply_outer_products",
    "optimize",
    "propagate_meta",
    "simplify_algebra",
    "validate_layout",
]
