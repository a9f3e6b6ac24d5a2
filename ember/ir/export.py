"""Graph exports: DOT (graphviz text) for pictures, JSON for tools.

JSON round-trips: ``from_json(to_json(g))`` is equal to ``g`` (``graphs_equal``). The
document carries ``"format": "ember.ir"`` and a ``"version"``; ``from_json`` refuses
other formats and newer versions. Attr values are tagged where JSON alone would
lose their type: ``{"float": "nan"}``, ``{"tuple": [1, 0]}``, ``{"dtype": "f32"}``.
Constants are base64 of their little-endian bytes.

    >>> from ember.ir.parser import parse
    >>> g = parse("graph g { %x: f32[2] = input  %y: f32[2] = relu(%x)  output(%y) }")
    >>> print(to_dot(g))  # doctest: +ELLIPSIS
    digraph "g" {
      node [shape=box, fontname="monospace"];
      n0 [label="%x: f32[2]\\ninput"];
      n1 [label="%y: f32[2]\\nrelu"];
      n2 [label="output", shape=ellipse];
      n0 -> n1;
      n1 -> n2;
    }
    >>> from ember.ir.compare import graphs_equal
    >>> graphs_equal(from_json(to_json(g)), g)
    True
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ember.errors import IRError, ParseError, SourceLocation
from ember.ir import dtypes
from ember.ir.dtypes import DType
from ember.ir.graph import KINDS, Graph, Node, link_by_name
from ember.ir.meta import TensorMeta
from ember.ir.parser import decode_array
from ember.ir.printer import encode_array, format_attrs, format_meta

JSON_FORMAT = "ember.ir"
JSON_VERSION = 1


# DOT --------------------------------------------------------------------------------


def to_dot(graph: Graph) -> str:
    """The graph as graphviz text: one box per value, an edge per operand.

    Operand edges of nodes with several operands carry the operand's position.
    """
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    lines = [
        f"digraph {_dot_string(graph.name)} {{",
        '  node [shape=box, fontname="monospace"];',
    ]
    for i, node in enumerate(graph.nodes):
        extra = ", shape=ellipse" if node.kind == "output" else ""
        lines.append(f"  n{i} [label={_dot_string(_dot_label(node))}{extra}];")
    for i, node in enumerate(graph.nodes):
        for position, value in enumerate(node.inputs):
            label = f' [label="{position}"]' if len(node.inputs) > 1 else ""
            source = index.get(id(value))
            if source is not None:
                lines.append(f"  n{source} -> n{i}{label};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_label(node: Node) -> str:
    if node.kind == "output":
        return "output"
    head = f"%{node.name}" + (f": {format_meta(node.meta)}" if node.meta else "")
    if node.kind == "call":
        body = node.op or ""
        if node.attrs:
            body += " " + format_attrs(node.attrs)
    elif node.kind in ("param", "buffer"):
        body = f"{node.kind} {node.target}"
    else:
        body = node.kind
    return f"{head}\n{body}"


def _dot_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


# JSON -------------------------------------------------------------------------------


def to_json(graph: Graph, indent: int | None = 1) -> str:
    """The graph as a JSON document (see the module docstring)."""
    document = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "name": graph.name,
        "nodes": [_node_to_json(n) for n in graph.nodes],
    }
    return json.dumps(document, indent=indent, ensure_ascii=False, allow_nan=False)


def _node_to_json(node: Node) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": node.name, "kind": node.kind}
    if node.op is not None:
        entry["op"] = node.op
    entry["inputs"] = [v.name for v in node.inputs]
    if node.attrs:
        entry["attrs"] = {k: encode_attr(v) for k, v in sorted(node.attrs.items())}
    if node.meta is not None:
        m = node.meta
        entry["meta"] = {
            "dtype": m.dtype.name,
            "shape": list(m.shape),
            "strides": list(m.strides),
            "offset": m.offset,
        }
    if node.target is not None:
        entry["target"] = node.target
    if node.value is not None:
        array = np.asarray(node.value)
        entry["value"] = {
            "dtype": dtypes.from_numpy_dtype(array.dtype).name,
            "shape": list(array.shape),
            "base64": encode_array(array),
        }
    if node.loc is not None:
        entry["loc"] = {
            "file": node.loc.file,
            "line": node.loc.line,
            "code": node.loc.code,
        }
    return entry


def encode_attr(value: Any) -> Any:
    """An attr value as JSON data, tagged where JSON would lose its type."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return {"float": "nan" if math.isnan(number) else repr(number)}
    if isinstance(value, DType):
        return {"dtype": value.short}
    if isinstance(value, tuple):
        return {"tuple": [encode_attr(v) for v in value]}
    if isinstance(value, list):
        return [encode_attr(v) for v in value]
    raise IRError(
        f"cannot write attr value {value!r} of type {type(value).__name__} as JSON"
    )


def decode_attr(data: Any) -> Any:
    """The inverse of :func:`encode_attr`."""
    if isinstance(data, list):
        return [decode_attr(v) for v in data]
    if isinstance(data, dict):
        if set(data) == {"float"}:
            return float(data["float"])
        if set(data) == {"tuple"}:
            return tuple(decode_attr(v) for v in data["tuple"])
        if set(data) == {"dtype"}:
            return dtypes.by_name(data["dtype"])
        raise ParseError(f"unknown tagged attr value {data!r}")
    return data


def from_json(text: str) -> Graph:
    """The graph a :func:`to_json` document describes.

    Like the text parser it checks form, not invariants: run ``verify`` after.
    """
    try:
        document = json.loads(text)
        _check_header(document)
        graph = Graph(document["name"])
        entries = document["nodes"]
        nodes = [_node_from_json(graph, e) for e in entries]
        operands = [list(e["inputs"]) for e in entries]
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ParseError):
            raise
        raise ParseError(
            f"malformed ember.ir JSON: {type(exc).__name__}: {exc}"
        ) from exc
    for node in nodes:
        graph._append_verbatim(node)
    try:
        link_by_name(nodes, operands)
    except LookupError as exc:
        index, position = exc.args[0]
        raise ParseError(
            f"node %{nodes[index].name} reads "
            f"%{operands[index][position]}, which no node "
            "defines"
        ) from None
    return graph


def _check_header(document: Any) -> None:
    if not isinstance(document, dict) or document.get("format") != JSON_FORMAT:
        raise ParseError(
            f"not an {JSON_FORMAT} JSON document",
            expected=JSON_FORMAT,
            actual=type(document).__name__,
        )
    version = document.get("version")
    if not isinstance(version, int) or version > JSON_VERSION:
        raise ParseError(
            f"{JSON_FORMAT} JSON version {version!r} is newer than this "
            f"ember reads ({JSON_VERSION})",
            hint="upgrade ember to read this file",
        )


def _node_from_json(graph: Graph, entry: dict[str, Any]) -> Node:
    if entry["kind"] not in KINDS:
        raise ParseError(
            f"node %{entry['name']} has unknown kind {entry['kind']!r}",
            expected=KINDS,
            actual=entry["kind"],
        )
    meta = None
    if "meta" in entry:
        m = entry["meta"]
        meta = TensorMeta(
            tuple(m["shape"]),
            dtypes.by_name(m["dtype"]),
            tuple(m["strides"]),
            m["offset"],
        )
    value = None
    if "value" in entry:
        v = entry["value"]
        np_dtype = dtypes.by_name(v["dtype"]).np_dtype
        value = decode_array(v["base64"], np_dtype, tuple(v["shape"]))
    loc = None
    if "loc" in entry:
        loc = SourceLocation(
            entry["loc"]["file"], entry["loc"]["line"], entry["loc"]["code"]
        )
    attrs = {k: decode_attr(v) for k, v in entry.get("attrs", {}).items()}
    return Node(
        graph,
        entry["name"],
        entry["kind"],
        op=entry.get("op"),
        attrs=attrs,
        meta=meta,
        loc=loc,
        target=entry.get("target"),
        value=value,
    )
