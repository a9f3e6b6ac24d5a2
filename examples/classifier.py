"""A classifier with a softmax output and a cross-entropy loss.

    ember dump examples/classifier.py:build --input 16x10 --input 16x3 --stage all
    python examples/classifier.py

``forward(x, target)`` takes features and one-hot targets and returns the class
probabilities and the mean cross-entropy, computed stably from ``log_softmax``.
Running the file trains it for a few steps on two separable blobs.
"""

from __future__ import annotations

import ember
from ember import nn


class Classifier(nn.Module):
    """A hidden layer, a linear readout, softmax probabilities and their loss."""

    def __init__(self, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, hidden)
        self.readout = nn.Linear(hidden, classes)

    def forward(
        self, x: ember.Tensor, target: ember.Tensor
    ) -> tuple[ember.Tensor, ember.Tensor]:
        logits = self.readout(self.hidden(x).gelu())
        probabilities = logits.softmax(-1)
        loss = -(logits.log_softmax(-1) * target).sum(-1).mean()
        return probabilities, loss


def build() -> Classifier:
    """The model ``ember dump`` loads: 10 features, 3 classes."""
    return Classifier(10, 12, 3)


def main() -> None:
    ember.manual_seed(0)
    model = build()
    labels = ember.tensor([i % 3 for i in range(48)])
    target = (labels.view(48, 1) == ember.arange(3).view(1, 3)).float()
    x = ember.randn(48, 10) + target @ ember.randn(3, 10) * 3.0
    optimizer = ember.optim.Adam(model.parameters(), lr=0.05)
    for step in range(60):
        _, loss = model(x, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            print(f"step {step:2d}  cross-entropy {loss.item():.4f}")
    probabilities, loss = model(x, target)
    accuracy = (probabilities.argmax(-1) == labels).float().mean().item()
    print(f"final cross-entropy {loss.item():.4f}, accuracy {accuracy:.2f}")

    compiled = ember.compile(model)
    compiled_probabilities, compiled_loss = compiled(x, target)
    gap = (compiled_probabilities - probabilities).abs().max().item()
    print(
        f"compiled vs eager: largest difference {gap}, loss {compiled_loss.item():.4f}"
    )


if __name__ == "__main__":
    main()
