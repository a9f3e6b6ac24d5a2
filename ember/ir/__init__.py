"""ember's intermediate representation: dtypes, layout rules, tensor metadata, the op
registry with every op's meta rule, reference, gradient rule and decomposition, and
graphs with their text form and verifier."""

from ember.ir import ops as _ops  # noqa: F401  (registers every op, first)

# isort: split
from ember.ir import decompositions as _decompositions  # noqa: F401  (fills decompose)
from ember.ir import gradients as _gradients  # noqa: F401  (fills the gradient slots)
from ember.ir.dtypes import DType
from ember.ir.graph import Graph, Node
from ember.ir.meta import TensorMeta
from ember.ir.registry import OpDef, OpKind, all_ops, get_op

__all__ = [
    "DType",
    "Graph",
    "Node",
    "OpDef",
    "OpKind",
    "TensorMeta",
    "all_ops",
    "get_op",
]
