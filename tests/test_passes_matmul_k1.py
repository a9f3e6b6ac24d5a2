"""multiply_outer_products: a matmul whose contracted dimension has size 1 becomes a
broadcast mul.

- small cases in IR text: 2-d, batched, the 1-d forms of matmul, integer dtypes,
  source locations kept, matmuls that sum more than one term left alone;
- hypothesis over shapes with a contraction of size 1 (2-d, batched with
  broadcasting batch dims, 1-d operands; float32 and float64): no such matmul is
  left in the optimized graph, and the compiled program and the interpreter running
  the optimized graph both give numpy's ``a @ b`` exactly;
- gradients of compiled functions through such a product equal the eager ones; the
  backward graph of an MLP with one output loses its outer product, and the
  compiled model trains with the eager gradients.

Values compare with ``assert_array_equal``: each element is a single product in both
forms, so the results are equal; the one bit that may differ is the sign of a zero
product, which a matmul adds to ``0.0`` (equal under ``==``).
"""

from __future__ import annotations

from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_passes import apply, ir

import ember
from ember import nn
from ember.compiler.interpret import interpret
from ember.compiler.partition import build_training_graphs
from ember.compiler.passes import DEFAULT_PIPELINE, optimize
from ember.compiler.trace import trace
from ember.ir.graph import Graph
from ember.ir.parser import parse

LOC = 'loc("model.py", 4, "a @ b")'


def _outer_product_matmuls(graph: Graph) -> list[str]:
    """The names of the matmuls of ``graph`` whose contracted dim has size 1."""
    return [
        n.name
        for n in graph.calls()
        if n.op == "matmul"
        and n.inputs[0].meta is not None
        and n.inputs[0].meta.shape[-1] == 1
    ]


def test_the_default_pipeline_runs_it_right_after_decompose() -> None:
    position = DEFAULT_PIPELINE.index("multiply_outer_products")
    assert DEFAULT_PIPELINE[position - 1] == "decompose"


# IR text, before and after -----------------------------------------------------------


def test_an_outer_product_becomes_a_broadcast_mul_at_the_users_line() -> None:
    before = f"""
        graph g {{
          %g: f32[256, 1] = input
          %w: f32[1, 256] = input
          %m: f32[256, 256] = matmul(%g, %w)  {LOC}
          %r: f32[256, 256] = relu(%m)
          output(%r)
        }}
    """
    assert apply(before, "multiply_outer_products") == ir(f"""
        graph g {{
          %g: f32[256, 1] = input
          %w: f32[1, 256] = input
          %mul: f32[256, 256] = mul(%g, %w)  {LOC}
          %r: f32[256, 256] = relu(%mul)
          output(%r)
        }}
    """)


def test_a_transposed_operand_is_read_in_place() -> None:
    # The backward of a linear layer with one output: g @ permute(W.T).
    before = f"""
        graph g {{
          %g: f64[8, 1] = input
          %w: f64[1, 5] = input
          %t: f64[5, 1] strides=(1, 5) = permute(%w) {{dims=(1, 0)}}
          %tt: f64[1, 5] strides=(5, 1) = permute(%t) {{dims=(1, 0)}}
          %m: f64[8, 5] = matmul(%g, %tt)  {LOC}
          output(%m)
        }}
    """
    after = apply(before, "multiply_outer_products")
    assert "%mul: f64[8, 5] = mul(%g, %tt)" in after
    assert "matmul" not in after


def test_batch_dims_broadcast_as_matmul_broadcasts_them() -> None:
    before = f"""
        graph g {{
          %a: f32[3, 1, 4, 1] = input
          %b: f32[5, 1, 2] = input
          %m: f32[3, 5, 4, 2] = matmul(%a, %b)  {LOC}
          output(%m)
        }}
    """
    assert apply(before, "multiply_outer_products") == ir(f"""
        graph g {{
          %a: f32[3, 1, 4, 1] = input
          %b: f32[5, 1, 2] = input
          %mul: f32[3, 5, 4, 2] = mul(%a, %b)  {LOC}
          output(%mul)
        }}
    """)


def test_a_vector_operand_squeezes_the_contracted_dim_of_the_other() -> None:
    before = f"""
        graph g {{
          %v: f32[1] = input
          %b: f32[2, 1, 3] = input
          %a: f32[4, 1] = input
          %vb: f32[2, 3] = matmul(%v, %b)  {LOC}
          %av: f32[4] = matmul(%a, %v)  {LOC}
          %vv: f32[] = matmul(%v, %v)  {LOC}
          output(%vb, %av, %vv)
        }}
    """
    assert apply(before, "multiply_outer_products") == ir(f"""
        graph g {{
          %v: f32[1] = input
          %b: f32[2, 1, 3] = input
          %a: f32[4, 1] = input
          %squeeze: f32[2, 3] = squeeze(%b) {{dims=(1,)}}  {LOC}
          %mul: f32[2, 3] = mul(%v, %squeeze)  {LOC}
          %squeeze_1: f32[4] = squeeze(%a) {{dims=(1,)}}  {LOC}
          %mul_1: f32[4] = mul(%squeeze_1, %v)  {LOC}
          %squeeze_2: f32[] = squeeze(%v) {{dims=(0,)}}  {LOC}
          %squeeze_3: f32[] = squeeze(%v) {{dims=(0,)}}  {LOC}
          %mul_2: f32[] = mul(%squeeze_2, %squeeze_3)  {LOC}
          output(%mul, %mul_1, %mul_2)
        }}
    """)


def test_integer_products_keep_their_dtype() -> None:
    before = f"""
        graph g {{
          %a: i64[3, 1] = input
          %b: i64[1, 2] = input
          %m: i64[3, 2] = matmul(%a, %b)  {LOC}
          output(%m)
        }}
    """
    assert "%mul: i64[3, 2] = mul(%a, %b)" in apply(before, "multiply_outer_products")


def test_a_matmul_that_sums_several_terms_is_left_alone() -> None:
    text = ir("""
        graph g {
          %a: f32[4, 2] = input
          %b: f32[2, 1] = input
          %v: f32[1, 4] = input
          %m: f32[4, 1] = matmul(%a, %b)
          %n: f32[1, 2] = matmul(%v, %a)
          output(%m, %n)
        }
    """)
    assert apply(text, "multiply_outer_products") == text


def test_a_linear_layer_with_one_input_feature_multiplies() -> None:
    # linear decomposes into a matmul with the transposed weight; with one input
    # feature that matmul is an outer product.
    text = ir(f"""
        graph g {{
          %x: f32[8, 1] = input
          %w: f32[3, 1] = param "w"
          %y: f32[8, 3] = linear(%x, %w)  {LOC}
          output(%y)
        }}
    """)
    optimized = optimize(parse(text), verify=True)
    assert [n.op for n in optimized.calls()] == ["permute", "mul"]
    assert all(n.loc is not None and n.loc.line == 4 for n in optimized.calls())


# Hypothesis: values equal numpy's a @ b ----------------------------------------------


Shapes = tuple[tuple[int, ...], tuple[int, ...]]


@st.composite
def contraction_one_shapes(draw: Any) -> Shapes:
    """Shapes of ``a`` and ``b`` for ``a @ b`` with a contracted dim of size 1:
    2-d, batched with batch dims that broadcast against each other, or 1-d."""
    batch = draw(
        hnp.mutually_broadcastable_shapes(
            num_shapes=2, min_dims=0, max_dims=3, max_side=3
        )
    )
    a_batch, b_batch = batch.input_shapes
    m, n = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    a, b = a_batch + (m, 1), b_batch + (1, n)
    form = draw(st.sampled_from(["matrices", "vector @ matrix", "matrix @ vector"]))
    if form == "vector @ matrix":
        a = (1,)
    elif form == "matrix @ vector":
        b = (1,)
    if form != "matrices" and draw(st.booleans()):
        a, b = (1,), (1,)
    return a, b


def float_arrays(dtype: Any, shape: tuple[int, ...]) -> st.SearchStrategy[Any]:
    """Finite floats over the whole range, subnormals and signed zeros included, so
    products round, overflow to infinity and underflow."""
    width = 32 if dtype == np.float32 else 64
    return hnp.arrays(dtype, shape, elements=st.floats(width=width, allow_nan=False))


def _matmul(a: Any, b: Any) -> Any:
    return a @ b


def _check_products(a: np.ndarray, b: np.ndarray) -> None:
    """The optimized graph of ``a @ b`` has no outer-product matmul, and both the
    interpreter running it and the compiled program give numpy's product."""
    with np.errstate(all="ignore"):
        want = a @ b
    args = [ember.from_numpy(a), ember.from_numpy(b)]
    optimized = optimize(trace(_matmul, *args), verify=True)
    assert _outer_product_matmuls(optimized) == [], str(optimized)

    (interpreted,) = interpret(optimized, args)
    compiled = ember.compile(_matmul, backend="llvm")(*args)
    for name, got in [("interpret", interpreted), ("llvm", compiled)]:
        result = got.numpy()
        assert (result.dtype, result.shape) == (want.dtype, want.shape), name
        np.testing.assert_array_equal(result, want, err_msg=name)


@given(
    shapes=contraction_one_shapes(),
    dtype=st.sampled_from([np.float32, np.float64]),
    data=st.data(),
)
def test_products_equal_numpy_matmul_compiled_and_interpreted(
    shapes: Shapes, dtype: Any, data: st.DataObject
) -> None:
    a = data.draw(float_arrays(dtype, shapes[0]), label="a")
    b = data.draw(float_arrays(dtype, shapes[1]), label="b")
    _check_products(a, b)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_products_equal_numpy_matmul_with_its_dtype(dtype: Any) -> None:
    # Integer matmul has no native lowering; as a mul it compiles, and wraps as
    # numpy's integer product does.
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max, (2, 5, 1), dtype=dtype, endpoint=True)
    b = rng.integers(info.min, info.max, (1, 4), dtype=dtype, endpoint=True)
    _check_products(a, b)


# Gradients ---------------------------------------------------------------------------


def _masked_product(x: Any, y: Any) -> Any:
    return (x @ y).relu() * 3.0


@pytest.mark.parametrize("backend", ["interpret", "llvm"])
@given(
    shapes=contraction_one_shapes(),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_compiled_gradients_through_an_outer_product_equal_eager(
    backend: str, shapes: Shapes, dtype: Any, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(s).astype(dtype) for s in shapes)
    cotangent = ember.from_numpy(rng.standard_normal((a @ b).shape).astype(dtype))
    eager = [ember.from_numpy(v).requires_grad_() for v in (a, b)]
    _masked_product(*eager).backward(cotangent)

    mine = [ember.from_numpy(v).requires_grad_() for v in (a, b)]
    out = ember.compile(_masked_product, backend=backend)(*mine)
    assert out.grad_fn is not None and out.grad_fn.name.startswith("compiled")
    out.backward(cotangent)

    # The eager gradient is a matmul over the other operand's free dim, the compiled
    # one a sum of products: the same terms, possibly added in another order.
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for want, got in zip(eager, mine):
        np.testing.assert_allclose(
            got.grad.numpy(), want.grad.numpy(), rtol=rtol, atol=rtol
        )


def _one_output_mlp() -> tuple[nn.Module, Any]:
    ember.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    x = np.random.default_rng(1).standard_normal((32, 6)).astype(np.float32)
    return model, ember.from_numpy(x)


def test_the_backward_graph_of_a_one_output_mlp_multiplies_instead() -> None:
    model, x = _one_output_mlp()
    graph = optimize(trace(model, x), verify=True)
    params = [n for n in graph.params if n.kind == "param"]

    training = build_training_graphs(graph, params)

    # The gradient of the hidden activation, g @ W with g f32[32, 1] and W
    # f32[1, 16], is the outer product; it is now a broadcast mul.
    assert _outer_product_matmuls(training.backward) == []
    products = [n for n in training.backward.calls() if n.op == "mul"]
    assert any(n.meta is not None and n.meta.shape == (32, 16) for n in products)


@pytest.mark.parametrize("backend", ["interpret", "llvm"])
def test_a_compiled_one_output_mlp_gets_the_eager_gradients(backend: str) -> None:
    model, x = _one_output_mlp()
    model(x).sum().backward()
    eager = {name: p.grad.numpy().copy() for name, p in model.named_parameters()}
    model.zero_grad()

    ember.compile(model, backend=backend)(x).sum().backward()

    for name, param in model.named_parameters():
        np.testing.assert_allclose(
            param.grad.numpy(), eager[name], rtol=1e-5, atol=1e-6, err_msg=name
        )
