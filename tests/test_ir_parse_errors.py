"""Parser error messages: the line, the column, a caret under the offending text.

These pin the text users see when a hand-written or edited IR file is malformed.
"""

from __future__ import annotations

import pytest

from ember.errors import IRError, ParseError
from ember.ir.parser import parse


def parse_error(text: str) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse(text, source="bad.ir")
    return info.value


def test_full_message_with_caret_excerpt() -> None:
    error = parse_error(
        "graph g {\n"
        "  %x: f32[2] = input\n"
        "  %y: f32[2] = relu(%x {dims=(0,)}\n"
        "  output(%y)\n"
        "}\n"
    )
    assert str(error) == (
        "[E-PARSE] line 3, column 24: expected ',' or ')' but found '{'\n"
        "      %y: f32[2] = relu(%x {dims=(0,)}\n"
        "                           ^\n"
        "  at bad.ir:3"
    )
    assert (error.line, error.column) == (3, 24)  # type: ignore[attr-defined]
    assert isinstance(error, IRError) and isinstance(error, ValueError)
    assert error.code == "E-PARSE"


@pytest.mark.parametrize(
    ("text", "line", "column", "problem"),
    [
        ("grph g {}", 1, 1, "expected 'graph' but found 'grph'"),
        ("graph g {", 1, 10, "expected a node or '}' but found the end of the text"),
        (
            "graph g { } extra",
            1,
            13,
            "expected the end of the text after the graph's '}' but found 'extra'",
        ),
        ("graph g { $ }", 1, 11, "unexpected character '$'"),
        (
            'graph g {\n  %w: f32[2] = param "abc\n}',
            2,
            22,
            "a string that does not end on its line",
        ),
        (
            'graph g { %w: f32[2] = param "\\q" }',
            1,
            30,
            "bad escape in a string (Invalid \\escape)",
        ),
        (
            "graph g { %x = input }",
            1,
            14,
            "expected ':' and the value's type but found '='",
        ),
        (
            "graph g { %x: q32[2] = input }",
            1,
            15,
            "expected a dtype (f32, f64, i32, i64 or bool) but found 'q32'",
        ),
        ("graph g { %x: f32[2 = input }", 1, 21, "expected ',' or ']' but found '='"),
        (
            "graph g { %x: f32[-2] = input }",
            1,
            19,
            "expected a size of at least 0 but found '-2'",
        ),
        (
            "graph g { %x: f32[2] strides=[1] = input }",
            1,
            30,
            "expected a tuple of ints such as (4, 1) but found '['",
        ),
        (
            "graph g {\n %y: f32[2] = relu(%z)\n output(%y)\n}",
            2,
            20,
            "no node defines %z",
        ),
        (
            "graph g { %x: f32[2] = input %y: f32[2] = relu(%x) {dims=(1)} }",
            1,
            58,
            "a one-element tuple needs a trailing comma, as in (4,)",
        ),
        (
            "graph g { %x: f32[2] = input %y: f32[2] = relu(%x) {a=1, a=2} }",
            1,
            58,
            "attribute a is given twice",
        ),
        (
            "graph g { %x: f32[2] = input %y: f32[2] = relu(%x) {a=q} }",
            1,
            55,
            "expected a value; bare words are None, True, False and dtypes but found 'q'",
        ),
        (
            "graph g { %c: f32[3] = const [1.0, 2.0] }",
            1,
            30,
            "the constant has 2 elements, its shape [3] needs 3",
        ),
        (
            "graph g { %c: i32[2] = const [1, 3000000000] }",
            1,
            34,
            "3000000000 is not a valid int32 element",
        ),
        (
            "graph g { %c: i64[1] = const [1.5] }",
            1,
            31,
            "1.5 is not a valid int64 element",
        ),
        ("graph g { %c: bool[1] = const [1] }", 1, 32, "1 is not a valid bool element"),
        (
            'graph g { %c: f32[30] = const base64 "AAAA" }',
            1,
            38,
            "bad base64 constant: 3 bytes where float32[30] needs 120",
        ),
        ('graph g { %c: f32[30] = const base64 "a!" }', 1, 38, "bad base64 constant"),
        (
            "graph g { %c: none = const [1.0] }",
            1,
            28,
            "expected the constant's type, as in const f32[2] [1.0, 2.0] but found '['",
        ),
        (
            'graph g { %x: f32[2] = input loc("a.py", 1.5) }',
            1,
            42,
            "expected an integer but found '1.5'",
        ),
        (
            "graph g { %x: f32[2] = input output(%x, ) }",
            1,
            41,
            "expected a value name like %x or ')' but found ')'",
        ),
    ],
)
def test_error_position_and_problem(
    text: str, line: int, column: int, problem: str
) -> None:
    error = parse_error(text)
    first = str(error).splitlines()[0]
    assert first.startswith(f"[E-PARSE] line {line}, column {column}: {problem}"), first
    caret_line = str(error).splitlines()[2]
    assert caret_line.index("^") == 4 + column - 1


def test_structural_faults_are_not_parse_errors() -> None:
    # These break invariants, not syntax: the verifier, not the parser, rejects them.
    graph = parse(
        "graph g {\n"
        "  %y: f32[9] strides=(1, 1) = relu(%x) {bogus=1}\n"
        "  %x: f32[2] = input\n"
        "  %x: f32[2] = input\n"
        "  output(%y)\n"
        "  output(%x)\n"
        "}\n"
    )
    assert [n.name for n in graph.nodes] == ["y", "x", "x", "output", "output"]
    # A use before any definition binds to the first definition after it.
    assert graph.nodes[0].inputs == [graph.nodes[1]]
    assert graph.nodes[4].inputs == [graph.nodes[2]]
