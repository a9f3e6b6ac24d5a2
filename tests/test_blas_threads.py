"""Large gemm launches split their rows in two halves run on two threads.

A float32 product of at least ``blas.SPLIT_MIN_MACS`` multiply-adds runs whole on
the calling thread or as two halves at once, one on the launcher's worker thread;
its chooser picks from timings. These tests pin what must not depend on that
choice: the bits of the product, and that each half reads and writes only memory
``Gemm.prepare`` checked for the whole. Nothing here depends on timing: the split
is forced with ``run(parallel=True)`` or with a chooser that always says yes, and
a worker that never starts is a pool whose futures stay queued.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ember
from ember import settings
from ember.compiler.backends import compile_llvm
from ember.compiler.codegen import blas, launch
from ember.compiler.codegen.blas import Gemm, GemmLaunch, Matrix
from ember.compiler.codegen.launch import LaunchSequence, Region
from ember.compiler.trace import trace
from ember.ir.dtypes import DType, float32, float64

NO_TRANS, TRANS = 111, 112


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    # Splitting is off by default (EMBER_GEMM_SPLIT); these tests switch it on.
    with settings.override(
        cache_dir=str(tmp_path_factory.mktemp("kernels")), gemm_split=True
    ):
        yield


def test_products_run_whole_unless_the_setting_asks_for_halves():
    plan = Gemm.plan(
        float32,
        ((256, 256), (256, 1), 0),
        ((256, 256), (256, 1), 0),
        ((256, 256), (256, 1), 0),
    )
    assert plan is not None and plan.split_rows == 128
    with settings.override(gemm_split=False):
        assert plan.split_rows == 0


class Always:
    """A chooser that always gives the same answer and remembers the timings."""

    def __init__(self, parallel: bool) -> None:
        self.parallel = parallel
        self.recorded: list[bool] = []

    def choose(self) -> bool:
        return self.parallel

    def record(self, parallel: bool, seconds: float) -> None:
        self.recorded.append(parallel)


def operand(
    rng: np.random.Generator,
    rows: int,
    cols: int,
    transposed: bool,
    pad: int,
    offset: int,
    dtype: DType,
) -> tuple[np.ndarray, Matrix, np.ndarray]:
    """A rows x cols operand stored row-major with ``pad`` extra columns (or, when
    ``transposed``, its transpose stored so) after ``offset`` elements: (flat
    storage, the layout Gemm.plan takes, the operand as a numpy view)."""
    stored_rows, stored_cols = (cols, rows) if transposed else (rows, cols)
    lead = stored_cols + pad
    flat = rng.standard_normal(offset + stored_rows * lead).astype(dtype.np_dtype)
    stored = flat[offset:].reshape(stored_rows, lead)[:, :stored_cols]
    view = stored.T if transposed else stored
    strides = (1, lead) if transposed else (lead, 1)
    return flat, ((rows, cols), strides, offset), view


def planned(
    dtype: DType,
    m: int,
    n: int,
    k: int,
    flags: str = "NN",
    pads: tuple[int, int, int] = (0, 0, 0),
    offsets: tuple[int, int, int] = (0, 0, 0),
    seed: int = 0,
) -> tuple[Gemm, list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """A planned m x k @ k x n gemm with the given transposes, leading-dimension
    padding and offsets: (gemm, its three storages, a, b, the product's view)."""
    rng = np.random.default_rng(seed)
    a_flat, a_layout, a = operand(
        rng, m, k, flags[0] == "T", pads[0], offsets[0], dtype
    )
    b_flat, b_layout, b = operand(
        rng, k, n, flags[1] == "T", pads[1], offsets[1], dtype
    )
    c_flat, c_layout, c = operand(rng, m, n, False, pads[2], offsets[2], dtype)
    c_flat[:] = np.nan
    gemm = Gemm.plan(dtype, a_layout, b_layout, c_layout)
    assert gemm is not None, "numpy's BLAS has no gemm here"
    return gemm, [a_flat, b_flat, c_flat], a, b, c


def both_ways(prepared: GemmLaunch, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The product computed whole on one thread, then as two halves at once."""
    prepared.run(parallel=False)
    whole = c.copy()
    c[...] = np.nan
    prepared.run(parallel=True)
    return whole, c.copy()


def touched(fields: Any, itemsize: int) -> list[tuple[int, int]]:
    """The half-open byte ranges BLAS reads or writes for a, b and c, from a
    pointer array: row-major storage with the array's leading dimensions."""
    ta, tb, m, n, k, lda, ldb, ldc = fields[4:12]
    spans = []
    for pointer, (rows, cols), lead in (
        (fields[0], (k, m) if ta == TRANS else (m, k), lda),
        (fields[1], (n, k) if tb == TRANS else (k, n), ldb),
        (fields[2], (m, n), ldc),
    ):
        spans.append((pointer, pointer + ((rows - 1) * lead + cols) * itemsize))
    return spans


# The halves compute the same bits as the whole ------------------------------------


@given(
    m=st.integers(2 * blas.SPLIT_ROWS, 400),
    n=st.integers(8, 400),
    k=st.integers(8, 300),
    flags=st.sampled_from(["NN", "NT", "TN", "TT"]),
    pads=st.tuples(*[st.integers(0, 3)] * 3),
    offsets=st.tuples(*[st.integers(0, 5)] * 3),
    dtype=st.sampled_from([float32, float64]),
)
def test_halves_on_two_threads_give_the_bits_of_the_whole_product(
    m, n, k, flags, pads, offsets, dtype
):
    k = max(k, -(-blas.SPLIT_MIN_MACS // (m * n)))  # large enough to split
    gemm, storages, a, b, c = planned(dtype, m, n, k, flags, pads, offsets, m + n + k)
    prepared = gemm.prepare(storages)

    whole, split = both_ways(prepared, c)

    assert prepared.split_rows == (m // 2 // 16 * 16 if dtype == float32 else 0)
    np.testing.assert_array_equal(split, whole)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    tolerance = 1e-5 if dtype == float32 else 1e-12
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    assert np.all(np.abs(whole - exact) <= tolerance * scale)


@pytest.mark.parametrize("flags", ["NN", "NT", "TN", "TT"])
def test_a_training_step_sized_product_splits_and_keeps_its_bits(flags):
    gemm, storages, a, b, c = planned(float32, 256, 256, 256, flags)
    prepared = gemm.prepare(storages)

    whole, split = both_ways(prepared, c)

    assert prepared.split_rows == 128
    assert not prepared.sequenceable
    np.testing.assert_array_equal(split, whole)
    np.testing.assert_allclose(whole, a @ b, rtol=1e-4, atol=1e-4)


def test_small_and_float64_products_run_whole_inside_sequences():
    small = planned(float32, 256, 256, 128)[0]  # 2**23 multiply-adds: too few
    thin = planned(float32, 31, 1024, 1024)[0]  # too few rows for two halves
    double = planned(float64, 256, 256, 256)[0]

    assert [g.split_rows for g in (small, thin, double)] == [0, 0, 0]
    assert small.fields[6] * small.fields[7] * small.fields[8] < blas.SPLIT_MIN_MACS
    for gemm in (small, thin, double):
        prepared = gemm.prepare([Region(gemm.dtype, 1 << 21, True)] * 3)
        assert prepared.sequenceable


# The halves stay inside the memory prepare checked ---------------------------------


@pytest.mark.parametrize("flags", ["NN", "NT", "TN", "TT"])
def test_each_half_addresses_only_memory_inside_the_checked_regions(flags):
    m, n, k = 203, 261, 331
    pads, offsets = (3, 2, 1), (5, 4, 3)
    gemm, storages, a, b, c = planned(float32, m, n, k, flags, pads, offsets)
    regions = [Region(float32, s.size, private=True) for s in storages]
    assert gemm.split_rows == 96
    prepared = gemm.prepare(regions)

    addresses = [s.ctypes.data for s in storages]
    for array, position, delta in prepared.targets:
        array[position] = addresses[position] + delta
    whole, split = both_ways(prepared, c)

    np.testing.assert_array_equal(split, whole)
    allowed = [(s.ctypes.data, s.ctypes.data + s.nbytes) for s in storages]
    full = touched(prepared._args, 4)
    halves = [touched(half, 4) for half in prepared.halves]
    for position in range(3):
        low, high = allowed[position]
        assert low <= full[position][0] < full[position][1] <= high
        for half in halves:
            assert full[position][0] <= half[position][0]
            assert half[position][1] <= full[position][1]
    # Together the halves write the whole product, and neither writes the other's.
    (first_c, second_c) = (half[2] for half in halves)
    assert first_c[1] <= second_c[0]
    assert prepared.halves[0][6] + prepared.halves[1][6] == m


def test_the_halves_follow_addresses_written_after_the_first_run():
    gemm, storages, a, b, c = planned(float32, 256, 128, 512)
    prepared = gemm.prepare([Region(float32, s.size, private=True) for s in storages])
    prepared.fill([s.ctypes.data for s in storages])
    prepared.run(parallel=True)
    first = c.copy()

    moved = [s.copy() for s in storages]
    moved[0] *= 2
    prepared.fill([s.ctypes.data for s in moved])
    prepared.run(parallel=True)

    np.testing.assert_array_equal(c, first)  # the old product was left alone
    np.testing.assert_array_equal(moved[2].reshape(256, 128), 2 * first)


# Who decides, and a worker that is late ---------------------------------------------


def test_a_default_run_follows_its_chooser_and_reports_the_timing(monkeypatch):
    monkeypatch.setattr(blas, "blas_threads", lambda: 1)
    gemm, storages, a, b, c = planned(float32, 256, 256, 256)
    prepared = gemm.prepare(storages)
    ran: list[str] = []
    monkeypatch.setattr(prepared, "_run_halves", lambda: ran.append("halves"))

    for parallel in (True, False):
        prepared.chooser = Always(parallel)
        prepared.run()
        assert prepared.chooser.recorded == [parallel]

    assert ran == ["halves"]
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)


def test_a_blas_that_runs_its_own_threads_is_not_split(monkeypatch):
    monkeypatch.setattr(blas, "blas_threads", lambda: 2)
    gemm, storages, a, b, c = planned(float32, 256, 256, 256)
    prepared = gemm.prepare(storages)
    prepared.chooser = Always(True)

    prepared.run()

    assert prepared.chooser.recorded == []
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)


class QueuedForever:
    """A pool whose workers are all busy: what it is given never starts."""

    def __init__(self) -> None:
        self.queued: list[concurrent.futures.Future] = []

    def submit(self, *call: Any) -> concurrent.futures.Future:
        self.queued.append(concurrent.futures.Future())
        return self.queued[-1]


def test_a_split_does_not_wait_for_a_worker_that_never_started(monkeypatch):
    gemm, storages, a, b, c = planned(float32, 256, 256, 256)
    prepared = gemm.prepare(storages)
    prepared.run(parallel=False)
    want = c.copy()
    c[...] = np.nan
    pool = QueuedForever()
    monkeypatch.setattr(launch, "_worker_pool", lambda: pool)

    prepared.run(parallel=True)

    (queued,) = pool.queued
    assert queued.cancelled(), "the calling thread took the second half back"
    np.testing.assert_array_equal(c, want)


# In a program -----------------------------------------------------------------------


def test_a_program_runs_a_large_product_on_its_own_between_sequences(monkeypatch):
    monkeypatch.setattr(blas, "blas_threads", lambda: 1)
    x = np.random.default_rng(1).standard_normal((256, 256)).astype(np.float32)
    w = np.random.default_rng(2).standard_normal((256, 256)).astype(np.float32)
    program = compile_llvm(
        trace(
            lambda x, w: ((x * 0.5) @ w).relu() * 2.0 + 1.0,
            ember.tensor(x),
            ember.tensor(w),
        )
    )
    gemms = [
        launch_
        for _, launch_, _ in program._schedule
        if isinstance(launch_, GemmLaunch)
    ]
    assert len(gemms) == 1 and gemms[0].split_rows == 128
    assert not any(
        isinstance(g, GemmLaunch)
        for _, sequence, _ in program._schedule
        if isinstance(sequence, LaunchSequence)
        for g in sequence.launches
    )

    results = []
    for parallel in (False, True, False, True):
        gemms[0].chooser = chooser = Always(parallel)
        (out,) = program.run_arrays(x, w)
        assert chooser.recorded == [parallel]
        results.append(out)

    for out in results[1:]:
        np.testing.assert_array_equal(out, results[0])
    want = np.maximum((x * 0.5) @ w, 0) * 2.0 + 1.0
    np.testing.assert_allclose(results[0], want, rtol=1e-4, atol=1e-3)
