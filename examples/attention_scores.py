"""Attention scores: a model that transposes and slices its input.

    ember dump examples/attention_scores.py:build --input 4x6x8 --stage traced
    python examples/attention_scores.py

The projected input is split into queries and keys by slicing the last dimension
(views with an offset), the keys are transposed (a view with swapped strides), and
every second position of the sequence is dropped (a view with a doubled stride).
The traced graph shows each view's strides and offset.
"""

from __future__ import annotations

import math

import ember
from ember import nn


class AttentionScores(nn.Module):
    """Scaled dot-product attention weights over every other position."""

    def __init__(self, dim: int, head: int) -> None:
        super().__init__()
        self.head = head
        self.project = nn.Linear(dim, 2 * head, bias=False)

    def forward(self, x: ember.Tensor) -> ember.Tensor:
        qk = self.project(x[:, ::2, :])  # every second position: stride doubled
        q = qk[..., : self.head]  # a view of the first half of each row
        k = qk[..., self.head :]  # the second half: offset by `head` elements
        scores = q @ k.transpose(1, 2) / math.sqrt(self.head)
        return scores.softmax(-1)


def build() -> AttentionScores:
    """The model ``ember dump`` loads: 8 input features, queries and keys of size 4."""
    return AttentionScores(8, 4)


def main() -> None:
    ember.manual_seed(0)
    model = build()
    x = ember.randn(4, 6, 8)
    weights = model(x)
    print(
        "attention weights",
        weights.shape,
        "rows sum to",
        round(weights.sum(-1).mean().item(), 4),
    )
    print("keys transposed: strides", model.project(x)[..., 4:].transpose(1, 2).strides)

    compiled = ember.compile(model)
    gap = (compiled(x) - weights).abs().max().item()
    print(f"compiled vs eager: largest difference {gap}")


if __name__ == "__main__":
    main()
