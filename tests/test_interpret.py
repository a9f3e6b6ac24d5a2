"""The interpreter agrees with eager execution and with numpy, and tracing what the
interpreter runs gives the graph back; random graphs and op chains by hypothesis."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ember
from ember.compiler.interpret import interpret, layout_key
from ember.compiler.trace import trace
from ember.errors import EmberError, SignatureError
from ember.ir.graph import Graph, Node
from ember.ir.registry import get_op
from tests.strategies import (
    FLOAT_DTYPES,
    arrays_for,
    arrays_with_layout,
    graphs,
    strided_metas,
)


@st.composite
def bound_graphs(
    draw: st.DrawFn,
) -> tuple[Graph, list[np.ndarray], dict[str, np.ndarray]]:
    """A random graph with numpy values for its inputs (in their strided layouts)
    and for its parameters."""
    graph = draw(graphs(max_ops=8))
    inputs = [
        draw(arrays_with_layout(n.meta, special_values=True)) for n in graph.inputs
    ]
    params = {n.target: draw(arrays_for(n.meta)) for n in graph.params}
    return graph, inputs, params


def numpy_oracle(
    graph: Graph, inputs: Sequence[np.ndarray], params: dict[str, np.ndarray]
) -> list[np.ndarray]:
    """Evaluate ``graph`` with each op's numpy reference, without ember's runtime."""
    env: dict[Node, np.ndarray] = dict(zip(graph.inputs, inputs))
    for node in graph.nodes:
        if node.kind in ("param", "buffer"):
            env[node] = params[node.target]
        elif node.kind == "const":
            env[node] = node.value
        elif node.kind == "call":
            array = get_op(node.op).reference([env[v] for v in node.inputs], node.attrs)
            env[node] = np.asarray(array).astype(node.meta.dtype.np_dtype, copy=False)
    return [env[v] for v in graph.outputs]


def as_tensors(inputs: Sequence[np.ndarray], params: dict[str, np.ndarray]) -> Any:
    return [ember.from_numpy(a) for a in inputs], {
        k: ember.from_numpy(v) for k, v in params.items()
    }


def assert_same(tensor: ember.Tensor, expected: np.ndarray) -> None:
    assert tensor.shape == expected.shape
    assert tensor.dtype.np_dtype == expected.dtype
    np.testing.assert_array_equal(tensor.numpy(), expected)


# Random graphs ----------------------------------------------------------------------


@given(bound_graphs())
def test_interpreter_matches_the_numpy_reference_of_every_op(case):
    graph, inputs, params = case
    tensors, bound = as_tensors(inputs, params)
    try:
        oracle = numpy_oracle(graph, inputs, params)
    except EmberError as error:  # a value-dependent error, such as 0 ** -1 in ints
        with pytest.raises(type(error)):
            interpret(graph, tensors, bound)
        return
    outputs = interpret(graph, tensors, bound)
    for out, node, expected in zip(outputs, graph.outputs, oracle):
        assert_same(out, expected)
        assert layout_key(out.meta) == layout_key(node.meta)


class Bound:
    """A module-like object that runs ``graph`` through the interpreter."""

    def __init__(self, graph: Graph, params: dict[str, ember.Tensor]) -> None:
        self.graph = graph
        self.params = params

    def named_parameters(self) -> list[tuple[str, ember.Tensor]]:
        return [
            (n.target, self.params[n.target])
            for n in self.graph.params
            if n.kind == "param"
        ]

    def named_buffers(self) -> list[tuple[str, ember.Tensor]]:
        return [
            (n.target, self.params[n.target])
            for n in self.graph.params
            if n.kind == "buffer"
        ]

    def __call__(self, *inputs: ember.Tensor) -> tuple[ember.Tensor, ...]:
        return tuple(interpret(self.graph, inputs, self.params))


def traced_calls(graph: Graph) -> list[tuple[Any, ...]]:
    """The calls that depend on an input or a parameter: what a trace records (a
    call on constants alone runs eagerly while tracing and enters as a constant)."""
    live: set[int] = set()
    found = []
    for node in graph.nodes:
        if node.kind in ("input", "param", "buffer") or (
            node.kind == "call" and any(id(v) in live for v in node.inputs)
        ):
            live.add(id(node))
            if node.kind == "call":
                found.append((node.op, node.attrs, layout_key(node.meta)))
    return found


@given(bound_graphs(), st.data())
def test_tracing_the_interpreter_gives_back_the_same_calls(case, data):
    graph, inputs, params = case
    tensors, bound = as_tensors(inputs, params)
    model = Bound(graph, bound)

    try:
        traced = trace(model, *tensors)
    except EmberError as error:
        # Ops on constants alone run while tracing, so a value-dependent error
        # (0 ** -1 in ints) shows there; eager execution must raise it too.
        with pytest.raises(type(error)):
            model(*tensors)
        return
    assert traced_calls(traced) == traced_calls(graph)
    assert sorted(n.target for n in traced.params) == sorted(
        n.target
        for n in graph.params
        if any(u.kind == "call" or u.kind == "output" for u in n.users)
    )

    fresh = [
        ember.from_numpy(data.draw(arrays_with_layout(n.meta))) for n in graph.inputs
    ]
    try:
        expected = model(*fresh)
    except EmberError as error:  # a value-dependent error, such as 0 ** -1 in ints
        with pytest.raises(type(error)):
            interpret(traced, fresh, bound)
        return
    for got, want in zip(interpret(traced, fresh, bound), expected):
        assert_same(got, want.numpy())


# Random op chains through the tensor methods ----------------------------------------

Step = Callable[[Any, Any], Any]

STEPS: dict[str, Step] = {
    "exp": lambda a, b: a.exp(),
    "tanh": lambda a, b: a.tanh(),
    "relu": lambda a, b: a.relu(),
    "sqrt_abs": lambda a, b: abs(a).sqrt(),
    "neg": lambda a, b: -a,
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "maximum": lambda a, b: a.maximum(b),
    "rsub_number": lambda a, b: 1.5 - a,
    "square": lambda a, b: a**2,
    "where": lambda a, b: ember.where(a > b, a, b),
    "matmul": lambda a, b: a @ b,
    "T": lambda a, b: a.T,
    "transpose": lambda a, b: a.transpose(0, -1),
    "every_second": lambda a, b: a[::2],
    "drop_first_col": lambda a, b: a[..., 1:],
    "select_last": lambda a, b: a[-1],
    "unsqueeze": lambda a, b: a.unsqueeze(0),
    "expand": lambda a, b: a.unsqueeze(0).expand(2, *a.shape),
    "reshape_flat": lambda a, b: a.reshape(-1),
    "sum_last": lambda a, b: a.sum(-1),
    "mean_first_keep": lambda a, b: a.mean(0, keepdim=True),
    "amax_last": lambda a, b: a.amax(-1),
    "softmax": lambda a, b: a.softmax(-1),
    "contiguous": lambda a, b: a.contiguous(),
}


@st.composite
def op_chains(
    draw: st.DrawFn,
) -> tuple[list[ember.Tensor], list[tuple[str, int, int]], Any]:
    """Strided float inputs and a chain of tensor-method steps that runs on them.

    Each step reads one or two earlier values (an input or a step's result, so a
    value can feed several later steps); a step whose operands it does not fit
    (shapes that do not broadcast, a 0-d transpose) is left out.
    """
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    metas = draw(st.lists(strided_metas((dtype,), max_dims=3), min_size=1, max_size=2))
    inputs = [ember.from_numpy(draw(arrays_with_layout(m))) for m in metas]
    pool: list[Any] = list(inputs)
    steps: list[tuple[str, int, int]] = []
    for _ in range(draw(st.integers(1, 8))):
        name = draw(st.sampled_from(sorted(STEPS)))
        a, b = draw(st.integers(0, len(pool) - 1)), draw(st.integers(0, len(pool) - 1))
        try:
            pool.append(STEPS[name](pool[a], pool[b]))
        except EmberError:
            continue
        steps.append((name, a, b))
    return inputs, steps, metas


def run_chain(steps: Sequence[tuple[str, int, int]], inputs: Sequence[Any]) -> tuple:
    pool = list(inputs)
    for name, a, b in steps:
        pool.append(STEPS[name](pool[a], pool[b]))
    return tuple(pool[len(inputs) :]) or tuple(pool)


@given(op_chains(), st.data())
def test_traced_op_chains_agree_with_eager_on_fresh_inputs(chain, data):
    inputs, steps, metas = chain
    graph = trace(lambda *xs: run_chain(steps, xs), *inputs)
    eager_outputs = run_chain(steps, inputs)
    for node, out in zip(graph.outputs, eager_outputs):
        assert layout_key(node.meta) == layout_key(out.meta)

    fresh = [ember.from_numpy(data.draw(arrays_with_layout(m))) for m in metas]
    for got, expected in zip(interpret(graph, fresh), run_chain(steps, fresh)):
        assert_same(got, expected.numpy())


# Binding ----------------------------------------------------------------------------


def test_outputs_that_are_views_share_storage_with_the_inputs_as_in_eager():
    g = trace(lambda x: x.T[1:], ember.ones(3, 4))
    x = ember.arange(12.0).view(3, 4)
    (out,) = interpret(g, [x])
    assert out.untyped_storage_id() == x.untyped_storage_id()
    assert out.tolist() == x.T[1:].tolist()


def test_writing_into_a_result_does_not_change_the_graphs_constant():
    g = trace(lambda x: ember.ones(2) + x * 0, ember.ones(2))
    (first,) = interpret(g, [ember.ones(2)])
    first.add_(5)
    (second,) = interpret(g, [ember.ones(2)])
    assert second.tolist() == [1.0, 1.0]


def test_a_value_used_twice_by_one_node_is_read_twice():
    def f(x):
        y = x + 1
        return y * y

    g = trace(f, ember.ones(2))
    assert [v.name for v in g.node("mul").inputs] == ["add", "add"]
    assert interpret(g, [ember.tensor([1.0, 2.0])])[0].tolist() == [4.0, 9.0]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "takes 1 inputs (%x), got 0"),
        ([ember.ones(3, 2)], "built for f32[2, 3] with strides (3, 1), got f32[3, 2]"),
        ([ember.ones(3, 2).T], "got f32[2, 3] with strides (1, 2)"),
        ([ember.ones(2, 3, dtype=ember.float64)], "got f64[2, 3]"),
        ([np.ones((2, 3))], "expected a tensor, got ndarray"),
    ],
)
def test_inputs_must_match_the_traced_layout(inputs, message):
    g = trace(lambda x: x.sum(), ember.ones(2, 3))
    with pytest.raises(SignatureError) as info:
        interpret(g, inputs)
    assert message in info.value.message


def test_a_missing_parameter_is_a_signature_error():
    lin = ember.nn.Linear(2, 2)
    g = trace(lin, ember.ones(1, 2))
    with pytest.raises(SignatureError, match="reads param 'weight'"):
        interpret(g, [ember.ones(1, 2)], {"bias": lin.bias})
