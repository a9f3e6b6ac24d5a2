"""Kernels read strided, permuted, sliced and expanded inputs in place, and reduce.

Differential tests against numpy: the kernel sees the same memory the numpy view
sees (no copies), through the view's strides and offset.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import ember
from ember import settings
from ember.compiler.codegen import compile_kernel, emit, launch, mathlib
from ember.compiler.codegen.launch import CompiledKernel
from ember.compiler.kernel import (
    Buffer,
    LoopKernel,
    Reduce,
    Store,
    broadcast_strides,
    cast,
    load,
    op,
    reduction_domain,
)
from ember.ir.dtypes import DType, float32, float64, from_numpy_dtype, int32
from tests.test_codegen_pointwise import ULP_BOUND, ulp_error


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    with settings.override(cache_dir=str(tmp_path_factory.mktemp("kernel-cache"))):
        yield


def view_buffer(name: str, array: np.ndarray) -> Buffer:
    """A buffer describing numpy view ``array`` (strides in elements, offset 0)."""
    strides = tuple(s // array.itemsize for s in array.strides)
    return Buffer(name, from_numpy_dtype(array.dtype), array.shape, strides)


@functools.cache
def binary_kernel(
    name: str, a_layout: tuple, b_layout: tuple, shape: tuple, dtype_name: str
) -> object:
    """Compiled ``out = name(a, b)`` for given input layouts (cached across tests)."""
    dtype = from_numpy_dtype(np.dtype(dtype_name))
    a = Buffer("a", dtype, *a_layout)
    b = Buffer("b", dtype, *b_layout)
    value = op(
        name, load(a, broadcast_strides(a, shape)), load(b, broadcast_strides(b, shape))
    )
    out = Buffer.dense("out", value.dtype, shape)
    return compile_kernel(
        LoopKernel(f"{name}_strided", (a, b, out), shape, (), (Store("out", value),))
    )


def run_binary(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    shape = np.broadcast_shapes(a.shape, b.shape)
    la, lb = view_buffer("a", a), view_buffer("b", b)
    kernel = binary_kernel(
        name, (la.shape, la.strides), (lb.shape, lb.strides), shape, a.dtype.name
    )
    out = np.empty(shape, kernel.kernel.outputs[0].dtype.np_dtype)
    kernel(a, b, out)
    return out


def test_transposed_sliced_and_expanded_inputs_are_read_in_place() -> None:
    base = np.arange(120, dtype=np.float32).reshape(10, 12)
    transposed = base.T[2:9:3]  # (3, 10) with strides (3, 12)
    row = np.linspace(-1, 1, 10, dtype=np.float32)  # broadcast along rows
    np.testing.assert_array_equal(run_binary("mul", transposed, row), transposed * row)
    column = base[::4, :1]  # (3, 1), broadcast along columns
    np.testing.assert_array_equal(
        run_binary("sub", base[1::4, ::-1][:, ::-1], column), base[1::4] - column
    )


def test_expanded_input_with_stride_zero() -> None:
    small = np.array([1.5, -2.0, 3.0], dtype=np.float64)
    expanded = np.broadcast_to(small, (4, 3))
    other = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.testing.assert_array_equal(run_binary("add", expanded, other), expanded + other)


def test_offset_views_through_storage_calls() -> None:
    storage = np.arange(50, dtype=np.float32)
    a = Buffer("a", float32, (3, 4), (10, 2), offset=5)
    out = Buffer.dense("out", float32, (3, 4))
    kernel = compile_kernel(
        LoopKernel(
            "offset_view", (a, out), (3, 4), (), (Store("out", op("neg", load(a))),)
        )
    )
    result = np.zeros(12, np.float32)
    kernel.call_storage(storage, result)
    want = -np.lib.stride_tricks.as_strided(storage[5:], (3, 4), (40, 8))
    np.testing.assert_array_equal(result.reshape(3, 4), want)


layouts = st.integers(1, 4).flatmap(
    lambda rank: st.tuples(
        st.lists(st.integers(1, 6), min_size=rank, max_size=rank),
        st.permutations(list(range(rank))),
        st.lists(st.integers(1, 2), min_size=rank, max_size=rank),
        st.lists(st.booleans(), min_size=rank, max_size=rank),
    )
)


@hsettings(max_examples=25)
@given(layout=layouts, dtype=st.sampled_from(["float32", "int32"]))
def test_random_strided_views_match_numpy(layout: tuple, dtype: str) -> None:
    shape, perm, steps, expand = layout
    rng = np.random.default_rng(len(shape))
    big = (rng.standard_normal([n * s for n, s in zip(shape, steps)]) * 10).astype(
        dtype
    )
    view = big[tuple(slice(None, None, s) for s in steps)].transpose(perm)
    other = rng.standard_normal(view.shape).astype(dtype)
    # Expand some dims of the other operand: stride-0 reads.
    collapsed = other[tuple(slice(0, 1) if e else slice(None) for e in expand)]
    other = np.broadcast_to(collapsed, view.shape)
    np.testing.assert_array_equal(run_binary("add", view, other), view + other)


# Reductions ---------------------------------------------------------------------------


@functools.cache
def reduce_kernel(
    kind: str, shape: tuple, strides: tuple, axes: tuple, dtype_name: str
) -> object:
    dtype = from_numpy_dtype(np.dtype(dtype_name))
    x = Buffer("x", dtype, shape, strides)
    outer, inner, order = reduction_domain(shape, axes)
    acc = Reduce("acc", kind, load(x, tuple(strides[a] for a in order)))
    out = Buffer.dense("out", acc.dtype, outer)
    return compile_kernel(
        LoopKernel(
            f"{kind}_axes", (x, out), outer, inner, (acc, Store("out", acc.ref()))
        )
    )


def run_reduce(kind: str, x: np.ndarray, axes: tuple) -> np.ndarray:
    buf = view_buffer("x", x)
    kernel = reduce_kernel(kind, buf.shape, buf.strides, axes, x.dtype.name)
    out = np.empty(
        kernel.kernel.outputs[0].shape, kernel.kernel.outputs[0].dtype.np_dtype
    )
    kernel(x, out)
    return out


@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 2), (0, 1, 2), (1, 2)])
@pytest.mark.parametrize("kind", ["sum", "max", "min"])
def test_reductions_over_axes_match_numpy(kind: str, axes: tuple) -> None:
    x = np.random.default_rng(1).standard_normal((5, 7, 9)).astype(np.float32)
    want = getattr(np, {"sum": "sum", "max": "max", "min": "min"}[kind])(x, axis=axes)
    got = run_reduce(kind, x, axes)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_reduction_of_a_transposed_view_and_integer_sums() -> None:
    x = np.arange(60, dtype=np.int32).reshape(6, 10).T  # (10, 6), strides (1, 10)
    got = run_reduce("sum", x, (1,))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, x.sum(axis=1))
    np.testing.assert_array_equal(run_reduce("max", x, (0,)), x.max(axis=0))


def test_max_and_min_propagate_nan_and_handle_empty_axes() -> None:
    x = np.ones((3, 8), np.float64)
    x[1, 5] = np.nan
    np.testing.assert_array_equal(run_reduce("max", x, (1,)), [1.0, np.nan, 1.0])
    np.testing.assert_array_equal(run_reduce("min", x, (1,)), [1.0, np.nan, 1.0])
    empty = np.ones((3, 0), np.float32)
    np.testing.assert_array_equal(run_reduce("sum", empty, (1,)), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(run_reduce("max", empty, (1,)), [-np.inf] * 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectorized_max_and_min_propagate_nan_from_any_position(dtype: type) -> None:
    # Rows long enough for the vector loop, with one NaN at the first point, inside
    # the vector body, in the scalar remainder and at the last point.
    cols = 1003
    x = np.random.default_rng(9).standard_normal((6, cols)).astype(dtype)
    x[:5, 1::97] = np.inf
    for row, col in enumerate((0, 17, 640, cols - 3, cols - 1)):
        x[row, col] = np.nan
    want_max = [np.nan] * 5 + [x[5].max()]
    want_min = [np.nan] * 5 + [x[5].min()]
    np.testing.assert_array_equal(run_reduce("max", x, (1,)), want_max)
    np.testing.assert_array_equal(run_reduce("min", x, (1,)), want_min)


def test_max_of_signed_zeros_is_a_zero() -> None:
    # The sign of a zero maximum is left open, as numpy leaves it.
    x = np.zeros((4, 300), np.float32)
    x[0] = -0.0
    x[1, ::2] = -0.0
    x[2, 1::3] = -0.0
    x[3, 150] = -1.0
    for kind in ("max", "min"):
        got = run_reduce(kind, x, (1,))
        np.testing.assert_array_equal(got[:3], [0.0, 0.0, 0.0])


def summation_bound(values: np.ndarray) -> float:
    """docs/codegen.md: |ember - exact| <= (n/8 + 64) * 2**-53 * sum|x| + half an ulp of
    the float32 result (sums accumulate in float64 with one partial sum per lane)."""
    n = values.size
    result = abs(math.fsum(values.astype(np.float64)))
    return (n / 8 + 64) * 2.0**-53 * float(np.abs(values).astype(np.float64).sum()) + (
        float(np.spacing(np.float32(result))) / 2 if values.dtype == np.float32 else 0.0
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sums_stay_within_the_documented_bound_and_beat_pairwise(dtype: type) -> None:
    rng = np.random.default_rng(2)
    # Ill-conditioned: large cancelling terms plus small ones.
    values = np.concatenate(
        [rng.standard_normal(1 << 18) * 1e4, rng.standard_normal(1 << 18)]
    ).astype(dtype)
    values = rng.permutation(np.concatenate([values, -values[: 1 << 17]]))
    exact = math.fsum(values.astype(np.float64))
    got = float(run_reduce("sum", values, (0,)))
    assert abs(got - exact) <= summation_bound(values)
    if dtype == np.float32:
        # float64 accumulation is at least as accurate as numpy's float32 pairwise sum.
        assert abs(got - exact) <= abs(float(values.sum()) - exact) + float(
            np.spacing(np.float32(exact))
        )


def test_fused_row_softmax_matches_numpy_and_threads_agree() -> None:
    rows, cols = 300, 257
    x = Buffer("x", float32, (rows, cols), (cols, 1))
    y = Buffer.dense("y", float32, (rows, cols))
    m = Reduce("m", "max", load(x))
    e = op("exp", op("sub", load(x), m.ref()))
    s = Reduce("s", "sum", e)
    kernel = compile_kernel(
        LoopKernel(
            "softmax",
            (x, y),
            (rows,),
            (cols,),
            (m, s, Store("y", op("div", e, s.ref()), inner=True)),
        )
    )
    data = (
        np.random.default_rng(4).standard_normal((rows, cols)).astype(np.float32) * 20
    )
    want = np.exp(data - data.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    one, many = np.empty_like(data), np.empty_like(data)
    kernel(data, one, threads=1)
    saved = launch.PARALLEL_THRESHOLD
    launch.PARALLEL_THRESHOLD = 0
    try:
        kernel(data, many, threads=2)
    finally:
        launch.PARALLEL_THRESHOLD = saved
    np.testing.assert_allclose(one, want, rtol=2e-6, atol=1e-9)
    np.testing.assert_array_equal(one, many)


def softmax_rows(rows: int, cols: int, name: str) -> LoopKernel:
    x = Buffer("x", float32, (rows, cols), (cols, 1))
    y = Buffer.dense("y", float32, (rows, cols))
    m = Reduce("m", "max", load(x))
    e = op("exp", op("sub", load(x), m.ref()))
    s = Reduce("s", "sum", e)
    value = op("mul", e, op("div", 1.0, s.ref()))
    stages = (m, s, Store("y", value, inner=True))
    return LoopKernel(name, (x, y), (rows,), (cols,), stages)


def exp_calls(kernel: object) -> int:
    """How many times the unoptimized IR evaluates exp (either variant) per point."""
    return kernel.emitted.llvm_ir.count('call float @"ember.exp')


def stack_rows(kernel: object) -> int:
    """How many row buffers the unoptimized IR allocates on the stack."""
    return kernel.emitted.llvm_ir.count("= alloca float, i64")


def test_row_cache_computes_exp_once_and_changes_no_bit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_output = compile_kernel(softmax_rows(37, 300, "softmax_in_output"))
    monkeypatch.setattr(emit, "ROW_CACHE_IN_OUTPUTS", False)
    on_stack = compile_kernel(softmax_rows(37, 300, "softmax_on_stack"))
    monkeypatch.setattr(emit, "ROW_CACHE_BYTES", 0)
    recomputed = compile_kernel(softmax_rows(37, 300, "softmax_recomputed"))
    kernels = (in_output, on_stack, recomputed)
    assert [exp_calls(k) for k in kernels] == [1, 1, 2]
    # exp(x - max) waits in the output row for the normalizing store, not on the
    # stack.
    assert [stack_rows(k) for k in kernels] == [0, 1, 0]
    data = np.random.default_rng(6).standard_normal((37, 300)).astype(np.float32) * 30
    results = [np.empty_like(data) for _ in kernels]
    for kernel, out in zip(kernels, results):
        kernel(data, out)
    np.testing.assert_array_equal(results[0], results[2])
    np.testing.assert_array_equal(results[1], results[2])
    want = np.exp(data - data.max(1, keepdims=True))
    np.testing.assert_allclose(
        results[0], want / want.sum(1, keepdims=True), rtol=3e-6, atol=1e-30
    )


def shifted_exp_kernel(dtype: DType, rows: int, cols: int) -> CompiledKernel:
    """``y = exp(x - max(x))`` per row: the shift softmax takes."""
    x = Buffer("x", dtype, (rows, cols), (cols, 1))
    y = Buffer.dense("y", dtype, (rows, cols))
    m = Reduce("m", "max", load(x))
    shifted = op("exp", op("sub", load(x), m.ref()))
    kernel = LoopKernel(
        f"shifted_exp_{dtype.short}",
        (x, y),
        (rows,),
        (cols,),
        (m, Store("y", shifted, inner=True)),
    )
    return compile_kernel(kernel)


def test_softmax_shift_takes_the_nonpositive_exp() -> None:
    # exp(x - max(x)) is recognized (the argument is at most 0 or NaN); the same
    # values with the maximum read from memory take the general exp. The two differ
    # in the last bit at times (docs/codegen.md), never in the special values.
    rows, cols = 8, 515
    x = Buffer("x", float32, (rows, cols), (cols, 1))
    peak = Buffer("peak", float32, (rows,), (1,))
    y = Buffer.dense("y", float32, (rows, cols))
    shifted = shifted_exp_kernel(float32, rows, cols)
    general = compile_kernel(
        LoopKernel(
            "general",
            (x, peak, y),
            (rows,),
            (cols,),
            (
                Store(
                    "y", op("exp", op("sub", load(x), load(peak, (1, 0)))), inner=True
                ),
            ),
        )
    )
    assert "ember.exp_nonpositive" in shifted.emitted.llvm_ir
    assert "ember.exp_nonpositive" not in general.emitted.llvm_ir
    data = np.random.default_rng(13).standard_normal((rows, cols)).astype(np.float32)
    data[1] *= 60.0  # results down to the subnormal range and to 0
    data[2, 7] = -np.inf
    data[3, 9] = np.inf  # inf - inf: a NaN row, as in numpy
    data[4, 11] = np.nan
    data[5] = 2.5  # every shift is 0
    data[6, ::2] = -0.0
    data[6, 1::2] = 0.0
    one, two = np.empty_like(data), np.empty_like(data)
    shifted(data, one)
    general(data, data.max(1), two)
    with np.errstate(invalid="ignore"):
        # the shift rounds to float32 in the kernel too; exp is measured after it
        want = np.exp((data - data.max(1, keepdims=True)).astype(np.longdouble))
    np.testing.assert_array_equal(np.isnan(one), np.isnan(want))
    np.testing.assert_array_equal(one[want == 0], 0.0)
    np.testing.assert_array_equal(one[5:7], 1.0)
    error = ulp_error(one, want, np.dtype(np.float32))
    assert error.max() <= ULP_BOUND["exp"]
    assert ulp_error(one, two, np.dtype(np.float32)).max() <= 2


@pytest.mark.parametrize("dtype", [float32, float64], ids=["f32", "f64"])
def test_nonpositive_exp_accuracy_over_its_range(
    dtype: DType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arguments from 0 down to past the underflow threshold, uniform and log-uniform;
    # every row also holds a 0, its maximum, so x - max(x) is x exactly. Both ways of
    # applying 2**k (llvm.ldexp on AVX-512 hosts, two scale factors elsewhere) must
    # give the same bits, within exp's ulp bound (1 ulp for subnormal results).
    np_dtype = dtype.np_dtype
    low = -104.0 if dtype is float32 else -746.0
    rows, cols = 128, 1024
    rng = np.random.default_rng(21)
    count = rows * (cols - 1)
    values = np.concatenate(
        [
            rng.uniform(-0.75, 0.0, count // 3),
            rng.uniform(low, 0.0, count // 3),
            -np.exp(rng.uniform(-60, math.log(-low), count - 2 * (count // 3))),
        ]
    )
    data = np.zeros((rows, cols), np_dtype)
    data[:, 1:] = rng.permutation(values).reshape(rows, cols - 1)
    results = []
    for native in (True, False):
        monkeypatch.setattr(mathlib, "has_avx512", lambda native=native: native)
        out = np.empty_like(data)
        shifted_exp_kernel(dtype, rows, cols)(data, out)
        results.append(out)
    bits = f"i{np_dtype.itemsize}"
    np.testing.assert_array_equal(results[0].view(bits), results[1].view(bits))
    want = np.exp(data.astype(np.longdouble))
    error = ulp_error(results[0], want, np_dtype)
    assert error.max() <= ULP_BOUND["exp"]
    tiny = want < np.finfo(np_dtype).tiny
    assert tiny.any() and error[tiny].max() <= 1.0


def test_compiled_softmax_and_log_softmax_treat_nan_and_inf_rows_like_numpy() -> None:
    x = np.random.default_rng(14).standard_normal((9, 300)).astype(np.float32)
    x[1, 5] = np.nan
    x[2, 7] = np.inf  # inf - inf: the whole row is NaN
    x[3] = -np.inf  # -inf - -inf: the whole row is NaN
    x[4, 9] = -np.inf  # one zero probability
    x[5, 290:] = np.nan  # NaN only in the vector loop's remainder
    with np.errstate(invalid="ignore"):
        shifted = x - x.max(1, keepdims=True)
        powers = np.exp(shifted)
        want = powers / powers.sum(1, keepdims=True)
        want_log = shifted - np.log(powers.sum(1, keepdims=True))
    data = ember.from_numpy(x)
    got = ember.compile(lambda v: v.softmax(-1), backend="llvm")(data).numpy()
    got_log = ember.compile(lambda v: v.log_softmax(-1), backend="llvm")(data).numpy()
    np.testing.assert_array_equal(np.isnan(got).all(1), [0, 1, 1, 1, 0, 1, 0, 0, 0])
    np.testing.assert_allclose(got, want, rtol=3e-6, atol=1e-8, equal_nan=True)
    np.testing.assert_allclose(got_log, want_log, rtol=3e-6, atol=1e-5, equal_nan=True)


def test_a_value_read_after_its_last_store_stays_on_the_stack() -> None:
    rows, cols = 29, 301
    x = Buffer("x", float32, (rows, cols), (cols, 1))
    y = Buffer.dense("y", float32, (rows, cols))
    z = Buffer.dense("z", float32, (rows,))
    m = Reduce("m", "max", load(x))
    e = op("exp", op("sub", load(x), m.ref()))
    s = Reduce("s", "sum", e)
    t = Reduce("t", "sum", op("mul", e, e))
    stages = (
        m,
        s,
        Store("y", op("mul", e, s.ref()), inner=True),
        t,
        Store("z", t.ref()),
    )
    kernel = compile_kernel(
        LoopKernel("late_reader", (x, y, z), (rows,), (cols,), stages)
    )
    assert (exp_calls(kernel), stack_rows(kernel)) == (1, 1)
    data = np.random.default_rng(10).standard_normal((rows, cols)).astype(np.float32)
    got_y, got_z = np.empty_like(data), np.empty(rows, np.float32)
    kernel(data, got_y, got_z)
    e_ref = np.exp(data.astype(np.float64) - data.max(1, keepdims=True))
    np.testing.assert_allclose(got_y, e_ref * e_ref.sum(1, keepdims=True), rtol=3e-6)
    np.testing.assert_allclose(got_z, (e_ref * e_ref).sum(1), rtol=3e-6)


def test_a_row_value_waits_in_the_last_output_that_stores_it() -> None:
    # Two normalized outputs read exp(x - max): it waits in the row of the second
    # store, which the first store reads before the second overwrites it.
    rows, cols = 23, 259
    x = Buffer("x", float32, (rows, cols), (cols, 1))
    y1, y2 = (
        Buffer.dense("y1", float32, (rows, cols)),
        Buffer.dense("y2", float32, (rows, cols)),
    )
    wide = Buffer.dense("wide", float64, (rows, cols))
    m = Reduce("m", "max", load(x))
    e = op("exp", op("sub", load(x), m.ref()))
    s = Reduce("s", "sum", e)
    stages = (
        m,
        s,
        Store("y1", op("div", e, s.ref()), inner=True),
        Store("y2", op("mul", e, 2.0), inner=True),
    )
    kernel = compile_kernel(
        LoopKernel("two_outputs", (x, y1, y2), (rows,), (cols,), stages)
    )
    assert (exp_calls(kernel), stack_rows(kernel)) == (1, 0)
    # An output of another dtype cannot hold the float32 value.
    cast_stages = (
        m,
        s,
        Store("wide", cast(op("mul", e, s.ref()), float64), inner=True),
    )
    widened = compile_kernel(
        LoopKernel("widened", (x, wide), (rows,), (cols,), cast_stages)
    )
    assert (exp_calls(widened), stack_rows(widened)) == (1, 1)
    data = np.random.default_rng(11).standard_normal((rows, cols)).astype(np.float32)
    e_ref = np.exp(data - data.max(1, keepdims=True))
    got1, got2 = np.empty_like(data), np.empty_like(data)
    kernel(data, got1, got2)
    np.testing.assert_allclose(got1, e_ref / e_ref.sum(1, keepdims=True), rtol=3e-6)
    np.testing.assert_allclose(got2, e_ref * 2, rtol=3e-6)
    got_wide = np.empty(data.shape, np.float64)
    widened(data, got_wide)
    np.testing.assert_allclose(got_wide, e_ref * e_ref.sum(1, keepdims=True), rtol=3e-6)


def test_rows_too_long_for_the_row_cache_recompute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(emit, "ROW_CACHE_IN_OUTPUTS", False)
    monkeypatch.setattr(emit, "ROW_CACHE_BYTES", 4 * 299)
    kernel = compile_kernel(softmax_rows(3, 300, "softmax_long_rows"))
    assert exp_calls(kernel) == 2
    data = np.random.default_rng(7).standard_normal((3, 300)).astype(np.float32)
    out = np.empty_like(data)
    kernel(data, out)
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-5)


def test_mse_reduction_split_across_threads_matches_one_thread() -> None:
    n = 100_003
    a, b = Buffer("a", float64, (n,), (1,)), Buffer("b", float64, (n,), (1,))
    out = Buffer.dense("loss", float64, ())
    d = op("sub", load(a), load(b))
    total = Reduce("t", "sum", op("mul", d, d))
    peak = Reduce("p", "max", op("abs", d))
    kernel = compile_kernel(
        LoopKernel(
            "mse",
            (a, b, out, Buffer.dense("peak", float64, ())),
            (),
            (n,),
            (
                total,
                peak,
                Store("loss", op("div", total.ref(), float(n))),
                Store("peak", peak.ref()),
            ),
        )
    )
    assert kernel.emitted.partial_extent == n
    rng = np.random.default_rng(8)
    av, bv = rng.standard_normal(n), rng.standard_normal(n)
    results = []
    for threads, threshold in ((1, launch.PARALLEL_THRESHOLD), (2, 0), (3, 0)):
        loss, peak_v = np.empty((), np.float64), np.empty((), np.float64)
        saved = launch.PARALLEL_THRESHOLD
        launch.PARALLEL_THRESHOLD = threshold
        try:
            kernel(av, bv, loss, peak_v, threads=threads)
        finally:
            launch.PARALLEL_THRESHOLD = saved
        results.append((float(loss), float(peak_v)))
    want = float(np.mean((av - bv) ** 2))
    for loss_v, peak_v in results:
        assert loss_v == pytest.approx(want, rel=1e-14)
        assert peak_v == np.max(np.abs(av - bv))


def test_integer_domain_kernel_with_int32_loads() -> None:
    x = np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2]
    y = np.arange(48, dtype=np.int32).reshape(8, 6)[::2, 1::2] * -1
    np.testing.assert_array_equal(run_binary("maximum", x, y), np.maximum(x, y))
    assert int32 is from_numpy_dtype(x.dtype)
