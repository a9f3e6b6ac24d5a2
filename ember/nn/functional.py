"""The functional forms of ember's layers and losses (``torch.nn.functional`` style).

Most are the registry functions of :mod:`ember.ir.functions` under their usual
names, so a model written with them traces exactly like one written with modules.
:func:`gelu` adds PyTorch's ``approximate`` argument.

    >>> import ember
    >>> import ember.nn.functional as F
    >>> x = ember.tensor([[-1.0, 2.0]])
    >>> F.relu(x).tolist(), F.mse_loss(x, ember.zeros(1, 2)).item()
    ([[0.0, 2.0]], 2.5)
"""

from __future__ import annotations

import math
from typing import Any

from ember.errors import ConfigError
from ember.ir import functions as _ops
from ember.ir.functions import (
    huber_loss,
    l1_loss,
    linear,
    log_softmax,
    mse_loss,
    relu,
    sigmoid,
    softmax,
    tanh,
)

__all__ = [
    "gelu",
    "huber_loss",
    "l1_loss",
    "linear",
    "log_softmax",
    "mse_loss",
    "relu",
    "sigmoid",
    "softmax",
    "tanh",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def check_gelu_approximate(approximate: str) -> str:
    """``approximate`` itself when :func:`gelu` accepts it, else a ConfigError."""
    if approximate not in ("none", "tanh"):
        raise ConfigError(
            f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}",
            op="gelu",
            expected="'none' or 'tanh'",
            actual=approximate,
        )
    return approximate


def gelu(x: Any, approximate: str = "none") -> Any:
    """GELU: ``x * Phi(x)`` exactly (``"none"``) or with the tanh formula (``"tanh"``).

    The tanh form is ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``
    (Hendrycks & Gimpel, 2016), built from primitive ops.

    >>> import ember
    >>> round(gelu(ember.tensor(1.0)).item(), 4), round(
    ...     gelu(ember.tensor(1.0), approximate="tanh").item(), 4)
    (0.8413, 0.8412)
    """
    if check_gelu_approximate(approximate) == "none":
        return _ops.gelu(x)
    inner = _ops.mul(
        _ops.add(x, _ops.mul(_ops.mul(_ops.mul(x, x), x), 0.044715)), _SQRT_2_OVER_PI
    )
    return _ops.mul(_ops.mul(x, 0.5), _ops.add(_ops.tanh(inner), 1.0))
