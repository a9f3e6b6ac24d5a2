"""Compiled training against hand-written numpy: where ``ember.compile`` stands.

Three workloads, each timed against the numpy program a careful engineer writes:

- MLP training step, batch 256, 64-256-256-1, ReLU, MSE, SGD with momentum 0.9
  (target: compiled at most 0.8x the numpy step);
- MLP training step, batch 32, 8-32-1 (target: at most 0.5x numpy);
- linear regression, 100,000 x 100, minibatch SGD with batch 512 for 5 epochs
  (target: at most 0.7x the numpy loop, with the same final loss).

The linear regression also runs its compiled step as ``step.loop(batches)`` once
per epoch: the same calls, run one after the other in native code
(docs/training.md), against a Python loop that calls the step per batch.

Two compiled variants are timed: "compiled model" (``ember.compile(model,
backend="llvm")``) runs its forward and backward as compiled programs while the
loss, ``backward()`` on it and the optimizer stay eager, as torch.compile users get
them; "compiled step" compiles the whole step function (zero_grad, forward, loss,
backward, ``optimizer.step()``) into one program (:mod:`ember.compiler.step`),
whose first call runs eagerly and whose second traces and compiles. The MLP steps
reuse the numpy step and the agreement check of ``bench_train_step.py``; each
compiled variant must agree with the numpy step before anything is timed. Figures
are medians of wall-clock time per step: each MLP sample is the mean of a block of
consecutive steps lasting ~5 ms (a training loop runs its step back to back; timing
single calls between the other implementations' calls mostly measures their cache
evictions), the blocks of the implementations interleaved so that machine noise hits
all alike; compile time is excluded (warm-up steps) and reported separately. With
torch installed, torch eager and torch.compile (the model compiled, the optimizer
eager) run the same MLP steps on one intra-op thread (with two, torch waits on the
busy second core of a shared machine and takes 24 ms for the small step).

numpy's BLAS runs on one thread (``OPENBLAS_NUM_THREADS=1``): its hand-written MLP
step is faster so (1.8 ms against 2.1 ms with OpenBLAS's two threads on the 2-core
machines we measure on). ember's own worker thread runs independent large
products of the compiled step side by side (docs/codegen.md); "step, in turn" is the
same compiled step built with ``EMBER_CONCURRENT=0``, for comparison.

Run: ``OPENBLAS_NUM_THREADS=1 python benchmarks/bench_training.py`` (``--repeats N``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
from bench_train_step import (
    CASES,
    Case,
    EmberStep,
    NumpyStep,
    check_agreement,
    torch_step,
)

import ember
from ember import nn, optim, settings

TARGETS = {CASES[0].name: 0.8, CASES[1].name: 0.5}
#: How long one timed block of consecutive steps lasts (see :func:`interleaved`).
BLOCK_SECONDS = 0.005
REGRESSION_TARGET = 0.7


class CompiledModel(EmberStep):
    """EmberStep with the model compiled by the LLVM backend."""

    def __init__(self, case: Case, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__(case, x, y)
        start = time.perf_counter()
        self.model = ember.compile(self.model, backend="llvm")
        self.model(self.x)  # the plain forward program, then the training one
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.opt.zero_grad()
        self.compile_seconds = time.perf_counter() - start


class WholeStep(EmberStep):
    """The whole training step compiled by the LLVM backend into one program."""

    def __init__(self, case: Case, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__(case, x, y)
        model, opt, loss_fn = self.model, self.opt, self.loss_fn

        def train_step(x: ember.Tensor, y: ember.Tensor) -> ember.Tensor:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss

        self.step = ember.compile(train_step, backend="llvm")
        self.compile_seconds = 0.0

    def __call__(self) -> float:
        if self.step.calls == 1:  # the call that traces and compiles
            start = time.perf_counter()
            loss = self.step(self.x, self.y).item()
            self.compile_seconds = time.perf_counter() - start
            return loss
        return self.step(self.x, self.y).item()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def interleaved(
    runners: dict[str, Callable[[], object]], repeats: int, block_seconds: float = 0.0
) -> dict:
    """Wall-clock seconds per call of each runner, ``repeats`` samples, in turns.

    With ``block_seconds``, a sample is the mean of a block of consecutive calls
    lasting about that long (as a training loop calls its step back to back), so
    that one runner's caches are not evicted by the others between its calls; the
    blocks still alternate, so machine noise hits all runners alike.
    """
    sizes = {name: 1 for name in runners}
    if block_seconds:
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(5):
                run()
            each = (time.perf_counter() - start) / 5
            sizes[name] = max(1, round(block_seconds / each))
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            size = sizes[name]
            start = time.perf_counter()
            for _ in range(size):
                run()
            times[name].append((time.perf_counter() - start) / size)
    return times


def torch_runners(
    case: Case, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray
) -> dict[str, Callable[[], object]]:
    """torch eager and torch.compile (model compiled, optimizer eager: what
    torch.compile users get) for the same step, when torch is installed."""
    try:
        import torch
    except ImportError:
        return {}
    # One intra-op thread, as numpy's BLAS: with two, torch's thread pool waits
    # on a busy second core here (24 ms for the small step instead of 0.4 ms).
    torch.set_num_threads(1)
    eager = torch_step(case, weights, x, y)
    compiled = torch_step(case, weights, x, y, compiled=True)
    assert eager is not None and compiled is not None
    for _ in range(3):  # torch.compile traces and compiles
        compiled()
    return {"torch eager": eager, "torch.compile": compiled}


def bench_step(case: Case, repeats: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case.batch, case.dims[0])).astype(np.float32)
    y = rng.standard_normal((case.batch, case.dims[-1])).astype(np.float32)
    ember.manual_seed(0)
    compiled = CompiledModel(case, x, y)
    ember.manual_seed(0)
    whole = WholeStep(case, x, y)
    with settings.override(concurrent_products=False):
        # The same step with its matrix products run one after the other: what
        # running independent products side by side gains (docs/codegen.md).
        ember.manual_seed(0)
        in_turn = WholeStep(case, x, y)
        check_agreement(in_turn, NumpyStep(in_turn.weights(), x, y))
    ember.manual_seed(0)
    eager = EmberStep(case, x, y)
    numpy_step = NumpyStep([w.copy() for w in compiled.weights()], x, y)
    check_agreement(compiled, numpy_step)
    check_agreement(whole, NumpyStep([w.copy() for w in eager.weights()], x, y))
    runners = {
        "compiled step": whole,
        "step, in turn": in_turn,
        "compiled model": compiled,
        "numpy by hand": numpy_step,
        "ember eager": eager,
        **torch_runners(case, [w.copy() for w in eager.weights()], x, y),
    }
    interleaved(runners, 20)

    times = interleaved(runners, repeats, BLOCK_SECONDS)
    floor = median_ms(times["numpy by hand"])
    print(
        f"\n{case.name} (medians of {repeats} samples, each the mean of a block "
        f"of steps lasting ~{BLOCK_SECONDS * 1e3:.0f} ms; wall ms per step)"
    )
    for name, samples in times.items():
        ms = median_ms(samples)
        print(f"  {name:15s} {ms:9.3f}  {ms / floor:5.2f}x numpy")
    target = TARGETS[case.name]
    for name in ("compiled step", "step, in turn", "compiled model"):
        ratio = median_ms(times[name]) / floor
        verdict = "met" if ratio <= target else "missed"
        print(f"  {name}, target <= {target}x numpy: {verdict} ({ratio:.2f}x)")
    print(
        f"  compile: whole step {whole.compile_seconds:.2f} s (trace, autodiff, "
        f"one program), model {compiled.compile_seconds:.2f} s (forward and "
        "backward programs)"
    )
    phases = {name: statistics.median(s) * 1e3 for name, s in compiled.phases.items()}
    shares = ", ".join(f"{name} {ms:.3f} ms" for name, ms in phases.items())
    print(f"  compiled model phases (cpu; forward includes the eager loss): {shares}")


# Linear regression ------------------------------------------------------------------

SAMPLES, FEATURES, BATCH, EPOCHS, LR = 100_000, 100, 512, 5, 0.05


def regression_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SAMPLES, FEATURES)).astype(np.float32)
    w = rng.standard_normal((FEATURES, 1)).astype(np.float32) / 10
    y = (x @ w + 0.5 + 0.1 * rng.standard_normal((SAMPLES, 1))).astype(np.float32)
    return x, y


def numpy_regression(x: np.ndarray, y: np.ndarray) -> float:
    """Minibatch SGD by hand; returns the mean squared error of the last batch."""
    w = np.zeros((FEATURES, 1), np.float32)
    b = np.zeros(1, np.float32)
    loss = 0.0
    for _ in range(EPOCHS):
        for start in range(0, SAMPLES, BATCH):
            xb, yb = x[start : start + BATCH], y[start : start + BATCH]
            diff = xb @ w
            diff += b
            diff -= yb
            loss = float(np.dot(diff.ravel(), diff.ravel())) / len(yb)
            diff *= np.float32(2.0 * LR / len(yb))
            w -= xb.T @ diff
            b -= diff.sum(0)
    return loss


class CompiledRegression:
    """The same loop with a compiled ``nn.Linear`` and an eager SGD, or with
    ``whole=True`` the whole step compiled; with ``loop=True`` too, each epoch
    runs as ``step.loop(batches)`` (the calls one after the other in native code)
    instead of a Python loop of calls."""

    def __init__(
        self, x: np.ndarray, y: np.ndarray, whole: bool = False, loop: bool = False
    ) -> None:
        self.loop = loop
        self.x, self.y = ember.from_numpy(x), ember.from_numpy(y)
        self.module = nn.Linear(FEATURES, 1)
        self.opt = optim.SGD(self.module.parameters(), lr=LR)
        model = self.module if whole else ember.compile(self.module, backend="llvm")
        opt = self.opt

        def train_step(xb: ember.Tensor, yb: ember.Tensor) -> ember.Tensor:
            loss = nn.functional.mse_loss(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        self.step = ember.compile(train_step, backend="llvm") if whole else train_step
        # Batches are views of the data: the same layouts every epoch.
        self.batches = [
            (self.x[s : s + BATCH], self.y[s : s + BATCH])
            for s in range(0, SAMPLES, BATCH)
        ]

    def __call__(self) -> float:
        with ember.no_grad():
            self.module.weight.zero_()
            self.module.bias.zero_()
        loss = None
        for _ in range(EPOCHS):
            if self.loop:
                loss = self.step.loop(self.batches)[-1]  # type: ignore[attr-defined]
                continue
            for xb, yb in self.batches:
                loss = self.step(xb, yb)
        assert loss is not None
        return loss.item()


def bench_regression(repeats: int) -> None:
    x, y = regression_data()
    runners = {
        "step.loop": CompiledRegression(x, y, whole=True, loop=True),
        "loop, in turn": CompiledRegression(x, y, whole=True, loop=True),
        "compiled step": CompiledRegression(x, y, whole=True),
        "compiled model": CompiledRegression(x, y),
    }
    losses, firsts = {}, {}
    for name, run in runners.items():
        # "loop, in turn" runs its streamed passes on the calling thread alone.
        in_turn = name == "loop, in turn"
        with settings.override(concurrent_products=False) if in_turn else nullcontext():
            start = time.perf_counter()
            losses[name] = run()  # compiles for the full and the last, short batch
            firsts[name] = time.perf_counter() - start
    numpy_loss = numpy_regression(x, y)
    times = interleaved(
        {**runners, "numpy by hand": lambda: numpy_regression(x, y)}, repeats
    )
    floor = median_ms(times["numpy by hand"])
    print(f"\nlinear regression {SAMPLES} x {FEATURES}, batch {BATCH}, {EPOCHS} epochs")
    for name, samples in times.items():
        ms = median_ms(samples)
        print(f"  {name:15s} {ms:9.1f}  {ms / floor:5.2f}x numpy")
    for name in runners:
        ratio = median_ms(times[name]) / floor
        verdict = "met" if ratio <= REGRESSION_TARGET else "missed"
        print(
            f"  {name}, target <= {REGRESSION_TARGET}x numpy: {verdict} "
            f"({ratio:.2f}x); final loss {losses[name]:.6f} (numpy {numpy_loss:.6f});"
            f" first run, compiles included: {firsts[name] * 1e3:.0f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--regression-repeats", type=int, default=5)
    args = parser.parse_args()
    for case in CASES:
        bench_step(case, args.repeats)
    bench_regression(args.regression_repeats)


if __name__ == "__main__":
    main()
