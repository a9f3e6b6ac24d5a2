"""ember's intermediate representation: dtypes, layout rules, tensor metadata and the
op registry (and, with the compiler front end, graphs, their text form and verifier)."""

from ember.ir import ops as _ops  # noqa: F401  (registers every op)
from ember.ir.dtypes import DType
from ember.ir.meta import TensorMeta
from ember.ir.registry import OpDef, OpKind, all_ops, get_op

__all__ = ["DType", "OpDef", "OpKind", "TensorMeta", "all_ops", "get_op"]
