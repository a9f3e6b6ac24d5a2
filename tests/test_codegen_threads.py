"""Kernels split across threads: chunks claimed in native code, late workers
cancelled, and reductions whose result does not depend on the thread count.

Nothing here depends on timing: a worker that "starts late" is simulated by
keeping the pool's only worker busy until the launch has returned.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ember import settings
from ember.compiler.codegen import compile_kernel, launch
from ember.compiler.kernel import Buffer, LoopKernel, Reduce, Store, load, op
from ember.ir.dtypes import float32, float64


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    with settings.override(cache_dir=str(tmp_path_factory.mktemp("kernel-cache"))):
        yield


@pytest.fixture
def always_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split every kernel, however small, and reductions into many chunks."""
    monkeypatch.setattr(launch, "PARALLEL_THRESHOLD", 0)
    monkeypatch.setattr(launch, "PARTIAL_CHUNK_POINTS", 1000)


def scaled_sum_kernel(n: int) -> LoopKernel:
    """total = sum(x * x) and peak = max(|x|) over n float64 values."""
    x = Buffer("x", float64, (n,), (1,))
    total = Reduce("total", "sum", op("mul", load(x), load(x)))
    peak = Reduce("peak", "max", op("abs", load(x)))
    outs = (Buffer.dense("t", float64, ()), Buffer.dense("p", float64, ()))
    return LoopKernel(
        "sum_and_peak",
        (x, *outs),
        (),
        (n,),
        (total, peak, Store("t", total.ref()), Store("p", peak.ref())),
    )


def test_partial_chunks_depend_only_on_the_sizes() -> None:
    assert launch.partial_chunks(100, 100) == 1
    assert launch.partial_chunks(1 << 22, 1 << 22) == launch.PARTIAL_CHUNKS_MAX
    assert launch.partial_chunks(3, 1 << 30) == 3  # never more chunks than the axis


@pytest.mark.usefixtures("always_parallel")
def test_reduction_is_bit_identical_for_every_thread_count() -> None:
    n = 100_003
    kernel = compile_kernel(scaled_sum_kernel(n))
    assert launch.partial_chunks(n, n) == launch.PARTIAL_CHUNKS_MAX
    x = np.random.default_rng(3).standard_normal(n) * 1e3
    results = set()
    for threads in (1, 2, 3, 5):
        total, peak = np.empty((), np.float64), np.empty((), np.float64)
        kernel(x, total, peak, threads=threads)
        results.add((float(total), float(peak)))
    assert len(results) == 1
    ((total, peak),) = results
    assert total == pytest.approx(float(np.sum(x * x)), rel=1e-13)
    assert peak == np.max(np.abs(x))


@pytest.mark.usefixtures("always_parallel")
def test_pointwise_kernel_split_in_chunks_matches_one_thread() -> None:
    n = 10_007  # not a multiple of the chunk count
    x = Buffer("x", float32, (n,), (1,))
    y = Buffer.dense("y", float32, (n,))
    kernel = compile_kernel(
        LoopKernel("tanh_chunks", (x, y), (n,), (), (Store("y", op("tanh", load(x))),))
    )
    data = np.random.default_rng(5).standard_normal(n).astype(np.float32)
    one, many = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    kernel(data, one, threads=1)
    kernel(data, many, threads=4)
    np.testing.assert_array_equal(one, many)
    np.testing.assert_allclose(one, np.tanh(data), rtol=1e-6, atol=1e-7)


def launch_twice_in_chunks(reduction: bool) -> None:
    """Run a small kernel on two threads and check its result."""
    n = 4099
    if reduction:
        kernel = compile_kernel(scaled_sum_kernel(n))
        x = np.linspace(-1.0, 1.0, n)
        total, peak = np.empty((), np.float64), np.empty((), np.float64)
        kernel(x, total, peak, threads=2)
        assert float(total) == pytest.approx(float(np.sum(x * x)), rel=1e-13)
        return
    x = Buffer("x", float64, (n,), (1,))
    y = Buffer.dense("y", float64, (n,))
    kernel = compile_kernel(
        LoopKernel(
            "twice", (x, y), (n,), (), (Store("y", op("add", load(x), load(x))),)
        )
    )
    data, out = np.arange(n, dtype=np.float64), np.zeros(n)
    kernel(data, out, threads=2)
    np.testing.assert_array_equal(out, 2 * data)


@pytest.mark.usefixtures("always_parallel")
@pytest.mark.parametrize("reduction", [False, True], ids=["pointwise", "reduction"])
def test_launch_does_not_wait_for_a_worker_that_never_started(reduction: bool) -> None:
    pool = launch._worker_pool()
    release = threading.Event()
    started = [threading.Event() for _ in range(pool._max_workers)]

    def occupy(k: int) -> None:
        started[k].set()
        release.wait()

    busy = [pool.submit(occupy, k) for k in range(len(started))]
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            launch_twice_in_chunks(reduction)
        except BaseException as exc:  # reported by the main thread below
            errors.append(exc)

    runner = threading.Thread(target=attempt)
    try:
        for event in started:
            assert event.wait(30), "the pool's workers did not start"
        runner.start()
        runner.join(60)
        assert not runner.is_alive(), "the launch waited for a worker that was busy"
    finally:
        release.set()
        for future in busy:
            future.result()
        runner.join()
    assert not errors, errors


def test_the_worker_pool_is_created_once() -> None:
    assert launch._worker_pool() is launch._worker_pool()


def test_thread_chooser_probes_both_then_keeps_the_faster_and_rechecks() -> None:
    chooser = launch.ThreadChooser()

    def calls(count: int, one: float, many: float) -> list[bool]:
        choices = []
        for _ in range(count):
            parallel = chooser.choose()
            chooser.record(parallel, many if parallel else one)
            choices.append(parallel)
        return choices

    probes = calls(2 * chooser.PROBE_CALLS, one=1.0, many=3.0)  # a loaded machine
    assert probes.count(True) == probes.count(False) == chooser.PROBE_CALLS
    settled = calls(2 * chooser.PROBE_EVERY, one=1.0, many=3.0)
    assert settled.count(True) == 2  # one recheck of all threads per PROBE_EVERY calls
    quiet = calls(4 * chooser.PROBE_EVERY, one=1.0, many=0.5)  # other sessions stopped
    assert quiet[-chooser.PROBE_EVERY :].count(True) == chooser.PROBE_EVERY - 1


@pytest.mark.usefixtures("always_parallel")
def test_default_launches_give_the_same_bits_whichever_count_is_chosen() -> None:
    n = 20_011
    kernel = compile_kernel(scaled_sum_kernel(n))
    x = np.random.default_rng(9).standard_normal(n)
    seen = set()
    for _ in range(3 * launch.ThreadChooser.PROBE_CALLS):
        total, peak = np.empty((), np.float64), np.empty((), np.float64)
        kernel(x, total, peak)
        seen.add((float(total), float(peak)))
    assert len(seen) == 1
