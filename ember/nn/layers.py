"""Layers with parameters or none: ``Linear``, ``Identity`` and the activations.

>>> import ember
>>> from ember import nn
>>> nn.Linear(4, 2)
Linear(in_features=4, out_features=2, bias=True)
>>> nn.GELU(approximate="tanh")
GELU(approximate='tanh')
"""

from __future__ import annotations

import math
from typing import Any

from ember.errors import ShapeError
from ember.nn import functional as F
from ember.nn import init
from ember.nn.module import Module
from ember.nn.parameter import Parameter
from ember.runtime.factories import empty
from ember.runtime.tensor import Tensor


def _features(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ShapeError(
            f"Linear: {what} must be a non-negative int, got {value!r}",
            op="Linear",
            expected="an int >= 0",
            actual=value,
        )
    return value


class Linear(Module):
    """``y = x @ weight.T + bias`` with ``weight`` of shape (out, in).

    Initialized as PyTorch does: the weight from ``kaiming_uniform_(a=sqrt(5))``,
    which is U(-1/sqrt(in), 1/sqrt(in)), and the bias from the same range.

    >>> import ember
    >>> layer = ember.nn.Linear(3, 2)
    >>> layer.weight.shape, layer.bias.shape, layer(ember.ones(4, 3)).shape
    ((2, 3), (2,), (4, 2))
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, dtype: Any = None
    ) -> None:
        super().__init__()
        self.in_features = _features(in_features, "in_features")
        self.out_features = _features(out_features, "out_features")
        self.weight = Parameter(empty(out_features, in_features, dtype=dtype))
        if bias:
            self.bias = Parameter(empty(out_features, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw fresh weights and bias from the global generator."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class Identity(Module):
    """Returns its input unchanged; accepts and ignores any constructor arguments.

    >>> import ember
    >>> x = ember.ones(2)
    >>> ember.nn.Identity(54, unused="x")(x) is x
    True
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: Any) -> Any:
        return x


class ReLU(Module):
    """``max(x, 0)`` elementwise.

    >>> import ember
    >>> ember.nn.ReLU()(ember.tensor([-1.0, 2.0])).tolist()
    [0.0, 2.0]
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class Tanh(Module):
    """The hyperbolic tangent elementwise.

    >>> import ember
    >>> ember.nn.Tanh()(ember.tensor([0.0])).tolist()
    [0.0]
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.tanh(x)


class Sigmoid(Module):
    """``1 / (1 + exp(-x))`` elementwise.

    >>> import ember
    >>> ember.nn.Sigmoid()(ember.tensor([0.0])).tolist()
    [0.5]
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.sigmoid(x)


class GELU(Module):
    """``x * Phi(x)``; ``approximate="tanh"`` uses the tanh formula instead.

    >>> import ember
    >>> round(ember.nn.GELU()(ember.tensor([1.0])).item(), 4)
    0.8413
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = F.check_gelu_approximate(approximate)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"
