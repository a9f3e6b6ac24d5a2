"""Benchmark ``ember.compile(..., backend="llvm")`` end to end against numpy eager.

Run ``python benchmarks/bench_compile.py`` (``--repeats N`` for more runs,
``--matmul-crossover`` to measure where BLAS overtakes generated matmul kernels,
``--overhead`` for the per-call overhead figures alone).
Every figure is a median over many calls in this process, ember and numpy measured
in the same run and interleaved call by call, so machine noise hits both alike. The
compiled calls go through the whole user-facing path: signature guards, argument
checks, fresh result arrays, kernels and BLAS.

Workloads (float32):

* ``relu(x*w + b)*0.5 + tanh(x)*0.1`` over 4M elements (target: <= 0.25x numpy)
* row softmax of a 4096x1024 matrix (target: <= 0.12x numpy)
* mean squared error of two 4M vectors (target: <= 0.25x numpy)
* MLP 64-256-256-1 forward at batch 256 (target: no slower than numpy)
* compile latency of that MLP in a fresh process: first call with a cold kernel cache
  (target < 300 ms), and in a second process with the disk cache warm (< 50 ms)
* per-call overhead: microseconds per call of ``x*2 + 1`` on 8 elements and of the
  MLP 8-32-1 forward at batch 32, wall and CPU time (``time.thread_time``, which
  preemption by other processes does not inflate), next to numpy
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

import ember
from ember import nn
from ember.ir import functions as F

N = 1 << 22
ROWS, COLS = 4096, 1024
BATCH = 256


def interleaved(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall time of each function, the functions called in turn."""
    for fn in fns:
        fn()
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _chain(x, w, b):
    return (x * w + b).relu() * 0.5 + x.tanh() * 0.1


def _np_chain(x, w, b):
    return np.maximum(x * w + b, 0) * 0.5 + np.tanh(x) * 0.1


def _np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_mse(a, b):
    d = a - b
    return np.mean(d * d)


def _mlp() -> nn.Module:
    ember.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1)
    )


def _np_mlp(
    weights: list[tuple[np.ndarray, np.ndarray]],
) -> Callable[[np.ndarray], object]:
    def forward(x: np.ndarray) -> np.ndarray:
        for i, (w, b) in enumerate(weights):
            x = x @ w.T + b
            if i < len(weights) - 1:
                x = np.maximum(x, 0)
        return x

    return forward


def _check(got: ember.Tensor, want: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5, err_msg=what)


def bench_kernels(repeats: int) -> list[tuple[str, float, float, float]]:
    """(workload, ember seconds, numpy seconds, target ratio) per workload."""
    rng = np.random.default_rng(0)
    rows = []

    x, w, b = (rng.standard_normal(N).astype(np.float32) for _ in range(3))
    tx, tw, tb = (ember.from_numpy(a) for a in (x, w, b))
    chain = ember.compile(_chain, backend="llvm")
    _check(chain(tx, tw, tb), _np_chain(x, w, b), "chain")
    t_ember, t_np = interleaved(
        [lambda: chain(tx, tw, tb), lambda: _np_chain(x, w, b)], repeats
    )
    rows.append(("relu(x*w+b)*0.5 + tanh(x)*0.1, 4M", t_ember, t_np, 0.25))

    m = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    tm = ember.from_numpy(m)
    softmax = ember.compile(lambda v: v.softmax(-1), backend="llvm")
    _check(softmax(tm), _np_softmax(m), "softmax")
    t_ember, t_np = interleaved([lambda: softmax(tm), lambda: _np_softmax(m)], repeats)
    rows.append(("row softmax 4096x1024", t_ember, t_np, 0.12))

    p, t = (rng.standard_normal(N).astype(np.float32) for _ in range(2))
    tp, tt = ember.from_numpy(p), ember.from_numpy(t)
    mse = ember.compile(F.mse_loss, backend="llvm")
    _check(mse(tp, tt), np.asarray(_np_mse(p, t)), "mse")
    t_ember, t_np = interleaved([lambda: mse(tp, tt), lambda: _np_mse(p, t)], repeats)
    rows.append(("mean squared error, 4M", t_ember, t_np, 0.25))

    model = _mlp()
    weights = [
        (layer.weight.numpy(), layer.bias.numpy())
        for layer in model
        if hasattr(layer, "weight")
    ]
    np_forward = _np_mlp(weights)
    batch = rng.standard_normal((BATCH, 64)).astype(np.float32)
    tbatch = ember.from_numpy(batch)
    fast = ember.compile(model, backend="llvm")
    with ember.no_grad():
        _check(fast(tbatch), np_forward(batch), "mlp")
        t_ember, t_np = interleaved(
            [lambda: fast(tbatch), lambda: np_forward(batch)], repeats * 4
        )
    rows.append(("MLP 64-256-256-1 forward, batch 256", t_ember, t_np, 1.0))
    return rows


def per_call(fns: list[Callable[[], object]], calls: int, rounds: int) -> list[tuple]:
    """(median wall, median CPU) seconds per call of each function: ``rounds``
    rounds of ``calls`` back-to-back calls, the functions taking turns by round."""
    for fn in fns:
        fn()
        fn()
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            start, start_cpu = time.perf_counter(), time.thread_time()
            for _ in range(calls):
                fn()
            wall[k].append((time.perf_counter() - start) / calls)
            cpu[k].append((time.thread_time() - start_cpu) / calls)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu)]


def bench_call_overhead(rounds: int) -> list[tuple[str, tuple, tuple]]:
    """(workload, ember (wall, CPU), numpy (wall, CPU)) per tiny workload, where
    the per-call cost of the compiled path is nearly all there is."""
    rows = []
    x = np.arange(8, dtype=np.float32)
    tx = ember.from_numpy(x)
    tiny = ember.compile(lambda v: v * 2 + 1, backend="llvm")
    ember_t, numpy_t = per_call([lambda: tiny(tx), lambda: x * 2 + 1], 2000, rounds)
    rows.append(("x*2 + 1, 8 elements", ember_t, numpy_t))

    ember.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    layers = [m for m in model if hasattr(m, "weight")]
    weights = [(m.weight.numpy(), m.bias.numpy()) for m in layers]
    np_forward = _np_mlp(weights)
    batch = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    tbatch = ember.from_numpy(batch)
    fast = ember.compile(model, backend="llvm")
    with ember.no_grad():
        _check(fast(tbatch), np_forward(batch), "small mlp")
        ember_t, numpy_t = per_call(
            [lambda: fast(tbatch), lambda: np_forward(batch)], 500, rounds
        )
    rows.append(("MLP 8-32-1 forward, batch 32", ember_t, numpy_t))
    return rows


def _print_overhead(rounds: int) -> None:
    header = f"{'per call':<40} {'ember wall/cpu':>16} {'numpy wall/cpu':>16}"
    print(f"{header} {'cpu ratio':>9}")
    for name, (wall, cpu), (np_wall, np_cpu) in bench_call_overhead(rounds):
        print(
            f"{name:<40} {wall * 1e6:>7.1f}/{cpu * 1e6:>5.1f}us "
            f"{np_wall * 1e6:>7.1f}/{np_cpu * 1e6:>5.1f}us {cpu / np_cpu:>9.2f}"
        )


# numpy's first matmul starts OpenBLAS's threads (about 20 ms here); numpy eager pays
# that too, so one warm-up product runs before the clock starts. The compiler stack
# (llvmlite, the passes, codegen) is imported by the first compile; it is timed on
# its own so that the figure shows what compiling costs.
_LATENCY_SCRIPT = """
import json, time
start = time.perf_counter()
import numpy as np
import ember
from ember import nn
imported = time.perf_counter()
import ember.compiler.backends, ember.compiler.codegen
stack = time.perf_counter()
np.ones((64, 64), np.float32) @ np.ones((64, 64), np.float32)
ember.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                      nn.Linear(256, 1))
x = ember.randn(256, 64)
with ember.no_grad():
    fast = ember.compile(model, backend="llvm")
    before = time.perf_counter()
    fast(x)
    first = time.perf_counter()
    fast(x)
    second = time.perf_counter()
print(json.dumps({"import": imported - start, "compiler_import": stack - imported,
                  "first_call": first - before, "steady_call": second - first}))
"""


def bench_latency() -> dict[str, dict[str, float]]:
    """First-call latency of the MLP in fresh processes: cold, then warm disk cache."""
    result = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, EMBER_CACHE_DIR=cache)
        for label in ("cold cache", "warm cache"):
            out = subprocess.run(
                [sys.executable, "-c", _LATENCY_SCRIPT],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            result[label] = json.loads(out.strip().splitlines()[-1])
    return result


def _matmul_with_epilogue(m: ember.Tensor) -> ember.Tensor:
    return (m @ m + 1.0).relu()


def bench_matmul_crossover(repeats: int) -> list[tuple[int, float, float]]:
    """(size, generated kernel seconds, BLAS seconds) for ``relu(m @ m + 1)`` on
    square float32 matrices: one generated kernel with the epilogue inside, against
    BLAS followed by an epilogue kernel."""
    from ember.compiler import lower

    rows = []
    for size in (4, 8, 16, 24, 32, 48, 64, 96):
        a = ember.from_numpy(
            np.random.default_rng(size).standard_normal((size, size)).astype(np.float32)
        )
        programs = []
        for threshold in (1 << 62, 0):
            lower.BLAS_MIN_FLOPS = threshold
            programs.append(ember.compile(_matmul_with_epilogue, backend="llvm"))
            programs[-1](a)
        generated, blas = programs
        t_gen, t_blas = interleaved(
            [lambda g=generated, m=a: g(m), lambda b=blas, m=a: b(m)], repeats
        )
        rows.append((size, t_gen, t_blas))
    return rows


def _fit_with_epilogue(
    x: ember.Tensor, w: ember.Tensor, y: ember.Tensor
) -> ember.Tensor:
    return (x @ w + 0.5 - y).relu()


def bench_thin_crossover(repeats: int) -> list[tuple[str, float, float]]:
    """(shape, generated seconds, BLAS seconds) for ``relu(x @ w + 0.5 - y)`` with
    ``w`` one column: the matrix-vector products behind ``lower.THIN_BLAS_MIN_K``."""
    from ember.compiler import lower

    saved = lower.BLAS_MIN_FLOPS, lower.THIN_BLAS_MIN_K
    rows = []
    try:
        for m, k in ((32, 32), (32, 100), (512, 8), (512, 32), (512, 64), (512, 100)):
            rng = np.random.default_rng(m + k)
            args = [
                ember.from_numpy(rng.standard_normal(s).astype(np.float32))
                for s in ((m, k), (k, 1), (m, 1))
            ]
            programs = []
            for generated in (True, False):
                lower.BLAS_MIN_FLOPS = 1 << 62 if generated else 0
                lower.THIN_BLAS_MIN_K = 1 << 62 if generated else 0
                programs.append(ember.compile(_fit_with_epilogue, backend="llvm"))
                programs[-1](*args)
            t_gen, t_blas = interleaved(
                [lambda p=p, a=args: p(*a) for p in programs], repeats
            )
            rows.append((f"{m}x{k}", t_gen, t_blas))
    finally:
        lower.BLAS_MIN_FLOPS, lower.THIN_BLAS_MIN_K = saved
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--matmul-crossover", action="store_true")
    parser.add_argument("--overhead", action="store_true")
    args = parser.parse_args(argv)
    if args.overhead:
        _print_overhead(max(5, args.repeats // 5))
        return 0
    if args.matmul_crossover:
        print(f"{'size':>6} {'generated':>12} {'BLAS':>12}")
        for size, t_gen, t_blas in bench_matmul_crossover(args.repeats):
            print(f"{size:>6} {t_gen * 1e6:>10.1f}us {t_blas * 1e6:>10.1f}us")
        print(f"\n{'x @ w':>8} {'generated':>12} {'BLAS':>12}  (w one column)")
        for shape, t_gen, t_blas in bench_thin_crossover(args.repeats):
            print(f"{shape:>8} {t_gen * 1e6:>10.1f}us {t_blas * 1e6:>10.1f}us")
        return 0
    print(f"{'workload':<40} {'ember':>10} {'numpy':>10} {'ratio':>7} {'target':>7}")
    failed = False
    for name, t_ember, t_np, target in bench_kernels(args.repeats):
        ratio = t_ember / t_np
        failed |= ratio > target
        mark = "" if ratio <= target else "  MISSED"
        print(
            f"{name:<40} {t_ember * 1e3:>8.3f}ms {t_np * 1e3:>8.3f}ms "
            f"{ratio:>7.3f} {target:>7.2f}{mark}"
        )
    _print_overhead(max(5, args.repeats // 5))
    for label, figures in bench_latency().items():
        print(
            f"MLP compile, fresh process, {label}: first call "
            f"{figures['first_call'] * 1e3:.1f} ms, second call "
            f"{figures['steady_call'] * 1e3:.2f} ms (before it: import ember "
            f"{figures['import'] * 1e3:.0f} ms, compiler stack "
            f"{figures['compiler_import'] * 1e3:.0f} ms)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
