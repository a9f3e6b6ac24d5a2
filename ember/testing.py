"""Testing helpers for users and for ember's own tests.

:func:`gradcheck` compares the gradients ember's autograd computes with central
finite differences in float64: it perturbs every element of every differentiable
input by ``±eps``, evaluates the function without recording, and compares the
difference quotient of ``sum(output * cotangent)`` with the analytic vector-Jacobian
product for the same (seeded, random) cotangent.

    >>> import ember
    >>> x = ember.tensor([0.5, -1.5, 2.0], dtype=ember.float64)
    >>> gradcheck(lambda t: (t.exp() * t).sum(), [x])
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ember.runtime import autograd
from ember.runtime.factories import from_numpy
from ember.runtime.tensor import Tensor


def gradcheck(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    *,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    seed: int = 0,
) -> bool:
    """Check ``fn``'s gradients against central finite differences; True or raise.

    ``inputs`` may mix tensors and other arguments; floating-point tensors are the
    differentiable ones (use float64 so the differences are precise). ``fn`` returns
    a tensor or a tuple of tensors. Raises AssertionError naming the input, the
    element and both values when they differ by more than ``atol + rtol * |value|``,
    or when a gradient has another shape or dtype than its input.
    """
    bases = {
        i: x.numpy().copy()
        for i, x in enumerate(inputs)
        if isinstance(x, Tensor) and x.dtype.is_floating_point
    }
    if not bases:
        raise AssertionError("gradcheck: no floating-point tensor among the inputs")
    leaves = list(inputs)
    for i, base in bases.items():
        leaves[i] = from_numpy(base.copy()).requires_grad_()
    outputs = _as_tuple(fn(*leaves))
    rng = np.random.default_rng(seed)
    cotangents = [
        rng.standard_normal(out.shape).astype(out.dtype.np_dtype) for out in outputs
    ]
    analytic = _analytic(outputs, [leaves[i] for i in bases], cotangents)

    def objective(values: list[Any]) -> float:
        with autograd.no_grad():
            results = _as_tuple(fn(*values))
        return float(
            sum(
                np.sum(r.numpy().astype(np.float64) * c)
                for r, c in zip(results, cotangents)
            )
        )

    for grad, (i, base) in zip(analytic, bases.items()):
        _check_layout(grad, base, i)
        numeric = _numeric(objective, list(inputs), i, base, eps)
        _compare(grad, numeric, i, atol, rtol)
    return True


def _as_tuple(result: Any) -> tuple[Tensor, ...]:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def _analytic(
    outputs: tuple[Tensor, ...], wrt: list[Tensor], cotangents: list[np.ndarray]
) -> list[Tensor | None]:
    differentiable = [
        (out, c) for out, c in zip(outputs, cotangents) if out.requires_grad
    ]
    if not differentiable:
        return [None] * len(wrt)
    grads = autograd.grad(
        [out for out, _ in differentiable],
        wrt,
        grad_outputs=[from_numpy(c) for _, c in differentiable],
        allow_unused=True,
    )
    return list(grads)


def _numeric(
    objective: Callable[[list[Any]], float],
    values: list[Any],
    i: int,
    base: np.ndarray,
    eps: float,
) -> np.ndarray:
    """Central differences of ``objective`` in every element of input ``i``."""
    result = np.zeros(base.shape, dtype=np.float64)
    for index in np.ndindex(*base.shape):
        probe = base.copy()
        probe[index] = base[index] + eps
        values[i] = from_numpy(probe)
        above = objective(values)
        probe[index] = base[index] - eps
        values[i] = from_numpy(probe)
        below = objective(values)
        result[index] = (above - below) / (2 * eps)
    return result


def _check_layout(grad: Tensor | None, base: np.ndarray, i: int) -> None:
    if grad is None:
        return
    if grad.shape != base.shape or grad.dtype.np_dtype != base.dtype:
        raise AssertionError(
            f"gradcheck: the gradient of input {i} is {grad.meta.type_str()}, but "
            f"the input has shape {base.shape} and dtype {base.dtype}"
        )


def _compare(
    grad: Tensor | None, numeric: np.ndarray, i: int, atol: float, rtol: float
) -> None:
    analytic = np.zeros_like(numeric) if grad is None else grad.numpy()
    error = np.abs(analytic - numeric)
    bad = error > atol + rtol * np.abs(numeric)
    if bad.any():
        index = tuple(int(k) for k in np.argwhere(bad)[0])
        raise AssertionError(
            f"gradcheck: input {i}, element {index}: autograd gives "
            f"{analytic[index]!r}, finite differences {numeric[index]!r} "
            f"({int(bad.sum())} of {bad.size} elements differ; largest error "
            f"{float(error.max()):.3g})\n  autograd:\n{analytic}\n  numeric:\n{numeric}"
        )
