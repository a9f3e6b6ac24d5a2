"""Benchmark hand-built LoopKernels against numpy (and torch, when installed).

Run ``python benchmarks/bench_kernels.py`` (``--quick`` for fewer repetitions,
``--threshold`` to measure where splitting a kernel across threads starts to pay).
Every figure is the median of many runs in this process, with output buffers
allocated once and reused, so page faults of fresh outputs do not count. The
``ember 1t`` column runs the same kernels on the calling thread only: the gap to the
``ember ms`` column is what the second core gave in this run.

Workloads (float32):

* ``relu(x*w + b)*0.5 + tanh(x)*0.1`` over 4M elements (one pointwise kernel)
* row softmax of a 4096x1024 matrix (one kernel: row max, row sum of exp, normalize)
* mean squared error of two 4M vectors (one reduction: sub/mul prologue, divide
  epilogue)
* column sum of a 256x256 matrix (``x.sum(0)``: the bias gradient of an MLP layer,
  batch 256; the reduced axis is outer in memory), launched as a compiled program
  launches it: prepared once (:meth:`CompiledKernel.prepare`), so the figure is the
  native call without the 5-15 us of per-call argument checks
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from ember.compiler.codegen import compile_kernel, launch
from ember.compiler.kernel import Buffer, LoopKernel, Reduce, Store, cast, load, op
from ember.ir.dtypes import float32

N = 1 << 22
ROWS, COLS = 4096, 1024
BATCH, HIDDEN = 256, 256
TARGETS = {"pointwise chain": 0.25, "row softmax": 0.12, "mse": 0.25, "column sum": 1.0}


def chain_kernel(n: int = N) -> LoopKernel:
    """relu(x*w + b)*0.5 + tanh(x)*0.1 over n elements."""
    x, w, b = (Buffer(name, float32, (n,), (1,)) for name in "xwb")
    y = Buffer.dense("y", float32, (n,))
    lx = load(x)
    value = op(
        "add",
        op("mul", op("relu", op("add", op("mul", lx, load(w)), load(b))), 0.5),
        op("mul", op("tanh", lx), 0.1),
    )
    return LoopKernel("chain", (x, w, b, y), (n,), (), (Store("y", value),))


def softmax_kernel(rows: int = ROWS, cols: int = COLS) -> LoopKernel:
    """Row softmax in one kernel: the row stays in cache between its three sweeps."""
    x = Buffer("x", float32, (rows, cols), (cols, 1))
    y = Buffer.dense("y", float32, (rows, cols))
    row_max = Reduce("m", "max", load(x))
    shifted = op("exp", op("sub", load(x), row_max.ref()))
    row_sum = Reduce("s", "sum", shifted)
    value = op("mul", shifted, op("div", 1.0, row_sum.ref()))
    stages = (row_max, row_sum, Store("y", value, inner=True))
    return LoopKernel("softmax_rows", (x, y), (rows,), (cols,), stages)


def mse_kernel(n: int = N) -> LoopKernel:
    """mean((a - b)**2): one reduction with a sub/mul prologue and a divide epilogue."""
    a, b = Buffer("a", float32, (n,), (1,)), Buffer("b", float32, (n,), (1,))
    out = Buffer.dense("loss", float32, ())
    diff = op("sub", load(a), load(b))
    total = Reduce("total", "sum", op("mul", diff, diff))
    return LoopKernel(
        "mse",
        (a, b, out),
        (),
        (n,),
        (total, Store("loss", op("div", total.ref(), float(n)))),
    )


def column_sum_kernel(rows: int = BATCH, cols: int = HIDDEN) -> LoopKernel:
    """x.sum(0) of a row-major matrix: one output per column, reduced over rows."""
    x = Buffer("x", float32, (rows, cols), (cols, 1))
    y = Buffer.dense("y", float32, (cols,))
    total = Reduce("total", "sum", load(x, (1, cols)))
    return LoopKernel(
        "column_sum",
        (x, y),
        (cols,),
        (rows,),
        (total, Store("y", cast(total.ref(), float32))),
    )


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after two warm-up runs."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def numpy_softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def torch_timings(data: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    """Eager torch figures for the same workloads (empty when torch is missing)."""
    try:
        import torch
    except ImportError:
        return {}
    t = {k: torch.from_numpy(v) for k, v in data.items()}
    return {
        "pointwise chain": median_seconds(
            lambda: (
                torch.relu(t["x"] * t["w"] + t["b"]) * 0.5 + torch.tanh(t["x"]) * 0.1
            ),
            repeats,
        ),
        "row softmax": median_seconds(lambda: torch.softmax(t["m"], dim=1), repeats),
        "mse": median_seconds(lambda: torch.mean((t["a"] - t["b"]) ** 2), repeats),
        "column sum": median_seconds(lambda: t["g"].sum(0), repeats * 20),
    }


def run(repeats: int) -> int:
    """Time every workload; print a table; return 1 if a target was missed."""
    rng = np.random.default_rng(0)
    data = {k: rng.standard_normal(N, dtype=np.float32) for k in ("x", "w", "b", "a")}
    data["b2"] = rng.standard_normal(N, dtype=np.float32)
    data["m"] = rng.standard_normal((ROWS, COLS), dtype=np.float32)
    data["g"] = rng.standard_normal((BATCH, HIDDEN), dtype=np.float32)
    chain, softmax, mse, column = (
        compile_kernel(k())
        for k in (chain_kernel, softmax_kernel, mse_kernel, column_sum_kernel)
    )
    g, g_sum = data["g"], np.empty(HIDDEN, np.float32)
    column(g, g_sum)
    assert np.allclose(g_sum, g.sum(axis=0), rtol=1e-5, atol=1e-5)
    column_launch = column.prepare([g.reshape(-1), g_sum])
    y = np.empty(N, np.float32)
    s = np.empty((ROWS, COLS), np.float32)
    loss = np.empty((), np.float32)
    x, w, b, a, b2, m = (data[k] for k in ("x", "w", "b", "a", "b2", "m"))

    check = np.maximum(x * w + b, 0) * 0.5 + np.tanh(x) * 0.1
    chain(x, w, b, y)
    assert np.allclose(y, check, rtol=1e-5, atol=1e-6)
    softmax(m, s)
    assert np.allclose(s, numpy_softmax(m), rtol=1e-5, atol=1e-8)
    mse(a, b2, loss)
    assert np.isclose(loss, np.mean((a - b2) ** 2), rtol=1e-5)

    ember_times = {
        "pointwise chain": median_seconds(lambda: chain(x, w, b, y), repeats),
        "row softmax": median_seconds(lambda: softmax(m, s), repeats),
        "mse": median_seconds(lambda: mse(a, b2, loss), repeats),
        "column sum": median_seconds(lambda: column_launch([]), repeats * 20),
    }
    one_thread = {
        "pointwise chain": median_seconds(
            lambda: chain(x, w, b, y, threads=1), repeats
        ),
        "row softmax": median_seconds(lambda: softmax(m, s, threads=1), repeats),
        "mse": median_seconds(lambda: mse(a, b2, loss, threads=1), repeats),
        "column sum": median_seconds(lambda: column(g, g_sum, threads=1), repeats * 20),
    }
    numpy_times = {
        "pointwise chain": median_seconds(
            lambda: np.maximum(x * w + b, 0) * 0.5 + np.tanh(x) * 0.1, repeats
        ),
        "row softmax": median_seconds(lambda: numpy_softmax(m), repeats),
        "mse": median_seconds(lambda: np.mean((a - b2) ** 2), repeats),
        "column sum": median_seconds(
            lambda: np.sum(g, axis=0, out=g_sum), repeats * 20
        ),
    }
    torch_times = torch_timings(
        {"x": x, "w": w, "b": b, "a": a, "b2": b2, "m": m, "g": g}, repeats
    )
    return _report(ember_times, one_thread, numpy_times, torch_times)


def _report(
    ember_times: dict[str, float],
    one_thread: dict[str, float],
    numpy_times: dict[str, float],
    torch_times: dict[str, float],
) -> int:
    """Print one line per workload; ``ember 1t`` is the same kernel on one thread."""
    header = (
        f"{'workload':<18}{'ember ms':>10}{'ember 1t':>10}{'numpy ms':>10}"
        f"{'ratio':>8}{'target':>8}"
    )
    if torch_times:
        header += f"{'torch ms':>10}"
    print(header)
    missed = 0
    for name, seconds in ember_times.items():
        ratio = seconds / numpy_times[name]
        ok = ratio <= TARGETS[name]
        missed += not ok
        line = (
            f"{name:<18}{seconds * 1e3:>10.3f}{one_thread[name] * 1e3:>10.3f}"
            f"{numpy_times[name] * 1e3:>10.3f}{ratio:>8.3f}"
            f"{'<=' + str(TARGETS[name]):>8}"
        )
        if torch_times:
            line += f"{torch_times[name] * 1e3:>10.3f}"
        print(line + ("" if ok else "  (target missed)"))
    return 1 if missed else 0


def threshold_table(repeats: int) -> None:
    """Time the pointwise chain and the mse reduction at growing sizes, one thread
    against all threads, to place launch.PARALLEL_THRESHOLD.

    Prints the fastest run (what an idle machine gives) and the median (what the
    machine gave while this ran) of each, and the size where threads start to win.
    """
    print(f"{'elements':>10}{'kernel':>8}{'1 thread us':>22}{'threads us':>22}")
    print(f"{'':>18}{'min':>11}{'median':>11}{'min':>11}{'median':>11}")
    saved = launch.PARALLEL_THRESHOLD
    launch.PARALLEL_THRESHOLD = 0
    try:
        for exponent in range(12, 23):
            n = 1 << exponent
            for label, build in (("chain", chain_kernel), ("mse", mse_kernel)):
                one, many = _thread_timings(build(n), n, repeats)
                print(
                    f"{n:>10}{label:>8}{min(one) * 1e6:>11.1f}"
                    f"{statistics.median(one) * 1e6:>11.1f}{min(many) * 1e6:>11.1f}"
                    f"{statistics.median(many) * 1e6:>11.1f}"
                )
    finally:
        launch.PARALLEL_THRESHOLD = saved


def _thread_timings(
    kernel: LoopKernel, n: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Alternating one-thread and all-thread runs of ``kernel`` (seconds each)."""
    compiled = compile_kernel(kernel)
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(n, dtype=np.float32) for _ in kernel.inputs]
    out = np.empty(kernel.outputs[0].shape, np.float32)
    one: list[float] = []
    many: list[float] = []
    every = launch.default_threads()
    for _ in range(2):
        compiled(*arrays, out, threads=every)
    for _ in range(repeats):
        for threads, times in ((1, one), (every, many)):
            start = time.perf_counter()
            compiled(*arrays, out, threads=threads)
            times.append(time.perf_counter() - start)
    return one, many


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--threshold",
        action="store_true",
        help="measure the size where threads start to pay",
    )
    args = parser.parse_args(argv)
    repeats = 15 if args.quick else 60
    if args.threshold:
        threshold_table(repeats * 3)
        return 0
    return run(repeats)


if __name__ == "__main__":
    sys.exit(main())
