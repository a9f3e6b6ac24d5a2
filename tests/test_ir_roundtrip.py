"""The IR text form round-trips: parse(format_graph(g)) equals g, for every graph.

Random graphs come from ``strategies.graphs``; the single-feature properties below pin
the pieces a random graph reaches only by luck (NaN payloads, quoted names, every
attr type, every strided layout).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    FAMILIES,
    arrays_for,
    arrays_with_layout,
    graphs,
    strided_layouts,
    strided_metas,
)

from ember.errors import SourceLocation
from ember.ir import dtypes
from ember.ir.compare import explain_difference, graph_differences, graphs_equal
from ember.ir.export import from_json, to_json
from ember.ir.graph import Graph
from ember.ir.meta import TensorMeta
from ember.ir.parser import parse
from ember.ir.printer import INLINE_LIMIT, format_graph, format_meta
from ember.ir.verify import verify

DOCS = Path(__file__).resolve().parent.parent / "docs" / "ir.md"


def assert_round_trip(graph: Graph) -> str:
    """Print, parse, compare; the printed text must also be a fixed point."""
    text = format_graph(graph)
    again = parse(text)
    difference = explain_difference(graph, again)
    assert not difference, f"{difference}\n--- printed text ---\n{text}"
    assert format_graph(again) == text
    return text


# Random graphs ----------------------------------------------------------------------


@given(graphs(families=FAMILIES))
def test_random_graphs_round_trip_through_text(graph: Graph) -> None:
    verify(graph)
    assert_round_trip(graph)
    verify(parse(format_graph(graph)))


@given(graphs(families=FAMILIES))
def test_random_graphs_round_trip_through_json(graph: Graph) -> None:
    again = from_json(to_json(graph))
    assert not explain_difference(graph, again)


@given(graphs())
def test_copy_is_equal_and_independent(graph: Graph) -> None:
    clone = graph.copy()
    assert graphs_equal(graph, clone)
    assert all(a is not b for a, b in zip(graph.nodes, clone.nodes))
    assert all(n.graph is clone for n in clone.nodes)
    verify(clone)


# Metas ------------------------------------------------------------------------------


@given(strided_layouts())
def test_strided_metas_round_trip(layout_and_storage: tuple[TensorMeta, int]) -> None:
    meta, storage = layout_and_storage
    start, stop = meta.storage_span()
    assert start == stop or (0 <= start and stop <= storage)
    g = Graph()
    g.output([g.input("x", meta)])
    again = parse(assert_round_trip(g)).node("x").meta
    assert again == meta


def test_contiguous_strides_and_zero_offset_are_left_out() -> None:
    assert format_meta(TensorMeta.contiguous((2, 3), dtypes.float32)) == "f32[2, 3]"
    assert format_meta(TensorMeta((), dtypes.bool_, ())) == "bool[]"
    # A size-1 dim with an unusual stride is still contiguous, but not the default.
    odd = TensorMeta((1, 3), dtypes.int64, (7, 1), 2)
    assert format_meta(odd) == "i64[1, 3] strides=(7, 1) offset=2"


# Attributes -------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(dtypes.ALL_DTYPES),
)
attr_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple)
    ),
    max_leaves=8,
)


@given(
    st.dictionaries(
        st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True), attr_values, max_size=4
    )
)
def test_every_attr_value_round_trips_with_its_type(attrs: dict) -> None:
    # The parser does not judge attrs (the verifier does), so any op name will do.
    g = Graph()
    x = g.input("x", TensorMeta.contiguous((2,), dtypes.float32))
    g.output([g.call("relu", [x], attrs, meta=x.meta)])
    assert_round_trip(g)


def test_attr_equality_is_typed() -> None:
    g = Graph()
    x = g.input("x", TensorMeta.contiguous((2,), dtypes.float32))
    node = g.call("relu", [x], {"a": 1}, meta=x.meta)
    g.output([node])
    for other in (1.0, True, (1,), [1], "1", None):
        changed = g.copy()
        changed.node("relu").attrs["a"] = other
        assert not graphs_equal(g, changed), other


# Constants --------------------------------------------------------------------------


@given(st.data())
def test_constants_round_trip_bit_for_bit(data: st.DataObject) -> None:
    meta = TensorMeta.contiguous(
        data.draw(st.lists(st.integers(0, 5), max_size=3).map(tuple)),
        data.draw(st.sampled_from(dtypes.ALL_DTYPES)),
    )
    value = data.draw(arrays_for(meta, special_values=True))
    g = Graph()
    g.output([g.const(value, meta)])
    text = assert_round_trip(g)
    assert ("base64" in text) == (value.size > INLINE_LIMIT)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_payloads_and_negative_zero_survive(dtype: type) -> None:
    bits = {
        np.float32: np.uint32(0x7FC0_1234),
        np.float64: np.uint64(0x7FF8_0000_0000_0ABC),
    }
    payload_nan = np.array([bits[dtype]]).view(dtype)[0]
    value = np.array([payload_nan, -0.0, np.inf], dtype=dtype)
    g = Graph()
    g.output(
        [g.const(value, TensorMeta.contiguous((3,), dtypes.from_numpy_dtype(dtype)))]
    )
    text = assert_round_trip(g)
    assert "base64" in text  # the payload has no decimal text, so it is encoded


def test_float32_constants_print_their_shortest_text() -> None:
    g = Graph()
    value = np.array([0.1, 1e-45, 3.4e38, -0.0], dtype=np.float32)
    g.output([g.const(value, TensorMeta.contiguous((4,), dtypes.float32))])
    assert "const [0.1, 1e-45, 3.4e+38, -0.0]" in assert_round_trip(g)


def test_zero_dim_and_empty_constants() -> None:
    g = Graph()
    scalar = g.const(np.array(True), TensorMeta.contiguous((), dtypes.bool_))
    empty = g.const(
        np.zeros((2, 0), np.int32), TensorMeta.contiguous((2, 0), dtypes.int32)
    )
    g.output([scalar, empty])
    text = assert_round_trip(g)
    assert "= const True" in text and "= const [[], []]" in text


# Names, locations and graph names ---------------------------------------------------


@given(st.text(min_size=1, max_size=10), st.text(max_size=10), st.text(max_size=20))
def test_any_name_file_and_code_text_round_trip(
    name: str, file: str, code: str
) -> None:
    g = Graph(name)
    x = g.input("x", TensorMeta.contiguous((2,), dtypes.float32))
    x.name = name  # bypass unique_name's cleaning: the printer must quote it
    x.loc = SourceLocation(file, 7, code)
    g.output([x])
    assert_round_trip(g)


def test_output_node_with_another_name_keeps_it() -> None:
    g = Graph()
    x = g.input("output", TensorMeta.contiguous((2,), dtypes.float32))
    g.output([x])
    text = assert_round_trip(g)
    assert "%output_1 = output(%output)" in text


# Equality detects every kind of change ----------------------------------------------


@given(graphs(max_ops=4), st.data())
def test_graphs_equal_notices_a_single_change(
    graph: Graph, data: st.DataObject
) -> None:
    changed = graph.copy()
    node = data.draw(st.sampled_from(changed.nodes[:-1]))
    field = data.draw(st.sampled_from(("name", "meta", "loc", "graph")))
    if field == "name":
        node.name += "_renamed"
    elif field == "meta":
        meta = node.meta
        node.meta = TensorMeta(meta.shape, meta.dtype, meta.strides, meta.offset + 1)
    elif field == "loc":
        node.loc = SourceLocation("elsewhere.py", 1, "changed")
    else:
        changed.name += "_renamed"
    assert not graphs_equal(graph, changed)
    assert graph_differences(graph, changed)


def test_explain_difference_lists_changes_and_a_unified_diff() -> None:
    text = "graph g {\n  %x: f32[2] = input\n  %y: f32[2] = relu(%x)\n  output(%y)\n}\n"
    a, b = parse(text), parse(text.replace("relu", "exp"))
    explanation = explain_difference(a, b)
    assert explanation.splitlines()[0] == "%y: op 'relu' != 'exp'"
    assert "-  %y: f32[2] = relu(%x)" in explanation
    assert "+  %y: f32[2] = exp(%x)" in explanation
    assert explain_difference(a, parse(text)) == ""


# The documentation's example --------------------------------------------------------


def test_docs_example_is_printed_text_of_a_verified_graph() -> None:
    block = re.search(r"```\n(graph mlp .*?)```", DOCS.read_text(), re.S)
    assert block is not None
    graph = parse(block.group(1))
    verify(graph)
    assert format_graph(graph) == block.group(1)


@given(st.data())
def test_arrays_with_layout_have_the_meta_strides(data: st.DataObject) -> None:
    meta = data.draw(strided_metas())
    array = data.draw(arrays_with_layout(meta))
    assert array.shape == meta.shape
    assert array.dtype == meta.dtype.np_dtype
    if meta.numel > 1:
        item = array.itemsize
        assert tuple(
            s // item for s, n in zip(array.strides, meta.shape) if n > 1
        ) == tuple(s for s, n in zip(meta.strides, meta.shape) if n > 1)
