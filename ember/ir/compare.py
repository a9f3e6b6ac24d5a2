"""Structural equality of graphs, and an explanation of how two graphs differ.

Two graphs are equal when they have the same name and the same nodes in the same
order, and each pair of nodes agrees on name, kind, op, operands (by position in
the graph), users, attrs, meta (shape, dtype, strides, offset), source location,
parameter name and constant value. Constants compare by dtype, shape and raw bytes,
so a NaN equals the same NaN and ``-0.0`` differs from ``0.0``. Attrs compare by
type and value: ``1``, ``1.0`` and ``True`` differ, ``(1,)`` and ``[1]`` differ,
and a float attr ``nan`` equals ``nan``.

    >>> from ember.ir.parser import parse
    >>> text = "graph g { %x: f32[2] = input  output(%x) }"
    >>> graphs_equal(parse(text), parse(text))
    True
    >>> print(explain_difference(parse(text), parse(text.replace("f32", "f64"))))
    %x: meta f32[2] != f64[2]
    --- a
    +++ b
    @@ -1,4 +1,4 @@
     graph g {
    -  %x: f32[2] = input
    +  %x: f64[2] = input
       output(%x)
     }
"""

from __future__ import annotations

import difflib
import hashlib
import math
import struct
from typing import Any

import numpy as np

from ember.ir.dtypes import DType
from ember.ir.graph import Graph, Node
from ember.ir.printer import format_graph


def graphs_equal(a: Graph, b: Graph) -> bool:
    """True when ``a`` and ``b`` are structurally equal (see the module docstring)."""
    return not graph_differences(a, b)


def graph_differences(a: Graph, b: Graph) -> list[str]:
    """Every difference between ``a`` and ``b``, one short sentence each."""
    found: list[str] = []
    if a.name != b.name:
        found.append(f"graph name {a.name!r} != {b.name!r}")
    if len(a.nodes) != len(b.nodes):
        found.append(f"{len(a.nodes)} nodes != {len(b.nodes)} nodes")
    index_a, index_b = _positions(a), _positions(b)
    for node_a, node_b in zip(a.nodes, b.nodes):
        fields_a = _node_fields(node_a, index_a)
        fields_b = _node_fields(node_b, index_b)
        for field, value in fields_a.items():
            if value != fields_b[field]:
                found.append(
                    f"%{node_a.name}: {field} {_show(node_a, field, value)}"
                    f" != {_show(node_b, field, fields_b[field])}"
                )
    return found


def explain_difference(a: Graph, b: Graph) -> str:
    """'' when equal; otherwise the differences and a unified diff of the two texts."""
    found = graph_differences(a, b)
    if not found:
        return ""
    diff = difflib.unified_diff(
        _safe_text(a).splitlines(),
        _safe_text(b).splitlines(),
        "a",
        "b",
        lineterm="",
    )
    return "\n".join(found + list(diff))


def _safe_text(graph: Graph) -> str:
    try:
        return format_graph(graph)
    except Exception as exc:  # an unprintable graph still deserves an explanation
        return f"<graph {graph.name!r} cannot be printed: {exc}>"


def _positions(graph: Graph) -> dict[int, int]:
    return {id(node): i for i, node in enumerate(graph.nodes)}


def _ref(node: Node, positions: dict[int, int]) -> tuple[Any, str]:
    return positions.get(id(node), "outside"), node.name


def _node_fields(node: Node, positions: dict[int, int]) -> dict[str, Any]:
    meta = node.meta
    return {
        "name": node.name,
        "kind": node.kind,
        "op": node.op,
        "operands": [_ref(v, positions) for v in node.inputs],
        "users": sorted((_ref(u, positions) for u in node.users), key=str),
        "attrs": {k: attr_key(v) for k, v in node.attrs.items()},
        "meta": None
        if meta is None
        else (tuple(meta.shape), meta.dtype, tuple(meta.strides), meta.offset),
        "loc": node.loc,
        "target": node.target,
        "value": _value_key(node.value),
    }


def _show(node: Node, field: str, value: Any) -> str:
    if field == "meta" and node.meta is not None:
        return repr(node.meta)
    if field in ("operands", "users"):
        return "(" + ", ".join(f"%{name}" for _, name in value) + ")"
    if field == "attrs":
        return repr(node.attrs)
    if field == "value" and value is not None:
        digest = hashlib.sha256(value[2]).hexdigest()[:12]
        return f"{value[0]}{list(value[1])} (bytes sha256 {digest})"
    return repr(value)


def attr_key(value: Any) -> Any:
    """A hashable, type-tagged form of an attr value for exact comparison."""
    if value is None:
        return ("none", None)
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, (int, np.integer)):
        return ("int", int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        # Compare floats by bits: nan equals nan, and -0.0 differs from 0.0.
        return ("float", "nan" if math.isnan(number) else struct.pack("<d", number))
    if isinstance(value, DType):
        return ("dtype", value.name)
    if isinstance(value, tuple):
        return ("tuple", tuple(attr_key(v) for v in value))
    if isinstance(value, list):
        return ("list", tuple(attr_key(v) for v in value))
    return (type(value).__name__, value)


def _value_key(value: np.ndarray | None) -> Any:
    if value is None:
        return None
    array = np.asarray(value)
    return (str(array.dtype), array.shape, array.tobytes())
