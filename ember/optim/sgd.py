"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

With gradient ``g``, parameter ``p``, momentum ``mu``, dampening ``tau``, weight decay
``wd`` and learning rate ``lr``, one step is (the formulation PyTorch uses, after
Sutskever et al., 2013)::

    g = g + wd * p                          (when wd != 0)
    b = g                                   (first step)
    b = mu * b + (1 - tau) * g              (later steps)
    g = g + mu * b  if nesterov  else  b    (when mu != 0)
    p = p - lr * g

``maximize=True`` negates ``g`` first.
"""

from __future__ import annotations

from typing import Any

from ember.errors import ConfigError
from ember.optim.optimizer import Optimizer, ParamsT, require_non_negative
from ember.runtime.tensor import Tensor


class SGD(Optimizer):
    """Stochastic gradient descent; see the module docstring for the update.

    >>> import ember
    >>> from ember import optim
    >>> w = ember.nn.Parameter(ember.tensor([1.0, 2.0]))
    >>> opt = optim.SGD([w], lr=0.5, momentum=0.9)
    >>> (w * w).sum().backward()
    >>> opt.step()
    >>> w.tolist()
    [0.0, 0.0]
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def _check(self, group: dict[str, Any]) -> None:
        require_non_negative(
            group, "SGD", "lr", "momentum", "dampening", "weight_decay"
        )
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ConfigError(
                "SGD: nesterov momentum needs momentum > 0 and dampening = 0",
                op="SGD",
                expected="momentum > 0, dampening == 0",
                actual=f"momentum={group['momentum']}, dampening={group['dampening']}",
            )

    def _update(
        self, param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        momentum, decay = group["momentum"], group["weight_decay"]
        if group["maximize"]:
            grad = -grad
        if decay != 0:
            grad = grad + param * decay
        if momentum != 0:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = grad.clone()
            else:
                buffer.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
            grad = grad + buffer * momentum if group["nesterov"] else buffer
        param.sub_(grad, alpha=group["lr"])
