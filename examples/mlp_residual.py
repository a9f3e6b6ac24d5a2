"""A multilayer perceptron with residual connections.

    ember dump examples/mlp_residual.py:build --input 32x16 --stage all
    python examples/mlp_residual.py

Every block adds its input back to its output, so each hidden value is used on two
paths (the block and the skip connection); the input projection is also reused by
the head. Those shared values are what autodiff must sum gradients for.
"""

from __future__ import annotations

import ember
from ember import nn


class ResidualBlock(nn.Module):
    """``h + W2 relu(W1 h)``: a two-layer update added to its input."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, h: ember.Tensor) -> ember.Tensor:
        return h + self.down(self.up(h).relu())


class ResidualMLP(nn.Module):
    """Project, run ``depth`` residual blocks, then read out ``outputs`` values."""

    def __init__(self, inputs: int, width: int, outputs: int, depth: int = 2) -> None:
        super().__init__()
        self.project = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList(
            [ResidualBlock(width, 2 * width) for _ in range(depth)]
        )
        self.head = nn.Linear(width, outputs)

    def forward(self, x: ember.Tensor) -> ember.Tensor:
        start = self.project(x).tanh()
        h = start
        for block in self.blocks:
            h = block(h)
        # The projected input feeds the head a second time: a long skip connection.
        return self.head(h + start)


def build() -> ResidualMLP:
    """The model ``ember dump`` loads: 16 inputs, width 8, 4 outputs, 2 blocks."""
    return ResidualMLP(16, 8, 4, depth=2)


def main() -> None:
    ember.manual_seed(0)
    model = build()
    x = ember.randn(32, 16)
    out = model(x)
    out.sum().backward()
    grads = {name: p.grad.abs().sum().item() for name, p in model.named_parameters()}
    print("output shape", out.shape)
    print("gradient mass of the projection:", round(grads["project.weight"], 4))

    compiled = ember.compile(model)
    gap = (compiled(x) - out).abs().max().item()
    print(f"compiled vs eager: largest difference {gap}")


if __name__ == "__main__":
    main()
