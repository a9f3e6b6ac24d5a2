"""Time to the first compiled training step, in a fresh process.

Each run starts a new Python process that imports ember, builds the MLP 64-256-256-1
of ``bench_training.py`` with SGD (momentum 0.9), compiles its whole training step
with ``ember.compile(step, backend="llvm")`` and runs two steps (the first runs
eagerly and creates the momentum buffers, the second traces and compiles) and one
more, compiled. "cold" runs start from an empty kernel cache (``EMBER_CACHE_DIR``
pointing at a new folder), "warm" ones reuse the folder the cold run filled. The
figures are wall-clock seconds of the whole process, medians of ``--repeats`` runs,
with the import and the compile shares the child reports.

Run: ``python benchmarks/bench_first_step.py`` (``--repeats N``).
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

CHILD = r"""
import json, time
start = time.perf_counter()
import numpy as np
import ember
from ember import nn, optim
imported = time.perf_counter()
ember.manual_seed(0)
dims = (64, 256, 256, 1)
layers = []
for fan_in, fan_out in zip(dims[:-1], dims[1:]):
    layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
model = nn.Sequential(*layers[:-1])
opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x, y = ember.randn(256, 64), ember.randn(256, 1)

def step(x, y):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss

compiled = ember.compile(step, backend="llvm")
compiled(x, y).item()
before = time.perf_counter()
compiled(x, y).item()
compiled_at = time.perf_counter()
compiled(x, y).item()
done = time.perf_counter()
assert compiled.eager_calls == 1 and len(compiled.cache) == 1
print(json.dumps({"import": imported - start, "compile": compiled_at - before,
                  "total": done - start}))
"""


def run_child(cache: str) -> tuple[float, dict]:
    env = dict(os.environ, EMBER_CACHE_DIR=cache)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(out.stderr)
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(run_child(cache))
            warm.append(run_child(cache))
    print("fresh process: import ember, compile the MLP 64-256-256-1 SGD step, run it")
    for name, runs in (("cold cache", cold), ("warm cache", warm)):
        wall = statistics.median(w for w, _ in runs)
        inside = {k: statistics.median(r[k] for _, r in runs) for k in runs[0][1]}
        print(
            f"  {name}: {wall:.2f} s wall (process start included); inside: import "
            f"{inside['import']:.2f} s, trace + compile {inside['compile']:.2f} s, "
            f"until the third step {inside['total']:.2f} s"
        )


if __name__ == "__main__":
    main()
