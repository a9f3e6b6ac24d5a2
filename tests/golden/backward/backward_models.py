"""Small models whose backward dumps are pinned by ``tests/test_autodiff_golden.py``.

Each shows one thing the graph autodiff and the partition must get right.
"""

from __future__ import annotations

import ember
from ember import nn


class SharedHidden(nn.Module):
    """A hidden value read on three paths: its gradient is the sum of three."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 4)

    def forward(self, x: ember.Tensor) -> ember.Tensor:
        h = self.linear(x)
        return (h.exp() + h * h).sum(1) + h.mean(1)


class GatedUnit(nn.Module):
    """``h * sigmoid(h)`` plus a broadcast bias: the sigmoid is recomputed in the
    backward from the saved product instead of being saved itself."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(ember.randn(6, 5))
        self.bias = nn.Parameter(ember.zeros(5))

    def forward(self, x: ember.Tensor) -> ember.Tensor:
        h = x @ self.weight
        return (h * h.sigmoid() + self.bias).sum()


class StridedInput(nn.Module):
    """Reads every second row of its transposed input: gradients of the
    parameters through strided views of an input."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(ember.ones(6))

    def forward(self, x: ember.Tensor) -> ember.Tensor:
        rows = x.T[::2]  # strides (1, 4) then (2, 4)
        return (rows * self.scale).tanh().sum(0)
