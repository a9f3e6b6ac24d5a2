"""ember: a small deep-learning graph compiler with a PyTorch-like API.

>>> import ember
>>> x = ember.tensor([[1.0, -2.0], [3.0, 4.0]])
>>> (x.relu() * 2).sum().item()
16.0
"""

from __future__ import annotations

from ember import errors, settings
from ember.errors import EmberError
from ember.ir import dtypes
from ember.ir.dtypes import DType, float32, float64, int32, int64
from ember.ir.dtypes import bool_ as bool  # noqa: A001 - ember.bool mirrors torch.bool
from ember.ir.functions import (
    abs,
    add,
    amax,
    amin,
    argmax,
    argmin,
    broadcast_to,
    cast,
    cat,
    clamp,
    clone,
    contiguous,
    div,
    eq,
    erf,
    exp,
    expand,
    flatten,
    ge,
    gelu,
    gt,
    le,
    linear,
    log,
    log_softmax,
    logical_and,
    logical_not,
    logical_or,
    lt,
    matmul,
    maximum,
    mean,
    minimum,
    mul,
    narrow,
    ne,
    neg,
    permute,
    pow,
    relu,
    reshape,
    rsqrt,
    select,
    sigmoid,
    softmax,
    sqrt,
    squeeze,
    stack,
    sub,
    sum,
    tanh,
    transpose,
    unsqueeze,
    var,
    view,
    where,
)
from ember.runtime import autograd
from ember.runtime.autograd import enable_grad, no_grad
from ember.runtime.factories import (
    arange,
    empty,
    empty_like,
    from_numpy,
    full,
    full_like,
    manual_seed,
    ones,
    ones_like,
    rand,
    rand_like,
    randn,
    randn_like,
    tensor,
    zeros,
    zeros_like,
)
from ember.runtime.tensor import Tensor
from ember import nn, optim
from ember.compiler.compile import compile  # noqa: A001 - ember.compile mirrors torch.compile

__version__ = "0.1.0"

settings.configure_logging()

__all__ = [name for name in dir() if not name.startswith("_")]
