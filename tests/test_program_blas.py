"""Matmuls of a program call BLAS gemm from native code, between its kernels.

A 2-D matmul whose operands BLAS can read in place (row-major, or transposed
through strides) becomes a gemm launch that runs inside the program's launch
sequence; the layouts are checked when the program is built, and memory that does
not fit is refused before native code runs.
"""

from __future__ import annotations

import numpy as np
import pytest

import ember
from ember import settings
from ember.compiler.backends import compile_llvm
from ember.compiler.codegen.blas import Gemm
from ember.compiler.codegen.launch import Region
from ember.compiler.program import CallStep, GemmStep
from ember.compiler.trace import trace
from ember.errors import SignatureError
from ember.ir.dtypes import float32, float64


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    with settings.override(cache_dir=str(tmp_path_factory.mktemp("kernels"))):
        yield


def rand(*shape: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(dtype)


def matmul_steps(program) -> list[type]:
    return [type(s) for s in program.steps if isinstance(s, CallStep)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b: a @ b,
        lambda a, b: a @ b.T.T,
        lambda a, b: a.T.T @ b,
    ],
    ids=["plain", "b-copy", "a-copy"],
)
def test_a_2d_matmul_is_a_gemm_that_agrees_with_numpy(fn, dtype):
    a, b = rand(7, 5, dtype=dtype), rand(5, 3, dtype=dtype)
    program = compile_llvm(trace(fn, ember.tensor(a), ember.tensor(b)))

    (out,) = program.run_arrays(a, b)

    assert matmul_steps(program) == [GemmStep]
    np.testing.assert_allclose(out, a @ b, rtol=1e-6 if dtype == np.float32 else 1e-12)


def test_transposed_operands_map_to_the_blas_transpose_flags():
    x, w = rand(6, 4), rand(3, 4)
    program = compile_llvm(
        trace(lambda x, w: (x @ w.T).T @ x, ember.tensor(x), ember.tensor(w))
    )

    (out,) = program.run_arrays(x, w)

    described = [s.describe() for s in program.steps if isinstance(s, GemmStep)]
    assert any("gemm NT" in d for d in described), described
    assert any("gemm TN" in d for d in described), described
    np.testing.assert_allclose(out, (x @ w.T).T @ x, rtol=1e-5)


def test_matmuls_and_kernels_of_a_training_step_run_in_one_native_call():
    model = ember.nn.Sequential(
        ember.nn.Linear(8, 16), ember.nn.ReLU(), ember.nn.Linear(16, 1)
    )
    opt = ember.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    compiled = ember.compile(step, backend="llvm")
    x, y = ember.tensor(rand(32, 8)), ember.tensor(rand(32, 1))
    for _ in range(3):
        compiled(x, y)

    program = next(iter(compiled.cache.values())).program
    assert len(program.sequences) == 1
    assert len(program.sequences[0]) == len(program.steps)
    assert any(isinstance(s, GemmStep) for s in program.steps)
    # The gradient sums over the batch are partial reductions: they run inside
    # the sequence too, their chunks in order on the calling thread.
    ((_, sequence, _),) = program._schedule
    kernels = [
        launch.compiled for launch in sequence.launches if hasattr(launch, "compiled")
    ]
    assert any(kernel._partial is not None for kernel in kernels)


def test_batched_matmuls_stay_with_numpy():
    a, b = rand(2, 4, 5), rand(2, 5, 3)
    program = compile_llvm(trace(lambda a, b: a @ b, ember.tensor(a), ember.tensor(b)))

    (out,) = program.run_arrays(a, b)

    assert matmul_steps(program) == [CallStep]
    np.testing.assert_allclose(out, a @ b, rtol=1e-5)


def test_layouts_blas_cannot_read_are_not_planned():
    dense = ((4, 4), (4, 1), 0)
    assert Gemm.plan(float32, ((4, 4), (8, 2), 0), dense, dense) is None
    assert Gemm.plan(float32, dense, dense, ((4, 4), (1, 4), 0)) is None
    assert Gemm.plan(float32, ((4, 3), (3, 1), 0), dense, dense) is None
    assert Gemm.plan(float64, dense, dense, dense) is not None


@pytest.mark.parametrize(
    "memory, message",
    [
        (
            lambda: [
                np.zeros(15, np.float32),
                np.zeros(16, np.float32),
                np.zeros(16, np.float32),
            ],
            "does not fit",
        ),
        (
            lambda: [
                np.zeros(16, np.float64),
                np.zeros(16, np.float32),
                np.zeros(16, np.float32),
            ],
            "does not fit",
        ),
        (
            lambda: [Region(float32, 16), Region(float32, 16), Region(float32, 16)],
            "does not fit",
        ),
        (
            lambda: [
                Region(float32, 16),
                Region(float32, 15),
                Region(float32, 16, True),
            ],
            "does not fit",
        ),
    ],
    ids=["short storage", "wrong dtype", "shared product", "short region"],
)
def test_prepare_refuses_memory_that_does_not_fit(memory, message):
    dense = ((4, 4), (4, 1), 0)
    gemm = Gemm.plan(float32, dense, dense, dense)

    with pytest.raises(SignatureError, match=message):
        gemm.prepare(memory())


def test_a_product_overlapping_an_operand_is_refused():
    dense = ((4, 4), (4, 1), 0)
    gemm = Gemm.plan(float32, dense, dense, dense)
    shared = np.zeros(16, np.float32)

    with pytest.raises(SignatureError, match="does not fit"):
        gemm.prepare([shared, np.zeros(16, np.float32), shared])


def test_a_prepared_gemm_applies_operand_offsets():
    gemm = Gemm.plan(
        float32, ((2, 2), (2, 1), 4), ((2, 2), (1, 2), 0), ((2, 2), (2, 1), 0)
    )
    a = np.arange(8, dtype=np.float32)
    b = np.array([1, 2, 3, 4], np.float32)
    c = np.zeros(4, np.float32)

    gemm.prepare([a, b, c])([])

    want = a[4:].reshape(2, 2) @ b.reshape(2, 2).T
    np.testing.assert_array_equal(c.reshape(2, 2), want)


@pytest.mark.parametrize(
    ("rows", "inner", "kind"),
    [(512, 100, GemmStep), (512, 64, GemmStep), (512, 32, None), (8, 8, None)],
)
def test_a_matrix_vector_product_with_a_long_inner_dimension_goes_to_blas(
    rows, inner, kind
):
    x, w, y = rand(rows, inner), rand(inner, 1), rand(rows, 1)

    def fit(x, w, y):
        return (x @ w + 0.5 - y).relu()

    program = compile_llvm(trace(fit, *[ember.tensor(a) for a in (x, w, y)]))
    (out,) = program.run_arrays(x, w, y)

    assert matmul_steps(program) == ([] if kind is None else [kind])
    np.testing.assert_allclose(
        out, np.maximum(x @ w + 0.5 - y, 0), rtol=1e-5, atol=1e-5
    )
