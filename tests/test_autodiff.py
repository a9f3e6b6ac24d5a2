"""Graph autodiff and partitioning: gradients of compiled graphs versus the eager
engine and finite differences.

- every differentiable op of the registry (the cases of ``test_gradients.py``, with
  their strided and broadcast layouts) compiled with ``ember.compile``: the compiled
  backward gives the eager gradients and passes ``gradcheck``;
- random graphs drawn by hypothesis, differentiated and partitioned, run forward and
  backward on the interpreter and compared with eager backward of the same graph;
- shared values: the same schedule statistics as the eager engine, bit-identical
  gradients;
- the typed errors, naming the node and the user's line;
- what the partition saves and recomputes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, note, reject, settings
from hypothesis import strategies as st

import ember
from ember.compiler.autodiff import differentiate, needs_gradient
from ember.compiler.interpret import interpret
from ember.compiler.partition import TrainingGraphs, build_training_graphs
from ember.compiler.passes import optimize
from ember.compiler.trace import trace
from ember.errors import EmberError, MissingGradError, NonScalarLossError
from ember.ir import dtypes
from ember.ir.registry import all_ops
from ember.ir.verify import verify
from ember.testing import gradcheck
from tests.strategies import graphs
from tests.test_gradients import CASES, Check
from tests.test_passes_equivalence import tensor_for

# Every differentiable op, compiled -------------------------------------------------


def test_every_differentiable_op_has_a_compiled_case():
    differentiable = {op.name for op in all_ops() if op.differentiable}
    assert differentiable <= set(CASES)


def _laid_out(check: Check) -> Any:
    layouts = [i.layout for i in check.inputs]

    def fn(*args: Any) -> Any:
        views = [lay(x) for lay, x in zip(layouts, args)]
        return check.fn(*views, *args[len(layouts) :])

    return fn


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=4)
@given(data=st.data())
def test_compiled_gradient_matches_eager_and_finite_differences(name, data):
    check = CASES[name](data)
    note(f"input layouts: {[i.name for i in check.inputs]}")
    fn = _laid_out(check)
    compiled = ember.compile(fn)
    leaves = [ember.from_numpy(np.array(i.leaf, order="C")) for i in check.inputs]

    eager_leaves = [x.detach().requires_grad_() for x in leaves]
    eager_out = fn(*eager_leaves, *check.extra)
    compiled_leaves = [x.detach().requires_grad_() for x in leaves]
    compiled_out = compiled(*compiled_leaves, *check.extra)
    assert compiled_out.grad_fn is not None
    assert compiled_out.grad_fn.name.startswith("compiled")
    cotangent = ember.from_numpy(
        np.random.default_rng(0).standard_normal(eager_out.shape)
    )
    eager_out.backward(cotangent)
    compiled_out.backward(cotangent)
    for eager, mine in zip(eager_leaves, compiled_leaves):
        np.testing.assert_allclose(
            mine.grad.numpy(), eager.grad.numpy(), rtol=1e-10, atol=1e-12
        )
    gradcheck(
        compiled,
        [*leaves, *check.extra],
        eps=check.eps,
        atol=check.atol,
        rtol=check.rtol,
    )


# Random graphs ----------------------------------------------------------------------


def _eager_gradients(
    graph, inputs, params, wrt_inputs, cotangents
) -> list[np.ndarray | None]:
    """The gradients eager backward gives, running ``graph`` on the interpreter."""
    leaves = [t.detach() for t in inputs]
    for i in wrt_inputs:
        leaves[i].requires_grad_()
    named = {k: v.detach().requires_grad_() for k, v in params.items()}
    outputs = interpret(graph, leaves, named)
    pairs = [(o, c) for o, c in zip(outputs, cotangents) if c is not None]
    pairs = [(o, c) for o, c in pairs if o.requires_grad]
    if pairs:
        loss = sum((o * c).sum() for o, c in pairs)
        loss.backward()
    values = [leaves[i] for i in wrt_inputs] + list(named.values())
    return [None if v.grad is None else v.grad.numpy() for v in values]


@settings(max_examples=30)
@given(data=st.data())
def test_random_graphs_give_the_eager_gradients(data):
    graph = data.draw(
        graphs(
            families=("pointwise", "reduction", "view", "matmul"),
            max_ops=8,
            dtype_choices=(dtypes.float64,),
            special_values=False,
        )
    )
    inputs = [tensor_for(n.meta, data) for n in graph.inputs]
    params = {n.target: tensor_for(n.meta, data) for n in graph.params}
    wrt_inputs = [
        i for i, n in enumerate(graph.inputs) if n.meta.dtype.is_floating_point
    ]
    wrt = [graph.inputs[i] for i in wrt_inputs] + list(graph.params)
    requires = needs_gradient(graph, wrt)
    rng = np.random.default_rng(0)
    cotangents = [
        ember.from_numpy(
            rng.standard_normal(v.meta.shape).astype(v.meta.dtype.np_dtype)
        )
        if v in requires
        else None
        for v in graph.outputs
    ]
    try:
        expected = _eager_gradients(graph, inputs, params, wrt_inputs, cotangents)
    except EmberError:
        reject()  # the graph itself fails on these values
    graphs_ = build_training_graphs(graph, wrt)
    verify(graphs_.forward)
    verify(graphs_.backward)
    got = _run_partitioned(graphs_, inputs, params, cotangents)
    for want, mine in zip(expected, got):
        if want is None:
            continue
        np.testing.assert_allclose(mine, want, rtol=1e-9, atol=1e-12, equal_nan=True)


@settings(max_examples=30)
@given(data=st.data())
def test_random_graphs_schedule_like_the_eager_engine(data):
    # Same rules run, same gradients sent, same sums: the scheduling is shared.
    graph = data.draw(
        graphs(
            families=("pointwise", "reduction", "view", "matmul"),
            max_ops=8,
            max_outputs=1,
            dtype_choices=(dtypes.float64,),
            special_values=False,
        )
    )
    inputs = [tensor_for(n.meta, data) for n in graph.inputs]
    params = {n.target: tensor_for(n.meta, data) for n in graph.params}
    wrt_inputs = [
        i for i, n in enumerate(graph.inputs) if n.meta.dtype.is_floating_point
    ]
    wrt = [graph.inputs[i] for i in wrt_inputs] + list(graph.params)
    if graph.outputs[0] not in needs_gradient(graph, wrt):
        reject()
    leaves = [t.detach() for t in inputs]
    for i in wrt_inputs:
        leaves[i].requires_grad_()
    named = {k: v.detach().requires_grad_() for k, v in params.items()}
    try:
        out = interpret(graph, leaves, named)[0]
        out.backward(ember.ones(*out.shape, dtype=out.dtype))
    except EmberError:
        reject()
    eager = ember.autograd.last_stats()
    stats = differentiate(graph, wrt, allow_unused=True).stats
    assert (stats.nodes, stats.edges, stats.accumulations) == (
        eager.nodes_run,
        eager.edges,
        eager.accumulations,
    )


def _run_partitioned(graphs_: TrainingGraphs, inputs, params, cotangents):
    forward = interpret(graphs_.forward, inputs, params)
    saved = forward[graphs_.num_outputs :]
    seeds = [cotangents[i].contiguous() for i in graphs_.seeds]
    grads = interpret(graphs_.backward, saved + seeds, params)
    return [None if p is None else grads[p].numpy() for p in graphs_.gradients]


# Shared values and the schedule ----------------------------------------------------


def shared(x, w):
    h = x * w  # h is used on three paths
    y = h.exp() + h * h
    return (y.sum(1) + h.mean(1)).sum()


def test_shared_values_sum_their_gradients_like_the_eager_engine():
    x = ember.randn(3, 4, dtype=ember.float64)
    w = ember.randn(4, dtype=ember.float64, requires_grad=True)
    shared(x, w).backward()
    eager = ember.autograd.last_stats()

    graph = trace(shared, x, w)
    joint = differentiate(graph, [graph.inputs[1]], implicit=True)
    assert joint.stats.nodes == eager.nodes_run
    assert joint.stats.edges == eager.edges
    assert joint.stats.accumulations == eager.accumulations == 3

    grads = build_training_graphs(graph, [graph.inputs[1]])
    one = ember.ones((), dtype=ember.float64)
    got = _run_partitioned(grads, [x, w.detach()], {}, [one])
    np.testing.assert_array_equal(got[0], w.grad.numpy())


def test_broadcast_operands_get_gradients_of_their_own_shape():
    def f(x, b):
        return (x + b).relu().sum()

    x = ember.randn(5, 3)
    b = ember.randn(3)
    graph = trace(f, x, b)
    joint = differentiate(graph, graph.inputs, implicit=True)
    grads = joint.graph.outputs[1:]
    assert [g.meta.shape for g in grads] == [(5, 3), (3,)]


def test_an_op_used_twice_by_one_node_gets_both_gradients():
    graph = trace(lambda x: (x * x).sum(), ember.ones(3))
    joint = differentiate(graph, graph.inputs, implicit=True)
    assert joint.stats.accumulations == 1
    x = ember.tensor([1.0, 2.0, 3.0])
    grads = build_training_graphs(graph, graph.inputs)
    got = _run_partitioned(grads, [x], {}, [ember.ones(())])
    assert got[0].tolist() == [2.0, 4.0, 6.0]


# Errors -----------------------------------------------------------------------------


def test_an_implied_gradient_needs_a_one_element_output():
    def f(x):
        return x * 2.0  # the line the error names

    graph = trace(f, ember.ones(3))
    with pytest.raises(
        NonScalarLossError, match=r"%mul \(f32\[3\]\) needs an explicit"
    ):
        differentiate(graph, graph.inputs, implicit=True)
    try:
        differentiate(graph, graph.inputs, implicit=True)
    except NonScalarLossError as error:
        assert error.location.code == "return x * 2.0  # the line the error names"


def test_a_value_no_output_depends_on_is_a_missing_gradient():
    def f(x, unused):
        return x.sum()

    graph = trace(f, ember.ones(3), ember.ones(2))
    with pytest.raises(
        MissingGradError, match=r"%unused \(f32\[2\]\) needs a gradient"
    ):
        differentiate(graph, graph.inputs, implicit=True)
    joint = differentiate(graph, graph.inputs, implicit=True, allow_unused=True)
    assert joint.gradients[1] is None


def test_integer_outputs_start_no_backward():
    graph = trace(lambda x: (x.argmax(0), x.sum()), ember.ones(3, 2))
    joint = differentiate(graph, graph.inputs)
    assert joint.seeds[0] is None and joint.seeds[1] is not None


# What the partition saves -----------------------------------------------------------


def test_cheap_pointwise_values_are_recomputed_not_saved():
    def f(x, w):
        h = x @ w
        return (h.sigmoid() * h).sum()

    graph = optimize(trace(f, ember.ones(8, 4), ember.ones(4, 16)))
    parts = build_training_graphs(graph, [graph.inputs[1]])
    saved = {s.name: s for s in parts.saved}
    # The product is saved (backward reads it, and it cannot be recomputed cheaply);
    # the sigmoid of it is computed again in the backward kernels that read it.
    assert "sigmoid" not in saved and "matmul" in saved
    assert parts.recomputed == [
        "%sigmoid (sigmoid): recomputed from %matmul instead of saving 512 bytes"
    ]
    assert saved["x"].extra is False and saved["x"].reason == "a forward input"
    assert parts.saved_bytes == 512


def test_views_of_parameters_are_recomputed():
    def f(x, w):
        return (x @ w.T).sum()

    graph = optimize(trace(f, ember.ones(2, 3), ember.ones(5, 3)))
    parts = build_training_graphs(graph, graph.inputs)
    assert not [s for s in parts.saved if s.name.startswith("permute")]


def test_differentiate_leaves_its_graph_alone_and_the_joint_graph_verifies():
    graph = trace(shared, ember.randn(3, 4), ember.randn(4))
    before = str(graph)
    joint = differentiate(graph, graph.inputs)
    assert str(graph) == before
    verify(joint.graph)
    forward_part = [n.name for n in joint.graph.nodes][: len(graph.nodes) - 1]
    assert forward_part == [n.name for n in graph.nodes][:-1]
    assert [n.name for n in joint.graph.outputs[1:]] == ["x.grad", "w.grad"]
