"""Passes keep values: every decomposition against its op's numpy reference, and
random graphs evaluated (by the graph interpreter) before and after ``optimize``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, reject
from hypothesis import strategies as st
from strategies import FAMILIES, arrays_with_layout, graphs

from ember.compiler.interpret import interpret
from ember.compiler.passes import PassManager, decompose, optimize
from ember.compiler.passes.graph_builder import GraphBuilder
from ember.errors import EmberError
from ember.ir import dtypes
from ember.ir import functions as F
from ember.ir.graph import Graph
from ember.ir.meta import TensorMeta
from ember.ir.registry import OpDef, OpKind, all_ops, get_op
from ember.runtime.factories import from_numpy

f32, f64 = dtypes.float32, dtypes.float64

# Inputs (shape, dtype) and attrs for every composite op. A new composite op fails
# test_every_composite_op_has_cases until it gets cases here and a decomposition.
CASES: dict[str, list[tuple[list[tuple[tuple[int, ...], Any]], dict[str, Any]]]] = {
    "softmax": [
        ([((3, 5), f32)], {"dim": 1}),
        ([((4, 2, 3), f64)], {"dim": 0}),
        ([((), f32)], {"dim": 0}),
        ([((3, 0), f32)], {"dim": 1}),
    ],
    "log_softmax": [
        ([((3, 5), f32)], {"dim": 1}),
        ([((2, 3, 4), f64)], {"dim": 2}),
    ],
    "gelu": [([((7,), f32)], {}), ([((2, 3), f64)], {})],
    "linear": [
        ([((2, 3), f32), ((4, 3), f32)], {}),
        ([((5, 2, 3), f64), ((4, 3), f64), ((4,), f64)], {}),
        ([((3,), f32), ((2, 3), f32), ((2,), f32)], {}),
    ],
    "mse_loss": [
        ([((3, 4), f32), ((3, 4), f32)], {"reduction": "mean"}),
        ([((3, 4), f32), ((3, 4), f64)], {"reduction": "sum"}),
        ([((5,), f64), ((5,), f64)], {"reduction": "none"}),
    ],
    "l1_loss": [
        ([((3, 4), f32), ((3, 4), f32)], {"reduction": "mean"}),
        ([((6,), f64), ((6,), f64)], {"reduction": "none"}),
    ],
    "huber_loss": [
        ([((3, 4), f32), ((3, 4), f32)], {"reduction": "mean", "delta": 0.5}),
        ([((8,), f64), ((8,), f64)], {"reduction": "sum", "delta": 2.0}),
    ],
    "var": [
        ([((4, 5), f32)], {"dims": (1,), "keepdim": False, "correction": 1}),
        ([((4, 5), f64)], {"dims": (0, 1), "keepdim": True, "correction": 0}),
        ([((2, 3), f32)], {"dims": (0,), "keepdim": False, "correction": 2}),
        ([((), f64)], {"dims": (), "keepdim": False, "correction": 0}),
    ],
    "mean": [
        ([((4, 5), f32)], {"dims": (0,), "keepdim": True}),
        ([((2, 3, 4), f64)], {"dims": (0, 2), "keepdim": False}),
        ([((0, 3), f32)], {"dims": (0,), "keepdim": False}),
    ],
    "stack": [
        ([((2, 3), f32), ((2, 3), f32)], {"dim": 0}),
        ([((2, 3), f32), ((2, 3), f64), ((2, 3), f32)], {"dim": 2}),
    ],
}

COMPOSITES = [op for op in all_ops() if op.kind is OpKind.COMPOSITE]


def tolerance(dtype: np.dtype) -> dict[str, float]:
    """Decompositions round differently from the references (``x * (1/n)`` against
    ``x / n``, ``erf`` against ``math.erf`` through another expression)."""
    if dtype == np.float32:
        return {"rtol": 2e-5, "atol": 1e-6}
    return {"rtol": 1e-12, "atol": 1e-14}


def case_arrays(
    specs: list[tuple[tuple[int, ...], Any]], seed: int, scale: float = 3.0
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        np.asarray(rng.standard_normal(shape) * scale, d.np_dtype) for shape, d in specs
    ]


def composite_graph(
    op: OpDef, arrays: list[np.ndarray], attrs: dict[str, Any]
) -> Graph:
    graph = Graph(op.name)
    inputs = [
        graph.input(
            f"x{i}", TensorMeta.contiguous(a.shape, dtypes.from_numpy_dtype(a.dtype))
        )
        for i, a in enumerate(arrays)
    ]
    graph.output([graph.call(op.name, inputs, attrs)])
    return graph


def run(graph: Graph, arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [t.numpy() for t in interpret(graph, [from_numpy(a) for a in arrays])]


def check_decomposition(
    op: OpDef, arrays: list[np.ndarray], attrs: dict[str, Any]
) -> None:
    expected = op.reference(arrays, attrs)
    assert op.decompose is not None
    eager = op.decompose([from_numpy(a) for a in arrays], attrs).numpy()
    graph = PassManager([decompose], verify=True).run(
        composite_graph(op, arrays, attrs)
    )
    assert not [n.op for n in graph.calls() if get_op(n.op).kind is OpKind.COMPOSITE]
    (traced,) = run(graph, arrays)
    for result in (eager, traced):
        assert result.shape == expected.shape and result.dtype == expected.dtype
        np.testing.assert_allclose(result, expected, **tolerance(expected.dtype))


def test_every_composite_op_has_cases_and_a_decomposition() -> None:
    assert COMPOSITES, "the registry has no composite ops"
    for op in COMPOSITES:
        assert op.name in CASES, f"add decomposition test cases for {op.name}"
        assert op.decompose is not None, f"{op.name} has no decomposition"


@pytest.mark.parametrize("op", COMPOSITES, ids=lambda op: op.name)
def test_decomposition_matches_the_reference(op: OpDef) -> None:
    for seed, (specs, attrs) in enumerate(CASES.get(op.name, [])):
        check_decomposition(op, case_arrays(specs, seed), attrs)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_decompositions_stay_finite_for_large_inputs(name: str) -> None:
    x = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, 0.0, 1000.0]], dtype=np.float32)
    check_decomposition(get_op(name), [x], {"dim": 1})
    result = get_op(name).decompose((from_numpy(x),), {"dim": 1}).numpy()
    assert np.isfinite(result).all()


@given(data=st.data())
def test_reduction_decompositions_match_for_random_shapes_and_dims(
    data: st.DataObject,
) -> None:
    shape = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple))
    dims = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
    name = data.draw(st.sampled_from(["mean", "var", "softmax", "log_softmax"]))
    if name in ("softmax", "log_softmax"):
        attrs: dict[str, Any] = {"dim": dims[0]}
    else:
        attrs = {"dims": dims, "keepdim": data.draw(st.booleans())}
        if name == "var":
            attrs["correction"] = data.draw(st.integers(0, 1))
    seed = data.draw(st.integers(0, 2**16))
    check_decomposition(get_op(name), case_arrays([(shape, f64)], seed), attrs)


# Random graphs ----------------------------------------------------------------------


def tensor_for(meta: TensorMeta | None, data: st.DataObject) -> Any:
    """A tensor laid out as ``meta`` says (strides included), with drawn values."""
    assert meta is not None
    tensor = from_numpy(data.draw(arrays_with_layout(meta)))
    if tensor.strides != meta.strides:
        reject()  # an empty tensor: from_numpy gives it row-major strides
    return tensor


def evaluate(
    graph: Graph, inputs: list[Any], params: dict[str, Any]
) -> list[np.ndarray]:
    return [np.array(t.numpy()) for t in interpret(graph, inputs, params)]


@given(data=st.data())
def test_optimize_keeps_the_values_of_random_graphs(data: st.DataObject) -> None:
    graph = data.draw(graphs(families=FAMILIES))
    inputs = [tensor_for(node.meta, data) for node in graph.inputs]
    params = {node.target: tensor_for(node.meta, data) for node in graph.params}
    # Decomposition changes rounding; every later pass must be exact. So compare the
    # optimized graph with the decomposed one, bit for bit (NaN equal to NaN).
    decomposed = optimize(graph.copy(), passes=("decompose",), verify=True)
    try:
        expected = evaluate(decomposed, inputs, params)
    except EmberError:
        reject()  # the program itself fails (an int raised to a negative power)
    optimized = optimize(graph.copy(), verify=True)
    results = evaluate(optimized, inputs, params)
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert not any(get_op(n.op).kind is OpKind.COMPOSITE for n in optimized.calls())


# Random graphs rich in what the passes rewrite ------------------------------------


def _identity(x: Any, draw: st.DrawFn) -> Any:
    op, value, swap = draw(
        st.sampled_from(
            [
                (F.mul, 1.0, False),
                (F.mul, 1, True),
                (F.add, 0.0, False),
                (F.add, 0, True),
                (F.sub, 0.0, False),
                (F.div, 1.0, False),
                (F.pow, 1, False),
            ]
        )
    )
    return op(value, x) if swap else op(x, value)


def _permutes(x: Any, draw: st.DrawFn) -> Any:
    for _ in range(2):
        x = F.permute(x, *draw(st.permutations(range(x.meta.ndim))))
    return x


def _views(x: Any, draw: st.DrawFn) -> Any:
    shape = x.meta.shape
    y = F.unsqueeze(x, draw(st.integers(0, x.meta.ndim)))
    return F.reshape(y, *draw(st.sampled_from([(-1,), shape])))


REWRITABLE = {
    "identity": _identity,
    "permutes": _permutes,
    "views": _views,
    "expand": lambda x, draw: F.expand(x, *x.meta.shape),
    "cast": lambda x, draw: F.cast(x, x.meta.dtype),
    "unary": lambda x, draw: draw(st.sampled_from([F.exp, F.neg, F.abs, F.relu]))(x),
    "repeat": lambda x, draw: F.add(F.tanh(x), F.tanh(x)),
    "binary": lambda x, draw: F.mul(x, x),
}


@st.composite
def rewritable_graphs(draw: st.DrawFn) -> Graph:
    """Chains of ops the passes rewrite, over an input and a constant."""
    graph = Graph("rewritable")
    shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple))
    dtype = draw(st.sampled_from([f32, f64, dtypes.int64]))
    x = graph.input("x", TensorMeta.contiguous(shape, dtype))
    with GraphBuilder(graph) as builder:
        pool = [builder.value(x), builder.constant(np.full(shape, 2, dtype.np_dtype))]
        for _ in range(draw(st.integers(1, 8))):
            step = draw(st.sampled_from(sorted(REWRITABLE)))
            pool.append(REWRITABLE[step](draw(st.sampled_from(pool)), draw))
    outputs = draw(st.lists(st.sampled_from(pool[1:]), min_size=1, max_size=3))
    graph.output([value.node for value in outputs])
    return graph


@given(data=st.data())
def test_optimize_keeps_values_of_graphs_full_of_rewrites(data: st.DataObject) -> None:
    graph = data.draw(rewritable_graphs())
    inputs = [tensor_for(graph.inputs[0].meta, data)]
    expected = evaluate(graph, inputs, {})
    optimized = optimize(graph.copy(), verify=True)
    for got, want in zip(evaluate(optimized, inputs, {}), expected, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert len(optimized) <= len(graph)
