"""Loss modules: ``MSELoss``, ``L1Loss`` and ``HuberLoss``.

Each takes ``(prediction, target)`` of the same shape (ember does not broadcast inside
a loss: a (N, 1) prediction against a (N,) target is a ShapeError, not a silent
N x N comparison) and reduces with ``reduction`` = ``"mean"``, ``"sum"`` or
``"none"``.

    >>> import ember
    >>> from ember import nn
    >>> pred, target = ember.tensor([0.0, 3.0]), ember.tensor([1.0, 1.0])
    >>> nn.MSELoss()(pred, target).item()
    2.5
    >>> nn.L1Loss(reduction="sum")(pred, target).item()
    3.0
"""

from __future__ import annotations

from ember.errors import ConfigError
from ember.nn import functional as F
from ember.nn.module import Module
from ember.runtime.tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")


class _Loss(Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ConfigError(
                f"{type(self).__name__}: reduction must be one of {_REDUCTIONS}, got "
                f"{reduction!r}",
                op=type(self).__name__,
                expected=" or ".join(_REDUCTIONS),
                actual=reduction,
            )
        self.reduction = reduction

    def extra_repr(self) -> str:
        return "" if self.reduction == "mean" else f"reduction={self.reduction!r}"


class MSELoss(_Loss):
    """Mean squared error: ``mean((prediction - target) ** 2)``.

    >>> import ember
    >>> ember.nn.MSELoss()(ember.tensor([2.0]), ember.tensor([0.0])).item()
    4.0
    """

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(prediction, target, self.reduction)


class L1Loss(_Loss):
    """Mean absolute error: ``mean(|prediction - target|)``.

    >>> import ember
    >>> ember.nn.L1Loss()(ember.tensor([2.0]), ember.tensor([0.0])).item()
    2.0
    """

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(prediction, target, self.reduction)


class HuberLoss(_Loss):
    """``0.5 d**2`` where ``|d| < delta``, else ``delta (|d| - 0.5 delta)``.

    >>> import ember
    >>> ember.nn.HuberLoss(delta=1.0)(ember.tensor([3.0]), ember.tensor([0.0])).item()
    2.5
    """

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction)
        if not delta > 0:
            raise ConfigError(
                f"HuberLoss: delta must be positive, got {delta!r}",
                op="HuberLoss",
                expected="delta > 0",
                actual=delta,
            )
        self.delta = float(delta)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.huber_loss(prediction, target, self.reduction, self.delta)

    def extra_repr(self) -> str:
        parts = [
            super().extra_repr(),
            "" if self.delta == 1.0 else f"delta={self.delta}",
        ]
        return ", ".join(p for p in parts if p)
