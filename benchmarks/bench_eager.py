"""Eager dispatch overhead: ember ops against the same numpy calls, in one run.

Every case runs an ember op and the numpy expression that computes the same result,
on inputs made once and reused by every call, at two sizes:

- ``tiny``: 8 elements (a 2x4 matrix, 4x4 for matmul), where numpy's own work is
  negligible, so ember's time is almost all dispatch: argument normalization, the
  meta rule (shape, dtype and strides checked before computing), the numpy
  reference, and wrapping the result;
- ``1M``: 1,000,000 elements (1000x1000), where the arithmetic dominates and the
  ratio shows what dispatch and ember's dtype handling add on real work.

Times are CPU time of the process (stable on a shared machine), as medians over
``--samples`` batches; numpy and ember batches alternate, so drift hits both. The
ratio is ember / numpy; ``+us`` is the absolute overhead per call.

Run: ``python benchmarks/bench_eager.py`` (``--quick`` for a short run, ``--json
FILE`` to keep the figures).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import ember


@dataclass
class Inputs:
    """The same data as numpy arrays and as ember tensors."""

    a: np.ndarray
    b: np.ndarray
    m: np.ndarray
    x: ember.Tensor
    y: ember.Tensor
    w: ember.Tensor


def make_inputs(rows: int, cols: int, square: int) -> Inputs:
    """Float32 inputs: two rows x cols matrices and a square one for matmul."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, cols)).astype(np.float32)
    b = rng.standard_normal((rows, cols)).astype(np.float32)
    m = rng.standard_normal((square, square)).astype(np.float32)
    return Inputs(
        a, b, m, ember.from_numpy(a), ember.from_numpy(b), ember.from_numpy(m)
    )


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


Case = tuple[str, Callable[[Inputs], Any], Callable[[Inputs], Any]]

CASES: list[Case] = [
    ("add", lambda i: i.x + i.y, lambda i: i.a + i.b),
    ("mul by scalar", lambda i: i.x * 2.0, lambda i: i.a * np.float32(2.0)),
    ("exp", lambda i: i.x.exp(), lambda i: np.exp(i.a)),
    ("relu", lambda i: i.x.relu(), lambda i: np.maximum(i.a, np.float32(0))),
    ("compare", lambda i: i.x > i.y, lambda i: i.a > i.b),
    ("add, transposed", lambda i: i.x.T + i.y.T, lambda i: i.a.T + i.b.T),
    ("sum", lambda i: i.x.sum(), lambda i: i.a.sum()),
    ("sum(dim=1)", lambda i: i.x.sum(1), lambda i: i.a.sum(axis=1)),
    ("softmax(-1)", lambda i: i.x.softmax(-1), lambda i: _softmax(i.a)),
    ("matmul", lambda i: i.w @ i.w, lambda i: i.m @ i.m),
    ("view .T", lambda i: i.x.T, lambda i: i.a.T),
    ("index [1:, ::2]", lambda i: i.x[1:, ::2], lambda i: i.a[1:, ::2]),
]

SIZES = {"tiny": (2, 4, 4), "1M": (1000, 1000, 1000)}


@dataclass
class Result:
    """One case at one size: median CPU microseconds per call."""

    case: str
    size: str
    numpy_us: float
    ember_us: float

    @property
    def ratio(self) -> float:
        return self.ember_us / self.numpy_us

    @property
    def overhead_us(self) -> float:
        return self.ember_us - self.numpy_us


def _batch(fn: Callable[[Inputs], Any], inputs: Inputs, calls: int) -> float:
    start = time.process_time_ns()
    for _ in range(calls):
        fn(inputs)
    return (time.process_time_ns() - start) / calls / 1000.0


def _calls_for(fn: Callable[[Inputs], Any], inputs: Inputs, budget_us: float) -> int:
    """How many calls make one batch last about ``budget_us`` of CPU time."""
    one = max(_batch(fn, inputs, 3), 0.05)
    return max(1, min(20000, int(budget_us / one)))


def measure(case: Case, size: str, samples: int, budget_us: float) -> Result:
    """Median per-call CPU time of ember and of numpy for one case."""
    name, ember_fn, numpy_fn = case
    inputs = make_inputs(*SIZES[size])
    np.testing.assert_allclose(
        np.asarray(ember_fn(inputs)), numpy_fn(inputs), rtol=1e-4, atol=1e-4
    )
    calls = _calls_for(numpy_fn, inputs, budget_us)
    ember_calls = _calls_for(ember_fn, inputs, budget_us)
    numpy_times, ember_times = [], []
    for _ in range(samples):
        numpy_times.append(_batch(numpy_fn, inputs, calls))
        ember_times.append(_batch(ember_fn, inputs, ember_calls))
    return Result(
        name, size, statistics.median(numpy_times), statistics.median(ember_times)
    )


def report(results: list[Result]) -> str:
    """The results as a table, with the median ratio of each size."""
    lines = [
        f"{'case':<18} {'size':>5} {'numpy us':>10} {'ember us':>10} "
        f"{'ratio':>7} {'+us':>8}"
    ]
    for r in results:
        lines.append(
            f"{r.case:<18} {r.size:>5} {r.numpy_us:>10.2f} {r.ember_us:>10.2f} "
            f"{r.ratio:>7.2f} {r.overhead_us:>8.2f}"
        )
    for size in SIZES:
        picked = [r for r in results if r.size == size]
        if picked:
            ratio = statistics.median(r.ratio for r in picked)
            extra = statistics.median(r.overhead_us for r in picked)
            lines.append(
                f"median over {size} cases: ember/numpy = {ratio:.2f}x, "
                f"+{extra:.1f} us per call"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    parser.add_argument("--samples", type=int, default=None, help="batches per case")
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        action="append",
        help="only these sizes (repeatable)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args(argv)
    samples = args.samples or (5 if args.quick else 21)
    budget = 20_000.0 if args.quick else 100_000.0
    results = [
        measure(case, size, samples, budget)
        for size in (args.size or list(SIZES))
        for case in CASES
    ]
    print(
        f"ember {ember.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}, {platform.machine()}; "
        f"CPU time, median of {samples} batches"
    )
    print(report(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                [asdict(r) | {"ratio": r.ratio} for r in results], handle, indent=1
            )


if __name__ == "__main__":
    main()
