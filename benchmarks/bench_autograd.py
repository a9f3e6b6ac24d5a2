"""Per-node cost of ember's eager autograd: recording in forward, running in backward.

Each workload builds a graph of N cheap ops on tiny tensors (4 float32 elements, so
numpy's own work is negligible and the figures are the framework's overhead):

- ``chain neg``: y = -y, N times (one input per node, no accumulation);
- ``chain mul``: y = y * w with a leaf w that requires grad (two edges per node, and
  w receives N gradients that the engine sums);
- ``fan-in``: N branches x * c_i summed by ``stack(...).sum()`` (a ready queue N
  long).

For each it reports, per node: the forward time with grad mode off (the bare op),
with grad mode on (the difference is what recording a Node costs), and the backward
time, split into the time spent running the gradient rules' own ember ops (measured
by running the same ops under no_grad) and the rest, the engine's scheduling,
version checks and gradient fitting. Times are CPU time of the process (stable on a
loaded machine) and medians over ``--repeats`` runs; wall time is shown alongside.

Run: ``python benchmarks/bench_autograd.py`` (``--nodes N --repeats R``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import ember
from ember.runtime.tensor import Tensor

Build = Callable[[Tensor, int], Tensor]


@dataclass(frozen=True)
class Workload:
    """A graph shape to measure: how to build it from a leaf, and the same ember ops
    its backward's rules run (``rules(n)`` prepares them and returns the timed part)."""

    name: str
    build: Build
    rules: Callable[[int], Callable[[], None]]


def _chain_neg(x: Tensor, n: int) -> Tensor:
    y = x
    for _ in range(n):
        y = -y
    return y.sum()


def _chain_mul(x: Tensor, n: int) -> Tensor:
    w = ember.full((4,), 1.0001, requires_grad=True)
    y = x
    for _ in range(n):
        y = y * w
    return y.sum()


def _fan_in(x: Tensor, n: int) -> Tensor:
    return ember.stack([x * float(i) for i in range(n)]).sum()


def _neg_rules(n: int) -> Callable[[], None]:
    def run() -> None:
        g = ember.ones(4)
        for _ in range(n):
            g = -g

    return run


def _mul_rules(n: int) -> Callable[[], None]:
    # Per node: one mul for each input's gradient, and w sums n gradients.
    g, w = ember.ones(4), ember.full((4,), 1.0001)

    def run() -> None:
        total, y = g, g
        for _ in range(n):
            total = total + y * w
            y = y * w

    return run


def _fan_in_rules(n: int) -> Callable[[], None]:
    # Per branch: stack's rule selects a row, mul's rule scales it by the saved
    # constant (a 0-d tensor), and x sums the n results.
    g = ember.ones(n, 4)
    constants = [ember.tensor(float(i)) for i in range(n)]

    def run() -> None:
        total = ember.zeros(4)
        for i in range(n):
            total = total + g.select(0, i) * constants[i]

    return run


WORKLOADS = (
    Workload("chain neg", _chain_neg, _neg_rules),
    Workload("chain mul", _chain_mul, _mul_rules),
    Workload("fan-in", _fan_in, _fan_in_rules),
)


@dataclass
class Sample:
    """One run of a workload, in seconds (CPU and wall)."""

    forward_plain: float
    forward_recorded: float
    backward: float
    backward_wall: float
    rules: float
    nodes: int


def _cpu(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def run_once(workload: Workload, n: int) -> Sample:
    """Time the forward without and with recording, the backward, and the rules."""
    x = ember.ones(4, requires_grad=True)
    with ember.no_grad():
        plain, _ = _cpu(lambda: workload.build(x, n))
    recorded, loss = _cpu(lambda: workload.build(x, n))
    wall = time.perf_counter()
    backward, _ = _cpu(loss.backward)  # type: ignore[union-attr]
    wall = time.perf_counter() - wall
    nodes = ember.autograd.last_stats().nodes_run
    with ember.no_grad():
        rules, _ = _cpu(workload.rules(n))
    return Sample(plain, recorded, backward, wall, rules, nodes)


def measure(workload: Workload, n: int, repeats: int) -> dict[str, float]:
    """Median per-node figures in microseconds."""
    run_once(workload, min(n, 100))  # warm caches (save plans, file lookups)
    samples = [run_once(workload, n) for _ in range(repeats)]

    def per_node(values: list[float], nodes: int) -> float:
        return statistics.median(values) / nodes * 1e6

    nodes = samples[0].nodes
    return {
        "nodes": nodes,
        "fwd_plain": per_node([s.forward_plain for s in samples], n),
        "fwd_recorded": per_node([s.forward_recorded for s in samples], n),
        "backward": per_node([s.backward for s in samples], nodes),
        "backward_wall": per_node([s.backward_wall for s in samples], nodes),
        "rules": per_node([s.rules for s in samples], nodes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"ember {ember.__version__}, numpy {np.__version__}, python "
        f"{platform.python_version()}, N = {args.nodes}, median of {args.repeats}"
    )
    print("per node, microseconds of CPU time (wall time of backward in brackets)")
    header = (
        f"{'workload':<10} {'nodes':>6} {'fwd off':>8} {'fwd on':>8} "
        f"{'record':>7} {'backward':>16} {'rules':>7} {'engine':>7}"
    )
    print(header)
    for workload in WORKLOADS:
        r = measure(workload, args.nodes, args.repeats)
        record = r["fwd_recorded"] - r["fwd_plain"]
        engine = r["backward"] - r["rules"]
        print(
            f"{workload.name:<10} {r['nodes']:>6} {r['fwd_plain']:>8.2f} "
            f"{r['fwd_recorded']:>8.2f} {record:>7.2f} "
            f"{r['backward']:>7.2f} [{r['backward_wall']:>6.2f}] "
            f"{r['rules']:>7.2f} {engine:>7.2f}"
        )


if __name__ == "__main__":
    main()
