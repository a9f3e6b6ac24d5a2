"""A matrix read twice around pointwise work on its rows runs as one streamed pass.

:mod:`ember.compiler.streaming` fuses ``s = x @ v``, row-wise kernels and
``g = d.T @ x`` (or ``x.T @ d``) into one
:class:`~ember.compiler.codegen.streamed.StreamedLaunch`. The native pass is checked
against float64 numpy on drawn shapes and strides; programs with and without the
fusion agree with numpy and with each other; a run that is not row-wise stays
unfused; and a compiled training step of a linear model equals the eager one.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ember
from ember import settings
from ember.compiler.backends import compile_llvm
from ember.compiler.codegen import streamed, worker
from ember.compiler.codegen.streamed import BLOCK_ROWS, StreamPlan
from ember.compiler.streaming import StreamedStep
from ember.compiler.trace import trace
from tests.test_steady_calls import linear_regression


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    with settings.override(cache_dir=str(tmp_path_factory.mktemp("kernels"))):
        yield


def _bound(x: np.ndarray, v: np.ndarray, eps: float) -> np.ndarray:
    """A bound on the rounding error of sums of products of ``x`` and ``v``."""
    terms = np.abs(x.astype(np.float64)) @ np.abs(v.astype(np.float64))
    return 4 * (x.shape[-1] + 8) * eps * terms + 1e-30


# The native pass on its own ----------------------------------------------------------


def _run_pass(plan, x, v_flat, s_flat, d_flat, g_flat, helper=None) -> None:
    """Run the native pass of ``plan`` on numpy arrays, as a launch would."""
    _engine, entry = streamed.stream_entry(plan)
    forward = (ctypes.c_int64 * 3)(
        x.ctypes.data, v_flat.ctypes.data, s_flat.ctypes.data
    )
    gradient = (ctypes.c_int64 * 3)(d_flat.ctypes.data, 0, g_flat.ctypes.data)
    partial = np.zeros(plan.parts * plan.padded, x.dtype)
    args = (ctypes.c_int64 * streamed._EPILOGUES)()
    args[0], args[1] = ctypes.addressof(forward), ctypes.addressof(gradient)
    args[streamed._PARALLEL] = worker.parallel_address()
    args[streamed._PARTIAL] = partial.ctypes.data
    if helper is not None:
        helper.wake()
        args[streamed._SLOT] = helper.address
    streamed._ENTRY(entry)(args, 0, 1)


@given(
    rows=st.one_of(st.integers(1, 3 * BLOCK_ROWS + 3), st.integers(100, 400)),
    columns=st.integers(1, 120),
    pad=st.integers(0, 5),
    steps=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_the_pass_computes_both_products(rows, columns, pad, steps, dtype, seed):
    rng = np.random.default_rng(seed)
    v_step, s_step, g_step = steps
    wide = rng.standard_normal((rows, columns + pad)).astype(dtype)
    x = wide[:, :columns]  # row stride columns + pad, unit column stride
    v_flat = rng.standard_normal(columns * v_step).astype(dtype)
    d_flat = rng.standard_normal(rows * s_step).astype(dtype)
    s_flat = np.full(rows * s_step, np.nan, dtype)
    g_flat = np.full(columns * g_step, np.nan, dtype)
    plan = StreamPlan(
        "f32" if dtype == np.float32 else "f64",
        rows,
        columns,
        columns + pad,
        v_step,
        s_step,
        s_step,
        g_step,
        0,
        0,
    )
    _run_pass(plan, x, v_flat, s_flat, d_flat, g_flat)

    v, d = v_flat[::v_step], d_flat[::s_step]
    eps = float(np.finfo(dtype).eps)
    s = s_flat[::s_step]
    want_s = x.astype(np.float64) @ v.astype(np.float64)
    assert np.all(np.abs(s - want_s) <= _bound(x, v, eps))
    g = g_flat[::g_step]
    want_g = d.astype(np.float64) @ x.astype(np.float64)
    assert np.all(np.abs(g - want_g) <= _bound(x.T, d, eps))
    # Only the strided elements were written.
    for flat, step in ((s_flat, s_step), (g_flat, g_step)):
        gaps = np.ones(flat.shape, bool)
        gaps[::step] = False
        assert np.isnan(flat[gaps]).all()
    # With the helper taking a part, the very same bytes.
    s_again, g_again = np.full_like(s_flat, np.nan), np.full_like(g_flat, np.nan)
    _run_pass(plan, x, v_flat, s_again, d_flat, g_again, worker.worker())
    np.testing.assert_array_equal(s_again, s_flat)
    np.testing.assert_array_equal(g_again, g_flat)


def test_each_row_sums_in_the_same_order_whatever_block_it_falls_in():
    # The same row at another position (another block, another place in it)
    # gives the same bits: the order depends on the columns only.
    rng = np.random.default_rng(3)
    row = rng.standard_normal(100).astype(np.float32)
    x = np.tile(row, (3 * BLOCK_ROWS + 1, 1))
    v = rng.standard_normal(100).astype(np.float32)
    plan = StreamPlan("f32", x.shape[0], 100, 100, 1, 1, 1, 1, 0, 0)
    s = np.empty(x.shape[0], np.float32)
    d = np.zeros(x.shape[0], np.float32)
    g = np.empty(100, np.float32)
    _run_pass(plan, x, v, s, d, g)
    assert len(set(s.tolist())) == 1
    assert not g.any()


# Programs -------------------------------------------------------------------------------


def _linear_parts(form: str, loss: str):
    """A model's forward and backward by hand: the shapes autodiff gives for
    ``nn.Linear`` (``form`` "row", weight 1 x k) or for ``x @ w`` (``form``
    "column", weight k x 1)."""

    def fn(x, w, b, y):
        s = x @ w.T if form == "row" else x @ w
        e = s + b - y
        m = x.shape[0]
        if loss == "mse":
            value, d = (e * e).mean(), e * (2.0 / m)
        elif loss == "l1":
            value, d = e.abs().mean(), e.tanh() * (1.0 / m)
        else:  # logistic: y in {0, 1}
            p = e.sigmoid()  # the labels enter through b - y; keep it row-wise
            value, d = (p * p).mean(), p * (1.0 - p) * (2.0 / m) * p
        g = d.T @ x if form == "row" else x.T @ d
        return value, g, d.sum()

    return fn


def _numpy_parts(form, loss, x, w, b, y):
    x, w, b, y = (a.astype(np.float64) for a in (x, w, b, y))
    s = x @ w.T if form == "row" else x @ w
    e = s + b - y
    m = x.shape[0]
    if loss == "mse":
        value, d = (e * e).mean(), e * (2.0 / m)
    elif loss == "l1":
        value, d = np.abs(e).mean(), np.tanh(e) / m
    else:
        p = 1 / (1 + np.exp(-e))
        value, d = (p * p).mean(), p * (1 - p) * (2.0 / m) * p
    g = d.T @ x if form == "row" else x.T @ d
    return value, g, d.sum()


def _mse_arrays(rows: int, columns: int, seed: int) -> tuple[np.ndarray, ...]:
    """Float32 ``x``, a 1 x ``columns`` weight, a bias and ``y`` for
    ``_linear_parts("row", ...)``."""
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((rows, columns)).astype(np.float32),
        rng.standard_normal((1, columns)).astype(np.float32),
        np.ones(1, np.float32),
        rng.standard_normal((rows, 1)).astype(np.float32),
    )


def _program(fn, arrays, **overrides):
    with settings.override(**overrides):
        return compile_llvm(trace(fn, *[ember.tensor(a) for a in arrays]))


def _streamed(program) -> list[StreamedStep]:
    return [s for s in program.steps if isinstance(s, StreamedStep)]


@given(
    rows=st.integers(2, 80),
    columns=st.integers(64, 200),
    form=st.sampled_from(["row", "column"]),
    loss=st.sampled_from(["mse", "l1", "logistic"]),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_a_linear_models_gradient_fuses_and_matches_numpy(
    rows, columns, form, loss, dtype, seed
):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, columns)).astype(dtype)
    w_shape = (1, columns) if form == "row" else (columns, 1)
    w = (rng.standard_normal(w_shape) / 10).astype(dtype)
    b = rng.standard_normal(1).astype(dtype)
    y = rng.standard_normal((rows, 1)).astype(dtype)
    fn = _linear_parts(form, loss)
    fused = _program(fn, (x, w, b, y))
    plain = _program(fn, (x, w, b, y), streamed_passes=False)
    assert len(_streamed(fused)) == 1
    assert not _streamed(plain)
    want = _numpy_parts(form, loss, x, w, b, y)
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    for program in (fused, plain):
        got = program.run_arrays(x, w, b, y)
        for value, expected in zip(got, want):
            np.testing.assert_allclose(value, expected, rtol=tolerance, atol=tolerance)


def test_a_batch_with_a_row_stride_of_its_own_is_read_in_place():
    rng = np.random.default_rng(1)
    wide = rng.standard_normal((40, 130)).astype(np.float32)
    w = rng.standard_normal((1, 100)).astype(np.float32)
    b, y = np.ones(1, np.float32), rng.standard_normal((30, 1)).astype(np.float32)
    fn = _linear_parts("row", "mse")
    x = ember.tensor(wide)[5:35, 10:110]  # offset rows, a row stride of 130
    program = compile_llvm(trace(fn, x, *[ember.tensor(a) for a in (w, b, y)]))
    assert len(_streamed(program)) == 1
    got = program.run_arrays(x, ember.tensor(w), ember.tensor(b), ember.tensor(y))
    want = _numpy_parts("row", "mse", wide[5:35, 10:110], w, b, y)
    for value, expected in zip(got, want):
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5)


def test_a_reduction_between_the_products_moves_below_the_pass():
    # The loss (a sum over rows) reads what the pass writes; it runs after it.
    program = _program(_linear_parts("row", "mse"), _mse_arrays(64, 96, seed=4))
    (step,) = _streamed(program)
    position = program.steps.index(step)
    later = [s.describe() for s in program.steps[position + 1 :]]
    assert any("reduction" in text for text in later)
    assert "streamed pass 64x96" in program.describe()


# Training -------------------------------------------------------------------------------


def test_a_compiled_linear_regression_equals_eager_step_after_step():
    rng = np.random.default_rng(5)
    data = rng.standard_normal((300, 100)).astype(np.float32)
    target = (data @ rng.standard_normal((100, 1)) / 10).astype(np.float32)
    x, y = ember.from_numpy(data), ember.from_numpy(target)
    batches = [(x[s : s + 128], y[s : s + 128]) for s in range(0, 300, 128)]

    def run(compiled: bool) -> tuple[list[float], np.ndarray]:
        model, step = linear_regression(momentum=0.9)
        fn = ember.compile(step, backend="llvm") if compiled else step
        losses = [fn(xb, yb).item() for _ in range(4) for xb, yb in batches]
        if compiled:
            programs = [entry.program for entry in fn.cache.values()]
            assert any(_streamed(p) for p in programs if hasattr(p, "steps"))
        return losses, model.weight.numpy().copy()

    eager_losses, eager_weight = run(False)
    losses, weight = run(True)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-4)
    np.testing.assert_allclose(weight, eager_weight, rtol=1e-4, atol=1e-6)


def _interleaved(s, y):
    # Row 2i needs row i, row 2i + 1 row 20 + i: the block of row 2i may not
    # have them yet.
    return (s.reshape(2, 20).T.reshape(40, 1) - y) * 2.0


def _last_row(s, y):
    # Every row reads the last row of s, which the first blocks have not made.
    return (s - s[39:40] - y) * 2.0


@pytest.mark.parametrize("gradient", [_interleaved, _last_row])
def test_a_kernel_that_reads_other_rows_of_the_pass_stays_unfused(gradient):
    def fn(x, w, y):
        return x.T @ gradient(x @ w, y)

    rng = np.random.default_rng(2)
    arrays = (
        rng.standard_normal((40, 80)).astype(np.float32),
        rng.standard_normal((80, 1)).astype(np.float32),
        rng.standard_normal((40, 1)).astype(np.float32),
    )
    program = _program(fn, arrays)
    assert not _streamed(program)
    x, w, y = (a.astype(np.float64) for a in arrays)
    (got,) = program.run_arrays(*arrays)
    want = x.T @ gradient(x @ w, y)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_pass_whose_launches_cannot_be_prepared_runs_its_members_in_turn(
    monkeypatch,
):
    from ember.compiler import streaming
    from ember.errors import SignatureError

    def refuse(self, memory):
        raise SignatureError("not prepared in this test")

    monkeypatch.setattr(streaming._Prepare, "prepare", refuse)
    arrays = _mse_arrays(300, 100, seed=7)
    program = _program(_linear_parts("row", "mse"), arrays)
    (step,) = _streamed(program)
    assert (step, None, ()) in program._schedule
    want = _numpy_parts("row", "mse", *arrays)
    for _ in range(2):
        got = program.run_arrays(*arrays)
        for value, expected in zip(got, want):
            np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5)
