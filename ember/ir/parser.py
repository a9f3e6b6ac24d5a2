"""Read the IR text form (``ember.ir.printer``) back into a :class:`Graph`.

``parse(format_graph(g))`` rebuilds a graph equal to ``g``: names, metas with their
strides and offsets, attrs, constants bit for bit, parameter names and source lines.
The grammar is in ``docs/ir.md``.

The parser checks syntax only. Text that is well formed but breaks an IR invariant
(a value used before it is defined, two nodes with one name, a meta that disagrees
with its op, an unknown attribute) reads back as it is written, so that tests and
bug reports can hand ``ember.ir.verify.verify`` a broken graph; a use of a name that
no node defines is the one structural fault the parser itself must reject.
Bad syntax raises :class:`ParseError` with the line, the column and a caret under the
offending text.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember.errors import DTypeError, ParseError, SourceLocation
from ember.ir import dtypes
from ember.ir.graph import Graph, Node, link_by_name
from ember.ir.layout import contiguous_strides, numel
from ember.ir.meta import TensorMeta

_IDENT = r"[A-Za-z_][A-Za-z0-9_.]*"
_STRING = r'"(?:[^"\\\n]|\\.)*"'
_TOKEN = re.compile(
    rf"""
    (?P<space>[ \t\r\n]+)
  | (?P<comment>\#[^\n]*)
  | (?P<name>%(?:{_IDENT}|{_STRING}))
  | (?P<string>{_STRING})
  | (?P<number>-?(?:inf|nan|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)(?![A-Za-z0-9_.]))
  | (?P<ident>{_IDENT})
  | (?P<punct>[:=(){{}}\[\],])
    """,
    re.VERBOSE,
)
_DEFINITION_KINDS = ("input", "param", "buffer", "const", "output")


@dataclass(frozen=True)
class Token:
    """One lexical token: its kind (a group of ``_TOKEN``), text and offset."""

    kind: str
    text: str
    offset: int


def parse(text: str, source: str = "<ir>") -> Graph:
    """The graph that ``text`` describes; ``source`` names the text in errors.

    >>> g = parse('''
    ... graph demo {
    ...   %x: f32[2, 3] = input
    ...   %t: f32[3, 2] strides=(1, 3) = permute(%x) {dims=(1, 0)}
    ...   output(%t)
    ... }
    ... ''')
    >>> g.node("t").meta
    f32[3, 2] strides=(1, 3)
    >>> g.node("t").attrs
    {'dims': (1, 0)}
    >>> parse("graph g { %x: f32[2 = input }")
    Traceback (most recent call last):
      ...
    ember.errors.ParseError: [E-PARSE] line 1, column 21: expected ',' or ']' ...
    """
    return _Parser(text, source).parse_graph()


def const_from_elements(
    texts: Sequence[str], np_dtype: np.dtype, shape: tuple[int, ...]
) -> np.ndarray:
    """An array of ``shape`` from the element texts of an inline constant.

    Raises ValueError (or OverflowError) when a text does not fit the dtype.
    """
    if np_dtype.kind == "b":
        flags = {"True": True, "False": False}
        values: list[Any] = [flags[t] if t in flags else _not_bool(t) for t in texts]
    elif np_dtype.kind in "iu":
        values = [int(t) for t in texts]
    else:
        values = [float(t) for t in texts]
    return np.array(values, dtype=np_dtype).reshape(shape)


def decode_array(text: str, np_dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of ``printer.encode_array``; ValueError on bad text or size."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None
    expected = numel(shape) * np_dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{len(raw)} bytes where {np_dtype}{list(shape)} needs {expected}"
        )
    little = np.frombuffer(raw, dtype=np_dtype.newbyteorder("<"))
    return little.astype(np_dtype).reshape(shape)


def _not_bool(text: str) -> bool:
    raise ValueError(f"{text} is not True or False")


@dataclass
class _Pending:
    """A node read from the text whose operands are still names."""

    node: Node
    operands: list[Token]


class _Parser:
    """A recursive-descent parser over the token list of one text."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.tokens = self._tokenize()
        self.pos = 0

    # Tokens -------------------------------------------------------------------------

    def _tokenize(self) -> list[Token]:
        tokens: list[Token] = []
        offset = 0
        while offset < len(self.text):
            match = _TOKEN.match(self.text, offset)
            if match is None:
                char = self.text[offset]
                problem = (
                    "a string that does not end on its line"
                    if char == '"'
                    else f"unexpected character {char!r}"
                )
                raise self._error_at(offset, problem)
            kind = match.lastgroup or ""
            if kind not in ("space", "comment"):
                tokens.append(Token(kind, match.group(), offset))
            offset = match.end()
        tokens.append(Token("end", "", len(self.text)))
        return tokens

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.peek()
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return token

    def at(self, text: str) -> bool:
        token = self.peek()
        return token.kind in ("punct", "ident") and token.text == text

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.advance()
            return True
        return False

    def expect(self, *texts: str) -> Token:
        if any(self.at(t) for t in texts):
            return self.advance()
        raise self.error(" or ".join(f"'{t}'" for t in texts))

    def expect_kind(self, kind: str, what: str) -> Token:
        if self.peek().kind == kind:
            return self.advance()
        raise self.error(what)

    # Errors -------------------------------------------------------------------------

    def error(self, expected: str, token: Token | None = None) -> ParseError:
        token = token or self.peek()
        found = "the end of the text" if token.kind == "end" else repr(token.text)
        return self._error_at(token.offset, f"expected {expected} but found {found}")

    def fail(self, token: Token, problem: str) -> ParseError:
        """A ParseError about ``token`` that is not an "expected ... found" one."""
        return self._error_at(token.offset, problem)

    def _error_at(self, offset: int, problem: str) -> ParseError:
        index = bisect.bisect_right(self.line_starts, offset) - 1
        start = self.line_starts[index]
        end = self.text.find("\n", start)
        line_text = self.text[start : end if end >= 0 else len(self.text)]
        line, column = index + 1, offset - start + 1
        excerpt = f"    {line_text}\n    {' ' * (column - 1)}^"
        error = ParseError(
            f"line {line}, column {column}: {problem}\n{excerpt}",
            location=SourceLocation(self.source, line),
        )
        error.line, error.column = line, column  # type: ignore[attr-defined]
        return error

    # Graph and statements -----------------------------------------------------------

    def parse_graph(self) -> Graph:
        self.expect("graph")
        graph = Graph(self.parse_word("a graph name"))
        self.expect("{")
        pending: list[_Pending] = []
        while not self.at("}"):
            if self.peek().kind == "end":
                raise self.error("a node or '}'")
            pending.append(self.parse_statement(graph))
        self.advance()
        if self.peek().kind != "end":
            raise self.error("the end of the text after the graph's '}'")
        self._link(pending)
        return graph

    def parse_word(self, what: str) -> str:
        token = self.advance()
        if token.kind == "ident":
            return token.text
        if token.kind == "string":
            return self.string_value(token)
        raise self.error(what, token)

    def parse_statement(self, graph: Graph) -> _Pending:
        if self.at("output"):
            name, meta = "output", None
        else:
            name = self.name_value(self.expect_kind("name", "a value name like %x"))
            meta = None
            if self.accept(":"):
                meta = self.parse_meta()
            elif not (self.at("=") and self.peek(1).text == "output"):
                raise self.error("':' and the value's type")
            self.expect("=")
        pending = self.parse_definition(graph, name, meta)
        if self.at("loc"):
            pending.node.loc = self.parse_loc()
        graph._append_verbatim(pending.node)
        return pending

    def parse_definition(
        self, graph: Graph, name: str, meta: TensorMeta | None
    ) -> _Pending:
        token = self.expect_kind(
            "ident", "input, param, buffer, const, output or an op"
        )
        kind = token.text
        if kind in _DEFINITION_KINDS and not (kind != "output" and self.at("(")):
            return self._parse_kind(graph, name, meta, kind)
        operands = self.parse_operands()
        attrs = self.parse_attrs() if self.at("{") else {}
        node = Node(graph, name, "call", op=kind, attrs=attrs, meta=meta)
        return _Pending(node, operands)

    def _parse_kind(
        self, graph: Graph, name: str, meta: TensorMeta | None, kind: str
    ) -> _Pending:
        node = Node(graph, name, kind, meta=meta)
        operands: list[Token] = []
        if kind in ("param", "buffer"):
            node.target = self.string_value(self.expect_kind("string", "a quoted name"))
        elif kind == "const":
            node.value = self.parse_const(meta)
        elif kind == "output":
            operands = self.parse_operands()
        return _Pending(node, operands)

    def parse_operands(self) -> list[Token]:
        self.expect("(")
        operands: list[Token] = []
        while not self.at(")"):
            if operands:
                self.expect(",", ")")
            operands.append(self.expect_kind("name", "a value name like %x or ')'"))
        self.advance()
        return operands

    def parse_loc(self) -> SourceLocation:
        self.expect("loc")
        self.expect("(")
        file = self.string_value(self.expect_kind("string", "a quoted file name"))
        self.expect(",")
        line = self.int_value(self.expect_kind("number", "a line number"))
        code = ""
        if self.accept(","):
            code = self.string_value(self.expect_kind("string", "the quoted code text"))
        self.expect(")")
        return SourceLocation(file, line, code)

    # Types --------------------------------------------------------------------------

    def parse_meta(self) -> TensorMeta | None:
        if self.accept("none"):
            return None
        dtype = self.parse_dtype()
        self.expect("[")
        shape: list[int] = []
        while not self.at("]"):
            if shape:
                self.expect(",", "]")
            shape.append(self.nonnegative_int(self.expect_kind("number", "a size")))
        self.advance()
        strides = contiguous_strides(shape)
        if self.accept("strides"):
            self.expect("=")
            strides = self.parse_int_tuple()
        offset = 0
        if self.accept("offset"):
            self.expect("=")
            offset = self.int_value(self.expect_kind("number", "an offset"))
        return TensorMeta(tuple(shape), dtype, tuple(strides), offset)

    def parse_dtype(self) -> dtypes.DType:
        token = self.expect_kind("ident", "a dtype such as f32")
        try:
            return dtypes.by_name(token.text)
        except DTypeError:
            raise self.error("a dtype (f32, f64, i32, i64 or bool)", token) from None

    def parse_int_tuple(self) -> tuple[int, ...]:
        # One stride per dimension is an invariant the verifier checks, not syntax.
        start = self.peek()
        value = self.parse_value()
        if not isinstance(value, tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise self.error("a tuple of ints such as (4, 1)", start)
        return value

    # Constants ----------------------------------------------------------------------

    def parse_const(self, meta: TensorMeta | None) -> np.ndarray | None:
        if self.accept("None"):
            return None
        if self.peek().kind == "ident" and self.peek(1).text == "[":
            meta = self.parse_meta()
        if meta is None:
            raise self.error("the constant's type, as in const f32[2] [1.0, 2.0]")
        np_dtype, shape = meta.dtype.np_dtype, meta.shape
        if self.accept("base64"):
            return self._decode_base64(
                self.expect_kind("string", "quoted base64 text"), np_dtype, shape
            )
        start = self.peek()
        elements: list[Token] = []
        self._collect_elements(elements)
        if len(elements) != numel(shape):
            raise self.fail(
                start,
                f"the constant has {len(elements)} elements, its "
                f"shape {list(shape)} needs {numel(shape)}",
            )
        for token in elements:
            try:
                const_from_elements([token.text], np_dtype, (1,))
            except (ValueError, OverflowError) as exc:
                raise self.fail(
                    token,
                    f"{token.text} is not a valid {meta.dtype.name} element ({exc})",
                ) from None
        return const_from_elements([t.text for t in elements], np_dtype, shape)

    def _collect_elements(self, elements: list[Token]) -> None:
        if self.accept("["):
            first = True
            while not self.at("]"):
                if not first:
                    self.expect(",", "]")
                self._collect_elements(elements)
                first = False
            self.advance()
            return
        token = self.advance()
        if token.kind == "number" or token.text in ("True", "False"):
            elements.append(token)
            return
        raise self.error("a number, True, False or '['", token)

    def _decode_base64(
        self, token: Token, np_dtype: np.dtype, shape: tuple[int, ...]
    ) -> np.ndarray:
        try:
            return decode_array(self.string_value(token), np_dtype, shape)
        except ValueError as exc:
            raise self.fail(token, f"bad base64 constant: {exc}") from None

    # Attributes ---------------------------------------------------------------------

    def parse_attrs(self) -> dict[str, Any]:
        self.expect("{")
        attrs: dict[str, Any] = {}
        while not self.at("}"):
            if attrs:
                self.expect(",", "}")
            key = self.expect_kind("ident", "an attribute name")
            if key.text in attrs:
                raise self.fail(key, f"attribute {key.text} is given twice")
            self.expect("=")
            attrs[key.text] = self.parse_value()
        self.advance()
        return attrs

    def parse_value(self) -> Any:
        token = self.advance()
        if token.kind == "number":
            return self.number_value(token)
        if token.kind == "string":
            return self.string_value(token)
        if token.kind == "ident":
            return self._word_value(token)
        if token.text == "(":
            return self._sequence(")", tuple)
        if token.text == "[":
            return self._sequence("]", list)
        raise self.error(
            "a value (number, string, None, True, False, dtype, tuple or list)", token
        )

    def _word_value(self, token: Token) -> Any:
        words = {"None": None, "True": True, "False": False}
        if token.text in words:
            return words[token.text]
        try:
            return dtypes.by_name(token.text)
        except DTypeError:
            raise self.error(
                "a value; bare words are None, True, False and dtypes", token
            ) from None

    def _sequence(self, close: str, build: type) -> Any:
        start = self.tokens[self.pos - 1]
        items: list[Any] = []
        trailing_comma = False
        while not self.at(close):
            items.append(self.parse_value())
            trailing_comma = self.accept(",")
            if not trailing_comma and not self.at(close):
                raise self.error(f"',' or '{close}'")
        self.advance()
        if build is tuple and len(items) == 1 and not trailing_comma:
            raise self.fail(
                start, "a one-element tuple needs a trailing comma, as in (4,)"
            )
        return build(items)

    # Scalars ------------------------------------------------------------------------

    def string_value(self, token: Token) -> str:
        text = token.text[1:] if token.kind == "name" else token.text
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise self.fail(token, f"bad escape in a string ({exc.msg})") from None

    def name_value(self, token: Token) -> str:
        body = token.text[1:]
        return self.string_value(token) if body.startswith('"') else body

    def number_value(self, token: Token) -> int | float:
        text = token.text
        if any(c in text for c in ".eE") or text.lstrip("-") in ("inf", "nan"):
            return float(text)
        return int(text)

    def int_value(self, token: Token) -> int:
        value = self.number_value(token)
        if not isinstance(value, int):
            raise self.error("an integer", token)
        return value

    def nonnegative_int(self, token: Token) -> int:
        value = self.int_value(token)
        if value < 0:
            raise self.error("a size of at least 0", token)
        return value

    # Linking ------------------------------------------------------------------------

    def _link(self, pending: list[_Pending]) -> None:
        """Resolve operand names to nodes (``link_by_name``) and fill users."""
        nodes = [item.node for item in pending]
        names = [[self.name_value(t) for t in item.operands] for item in pending]
        try:
            link_by_name(nodes, names)
        except LookupError as exc:
            index, position = exc.args[0]
            token = pending[index].operands[position]
            raise self.fail(token, f"no node defines {token.text}") from None
