"""DOT and JSON exports of a graph (the JSON round trip over random graphs lives in
test_ir_roundtrip.py)."""

from __future__ import annotations

import json

import pytest

from ember.errors import ParseError
from ember.ir import dtypes
from ember.ir.compare import graphs_equal
from ember.ir.export import (
    JSON_VERSION,
    decode_attr,
    encode_attr,
    from_json,
    to_dot,
    to_json,
)
from ember.ir.parser import parse

TEXT = """graph "my graph" {
  %x: f32[2, 3] = input  loc("m.py", 4, "y = \\"q\\"")
  %w: f32[3, 2] = param "fc.weight"
  %t: f32[3, 2] strides=(1, 3) = permute(%x) {dims=(1, 0)}
  %y: f32[3, 2] = add(%t, %w)
  %c: f32[] = const 0.5
  output(%y, %c)
}
"""


def test_dot_has_one_box_per_node_and_numbered_operand_edges() -> None:
    dot = to_dot(parse(TEXT))
    lines = dot.splitlines()
    assert lines[0] == 'digraph "my graph" {'
    assert '  n1 [label="%w: f32[3, 2]\\nparam fc.weight"];' in lines
    assert (
        '  n2 [label="%t: f32[3, 2] strides=(1, 3)\\npermute {dims=(1, 0)}"];' in lines
    )
    assert '  n5 [label="output", shape=ellipse];' in lines
    assert "  n0 -> n2;" in lines  # a single operand: no number
    assert '  n2 -> n3 [label="0"];' in lines and '  n1 -> n3 [label="1"];' in lines
    assert lines[-1] == "}"


def test_json_document_has_format_version_and_tagged_attrs() -> None:
    document = json.loads(to_json(parse(TEXT)))
    assert document["format"] == "ember.ir" and document["version"] == JSON_VERSION
    assert document["name"] == "my graph"
    permute = document["nodes"][2]
    assert permute["attrs"] == {"dims": {"tuple": [1, 0]}}
    assert permute["meta"] == {
        "dtype": "float32",
        "shape": [3, 2],
        "strides": [1, 3],
        "offset": 0,
    }
    assert document["nodes"][0]["loc"] == {"file": "m.py", "line": 4, "code": 'y = "q"'}
    assert document["nodes"][4]["value"] == {
        "dtype": "float32",
        "shape": [],
        "base64": "AAAAPw==",
    }
    assert graphs_equal(from_json(to_json(parse(TEXT))), parse(TEXT))


@pytest.mark.parametrize(
    "value",
    [
        1,
        -0.0,
        float("inf"),
        1.0,
        True,
        None,
        "s",
        (1, (2.5,)),
        [1, [2]],
        dtypes.int32,
        (),
    ],
)
def test_attr_encoding_round_trips_with_types(value: object) -> None:
    again = decode_attr(json.loads(json.dumps(encode_attr(value), allow_nan=False)))
    assert type(again) is type(value) and repr(again) == repr(value)


def test_nan_attr_is_a_tagged_string() -> None:
    assert encode_attr(float("nan")) == {"float": "nan"}


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ('{"format": "other"}', "not an ember.ir JSON document"),
        (
            '{"format": "ember.ir", "version": 99, "name": "g", "nodes": []}',
            "ember.ir JSON version 99 is newer than this ember reads (1)",
        ),
        (
            '{"format": "ember.ir", "version": 1, "name": "g", "nodes": [{"name": "x"}]}',
            "malformed ember.ir JSON: KeyError",
        ),
        (
            '{"format": "ember.ir", "version": 1, "name": "g", "nodes": '
            '[{"name": "x", "kind": "lambda", "inputs": []}]}',
            "node %x has unknown kind 'lambda'",
        ),
        (
            '{"format": "ember.ir", "version": 1, "name": "g", "nodes": '
            '[{"name": "o", "kind": "output", "inputs": ["x"]}]}',
            "node %o reads %x, which no node defines",
        ),
        ("[1, 2", "malformed ember.ir JSON: JSONDecodeError"),
    ],
)
def test_from_json_rejects_bad_documents(document: str, problem: str) -> None:
    with pytest.raises(ParseError) as info:
        from_json(document)
    assert problem in str(info.value)
