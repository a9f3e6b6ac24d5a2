"""Definitions of every registry op, grouped by lowering class.

Importing this package registers them all; ``ember.ir.registry.all_ops()`` lists them.
"""

from ember.ir.ops import composite, gather, matmul, pointwise, reduction, views

__all__ = ["composite", "gather", "matmul", "pointwise", "reduction", "views"]
