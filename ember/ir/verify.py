"""The IR verifier: the invariants every graph keeps between passes.

``verify(graph)`` returns None for a well-formed graph and otherwise raises
:class:`ember.errors.VerifyError` for the first broken invariant it meets, naming
the node (``%name``), its op and the user's source line (``node.loc``). It checks,
in this order:

1. structure: every node belongs to the graph and has a known kind and the fields
   that kind needs; names are unique; there is exactly one output node, and it is
   last;
2. use-def links, both ways: each operand lists the node among its users, each user
   reads the node, and no link leaves the graph;
3. acyclicity (networkx), then SSA order: every operand is defined before its use;
4. metas: non-negative sizes, strides and offsets, one stride per dimension;
5. call nodes: the op exists, takes this many inputs and these attrs (``ATTR_SCHEMAS``),
   and its registry meta rule computes exactly the node's meta from the operands';
6. layout: a view lies inside the storage span of the value it views; any other op's
   output lies inside its own dense storage; a constant's meta fits its array.

The IR has no in-place ops yet, so the rule "no in-place write into an overlapping
view" has nothing to check; ``docs/limitations.md`` records it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import networkx as nx
import numpy as np

from ember.errors import EmberError, VerifyError
from ember.ir import layout
from ember.ir.dtypes import DType
from ember.ir.graph import KINDS, Graph, Node
from ember.ir.meta import TensorMeta
from ember.ir.printer import format_value
from ember.ir.registry import OpDef, OpKind, get_op

Check = tuple[str, Callable[[Any], bool]]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating, np.bool_))


def _optional(check: Check) -> Check:
    return f"{check[0]} or None", lambda v: v is None or check[1](v)


INT: Check = ("an int", _is_int)
BOOL: Check = ("a bool", lambda v: isinstance(v, (bool, np.bool_)))
NUMBER: Check = ("a number", _is_number)
STR: Check = ("a string", lambda v: isinstance(v, str))
DTYPE: Check = ("an ember dtype", lambda v: isinstance(v, DType))
INTS: Check = (
    "a tuple of ints",
    lambda v: isinstance(v, (tuple, list)) and all(_is_int(x) for x in v),
)

_REDUCE = {"dims": (_optional(INTS), True), "keepdim": (BOOL, True)}
_ARG_REDUCE = {"dim": (_optional(INT), False), "keepdim": (BOOL, True)}
_LOSS = {"reduction": (STR, False)}

#: The attributes each op accepts: name -> (check, required). Ops of the pointwise
#: and matmul classes that are not listed take no attributes; an op that is neither
#: listed nor of those classes has its attributes checked by its meta rule alone.
ATTR_SCHEMAS: dict[str, dict[str, tuple[Check, bool]]] = {
    "cast": {"dtype": (DTYPE, True)},
    "clamp": {"min": (_optional(NUMBER), False), "max": (_optional(NUMBER), False)},
    "where": {},
    "sum": _REDUCE,
    "amax": _REDUCE,
    "amin": _REDUCE,
    "mean": _REDUCE,
    "var": {**_REDUCE, "correction": (INT, False)},
    "argmax": _ARG_REDUCE,
    "argmin": _ARG_REDUCE,
    "softmax": {"dim": (INT, True)},
    "log_softmax": {"dim": (INT, True)},
    "gelu": {},
    "linear": {},
    "mse_loss": _LOSS,
    "l1_loss": _LOSS,
    "huber_loss": {**_LOSS, "delta": (NUMBER, False)},
    "view": {"shape": (INTS, True)},
    "permute": {"dims": (INTS, True)},
    "expand": {"shape": (INTS, True)},
    "slice": {k: (INT, True) for k in ("dim", "start", "stop", "step")},
    "select": {"dim": (INT, True), "index": (INT, True)},
    "unsqueeze": {"dim": (INT, True)},
    "squeeze": {"dims": (_optional(INTS), False)},
    "cat": {"dim": (INT, True)},
    "stack": {"dim": (INT, True)},
    "scatter_slice": {
        "shape": (INTS, True),
        **{k: (INT, True) for k in ("dim", "start", "step")},
    },
}


def attr_schema(op: OpDef) -> dict[str, tuple[Check, bool]] | None:
    """The attributes ``op`` accepts, or None when only its meta rule judges them."""
    if op.name in ATTR_SCHEMAS:
        return ATTR_SCHEMAS[op.name]
    if op.kind in (OpKind.POINTWISE, OpKind.MATMUL):
        return {}
    return None


def verify(graph: Graph) -> None:
    """Raise VerifyError for the first invariant ``graph`` breaks; see the module doc.

    >>> from ember.ir.parser import parse
    >>> verify(parse("graph g { %x: f32[2] = input  output(%x) }"))
    >>> verify(parse("graph g { %x: f32[2] = input  %y: f32[3] = relu(%x)  output(%y) }"))
    Traceback (most recent call last):
      ...
    ember.errors.VerifyError: [E-VERIFY] graph g: %y = relu: its meta f32[3] differs ...
    """
    _check_structure(graph)
    _check_use_def(graph)
    _check_acyclic(graph)
    _check_order(graph)
    for node in graph.nodes:
        if node.meta is not None:
            _check_meta(node, node.meta)
        if node.kind == "call":
            _check_call(node)
        elif node.kind == "const":
            _check_const(node)


def node_error(node: Node, problem: str, **fields: Any) -> VerifyError:
    """A VerifyError about ``node``: graph, ``%name = op``, the problem, its loc."""
    what = node.op if node.kind == "call" else node.kind
    graph = getattr(node.graph, "name", "?")
    error = VerifyError(
        f"graph {graph}: %{node.name} = {what}: {problem}",
        op=what,
        location=node.loc,
        **fields,
    )
    # EmberError fills a missing location with the caller's frame; a node without
    # a source line should not claim the verifier's caller as its origin.
    error.location = node.loc
    return error


# 1. Structure -----------------------------------------------------------------------


def _check_structure(graph: Graph) -> None:
    first_index: dict[str, int] = {}
    outputs = [n for n in graph.nodes if n.kind == "output"]
    for index, node in enumerate(graph.nodes):
        if node.graph is not graph:
            raise node_error(node, "the node belongs to another graph")
        if node.kind not in KINDS:
            raise node_error(
                node,
                f"unknown node kind {node.kind!r}",
                expected=KINDS,
                actual=node.kind,
            )
        if node.name in first_index:
            raise node_error(
                node,
                f"the name %{node.name} is defined twice (nodes "
                f"#{first_index[node.name]} and #{index})",
                hint="every value needs a unique name",
            )
        first_index[node.name] = index
        _check_fields(node)
    if not outputs:
        raise VerifyError(
            f"graph {graph.name}: the graph has no output node",
            hint="end the graph with output(...)",
        )
    if len(outputs) > 1:
        raise node_error(
            outputs[1],
            f"a second output node (the first is "
            f"%{outputs[0].name}); a graph has exactly one",
        )
    if graph.nodes[-1] is not outputs[0]:
        raise node_error(
            outputs[0],
            f"the output node is not last (%{graph.nodes[-1].name} follows it)",
        )


def _check_fields(node: Node) -> None:
    if node.kind in ("input", "param", "buffer", "const") and node.inputs:
        raise node_error(
            node, f"a {node.kind} node takes no operands, found {len(node.inputs)}"
        )
    if node.kind != "output" and not isinstance(node.meta, TensorMeta):
        raise node_error(node, "the value has no TensorMeta", actual=node.meta)
    if node.kind == "call" and not isinstance(node.op, str):
        raise node_error(node, "a call node names no op")
    if node.kind in ("param", "buffer") and not node.target:
        raise node_error(node, f"a {node.kind} needs its qualified name (target)")
    if node.kind == "const" and node.value is None:
        raise node_error(node, "a const node holds no value")
    if node.kind != "call" and node.attrs:
        raise node_error(node, f"only call nodes carry attrs, found {node.attrs}")


# 2. Use-def links -------------------------------------------------------------------


def _check_use_def(graph: Graph) -> None:
    members = {id(n) for n in graph.nodes}
    for node in graph.nodes:
        for value in node.inputs:
            if id(value) not in members:
                raise node_error(
                    node, f"reads %{value.name}, which is not a node of this graph"
                )
            if not any(u is node for u in value.users):
                raise node_error(
                    node,
                    f"reads %{value.name}, but %{value.name} does "
                    "not list it among its users",
                )
        seen: set[int] = set()
        for user in node.users:
            if id(user) in seen:
                raise node_error(node, f"lists %{user.name} twice among its users")
            seen.add(id(user))
            if id(user) not in members:
                raise node_error(
                    node,
                    f"lists %{user.name} as a user, which is not a node of this graph",
                )
            if not any(v is node for v in user.inputs):
                raise node_error(
                    node,
                    f"lists %{user.name} as a user, but %{user.name} does not read it",
                )


# 3. Acyclicity and order ------------------------------------------------------------


def _check_acyclic(graph: Graph) -> None:
    by_id = {id(n): n for n in graph.nodes}
    edges = nx.DiGraph()
    edges.add_nodes_from(by_id)
    edges.add_edges_from((id(v), id(n)) for n in graph.nodes for v in n.inputs)
    try:
        cycle = nx.find_cycle(edges)
    except nx.NetworkXNoCycle:
        return
    names = [by_id[a].name for a, _ in cycle] + [by_id[cycle[0][0]].name]
    raise node_error(
        by_id[cycle[0][1]],
        "the graph has a cycle: " + " -> ".join("%" + n for n in names),
    )


def _check_order(graph: Graph) -> None:
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    for index, node in enumerate(graph.nodes):
        for value in node.inputs:
            if position[id(value)] >= index:
                raise node_error(
                    node,
                    f"reads %{value.name} before it is defined "
                    f"(node #{position[id(value)]} is defined after "
                    f"node #{index})",
                    hint="nodes must be in topological order",
                )


# 4. Metas ---------------------------------------------------------------------------


def _check_meta(node: Node, meta: TensorMeta) -> None:
    if not isinstance(meta.dtype, DType):
        raise node_error(node, f"dtype {meta.dtype!r} is not an ember dtype")
    if len(meta.strides) != len(meta.shape):
        raise node_error(
            node,
            f"{len(meta.strides)} strides for {len(meta.shape)} dimensions",
            actual=meta,
        )
    if any(not _is_int(s) or s < 0 for s in meta.shape):
        raise node_error(node, f"shape {meta.shape} has a negative or non-int size")
    if any(not _is_int(s) or s < 0 for s in meta.strides):
        raise node_error(
            node,
            f"strides {meta.strides} must be non-negative ints (layout rule L1)",
            actual=meta,
        )
    if not _is_int(meta.offset) or meta.offset < 0:
        raise node_error(
            node,
            f"storage offset {meta.offset} must be a non-negative int",
            actual=meta,
        )


# 5. and 6. Calls, attrs, meta rules and layout ----------------------------------------


def _check_call(node: Node) -> None:
    try:
        op = get_op(node.op or "")
    except EmberError as exc:
        raise node_error(node, f"unknown op {node.op!r}", hint=exc.hint) from exc
    if op.num_inputs is not None and len(node.inputs) != op.num_inputs:
        raise node_error(
            node,
            f"{op.name} takes {op.num_inputs} operand"
            f"{'s' if op.num_inputs != 1 else ''}, found {len(node.inputs)}",
        )
    _check_attrs(node, op)
    meta = node.meta
    assert meta is not None  # _check_fields saw it
    # Storage bounds come before the meta rule: a layout that escapes its storage is
    # the graver fault, and the message should say so rather than "differs".
    _check_storage(node, op, meta)
    computed = _computed_meta(node, op)
    if _meta_key(computed) != _meta_key(meta):
        raise node_error(
            node,
            f"its meta {meta!r} differs from {computed!r}, which "
            f"the meta rule of {op.name} computes from the operands",
            expected=computed,
            actual=meta,
        )


def _check_attrs(node: Node, op: OpDef) -> None:
    schema = attr_schema(op)
    for key, value in node.attrs.items():
        try:
            format_value(value)
        except EmberError:
            raise node_error(
                node, f"attr {key}={value!r} has a type the IR text cannot hold"
            ) from None
        if schema is None:
            continue
        if key not in schema:
            accepted = ", ".join(sorted(schema)) or "none"
            raise node_error(
                node,
                f"{op.name} takes no attr {key!r} (it accepts: {accepted})",
                actual=key,
            )
        (what, check), _ = schema[key]
        if not check(value):
            raise node_error(
                node,
                f"attr {key}={value!r} should be {what}",
                expected=what,
                actual=value,
            )
    missing = [
        k
        for k, (_, required) in (schema or {}).items()
        if required and k not in node.attrs
    ]
    if missing:
        raise node_error(node, f"{op.name} needs the attr(s) {', '.join(missing)}")


def _computed_meta(node: Node, op: OpDef) -> TensorMeta:
    metas = [v.meta for v in node.inputs]
    if any(m is None for m in metas):
        raise node_error(node, "reads a value that has no meta")
    try:
        return op.meta(metas, dict(node.attrs))  # type: ignore[arg-type]
    except EmberError as exc:
        raise node_error(
            node,
            f"the meta rule of {op.name} rejects the operands: {exc.message}",
            hint=exc.hint,
        ) from exc
    except Exception as exc:  # a rule that crashes on bad attrs is still a bad node
        raise node_error(
            node, f"the meta rule of {op.name} failed with {type(exc).__name__}: {exc}"
        ) from exc


def _meta_key(meta: TensorMeta) -> tuple[Any, ...]:
    return tuple(meta.shape), meta.dtype, tuple(meta.strides), meta.offset


def _check_storage(node: Node, op: OpDef, meta: TensorMeta) -> None:
    """Views stay inside the span of what they view; other outputs are own storage."""
    if op.kind is OpKind.VIEW:
        base = node.inputs[0].meta
        assert base is not None  # _computed_meta saw it
        start, stop = meta.storage_span()
        base_start, base_stop = base.storage_span()
        if start < stop and not (base_start <= start and stop <= base_stop):
            raise node_error(
                node,
                f"the view spans storage [{start}, {stop}), "
                f"outside [{base_start}, {base_stop}) of "
                f"%{node.inputs[0].name}",
            )
    elif not layout.within_bounds(meta.shape, meta.strides, meta.offset, meta.numel):
        raise node_error(
            node,
            f"output layout {meta!r} reaches outside its own "
            f"storage of {meta.numel} elements",
        )


def _check_const(node: Node) -> None:
    meta, value = node.meta, np.asarray(node.value)
    assert meta is not None  # _check_fields saw it
    if value.shape != tuple(meta.shape) or value.dtype != meta.dtype.np_dtype:
        raise node_error(
            node,
            f"the value is {value.dtype}{list(value.shape)} but the "
            f"meta says {meta.type_str()}",
            expected=meta.type_str(),
            actual=f"{value.dtype}{list(value.shape)}",
        )
    if not layout.within_bounds(meta.shape, meta.strides, meta.offset, value.size):
        raise node_error(
            node,
            f"layout {meta!r} reaches outside the constant's {value.size} elements",
        )
