"""One training step of an MLP: ember eager against hand-written numpy (and torch).

The step is zero_grad, forward (Linear, ReLU, ..., Linear), mean squared error,
backward and an SGD update with momentum 0.9, all in float32. The numpy version is
what a careful engineer writes by hand for exactly this model: every buffer
preallocated, matmuls and elementwise ops writing into them with ``out=``, the ReLU
mask kept from the forward pass, parameters updated in place. It is the floor an
eager framework on numpy can approach; the ratio measures ember's overhead above it.

Before timing, both implementations run three steps from the same weights and must
agree, so the comparison is between two computations of the same thing. Timings are
medians over many steps, the implementations interleaved step by step so that
machine noise hits both alike. Each step is timed twice: wall-clock time, and the CPU
time of the process. On a busy machine wall time swings with the load; CPU time does
not, as long as BLAS runs one thread (``OPENBLAS_NUM_THREADS=1``; with more threads
it also counts their spinning). torch eager is added when it is importable (CPU, its
default thread count); it is never required.

Run: ``OPENBLAS_NUM_THREADS=1 python benchmarks/bench_train_step.py`` (``--repeats N``
for more steps).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import ember
from ember import nn, optim

LEARNING_RATE = 0.01
MOMENTUM = 0.9


@dataclass(frozen=True)
class Case:
    """A model size and batch to benchmark."""

    name: str
    batch: int
    dims: tuple[int, ...]


CASES = (
    Case("mlp 64-256-256-1, batch 256", 256, (64, 256, 256, 1)),
    Case("mlp 8-32-1, batch 32", 32, (8, 32, 1)),
)


# ember ----------------------------------------------------------------------------


class EmberStep:
    """The training step written the way an ember user writes it."""

    def __init__(self, case: Case, x: np.ndarray, y: np.ndarray) -> None:
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(case.dims[:-1], case.dims[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.model = nn.Sequential(*layers[:-1])
        self.opt = optim.SGD(
            self.model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM
        )
        self.loss_fn = nn.MSELoss()
        self.x, self.y = ember.tensor(x), ember.tensor(y)
        self.phases: dict[str, list[float]] = {
            "forward": [],
            "backward": [],
            "step": [],
        }

    def weights(self) -> list[np.ndarray]:
        return [p.numpy() for p in self.model.parameters()]

    def __call__(self) -> float:
        t0 = time.process_time()
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(self.x), self.y)
        t1 = time.process_time()
        loss.backward()
        t2 = time.process_time()
        self.opt.step()
        t3 = time.process_time()
        for phase, seconds in zip(self.phases.values(), (t1 - t0, t2 - t1, t3 - t2)):
            phase.append(seconds)
        return loss.item()


# numpy ----------------------------------------------------------------------------


class NumpyStep:
    """The same step by hand: preallocated buffers, in-place updates, no allocation
    in the loop beyond numpy's own temporaries for reductions."""

    def __init__(self, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> None:
        self.w = [w.copy() for w in weights[0::2]]
        self.b = [b.copy() for b in weights[1::2]]
        self.x, self.y = x, y
        batch = x.shape[0]
        self.z = [np.empty((batch, w.shape[0]), np.float32) for w in self.w]
        self.a = [np.empty_like(z) for z in self.z[:-1]]
        self.mask = [np.empty(z.shape, bool) for z in self.z[:-1]]
        self.gz = [np.empty_like(z) for z in self.z]
        self.gw = [np.empty_like(w) for w in self.w]
        self.gb = [np.empty_like(b) for b in self.b]
        self.params = [p for pair in zip(self.w, self.b) for p in pair]
        self.grads = [g for pair in zip(self.gw, self.gb) for g in pair]
        self.bufs = [np.zeros_like(p) for p in self.params]
        self.scratch = [np.empty_like(p) for p in self.params]
        self.first = True
        self.scale = np.float32(2.0 / y.size)

    def weights(self) -> list[np.ndarray]:
        return self.params

    def __call__(self) -> float:
        last = len(self.w) - 1
        inputs = self.x
        for i, (w, b, z) in enumerate(zip(self.w, self.b, self.z)):
            np.matmul(inputs, w.T, out=z)
            z += b
            if i < last:
                np.greater(z, 0, out=self.mask[i])
                np.maximum(z, 0, out=self.a[i])
                inputs = self.a[i]
        diff = self.gz[last]
        np.subtract(self.z[last], self.y, out=diff)
        loss = float(np.dot(diff.ravel(), diff.ravel())) / self.y.size
        diff *= self.scale

        for i in range(last, -1, -1):
            g = self.gz[i]
            np.matmul(g.T, self.x if i == 0 else self.a[i - 1], out=self.gw[i])
            np.sum(g, axis=0, out=self.gb[i])
            if i > 0:
                np.matmul(g, self.w[i], out=self.gz[i - 1])
                np.multiply(self.gz[i - 1], self.mask[i - 1], out=self.gz[i - 1])

        for p, g, buf, tmp in zip(self.params, self.grads, self.bufs, self.scratch):
            if self.first:
                buf[...] = g
            else:
                buf *= MOMENTUM
                buf += g
            np.multiply(buf, LEARNING_RATE, out=tmp)
            p -= tmp
        self.first = False
        return loss


# torch (optional) -----------------------------------------------------------------


def torch_step(
    case: Case,
    weights: list[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    compiled: bool = False,
) -> Callable[[], float] | None:
    """The same step in torch eager (with ``compiled``, the model through
    ``torch.compile`` and the optimizer eager), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in zip(case.dims[:-1], case.dims[1:]):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights):
            p.copy_(torch.from_numpy(w))
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    loss_fn = torch.nn.MSELoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    forward = torch.compile(model) if compiled else model

    def step() -> float:
        opt.zero_grad()
        loss = loss_fn(forward(tx), ty)
        loss.backward()
        opt.step()
        return loss.item()

    return step


# Driver ---------------------------------------------------------------------------


def check_agreement(ember_step: EmberStep, numpy_step: NumpyStep) -> None:
    """Three steps of each from the same weights must give the same weights."""
    for _ in range(3):
        mine, reference = ember_step(), numpy_step()
        if not np.isclose(mine, reference, rtol=1e-4):
            raise AssertionError(f"losses differ: ember {mine}, numpy {reference}")
    for mine, reference in zip(ember_step.weights(), numpy_step.weights()):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-6)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def bench(case: Case, repeats: int, warmup: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case.batch, case.dims[0])).astype(np.float32)
    y = rng.standard_normal((case.batch, case.dims[-1])).astype(np.float32)
    ember.manual_seed(0)
    ember_step = EmberStep(case, x, y)
    start = [w.copy() for w in ember_step.weights()]
    numpy_step = NumpyStep(start, x, y)
    check_agreement(ember_step, numpy_step)

    runners: dict[str, Callable[[], float]] = {
        "ember eager": ember_step,
        "numpy by hand": numpy_step,
    }
    torch_runner = torch_step(case, start, x, y)
    if torch_runner is not None:
        runners["torch eager"] = torch_runner
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(warmup + repeats):
        for name, run in runners.items():
            w, c = time.perf_counter(), time.process_time()
            run()
            if round_index >= warmup:
                wall[name].append(time.perf_counter() - w)
                cpu[name].append(time.process_time() - c)

    print(f"\n{case.name} (medians of {repeats} steps)")
    print(f"  {'':14s} {'wall ms':>9s} {'ratio':>7s} {'cpu ms':>9s} {'ratio':>7s}")
    floors = median_ms(wall["numpy by hand"]), median_ms(cpu["numpy by hand"])
    for name in runners:
        cells = [
            f"{median_ms(samples):9.3f} {median_ms(samples) / floor:6.2f}x"
            for samples, floor in zip((wall[name], cpu[name]), floors)
        ]
        print(f"  {name:14s} " + " ".join(cells))
    phases = {name: median_ms(s[-repeats:]) for name, s in ember_step.phases.items()}
    total = sum(phases.values())
    shares = [f"{name} {ms:.3f} ms ({ms / total:.0%})" for name, ms in phases.items()]
    print("  ember phases (cpu): " + ", ".join(shares))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=300, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    args = parser.parse_args()
    print(
        f"ember {ember.__version__}, numpy {np.__version__}, python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}, OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"
    )
    for case in CASES:
        bench(case, args.repeats, args.warmup)


if __name__ == "__main__":
    main()
