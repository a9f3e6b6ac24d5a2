"""The op registry: every op of ember, defined once.

An :class:`OpDef` holds an op's meta rule (output :class:`TensorMeta` from input
metas and attributes, raising typed errors for bad input), its numpy reference, its
gradient rule (written with ember ops, so it runs eagerly and traces into backward
graphs alike), an optional decomposition into primitives, and its lowering class.
Eager execution, tracing, autodiff and code generation all read this table.

    >>> get_op("add").kind
    <OpKind.POINTWISE: 'pointwise'>
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ember.errors import UnsupportedError
from ember.ir.ieee import quiet
from ember.ir.meta import TensorMeta

Attrs = dict[str, Any]
MetaRule = Callable[[Sequence[TensorMeta], Attrs], TensorMeta]
Reference = Callable[[Sequence[np.ndarray], Attrs], np.ndarray]
GradRule = Callable[["GradContext", Any], Sequence[Any]]
Decomposition = Callable[..., Any]


class OpKind(enum.Enum):
    """The lowering class of an op: how the backend turns it into loops."""

    POINTWISE = "pointwise"
    REDUCTION = "reduction"
    MATMUL = "matmul"
    VIEW = "view"
    GATHER = "gather"
    COMPOSITE = "composite"
    SOURCE = "source"


@dataclass
class GradContext:
    """What a gradient rule sees: the op's inputs, output, attributes and which inputs
    need a gradient. Inputs and output are ember values (eager tensors or tracing
    proxies), so a rule written with ember ops works for both."""

    inputs: tuple[Any, ...]
    output: Any
    attrs: Attrs
    needs_input_grad: tuple[bool, ...]


@dataclass
class OpDef:
    """One op of the registry; see the module docstring."""

    name: str
    kind: OpKind
    meta: MetaRule
    reference: Reference
    num_inputs: int | None = None
    accepts_scalars: bool = False
    promote_from: int = 0
    differentiable: bool = True
    grad: GradRule | None = None
    decompose: Decomposition | None = None
    doc: str = ""
    attr_defaults: Attrs = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"OpDef({self.name}, {self.kind.value})"


_REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    """Add an op to the registry; names are unique. Its reference runs with numpy's
    floating-point warnings off (:mod:`ember.ir.ieee`): inf and NaN come out
    silently, as from the native kernels."""
    assert op.name not in _REGISTRY, f"op {op.name} registered twice"
    op.reference = quiet(op.reference)
    _REGISTRY[op.name] = op
    return op


def get_op(name: str) -> OpDef:
    """The op called ``name``, or an UnsupportedError listing close names."""
    op = _REGISTRY.get(name)
    if op is None:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        raise UnsupportedError(
            f"unknown op {name!r}",
            expected="a registered op",
            actual=name,
            hint=f"did you mean {', '.join(close)}?" if close else None,
        )
    return op


def all_ops() -> list[OpDef]:
    """Every registered op, in registration order."""
    return list(_REGISTRY.values())


def register_grad(name: str) -> Callable[[GradRule], GradRule]:
    """Decorator that fills the gradient slot of op ``name``."""

    def install(rule: GradRule) -> GradRule:
        op = get_op(name)
        assert op.grad is None, f"gradient of {name} registered twice"
        op.grad = rule
        return rule

    return install
