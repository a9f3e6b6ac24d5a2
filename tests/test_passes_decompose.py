"""The decompose pass: composite ops in IR text before, primitives after, and the
failures a broken decomposition must produce."""

from __future__ import annotations

import pytest
from test_passes import apply, ir

import ember
from ember.compiler.passes import optimize
from ember.compiler.passes.graph_builder import GraphBuilder
from ember.errors import IRError, LoweringError
from ember.ir import functions as F
from ember.ir.parser import parse
from ember.ir.registry import get_op


def test_decompose_mean_into_a_sum_times_the_reciprocal_count() -> None:
    loc = 'loc("model.py", 7, "x.mean(1)")'
    before = f"""
        graph g {{
          %x: f32[2, 8] = input
          %m: f32[2] = mean(%x) {{dims=(1,), keepdim=False}}  {loc}
          output(%m)
        }}
    """
    assert apply(before, "decompose") == ir(f"""
        graph g {{
          %x: f32[2, 8] = input
          %sum: f32[2] = sum(%x) {{dims=(1,), keepdim=False}}  {loc}
          %const: f32[] = const 0.125  {loc}
          %mul: f32[2] = mul(%sum, %const)  {loc}
          output(%mul)
        }}
    """)


def test_decompose_softmax_subtracts_the_max_and_multiplies_by_1_over_sum() -> None:
    before = """
        graph g {
          %x: f64[3, 5] = input
          %s: f64[3, 5] = softmax(%x) {dim=1}
          output(%s)
        }
    """
    assert apply(before, "decompose") == ir("""
        graph g {
          %x: f64[3, 5] = input
          %amax: f64[3, 1] = amax(%x) {dims=(1,), keepdim=True}
          %sub: f64[3, 5] = sub(%x, %amax)
          %exp: f64[3, 5] = exp(%sub)
          %sum: f64[3, 1] = sum(%exp) {dims=(1,), keepdim=True}
          %const: f64[] = const 1.0
          %div: f64[3, 1] = div(%const, %sum)
          %mul: f64[3, 5] = mul(%exp, %div)
          output(%mul)
        }
    """)


def test_decompose_repeats_until_no_composite_is_left() -> None:
    # var decomposes through mean, mse_loss through mean: both need a second round.
    text = """
        graph g {
          %x: f32[4, 3] = input
          %y: f32[4, 3] = input
          %v: f32[3] = var(%x) {dims=(0,), keepdim=False, correction=1}
          %l: f32[] = mse_loss(%x, %y) {reduction="mean"}
          output(%v, %l)
        }
    """
    graph = optimize(parse(text), passes=("decompose",), verify=True)
    ops = [node.op for node in graph.calls()]
    assert not {"var", "mean", "mse_loss"} & set(ops)
    assert ops.count("sum") == 3


def test_decompose_linear_reads_the_weight_through_a_transposed_view() -> None:
    before = """
        graph g {
          %x: f32[2, 3] = input
          %w: f32[4, 3] = param "fc.weight"
          %b: f32[4] = param "fc.bias"
          %y: f32[2, 4] = linear(%x, %w, %b)
          output(%y)
        }
    """
    assert apply(before, "decompose") == ir("""
        graph g {
          %x: f32[2, 3] = input
          %w: f32[4, 3] = param "fc.weight"
          %b: f32[4] = param "fc.bias"
          %permute: f32[3, 4] strides=(1, 3) = permute(%w) {dims=(1, 0)}
          %matmul: f32[2, 4] = matmul(%x, %permute)
          %add: f32[2, 4] = add(%matmul, %b)
          output(%add)
        }
    """)


def test_decompose_stack_into_unsqueeze_and_cat() -> None:
    before = """
        graph g {
          %a: f32[2] = input
          %b: f32[2] = input
          %s: f32[2, 2] = stack(%a, %b) {dim=1}
          output(%s)
        }
    """
    assert apply(before, "decompose") == ir("""
        graph g {
          %a: f32[2] = input
          %b: f32[2] = input
          %unsqueeze: f32[2, 1] = unsqueeze(%a) {dim=1}
          %unsqueeze_1: f32[2, 1] = unsqueeze(%b) {dim=1}
          %cat: f32[2, 2] = cat(%unsqueeze, %unsqueeze_1) {dim=1}
          output(%cat)
        }
    """)


SOFTMAX = """
    graph g {
      %x: f32[2, 3] = input
      %s: f32[2, 3] = softmax(%x) {dim=1}  loc("model.py", 5, "x.softmax(1)")
      output(%s)
    }
"""


def test_decompose_fails_loudly_for_a_composite_without_decomposition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(get_op("softmax"), "decompose", None)
    with pytest.raises(LoweringError, match="softmax has no decomposition") as caught:
        apply(SOFTMAX, "decompose")
    assert "ember/ir/decompositions.py" in str(caught.value.hint)
    assert str(caught.value.location) == "model.py:5: x.softmax(1)"


def test_decompose_rejects_a_decomposition_of_the_wrong_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(get_op("softmax"), "decompose", lambda xs, a: F.sum(xs[0], 1))
    with pytest.raises(
        IRError, match="produced f32\\[2\\], but the op's meta rule says"
    ):
        apply(SOFTMAX, "decompose")


def test_decompose_copies_a_strided_result_into_the_dense_layout_of_the_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        get_op("softmax"), "decompose", lambda xs, a: F.transpose(F.exp(xs[0]), 0, 1)
    )
    square = SOFTMAX.replace("2, 3", "3, 3")
    graph = optimize(parse(square), passes=("decompose",), verify=True)
    (result,) = graph.outputs
    assert result.op == "copy" and result.meta.is_contiguous()
    assert result.inputs[0].op == "permute"


def test_decompose_stops_a_decomposition_that_reproduces_its_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        get_op("softmax"), "decompose", lambda xs, a: F.softmax(xs[0], a["dim"])
    )
    with pytest.raises(IRError, match="composite ops \\['softmax'\\] remain"):
        apply(SOFTMAX, "decompose")


def test_graph_values_only_record_inside_a_builder() -> None:
    graph = parse(SOFTMAX)
    with GraphBuilder(graph) as builder:
        x = builder.value(graph.node("x"))
        y = F.mul(x, ember.ones(2, 3))
    assert y.node.inputs[1].kind == "const"
    with pytest.raises(IRError, match="outside a GraphBuilder"):
        F.exp(x)
