"""Fusion decisions: which groups form, and why the others did not."""

from __future__ import annotations

import logging

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from strategies import graphs

from ember.compiler.fusion import GroupKind, fuse, group_inputs, group_outputs, is_view
from ember.compiler.passes import optimize
from ember.errors import EmberError, LoweringError
from ember.ir.dtypes import float32
from ember.ir.graph import Graph, Node
from ember.ir.meta import TensorMeta


def f32(*shape: int) -> TensorMeta:
    return TensorMeta.contiguous(shape, float32)


def scalar(g: Graph, value: float) -> Node:
    return g.const(np.array(value, np.float32), f32())


def names(nodes: list[Node]) -> list[str]:
    return [n.name for n in nodes]


def reasons(fused) -> dict[tuple[str, str], str]:
    return {(d.producer.name, d.consumer.name): d.reason for d in fused.declined}


def test_pointwise_chain_with_broadcasting_is_one_kernel():
    g = Graph()
    x, w, b = g.input("x", f32(64, 32)), g.input("w", f32(32)), g.input("b", f32(64, 1))
    h = g.call("relu", [g.call("add", [g.call("mul", [x, w]), b])], name="h")
    out = g.call(
        "add",
        [
            g.call("mul", [h, scalar(g, 0.5)]),
            g.call("mul", [g.call("tanh", [x]), scalar(g, 0.1)]),
        ],
    )
    g.output([out])

    fused = fuse(g)

    assert len(fused.groups) == 1 and not fused.declined
    (group,) = fused.groups
    assert group.kind is GroupKind.POINTWISE and group.domain == (64, 32)
    assert names(group_outputs(group, g)) == [out.name]
    # Six intermediates of 8 KiB each, written once and read once, never touch memory.
    assert fused.saved_bytes() == 6 * 2 * 64 * 32 * 4


def test_row_softmax_is_one_kernel_of_two_reductions():
    g = Graph()
    x = g.input("x", f32(16, 128))
    m = g.call("amax", [x], {"dims": (1,), "keepdim": True})
    e = g.call("exp", [g.call("sub", [x, m])])
    s = g.call("sum", [e], {"dims": (1,), "keepdim": True})
    g.output([g.call("div", [e, s])])

    fused = fuse(g)

    (group,) = fused.groups
    assert group.kind is GroupKind.REDUCTION and group.reduce_dims == (1,)
    assert [n.op for n in group.reductions()] == ["amax", "sum"]
    assert names(group_inputs(group)) == ["x"]


def test_mean_squared_error_fuses_the_difference_into_the_sum():
    g = Graph()
    a, b = g.input("a", f32(1000)), g.input("b", f32(1000))
    d = g.call("sub", [a, b])
    total = g.call("sum", [g.call("mul", [d, d])], {"dims": (0,), "keepdim": False})
    g.output([g.call("mul", [total, scalar(g, 1e-3)])])

    fused = fuse(g)

    assert [grp.kind for grp in fused.groups] == [GroupKind.REDUCTION]
    assert [n.op for n in fused.groups[0].nodes] == ["sub", "mul", "sum", "mul"]


def test_reduction_over_a_different_axis_is_declined():
    g = Graph()
    x = g.input("x", f32(4, 8))
    rows = g.call("sum", [x], {"dims": (1,), "keepdim": True}, name="rows")
    centered = g.call("sub", [x, rows], name="centered")
    cols = g.call("sum", [centered], {"dims": (0,), "keepdim": False}, name="cols")
    g.output([cols])

    fused = fuse(g)

    assert len(fused.groups) == 2
    assert reasons(fused) == {
        ("centered", "cols"): "reduction over a different axis: dims (1,) and (0,)"
    }


def test_shape_mismatch_is_declined():
    g = Graph()
    x, b = g.input("x", f32(4, 8)), g.input("b", f32(8))
    small = g.call("exp", [b], name="small")
    g.output([g.call("add", [x, small], name="big")])

    fused = fuse(g)

    assert reasons(fused) == {
        ("small", "big"): "shape mismatch: producer shape (8,), consumer shape (4, 8)"
    }


def test_matmul_takes_a_bias_and_relu_epilogue_but_no_prologue():
    g = Graph()
    x, w, b = g.input("x", f32(32, 16)), g.param("w", f32(8, 16)), g.param("b", f32(8))
    pre = g.call("tanh", [x], name="pre")
    mm = g.call("matmul", [pre, g.call("permute", [w], {"dims": (1, 0)})], name="mm")
    out = g.call("relu", [g.call("add", [mm, b], name="biased")], name="out")
    g.output([out])

    fused = fuse(g)

    kinds = [(grp.kind, names(grp.nodes)) for grp in fused.groups]
    assert kinds == [
        (GroupKind.POINTWISE, ["pre"]),
        (GroupKind.MATMUL, ["mm", "biased", "out"]),
    ]
    assert reasons(fused)[("pre", "mm")].startswith(
        "matmul operands are read from memory"
    )
    reads = group_inputs(fused.groups[1])
    assert [is_view(v) for v in reads] == [False, True, False]  # w.T is read in place


def test_a_product_read_elsewhere_keeps_its_epilogue_apart():
    g = Graph()
    x, w = g.input("x", f32(8, 8)), g.input("w", f32(8, 8))
    a = g.call("exp", [x], name="a")
    mm = g.call("matmul", [a, w], name="mm")
    g.output([g.call("add", [a, mm], name="out"), mm])

    fused = fuse(g)

    assert len(fused.groups) == 3
    assert reasons(fused) == {
        (
            "a",
            "mm",
        ): "matmul operands are read from memory (a matmul takes no prologue)",
        ("a", "out"): "would create a cycle between kernels",
        ("mm", "out"): "multiple consumers: the product %mm is also read by %output",
    }


def test_a_consumer_behind_a_view_is_not_fused():
    g = Graph()
    x = g.input("x", f32(4, 8))
    r = g.call("relu", [x], name="r")
    t = g.call("permute", [r], {"dims": (1, 0)}, name="t")
    g.output([g.call("exp", [t], name="e")])

    fused = fuse(g)

    assert reasons(fused) == {("r", "e"): "the consumer reads %r through view %t"}


def test_views_of_inputs_cost_no_kernel():
    g = Graph()
    x = g.input("x", f32(8, 4))
    t = g.call("permute", [x], {"dims": (1, 0)})
    row = g.call("slice", [t], {"dim": 0, "start": 1, "stop": 3, "step": 1})
    g.output([g.call("neg", [row])])

    fused = fuse(g)

    (group,) = fused.groups
    assert names(group.nodes) == ["neg"]
    (read,) = group_inputs(group)
    assert read.meta.strides == (1, 4) and read.meta.offset == 1


def test_declined_fusions_are_logged_with_their_reason(caplog):
    g = Graph()
    x, b = g.input("x", f32(4, 8)), g.input("b", f32(8))
    g.output([g.call("add", [x, g.call("exp", [b], name="small")], name="big")])

    with caplog.at_level(logging.DEBUG, logger="ember.compiler.fusion"):
        fuse(g)

    assert "declined fusion %small -> %big: shape mismatch" in caplog.text


def test_the_fused_stage_prints_groups_reasons_and_saved_bytes():
    g = Graph()
    x, b = g.input("x", f32(4, 8)), g.input("b", f32(8))
    y = g.call("relu", [g.call("mul", [x, x])])
    g.output([g.call("add", [y, g.call("exp", [b], name="small")], name="big")])

    text = str(fuse(g))

    assert text.splitlines()[0] == (
        "fused: 2 kernels, 1 declined fusions, 512 B of memory traffic saved"
    )
    assert "g1 pointwise over [4, 8]  (saves 512 B)" in text
    assert "  %small -> %big: shape mismatch" in text


def test_composite_ops_must_be_decomposed_first():
    g = Graph()
    x = g.input("x", f32(4, 8))
    g.output([g.call("softmax", [x], {"dim": 1})])

    with pytest.raises(LoweringError, match="composite ops must be decomposed"):
        fuse(g)


def _primitive_graph(graph: Graph) -> Graph:
    try:
        return optimize(graph, verify=False)
    except EmberError:
        assume(False)
        raise


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(graphs(max_ops=12, locations=False))
def test_fusion_partitions_random_graphs_without_cycles(graph):
    graph = _primitive_graph(graph)

    fused = fuse(graph)

    computing = [n for n in graph.calls() if not is_view(n)]
    owners = [fused.group_of(n) for n in computing]
    assert all(owner is not None for owner in owners)
    assert sum(len(grp.nodes) for grp in fused.groups) == len(computing)
    position = {grp.id: i for i, grp in enumerate(fused.groups)}
    deps = nx.DiGraph()
    deps.add_nodes_from(position)
    for node, owner in zip(computing, owners):
        for value in node.inputs:
            while is_view(value):
                value = value.inputs[0]
            producer = fused.group_of(value)
            if producer is not None and producer is not owner:
                deps.add_edge(producer.id, owner.id)
                assert position[producer.id] < position[owner.id]
    assert nx.is_directed_acyclic_graph(deps)
    for item in fused.declined:
        assert fused.group_of(item.producer) is not fused.group_of(item.consumer)
