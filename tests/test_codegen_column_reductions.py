"""Reductions over an axis outer in memory (column sums) run row by row and agree
with numpy.

Kernels whose reduced axis is not the innermost memory axis take the interchanged
loops of ``ember.compiler.codegen.columns``: a row of accumulators per tile of
columns, vectorized along the kept contiguous axis. Values are eighths (exact in
every float dtype), so sums compare exactly; the summation order is checked against
the documented error bound on ill-conditioned columns.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ember
from ember import settings
from ember.compiler.codegen import columns, compile_kernel, launch
from ember.compiler.codegen.launch import CompiledKernel
from ember.compiler.kernel import (
    Buffer,
    Expr,
    LoopKernel,
    Reduce,
    Store,
    broadcast_strides,
    cast,
    coalesce,
    load,
    op,
    reduction_domain,
)
from ember.errors import LoweringError
from ember.ir.dtypes import float32, float64, from_numpy_dtype
from tests.tensor_strategies import shapes, values
from tests.test_codegen_layouts import summation_bound, view_buffer

KINDS = {"sum": np.sum, "max": np.max, "min": np.min}


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    with settings.override(cache_dir=str(tmp_path_factory.mktemp("kernel-cache"))):
        yield


def domain_strides(buffer: Buffer, order: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(buffer.strides[a] for a in order)


@functools.cache
def reduce_kernel(
    kind: str, shape: tuple, strides: tuple, axis: int, dtype_name: str
) -> CompiledKernel:
    """``out = kind(x, axis)`` for an input of the given layout (cached)."""
    x = Buffer("x", from_numpy_dtype(np.dtype(dtype_name)), shape, strides)
    outer, inner, order = reduction_domain(shape, (axis,))
    acc = Reduce("acc", kind, load(x, domain_strides(x, order)))
    out = Buffer.dense("out", acc.dtype, outer)
    return compile_kernel(
        LoopKernel("column", (x, out), outer, inner, (acc, Store("out", acc.ref())))
    )


def run_reduce(
    kind: str, x: np.ndarray, axis: int, threads: int | None = None
) -> tuple[np.ndarray, CompiledKernel]:
    buf = view_buffer("x", x)
    kernel = reduce_kernel(kind, buf.shape, buf.strides, axis, x.dtype.name)
    spec = kernel.kernel.outputs[0]
    out = np.empty(spec.shape, spec.dtype.np_dtype)
    kernel(x, out, threads=threads)
    return out, kernel


def takes_columns(kernel: CompiledKernel) -> bool:
    """Whether the kernel runs the interchanged column loops."""
    return columns.column_plan(kernel.emitted.loops) is not None


@st.composite
def column_layouts(draw: st.DrawFn) -> tuple[tuple[int, ...], int]:
    """A shape whose last (kept, contiguous) dim is wide enough for the column loops,
    and a reduced axis other than the last."""
    lead = draw(shapes(min_dims=1, max_dims=2, min_side=1, max_side=6))
    width = draw(st.integers(columns.COLUMN_MIN_WIDTH, 70))
    shape = (*lead, width)
    return shape, draw(st.integers(0, len(shape) - 2))


# Agreement with numpy -----------------------------------------------------------------


@given(
    layout=column_layouts(),
    kind=st.sampled_from(sorted(KINDS)),
    dtype=st.sampled_from([float32, float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_column_reductions_match_numpy(
    layout: tuple[tuple[int, ...], int], kind: str, dtype, seed: int
) -> None:
    shape, axis = layout
    x = values(dtype, shape, seed)
    got, kernel = run_reduce(kind, x, axis)
    assert takes_columns(kernel) or shape[axis] == 1  # a size-1 axis reduces nothing
    np.testing.assert_array_equal(got, KINDS[kind](x, axis=axis))


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("axis", [0, 1])
def test_reductions_over_the_outer_and_middle_axes_of_3d_inputs(
    kind: str, axis: int
) -> None:
    x = values(float32, (5, 7, 33), seed=4)
    got, kernel = run_reduce(kind, x, axis)
    assert takes_columns(kernel)
    np.testing.assert_array_equal(got, KINDS[kind](x, axis=axis))


def test_integer_sums_accumulate_in_int64() -> None:
    x = values(from_numpy_dtype(np.dtype("int32")), (9, 40), seed=5) * 10**8
    got, kernel = run_reduce("sum", x, 0)
    assert takes_columns(kernel)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, x.astype(np.int64).sum(axis=0))


@pytest.mark.parametrize("dtype_name", ["bool", "int32", "int64"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_integer_and_bool_columns(kind: str, dtype_name: str) -> None:
    x = values(from_numpy_dtype(np.dtype(dtype_name)), (37, 50), seed=17)
    got, kernel = run_reduce(kind, x, 0)
    assert takes_columns(kernel)
    want = KINDS[kind](x, axis=0)
    assert got.dtype == (np.int64 if kind == "sum" else x.dtype)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_strided_and_transposed_inputs_are_read_in_place(kind: str) -> None:
    base = values(float64, (60, 90), seed=6)
    sliced = base[1::3, 5:70]  # rows 270 elements apart, columns contiguous
    got, kernel = run_reduce(kind, sliced, 0)
    assert takes_columns(kernel)
    np.testing.assert_array_equal(got, KINDS[kind](sliced, axis=0))
    transposed = base.T[:, 2:50]  # (90, 48): axis 0 contiguous, axis 1 strided
    got, kernel = run_reduce(kind, transposed, 1)
    assert takes_columns(kernel)
    np.testing.assert_array_equal(got, KINDS[kind](transposed, axis=1))


def test_row_reductions_keep_one_outer_point_at_a_time() -> None:
    x = values(float32, (20, 64), seed=7)
    got, kernel = run_reduce("sum", x, 1)
    assert not takes_columns(kernel)
    np.testing.assert_array_equal(got, x.sum(axis=1))
    narrow = values(float32, (20, columns.COLUMN_MIN_WIDTH - 1), seed=8)
    got, kernel = run_reduce("sum", narrow, 0)
    assert not takes_columns(kernel)
    np.testing.assert_array_equal(got, narrow.sum(axis=0))


def test_nan_propagates_and_empty_columns_give_the_identity() -> None:
    x = np.ones((70, 40), np.float32)
    x[0, 3] = x[35, 20] = x[69, 39] = np.nan
    want = np.ones(40, np.float32)
    want[[3, 20, 39]] = np.nan
    for kind in ("max", "min"):
        got, kernel = run_reduce(kind, x, 0)
        assert takes_columns(kernel)
        np.testing.assert_array_equal(got, want)
    empty = np.ones((0, 32), np.float32)
    np.testing.assert_array_equal(run_reduce("sum", empty, 0)[0], np.zeros(32))
    np.testing.assert_array_equal(run_reduce("max", empty, 0)[0], [-np.inf] * 32)


# Fused producers and epilogues ----------------------------------------------------


def bias_gradient_kernel(rows: int, cols: int, dtype) -> LoopKernel:
    """mean over rows of ``where(h > 0, g * s, 0) + b``: the ReLU gradient of an
    MLP layer (g, h dense; s a per-column scale; b a broadcast row), a mean
    epilogue, and a second reduction that reads the first (sum of squared
    deviations from the mean)."""
    g, h = (Buffer(n, dtype, (rows, cols), (cols, 1)) for n in "gh")
    s = Buffer("s", dtype, (cols,), (1,))
    b = Buffer("b", dtype, (1, cols), (cols, 1))
    outer, inner, order = reduction_domain((rows, cols), (0,))

    def read(buffer: Buffer) -> Expr:
        return load(buffer, domain_strides(buffer, order))

    scale = load(s, domain_strides(Buffer("s", dtype, (rows, cols), (0, 1)), order))
    bias = load(b, tuple(broadcast_strides(b, (rows, cols))[a] for a in order))
    masked = op("where", op("gt", read(h), 0.0), op("mul", read(g), scale), 0.0)
    value = op("add", masked, bias)
    total = Reduce("total", "sum", value)
    mean = op("div", cast(total.ref(), dtype), float(rows))
    spread = Reduce(
        "spread", "sum", op("mul", op("sub", value, mean), op("sub", value, mean))
    )
    largest = Reduce("largest", "max", value)
    mean_out, spread_out, max_out = (
        Buffer.dense(n, dtype, (cols,)) for n in ("mean", "spread", "largest")
    )
    stages = (
        total,
        Store("mean", mean),
        spread,
        Store("spread", cast(spread.ref(), dtype)),
        largest,
        Store("largest", largest.ref()),
    )
    return LoopKernel(
        "bias_grad",
        (g, h, s, b, mean_out, spread_out, max_out),
        outer,
        inner,
        stages,
    )


@pytest.mark.parametrize("dtype", [float32, float64])
def test_fused_producers_epilogues_and_dependent_reductions(dtype) -> None:
    rows, cols = 97, 45
    rng = np.random.default_rng(10)
    np_dtype = dtype.np_dtype
    g, h = (rng.standard_normal((rows, cols)).astype(np_dtype) for _ in range(2))
    s = rng.standard_normal(cols).astype(np_dtype)
    b = rng.standard_normal((1, cols)).astype(np_dtype)
    kernel = compile_kernel(bias_gradient_kernel(rows, cols, dtype))
    assert takes_columns(kernel)
    outs = [np.empty(cols, np_dtype) for _ in range(3)]
    kernel(g, h, s, b, *outs)

    value = (np.where(h > 0, g * s, 0) + b).astype(np.float64)
    mean = value.sum(axis=0) / rows
    spread = ((value - mean.astype(np_dtype).astype(np.float64)) ** 2).sum(axis=0)
    rtol, atol = (1e-12, 0.0) if dtype is float64 else (1e-6, 1e-6)
    np.testing.assert_allclose(outs[0], mean, rtol=rtol, atol=atol)
    np.testing.assert_allclose(outs[1], spread, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(outs[2], value.max(axis=0).astype(np_dtype))


# Summation order and threads ------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_sums_stay_within_the_documented_bound(dtype: type) -> None:
    rng = np.random.default_rng(11)
    rows, cols = 1 << 14, 16
    # Ill-conditioned columns: large cancelling terms and small ones.
    big = rng.standard_normal((rows // 2, cols)) * 1e4
    x = np.concatenate([big, -big[: rows // 4], rng.standard_normal((rows // 4, cols))])
    x = rng.permuted(x, axis=0).astype(dtype)
    got, kernel = run_reduce("sum", x, 0)
    assert takes_columns(kernel)
    for j in range(cols):
        column = x[:, j]
        assert abs(float(got[j]) - math.fsum(column.astype(np.float64))) <= (
            summation_bound(column)
        )


def test_column_sums_add_in_blocks_of_rows_in_order() -> None:
    # Each column is summed in float64 in row order, in blocks of COLUMN_SUM_BLOCK
    # rows whose sums are added in order: the order, not only a bound, is fixed.
    rng = np.random.default_rng(12)
    block = columns.COLUMN_SUM_BLOCK
    x = (rng.standard_normal((3 * block + 5, 24)) * 10.0 ** rng.integers(-8, 8)).astype(
        np.float64
    )
    want = np.zeros(24)
    for start in range(0, x.shape[0], block):
        partial = np.zeros(24)
        for row in x[start : start + block]:
            partial = partial + row
        want = want + partial
    np.testing.assert_array_equal(run_reduce("sum", x, 0)[0], want)


def test_threads_split_columns_without_changing_a_bit() -> None:
    x = np.random.default_rng(13).standard_normal((1 << 10, 1 << 10)).astype(np.float32)
    assert x.size >= 2 * launch.PARALLEL_THRESHOLD
    one, kernel = run_reduce("sum", x, 0, threads=1)
    assert takes_columns(kernel)
    for threads in (2, 3):
        np.testing.assert_array_equal(run_reduce("sum", x, 0, threads=threads)[0], one)
    np.testing.assert_allclose(one, x.astype(np.float64).sum(axis=0), rtol=1e-6)


def test_the_column_loop_is_vectorized_along_the_kept_axis() -> None:
    x = values(float32, (64, 256), seed=14)
    _, kernel = run_reduce("sum", x, 0)
    loops = coalesce(kernel.kernel)
    assert columns.column_plan(loops) == columns.ColumnPlan(256)
    llvm_ir = kernel.llvm_ir()
    assert "x double>" in llvm_ir  # vector adds of the widened float32 lanes
    assert "gather" not in llvm_ir


# Full-shape values stored beside a reduction over leading dims ----------------------


def compiled(fn: Callable[..., Any]) -> Any:
    return ember.compile(fn, backend="llvm")


def softmax0(a: np.ndarray) -> np.ndarray:
    shifted = np.exp(a - a.max(axis=0))
    return shifted / shifted.sum(axis=0)


@pytest.mark.parametrize("shape", [(6, 5), (40, 33), (3, 4, 20)])
def test_full_shape_results_of_a_reduction_over_leading_dims_keep_their_order(
    shape: tuple[int, ...],
) -> None:
    # The store writes each element where the value's own (row-major) layout puts
    # it, not in the domain's order (kept dims first); narrow shapes run one column
    # at a time, wide ones take the column loops.
    rng = np.random.default_rng(15)
    a, h = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    x, m = ember.tensor(a), ember.tensor(h)
    centred = compiled(lambda t: t - t.sum(0))(x).numpy()
    np.testing.assert_allclose(centred, a - a.sum(axis=0), rtol=1e-5, atol=1e-5)
    soft = compiled(lambda t: t.softmax(0))(x).numpy()
    np.testing.assert_allclose(soft, softmax0(a), rtol=2e-6, atol=1e-7)
    masked, bias = compiled(lambda g, k: (g * (k > 0), (g * (k > 0)).sum(0)))(x, m)
    np.testing.assert_array_equal(masked.numpy(), a * (h > 0))
    np.testing.assert_allclose(
        bias.numpy(), (a * (h > 0)).sum(axis=0), rtol=1e-5, atol=1e-5
    )


def test_store_strides_print_and_must_write_each_element_once() -> None:
    x = Buffer("x", float32, (4, 20), (20, 1))
    y = Buffer.dense("y", float32, (4, 20))
    outer, inner, order = reduction_domain((4, 20), (0,))
    value = load(x, domain_strides(x, order))
    total = Reduce("total", "sum", value)
    centred = op("sub", value, total.ref())
    kernel = LoopKernel(
        "centre", (x, y), outer, inner, (total, Store("y", centred, True, (1, 20)))
    )
    assert "for i1 in 0..4: y[i0 + 20*i1] = sub(x[i0 + 20*i1], total)" in str(kernel)
    data = values(float32, (4, 20), seed=16)
    out = np.empty((4, 20), np.float32)
    compile_kernel(kernel)(data, out)
    np.testing.assert_array_equal(out, data - data.sum(axis=0))
    for bad in ((1, 1), (20, 1, 0), (2, 40)):
        with pytest.raises(
            LoweringError, match="write each element of the output once"
        ):
            LoopKernel(
                "centre", (x, y), outer, inner, (total, Store("y", centred, True, bad))
            )
