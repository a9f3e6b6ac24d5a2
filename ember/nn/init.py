"""Weight initializers that fill a tensor in place from ember's seeded generator.

Every function draws from ``ember.runtime.factories.generator()`` (reseeded by
``ember.manual_seed``) unless a numpy ``generator`` is passed, writes under
``ember.no_grad()`` and returns the tensor it filled. Values are drawn in float64 and
rounded to the tensor's dtype. A tensor with no elements is returned unchanged.

The scale formulas follow Glorot & Bengio (2010) for ``xavier_*`` and He et al.
(2015) for ``kaiming_*``, with the gains PyTorch uses, so a model initialized here
has the same distributions as its PyTorch twin (not the same numbers: the random
streams differ).

    >>> import ember
    >>> from ember.nn import init
    >>> w = ember.empty(256, 64)
    >>> _ = init.kaiming_uniform_(w, a=5 ** 0.5)
    >>> bound = 1 / 64 ** 0.5
    >>> bool(w.abs().max().item() <= bound)
    True
"""

from __future__ import annotations

import math

import numpy as np

from ember.errors import ConfigError, DTypeError, ShapeError
from ember.runtime.autograd import no_grad
from ember.runtime.factories import generator as global_generator
from ember.runtime.tensor import Tensor

_GAINS = {
    "linear": 1.0,
    "identity": 1.0,
    "sigmoid": 1.0,
    "tanh": 5.0 / 3.0,
    "relu": math.sqrt(2.0),
    "selu": 3.0 / 4.0,
}


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for ``nonlinearity`` (``leaky_relu`` takes its slope).

    >>> round(calculate_gain("relu"), 4), round(calculate_gain("leaky_relu", 0.2), 4)
    (1.4142, 1.3868)
    """
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ConfigError(
                f"leaky_relu slope must be a number, got {slope!r}", op="calculate_gain"
            )
        return math.sqrt(2.0 / (1.0 + slope**2))
    if nonlinearity not in _GAINS:
        raise ConfigError(
            f"unknown nonlinearity {nonlinearity!r}",
            op="calculate_gain",
            expected=", ".join(sorted([*_GAINS, "leaky_relu"])),
            actual=nonlinearity,
        )
    return _GAINS[nonlinearity]


def calculate_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight shaped ``(out, in, *receptive_field)``."""
    if tensor.ndim < 2:
        raise ShapeError(
            f"fan in and fan out need a tensor of at least 2 dims, got shape "
            f"{tensor.shape}",
            op="init",
            expected="a weight shaped (out_features, in_features, ...)",
            actual=tensor.shape,
            hint="initialize 1-d tensors such as biases with uniform_ or zeros_",
        )
    receptive = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _fan(tensor: Tensor, mode: str) -> int:
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    if mode not in ("fan_in", "fan_out"):
        raise ConfigError(
            f"mode must be 'fan_in' or 'fan_out', got {mode!r}",
            op="init",
            expected="fan_in or fan_out",
            actual=mode,
        )
    return fan_in if mode == "fan_in" else fan_out


def _fill(tensor: Tensor, values: np.ndarray | float, op: str) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise DTypeError(
            f"{op} expects an ember Tensor, got {type(tensor).__name__}", op=op
        )
    if not tensor.dtype.is_floating_point:
        raise DTypeError(
            f"{op} fills floating tensors only, got {tensor.dtype.name}",
            op=op,
            expected="float32 or float64",
            actual=tensor.dtype.name,
        )
    with no_grad():
        tensor.copy_(values)
    return tensor


def _rng(generator: np.random.Generator | None) -> np.random.Generator:
    return global_generator() if generator is None else generator


def uniform_(
    tensor: Tensor,
    a: float = 0.0,
    b: float = 1.0,
    generator: np.random.Generator | None = None,
) -> Tensor:
    """Fill with samples from U(a, b)."""
    if not a <= b:
        raise ConfigError(f"uniform_: a ({a}) must not exceed b ({b})", op="uniform_")
    return _fill(tensor, _rng(generator).uniform(a, b, tensor.shape), "uniform_")


def normal_(
    tensor: Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    generator: np.random.Generator | None = None,
) -> Tensor:
    """Fill with samples from N(mean, std**2)."""
    if std < 0:
        raise ConfigError(f"normal_: std must be non-negative, got {std}", op="normal_")
    return _fill(tensor, _rng(generator).normal(mean, std, tensor.shape), "normal_")


def constant_(tensor: Tensor, val: float) -> Tensor:
    """Fill with ``val``."""
    return _fill(tensor, val, "constant_")


def zeros_(tensor: Tensor) -> Tensor:
    """Fill with zeros."""
    return _fill(tensor, 0.0, "zeros_")


def ones_(tensor: Tensor) -> Tensor:
    """Fill with ones."""
    return _fill(tensor, 1.0, "ones_")


def xavier_uniform_(
    tensor: Tensor, gain: float = 1.0, generator: np.random.Generator | None = None
) -> Tensor:
    """U(-b, b) with ``b = gain * sqrt(6 / (fan_in + fan_out))``."""
    if tensor.numel() == 0:
        return tensor
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(
    tensor: Tensor, gain: float = 1.0, generator: np.random.Generator | None = None
) -> Tensor:
    """N(0, std**2) with ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    if tensor.numel() == 0:
        return tensor
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def kaiming_uniform_(
    tensor: Tensor,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: np.random.Generator | None = None,
) -> Tensor:
    """U(-b, b) with ``b = gain * sqrt(3 / fan)``; ``a`` is the leaky_relu slope."""
    if tensor.numel() == 0:
        return tensor
    gain = calculate_gain(nonlinearity, a)
    bound = gain * math.sqrt(3.0 / _fan(tensor, mode))
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(
    tensor: Tensor,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: np.random.Generator | None = None,
) -> Tensor:
    """N(0, std**2) with ``std = gain / sqrt(fan)``; ``a`` is the leaky_relu slope."""
    if tensor.numel() == 0:
        return tensor
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    return normal_(tensor, 0.0, std, generator)
