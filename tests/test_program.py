"""The runtime program: buffer plan, argument checks, results and their storage."""

from __future__ import annotations

import numpy as np
import pytest

import ember
from ember import settings
from ember.compiler.backends import compile_llvm
from ember.compiler.program import BufferPlan
from ember.errors import SignatureError
from ember.ir.dtypes import float32, float64
from ember.ir.graph import Graph
from ember.ir.meta import TensorMeta
from ember.runtime.tensor import Storage, Tensor


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    with settings.override(cache_dir=str(tmp_path_factory.mktemp("kernels"))):
        yield


def f32(*shape: int) -> TensorMeta:
    return TensorMeta.contiguous(shape, float32)


def test_buffers_are_shared_by_values_whose_lifetimes_do_not_overlap():
    # a is read by the step that writes b, b by the one that writes c: a's buffer
    # is free again when c is written, never while b is.
    plan = BufferPlan({1: 400, 2: 400, 3: 256}, {1: (0, 1), 2: (1, 2), 3: (2, 3)})

    assert plan.assign[1] == plan.assign[3] != plan.assign[2]
    assert len(plan.buffers) == 2 and plan.total_bytes == 800
    assert all(b.ctypes.data % 64 == 0 for b in plan.buffers)


def test_a_larger_value_grows_a_free_buffer_instead_of_adding_one():
    plan = BufferPlan({1: 100, 2: 100, 3: 300}, {1: (0, 1), 2: (1, 2), 3: (2, 3)})

    assert len(plan.buffers) == 2 and plan.assign[3] == plan.assign[1]
    assert plan.capacity[plan.assign[3]] == 300


def _chain_of_kernels() -> Graph:
    """Four kernels in a row: views between them stop fusion, so three
    intermediates need buffers, and two suffice."""
    g = Graph()
    x = g.input("x", f32(8, 16))
    value = x
    for step in range(4):
        value = g.call("exp" if step % 2 else "neg", [value])
        value = g.call("permute", [value], {"dims": (1, 0)})
    g.output([value])
    return g


def test_intermediates_are_planned_once_and_reused_across_calls():
    program = compile_llvm(_chain_of_kernels())
    x = np.random.default_rng(0).uniform(-1, 1, (8, 16)).astype(np.float32)
    addresses = [b.ctypes.data for b in program.plan.buffers]

    first = program.run_arrays(x)[0].copy()
    second = program.run_arrays(x * 2)[0]

    assert len(program.steps) == 4 and len(program.plan.buffers) == 2
    assert [b.ctypes.data for b in program.plan.buffers] == addresses
    np.testing.assert_allclose(first, np.exp(-np.exp(-x)), rtol=1e-6)
    np.testing.assert_allclose(second, np.exp(-np.exp(-2 * x)), rtol=1e-6)


def test_results_are_fresh_arrays_that_a_later_call_leaves_alone():
    g = Graph()
    x = g.input("x", f32(4))
    g.output([g.call("neg", [x])])
    program = compile_llvm(g)

    first = program.run_arrays(np.ones(4, np.float32))[0]
    program.run_arrays(np.full(4, 3.0, np.float32))

    assert first.tolist() == [-1.0] * 4


def test_a_result_that_views_an_input_shares_its_storage():
    g = Graph()
    x = g.input("x", f32(2, 3))
    g.output([g.call("permute", [x], {"dims": (1, 0)}), g.call("neg", [x])])
    program = compile_llvm(g)
    x_t = ember.arange(6.0).view(2, 3)

    view, negated = program([x_t])

    assert view.untyped_storage_id() == x_t.untyped_storage_id()
    assert view.strides == (1, 3) and view.tolist() == x_t.T.tolist()
    assert negated.tolist() == (-x_t).tolist()


def test_inputs_with_an_offset_are_read_at_their_offset():
    g = Graph()
    x = g.input("x", f32(3))
    g.output([g.call("mul", [x, x])])
    program = compile_llvm(g)
    storage = ember.arange(10.0)

    (out,) = program([storage[4:7]])

    assert out.tolist() == [16.0, 25.0, 36.0]


def test_parameters_bind_by_name():
    g = Graph()
    x = g.input("x", f32(3))
    w = g.param("layer.weight", f32(3))
    g.output([g.call("mul", [x, w])])
    program = compile_llvm(g)

    (out,) = program([ember.ones(3)], {"layer.weight": ember.arange(3.0)})

    assert out.tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(SignatureError, match="reads param 'layer.weight'"):
        program([ember.ones(3)], {})


@pytest.fixture(scope="module")
def square_program():
    g = Graph()
    x = g.input("x", f32(2, 3))
    g.output([g.call("mul", [x, x])])
    return compile_llvm(g)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            np.ones((3, 2), np.float32),
            r"has shape \(3, 2\), but the program was "
            r"compiled for shape \(2, 3\)",
        ),
        (
            np.ones((2, 3), np.float64),
            "has dtype float64, but the program was compiled for dtype float32",
        ),
        (
            np.ones((3, 2), np.float32).T,
            r"has strides \(1, 2\), but the program was "
            r"compiled for strides \(3, 1\)",
        ),
        ([[1.0] * 3] * 2, "is a list, not a tensor"),
    ],
    ids=["shape", "dtype", "strides", "not-a-tensor"],
)
def test_arguments_are_checked_against_the_compiled_signature(
    square_program, value, message
):
    with pytest.raises(SignatureError, match=message):
        square_program.run_arrays(value)


def test_a_layout_outside_its_storage_is_refused(square_program):
    tensor = ember.ones(2, 3)
    # Forge a tensor whose storage is smaller than its layout claims.
    forged = Tensor._make(
        Storage(np.ones(4, np.float32)), TensorMeta((1,), float32, (1,))
    )
    forged._meta = tensor.meta

    with pytest.raises(
        SignatureError,
        match=r"addresses elements \[0, 6\) of a storage "
        "of 4 elements",
    ):
        square_program([forged])


def test_the_argument_count_is_checked(square_program):
    with pytest.raises(SignatureError, match="takes 1 inputs"):
        square_program([ember.ones(2, 3), ember.ones(2, 3)])


def test_float64_programs_keep_float64():
    g = Graph()
    x = g.input("x", TensorMeta.contiguous((5,), float64))
    g.output([g.call("sqrt", [x])])

    (out,) = compile_llvm(g).run_arrays(np.arange(5.0))

    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, np.sqrt(np.arange(5.0)))


def test_calls_from_several_threads_do_not_share_intermediates():
    import concurrent.futures

    program = compile_llvm(_chain_of_kernels())
    inputs = [np.full((8, 16), v, np.float32) for v in np.linspace(-1, 1, 16)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda x: program.run_arrays(x)[0], inputs * 4))

    for x, out in zip(inputs * 4, results):
        np.testing.assert_allclose(out, np.exp(-np.exp(-x)), rtol=1e-6)


def test_the_fused_and_lowered_stages_are_written_to_the_dump_folder(tmp_path):
    with settings.override(dump_dir=str(tmp_path)):
        compile_llvm(_chain_of_kernels())

    fused = (tmp_path / "fused.txt").read_text()
    lowered = (tmp_path / "lowered.txt").read_text()
    assert fused.startswith("fused: 4 kernels, 3 declined fusions")
    assert lowered.count("# g") == lowered.count("kernel ") == 4


def test_fresh_result_arrays_hold_the_results_at_their_layouts():
    g = Graph()
    x = g.input("x", f32(2, 3))
    g.output([g.call("neg", [x]), g.call("add", [x, x])])
    program = compile_llvm(g)
    x_np = np.arange(6, dtype=np.float32).reshape(2, 3)

    arrays = program.run_fresh_arrays([x_np])
    layouts = program.result_layouts

    assert layouts is not None and len(arrays) == len(layouts) == 2
    want = program.run_arrays(x_np)
    for array, layout, expected in zip(arrays, layouts, want):
        view = Tensor._new(Storage(array), layout, None).numpy()
        np.testing.assert_array_equal(view, expected)


def test_a_result_viewing_an_argument_has_no_fresh_array_layout():
    g = Graph()
    x = g.input("x", f32(2, 3))
    g.output([g.call("permute", [x], {"dims": (1, 0)})])

    assert compile_llvm(g).result_layouts is None
