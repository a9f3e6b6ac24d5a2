"""Linear regression: one ``nn.Linear`` layer fitted by mean squared error.

    ember dump examples/linear_regression.py:build --input 64x8 --stage all
    python examples/linear_regression.py

Running the file fits the model to noisy synthetic data with SGD, then checks that
the compiled model (``ember.compile``) predicts what the eager one does.
"""

from __future__ import annotations

import ember
from ember import nn


class LinearRegression(nn.Module):
    """``y = x @ w.T + b`` for ``features`` inputs and one output."""

    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1)

    def forward(self, x: ember.Tensor) -> ember.Tensor:
        return self.linear(x)


def build() -> LinearRegression:
    """The model ``ember dump`` loads: eight features."""
    return LinearRegression(8)


def main() -> None:
    ember.manual_seed(0)
    true_w = ember.randn(8, 1)
    x = ember.randn(256, 8)
    y = x @ true_w + 0.5 + 0.01 * ember.randn(256, 1)

    model = build()
    loss_fn = nn.MSELoss()
    optimizer = ember.optim.SGD(model.parameters(), lr=0.1)
    for step in range(150):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            print(f"step {step:3d}  mse {loss.item():.5f}")
    final = loss_fn(model(x), y).item()
    print(f"final mse {final:.5f}, bias {model.linear.bias.item():.3f}")

    compiled = ember.compile(model)
    gap = (compiled(x) - model(x)).abs().max().item()
    print(f"compiled vs eager: largest difference {gap}")


if __name__ == "__main__":
    main()
