"""Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019).

With gradient ``g``, parameter ``p``, step ``t`` (counted per parameter from 1),
betas ``b1, b2``, learning rate ``lr`` and weight decay ``wd``, one step is::

    g = g + wd * p                      (Adam, when wd != 0: an L2 penalty)
    p = p * (1 - lr * wd)               (AdamW instead: decoupled decay)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    v_max = max(v_max, v)               (amsgrad; then v_max replaces v below)
    p = p - (lr / (1 - b1**t)) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)

This is PyTorch's arrangement of the bias corrections (``eps`` is added after the
second-moment correction), so both frameworks produce the same trajectories.
``maximize=True`` negates ``g`` first.
"""

from __future__ import annotations

import math
from typing import Any

from ember.errors import ConfigError
from ember.ir.functions import maximum
from ember.optim.optimizer import Optimizer, ParamsT, require_non_negative
from ember.runtime.factories import zeros_like
from ember.runtime.tensor import Tensor


class Adam(Optimizer):
    """Adam with optional L2 weight decay and AMSGrad; see the module docstring.

    >>> import ember
    >>> from ember import optim
    >>> w = ember.nn.Parameter(ember.tensor([1.0, -1.0]))
    >>> opt = optim.Adam([w], lr=0.1)
    >>> (w * w).sum().backward()
    >>> opt.step()
    >>> [round(v, 4) for v in w.tolist()]
    [0.9, -0.9]
    """

    _decoupled_decay = False

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def _check(self, group: dict[str, Any]) -> None:
        owner = type(self).__name__
        require_non_negative(group, owner, "lr", "eps", "weight_decay")
        betas = group["betas"]
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(
                f"{owner}: betas must be two numbers in [0, 1), got {betas!r}",
                op=owner,
                expected="0 <= beta < 1",
                actual=betas,
            )
        group["betas"] = tuple(betas)

    def _update(
        self, param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        lr, decay = group["lr"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        if not state:
            state.update(
                step=0, exp_avg=zeros_like(param), exp_avg_sq=zeros_like(param)
            )
        state["step"] += 1
        step = state["step"]

        if group["maximize"]:
            grad = -grad
        if decay != 0 and self._decoupled_decay:
            param.mul_(1 - lr * decay)
        elif decay != 0:
            grad = grad + param * decay

        exp_avg, second = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        second.mul_(beta2).add_(grad * grad, alpha=1 - beta2)
        if group["amsgrad"]:
            if "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = zeros_like(param)
            second = state["max_exp_avg_sq"].copy_(
                maximum(state["max_exp_avg_sq"], second)
            )

        if isinstance(step, Tensor) or not hasattr(type(step), "__ember_priority__"):
            denom = second.sqrt() / math.sqrt(1 - beta2**step) + group["eps"]
            param.sub_(exp_avg / denom, alpha=lr / (1 - beta1**step))
        else:
            # A traced value: a compiled training step holds the count as a
            # float64 0-d graph input (ember.compiler.step), which math.sqrt
            # cannot take. The same formula, in tensor ops.
            denom = second.sqrt() / (1 - beta2**step).sqrt() + group["eps"]
            param.sub_(exp_avg / denom * (lr / (1 - beta1**step)))


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.01): ``p *= 1 - lr * wd``.

    >>> import ember
    >>> from ember import optim
    >>> w = ember.nn.Parameter(ember.tensor([1.0]))
    >>> opt = optim.AdamW([w], lr=0.1, weight_decay=0.5)
    >>> w.grad = ember.zeros(1)
    >>> opt.step()
    >>> round(w.item(), 4)
    0.95
    """

    _decoupled_decay = True

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize
        )
