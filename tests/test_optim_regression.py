"""Training end to end: linear regression reaches the least-squares optimum.

The data are known weights plus Gaussian noise; ``numpy.linalg.lstsq`` gives the
smallest mean squared error any affine model can reach on them. A model trained
full-batch with ember.nn and ember.optim must come within 1% of it.
"""

from __future__ import annotations

import numpy as np
import pytest

import ember
from ember import nn, optim

SAMPLES, FEATURES, NOISE = 512, 6, 0.1


def _data() -> tuple[np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SAMPLES, FEATURES))
    weights = rng.uniform(-2, 2, (FEATURES, 1))
    y = x @ weights + 0.7 + NOISE * rng.standard_normal((SAMPLES, 1))
    design = np.hstack([x, np.ones((SAMPLES, 1))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    best = float(np.mean((design @ coef - y) ** 2))
    return x.astype(np.float32), y.astype(np.float32), best


CASES = {
    "sgd": (lambda ps: optim.SGD(ps, lr=0.1), 150),
    "sgd-momentum": (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9), 150),
    "adam": (lambda ps: optim.Adam(ps, lr=0.05), 400),
    "adamw": (lambda ps: optim.AdamW(ps, lr=0.05, weight_decay=1e-4), 400),
}


@pytest.mark.parametrize(("make", "steps"), CASES.values(), ids=CASES.keys())
def test_linear_regression_reaches_the_least_squares_loss(make, steps: int) -> None:
    x_np, y_np, best = _data()
    x, y = ember.tensor(x_np), ember.tensor(y_np)
    ember.manual_seed(0)
    model = nn.Linear(FEATURES, 1)
    opt = make(model.named_parameters())
    loss_fn = nn.MSELoss()
    start = loss_fn(model(x), y).item()

    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    with ember.no_grad():
        final = loss_fn(model(x), y).item()
    assert start > 100 * best, "the test needs an untrained model to start far away"
    assert best <= final * (1 + 1e-4)  # nothing beats least squares
    assert final <= 1.01 * best, f"final loss {final:.6g} vs optimum {best:.6g}"


def test_a_small_mlp_fits_a_nonlinear_target() -> None:
    rng = np.random.default_rng(1)
    x_np = rng.uniform(-2, 2, (256, 1)).astype(np.float32)
    y_np = np.sin(x_np)
    x, y = ember.tensor(x_np), ember.tensor(y_np)
    ember.manual_seed(1)
    model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        loss = nn.MSELoss()(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 2e-3
