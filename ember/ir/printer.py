"""The text form of a graph: one line per node, readable and complete.

``ember.ir.parser.parse`` reads this text back into an equal graph; ``docs/ir.md``
gives the grammar. A line names the value, its type and layout, what defines it and
the user's source line::

    %t: f32[4, 8] strides=(1, 4) = permute(%w) {dims=(1, 0)}  loc("m.py", 3, "w.T")

Strides are shown only when they differ from the row-major strides of the shape, and
the offset only when it is not zero. Constants of up to ``INLINE_LIMIT`` elements are
written as nested lists; larger ones, and any whose decimal text would not read back
bit for bit (a NaN with a payload), as base64 of their little-endian bytes.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ember.errors import IRError, SourceLocation
from ember.ir.dtypes import DType, from_numpy_dtype
from ember.ir.graph import Graph, Node
from ember.ir.layout import contiguous_strides
from ember.ir.meta import TensorMeta
from ember.ir.parser import const_from_elements

#: Constants with at most this many elements print inline as nested lists.
INLINE_LIMIT = 16

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_SURROGATE = re.compile("[\ud800-\udfff]")


def format_graph(graph: Graph) -> str:
    """The text form of ``graph``: a header, one line per node, a closing brace.

    >>> from ember.ir.dtypes import float32
    >>> g = Graph("demo")
    >>> x = g.input("x", TensorMeta.contiguous((2, 3), float32))
    >>> t = g.call("permute", [x], {"dims": (1, 0)})
    >>> _ = g.output([g.call("relu", [t])])
    >>> print(format_graph(g))
    graph demo {
      %x: f32[2, 3] = input
      %permute: f32[3, 2] strides=(1, 3) = permute(%x) {dims=(1, 0)}
      %relu: f32[3, 2] = relu(%permute)
      output(%relu)
    }
    """
    lines = [f"graph {_format_word(graph.name)} {{"]
    lines.extend("  " + format_node(node) for node in graph.nodes)
    lines.append("}")
    return "\n".join(lines) + "\n"


def format_node(node: Node) -> str:
    """One node as a line of the text form (without indentation)."""
    if node.kind == "output" and node.meta is None:
        head = "" if node.name == "output" else f"{format_name(node.name)} = "
        text = head + f"output({_format_operands(node.inputs)})"
    else:
        text = f"{format_name(node.name)}: {_format_meta_or_none(node.meta)} = "
        text += _format_definition(node)
    if node.loc is not None:
        text += "  " + format_loc(node.loc)
    return text


def _format_definition(node: Node) -> str:
    if node.kind == "input":
        return "input"
    if node.kind in ("param", "buffer"):
        return f"{node.kind} {format_string(node.target or '')}"
    if node.kind == "const":
        return "const " + format_const(node.value, node.meta)
    if node.kind == "output":
        return f"output({_format_operands(node.inputs)})"
    text = f"{node.op}({_format_operands(node.inputs)})"
    if node.attrs:
        text += " " + format_attrs(node.attrs)
    return text


def _format_operands(values: Sequence[Node]) -> str:
    return ", ".join(format_name(v.name) for v in values)


def format_name(name: str) -> str:
    """``%name``, quoted as ``%"..."`` when the name is not a plain identifier."""
    return "%" + _format_word(name)


def _format_word(word: str) -> str:
    return word if _IDENT.fullmatch(word) else format_string(word)


def format_string(text: str) -> str:
    """A double-quoted string with JSON escapes; lone surrogates escaped too."""
    quoted = json.dumps(text, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)


def format_loc(loc: SourceLocation) -> str:
    """``loc("file", line, "code")``; the code text is left out when empty."""
    parts = [format_string(loc.file), str(loc.line)]
    if loc.code:
        parts.append(format_string(loc.code))
    return f"loc({', '.join(parts)})"


# Types and layouts ------------------------------------------------------------------


def format_meta(meta: TensorMeta) -> str:
    """``f32[4, 8]``, then ``strides=(...)`` and ``offset=N`` when not the default."""
    text = f"{meta.dtype.short}[{', '.join(map(str, meta.shape))}]"
    if tuple(meta.strides) != contiguous_strides(meta.shape):
        text += f" strides={format_value(tuple(meta.strides))}"
    if meta.offset:
        text += f" offset={meta.offset}"
    return text


def _format_meta_or_none(meta: TensorMeta | None) -> str:
    return "none" if meta is None else format_meta(meta)


# Attribute values -------------------------------------------------------------------


def format_attrs(attrs: dict[str, Any]) -> str:
    """``{key=value, ...}`` with keys sorted, so equal attrs print alike."""
    items = []
    for key in sorted(attrs):
        if not _IDENT.fullmatch(key):
            raise IRError(f"attribute name {key!r} is not an identifier")
        items.append(f"{key}={format_value(attrs[key])}")
    return "{" + ", ".join(items) + "}"


def format_value(value: Any) -> str:
    """A Python attribute value as IR text: Python syntax, dtypes by short name.

    >>> format_value((1, -2.5, float("inf"), None, True, "a\\"b"))
    '(1, -2.5, inf, None, True, "a\\\\"b")'
    """
    if value is None or isinstance(value, (bool, np.bool_)):
        return repr(None if value is None else bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format_float(float(value))
    if isinstance(value, str):
        return format_string(value)
    if isinstance(value, DType):
        return value.short
    if isinstance(value, tuple):
        inner = ", ".join(format_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    raise IRError(
        f"cannot write attribute value {value!r} of type {type(value).__name__} "
        "in the IR text",
        expected="int, float, bool, None, str, dtype, or a tuple or list of those",
        actual=type(value).__name__,
    )


def format_float(value: float) -> str:
    """The shortest text that reads back as the same float64 (``inf``, ``nan`` bare)."""
    if math.isnan(value):
        return "nan"
    return repr(value)


# Constants --------------------------------------------------------------------------


def format_const(value: np.ndarray | None, meta: TensorMeta | None) -> str:
    """A constant's payload: nested list or ``base64 "..."``.

    The value's own type is written first (``i64[3] [1, 2, 3]``) only when it differs
    from the node's meta, which a well-formed graph never shows.
    """
    if value is None:
        return "None"
    array = np.asarray(value)
    prefix = ""
    if meta is None or array.dtype != meta.dtype.np_dtype or array.shape != meta.shape:
        value_meta = TensorMeta.contiguous(array.shape, from_numpy_dtype(array.dtype))
        prefix = format_meta(value_meta) + " "
    inline = _inline_literal(array)
    if inline is not None:
        return prefix + inline
    return prefix + "base64 " + format_string(encode_array(array))


def encode_array(array: np.ndarray) -> str:
    """Base64 of the array's elements as little-endian bytes in row-major order."""
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes(order="C")
    return base64.b64encode(raw).decode("ascii")


def _inline_literal(array: np.ndarray) -> str | None:
    """Nested-list text of a small array, or None when it would not read back exactly."""
    if array.size > INLINE_LIMIT:
        return None
    flat = [_format_element(v, array.dtype) for v in array.reshape(-1)]
    if not _reads_back(flat, array):
        return None
    return _nest(flat, array.shape)


def _format_element(value: Any, dtype: np.dtype) -> str:
    if dtype.kind == "b":
        return repr(bool(value))
    if dtype.kind in "iu":
        return str(int(value))
    if math.isnan(value):
        return "nan"
    # numpy prints the shortest text that rounds back to the same float32/float64.
    return str(value.item() if dtype.itemsize == 8 else value)


def _reads_back(flat: list[str], array: np.ndarray) -> bool:
    again = const_from_elements(flat, array.dtype, array.shape)
    return again.tobytes() == array.tobytes()


def _nest(flat: list[str], shape: tuple[int, ...]) -> str:
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return "[" + ", ".join(flat) + "]"
    step = len(flat) // shape[0] if shape[0] else 0
    rows = [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]
    return "[" + ", ".join(rows) + "]"
