"""The native backend against the graph interpreter: every primitive op, strided
inputs, whole models through ``ember.compile`` and random graphs.

Tolerances (``docs/codegen.md``, "From graphs to kernels"): float64 results agree to
1e-12 relative; float32 pointwise results to 4 ulp-ish (``rtol=2e-6``), float32
reductions to ``rtol=1e-5`` (the kernels sum in float64, numpy pairwise in float32).
"""

from __future__ import annotations

import numpy as np
import pytest
import strategies
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import FLOAT_DTYPES, arrays_with_layout, graphs

import ember
from ember import settings as ember_settings
from ember.compiler.backends import compile_llvm
from ember.compiler.interpret import interpret
from ember.errors import EmberError, LoweringError
from ember.ir import functions as F
from ember.ir.dtypes import bool_, float32, float64, int32, int64
from ember.ir.graph import Graph
from ember.ir.meta import TensorMeta
from ember.runtime.tensor import Storage, Tensor

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    with ember_settings.override(cache_dir=str(tmp_path_factory.mktemp("kernels"))):
        yield


def tolerance(dtype, reduces: bool = False) -> dict[str, float]:
    if dtype is float64:
        return {"rtol": 1e-12, "atol": 1e-12}
    if dtype is float32:
        return {"rtol": 1e-5, "atol": 1e-6} if reduces else {"rtol": 2e-6, "atol": 1e-6}
    return {"rtol": 0, "atol": 0}


def sample(meta: TensorMeta, low: float = -2.0, high: float = 2.0) -> Tensor:
    """A tensor of ``meta``'s shape and dtype (dense)."""
    dtype = meta.dtype
    if dtype is bool_:
        values = RNG.random(meta.shape) < 0.5
    elif dtype.is_floating_point:
        values = RNG.uniform(low, high, meta.shape)
    else:
        values = RNG.integers(-5, 6, meta.shape)
    return ember.from_numpy(np.ascontiguousarray(values, dtype=dtype.np_dtype))


def assert_matches(graph: Graph, inputs: list[Tensor], params=None, reduces=False):
    program = compile_llvm(graph)
    expected = interpret(graph, inputs, params or {})
    found = program(inputs, params or {})
    assert len(found) == len(expected)
    for got, want in zip(found, expected):
        assert got.shape == want.shape and got.dtype is want.dtype
        np.testing.assert_allclose(
            got.numpy(), want.numpy(), equal_nan=True, **tolerance(want.dtype, reduces)
        )


def one_op(op: str, metas: list[TensorMeta], attrs=None) -> Graph:
    g = Graph()
    inputs = [g.input(f"x{i}", m) for i, m in enumerate(metas)]
    g.output([g.call(op, inputs, attrs)])
    return g


UNARY = [op for op in strategies.UNARY if op != "logical_not"]
BINARY = [op for op in strategies.BINARY if not op.startswith("logical")]
POSITIVE = {"log", "sqrt", "rsqrt"}


@pytest.mark.parametrize("dtype", [float32, float64], ids=["f32", "f64"])
@pytest.mark.parametrize("op", UNARY)
def test_unary_ops(op, dtype):
    meta = TensorMeta.contiguous((7, 33), dtype)
    low = 0.05 if op in POSITIVE else -9.0
    assert_matches(one_op(op, [meta]), [sample(meta, low, 9.0)])


@pytest.mark.parametrize("dtype", [float32, float64], ids=["f32", "f64"])
@pytest.mark.parametrize("op", BINARY)
def test_binary_ops_with_broadcasting(op, dtype):
    a, b = TensorMeta.contiguous((5, 17), dtype), TensorMeta.contiguous((17,), dtype)
    low = 0.1 if op == "pow" else -3.0
    assert_matches(one_op(op, [a, b]), [sample(a, low, 3.0), sample(b, -2.0, 2.0)])


@pytest.mark.parametrize("dtype", [int32, int64, bool_], ids=["i32", "i64", "bool"])
def test_integer_and_bool_ops(dtype):
    meta = TensorMeta.contiguous((4, 9), dtype)
    g = Graph()
    x, y = g.input("x", meta), g.input("y", meta)
    ops = ["add", "mul", "maximum", "eq", "lt", "logical_and", "logical_or"]
    if dtype is not bool_:
        ops += ["sub", "abs", "neg"]
    outs = [g.call(op, [x] if op in ("abs", "neg") else [x, y]) for op in ops]
    outs.append(g.call("logical_not", [x]))
    g.output(outs)
    assert_matches(g, [sample(meta), sample(meta)])


def test_where_cast_and_clamp():
    meta = TensorMeta.contiguous((6, 5), float32)
    g = Graph()
    x, y = g.input("x", meta), g.input("y", meta)
    cond = g.call("gt", [x, y])
    picked = g.call("where", [cond, x, g.call("cast", [y], {"dtype": float64})])
    clamped = g.call("clamp", [x], {"min": -0.5, "max": 1.0})
    as_int = g.call("cast", [g.call("mul", [x, y])], {"dtype": int32})
    g.output([picked, clamped, as_int])
    assert_matches(g, [sample(meta), sample(meta)])


@pytest.mark.parametrize("dtype", [float32, float64], ids=["f32", "f64"])
@pytest.mark.parametrize("op", ["sum", "amax", "amin"])
@pytest.mark.parametrize(
    ("dims", "keepdim"),
    [((1,), True), ((0,), False), ((0, 2), False), ((0, 1, 2), False)],
)
def test_reductions(op, dtype, dims, keepdim):
    meta = TensorMeta.contiguous((6, 7, 40), dtype)
    graph = one_op(op, [meta], {"dims": dims, "keepdim": keepdim})
    assert_matches(graph, [sample(meta)], reduces=True)


@pytest.mark.parametrize("dtype", [float32, float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    ("a_shape", "b_shape", "transpose_b"),
    [
        ((5, 7), (7, 3), False),
        ((64, 48), (40, 48), True),
        ((2, 3, 9), (9, 4), False),
        ((3, 40, 40), (3, 40, 40), True),
        ((9,), (9, 4), False),
        ((6, 9), (9,), False),
    ],
    ids=[
        "small",
        "blas-transposed",
        "batched-small",
        "batched-blas",
        "vector-matrix",
        "matrix-vector",
    ],
)
def test_matmul(a_shape, b_shape, transpose_b, dtype):
    g = Graph()
    a = g.input("a", TensorMeta.contiguous(a_shape, dtype))
    b = g.input("b", TensorMeta.contiguous(b_shape, dtype))
    if transpose_b:
        order = tuple(range(len(b_shape) - 2)) + (len(b_shape) - 1, len(b_shape) - 2)
        b_used = g.call("permute", [b], {"dims": order})
    else:
        b_used = b
    mm = g.call("matmul", [a, b_used])
    g.output(
        [
            g.call("relu", [mm]),
        ]
    )
    inputs = [sample(a.meta), sample(b.meta)]
    assert_matches(g, inputs, reduces=True)


VIEW_CASES = {
    "view": ("view", {"shape": (4, 2, 6)}),
    "permute": ("permute", {"dims": (1, 0)}),
    "expand": ("expand", {"shape": (3, 8, 6)}),
    "slice": ("slice", {"dim": 1, "start": 1, "stop": 6, "step": 2}),
    "select": ("select", {"dim": 0, "index": 5}),
    "unsqueeze": ("unsqueeze", {"dim": 1}),
    "squeeze": ("squeeze", {"dims": (0,)}),
}


@pytest.mark.parametrize("dtype", [float32, float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", sorted(VIEW_CASES))
def test_view_ops_inside_a_graph(case, dtype):
    op, attrs = VIEW_CASES[case]
    shape = (1, 8, 6) if case == "squeeze" else (8, 6)
    g = Graph()
    x = g.input("x", TensorMeta.contiguous(shape, dtype))
    before = g.call("exp", [x])
    viewed = g.call(op, [before], attrs)
    after = g.call("mul", [viewed, viewed])
    g.output([after, viewed, g.call(op, [x], attrs)])
    assert_matches(g, [sample(x.meta)])


def test_strided_inputs_are_read_in_place():
    base = ember.from_numpy(RNG.uniform(-1, 1, (6, 8)).astype(np.float32))
    views = [base.T, base[1:5, ::3], base[2].expand(3, 8), base[:, 1:2].expand(6, 8)]
    for view in views:
        g = Graph()
        x = g.input("x", view.meta)
        g.output(
            [
                g.call("sum", [g.call("exp", [x])], {"dims": (0,), "keepdim": False}),
                g.call("mul", [x, x]),
            ]
        )
        assert_matches(g, [view], reduces=True)


def test_softmax_mse_and_an_mlp_through_ember_compile():
    import ember.nn as nn

    ember.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    fast = ember.compile(model, backend="llvm")
    x = ember.randn(8, 16)
    with ember.no_grad():  # the forward program alone; training builds on it
        found, expected = fast(x), model(x)
    np.testing.assert_allclose(found.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)

    def losses(p, t):
        return p.softmax(-1), F.mse_loss(p, t)

    fast_losses = ember.compile(losses, backend="llvm")
    p, t = ember.randn(5, 12), ember.randn(5, 12)
    for got, want in zip(fast_losses(p, t), losses(p, t)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_gradients_through_compiled_forward_and_backward_programs():
    import ember.nn as nn

    ember.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    x, y = ember.randn(8, 16), ember.randn(8, 1)
    F.mse_loss(model(x), y).backward()
    expected = [p.grad.numpy().copy() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None

    F.mse_loss(ember.compile(model, backend="llvm")(x), y).backward()

    for p, want in zip(model.parameters(), expected):
        np.testing.assert_allclose(p.grad.numpy(), want, rtol=1e-5, atol=1e-6)


EXAMPLES = {
    "linear_regression": [(64, 8)],
    "mlp_residual": [(32, 16)],
    "attention_scores": [(4, 6, 8)],
    "classifier": [(16, 10), (16, 3)],
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_models_match_eager(name):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ember.manual_seed(0)
    model = module.build()
    inputs = [ember.randn(*shape) for shape in EXAMPLES[name]]

    with ember.no_grad():
        expected = model(*inputs)
        found = ember.compile(model, backend="llvm")(*inputs)

    pairs = zip(found, expected) if isinstance(expected, tuple) else [(found, expected)]
    for got, want in pairs:
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def _strided_tensor(meta: TensorMeta, array: np.ndarray) -> Tensor:
    """A tensor laid out as ``meta`` over a fresh storage holding ``array``."""
    stop = max(meta.storage_span()[1], meta.offset, 1)
    storage = np.zeros(stop, meta.dtype.np_dtype)
    view = np.lib.stride_tricks.as_strided(
        storage[meta.offset :], meta.shape, [s * storage.itemsize for s in meta.strides]
    )
    view[...] = array
    return Tensor._make(Storage(storage), meta)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
@given(
    graphs(
        families=("pointwise", "reduction", "view", "matmul"),
        max_ops=8,
        dtype_choices=FLOAT_DTYPES,
        params=False,
        locations=False,
        special_values=False,
    ),
    st.data(),
)
def test_random_graphs_match_the_interpreter(graph, data):
    inputs = []
    for node in graph.inputs:
        meta = node.meta
        values = data.draw(
            arrays_with_layout(TensorMeta.contiguous(meta.shape, meta.dtype))
        )
        inputs.append(_strided_tensor(meta, values))
    try:
        program = compile_llvm(graph)
    except LoweringError:
        assume(False)
        raise
    try:
        expected = interpret(graph, inputs)
    except EmberError:
        assume(False)
        raise
    for got, want in zip(program(inputs), expected):
        assert got.shape == want.shape and got.dtype is want.dtype
        np.testing.assert_allclose(
            got.numpy(),
            want.numpy(),
            equal_nan=True,
            **tolerance(want.dtype, reduces=True),
        )
