"""numpy references that give IEEE results (inf, NaN) without floating-point warnings.

ember's native kernels compute ``0 / 0`` as NaN and ``1 / 0`` as inf silently, as
PyTorch does; numpy computes the same values but also warns (``RuntimeWarning:
invalid value encountered``), and under ``warnings.simplefilter("error")`` that
warning becomes a numpy exception out of an ember op. :func:`quiet` wraps a
reference so that it runs with numpy's floating-point errors ignored; the registry
applies it to every op's reference (:func:`ember.ir.registry.register`).

``np.errstate`` costs about 1.7 µs per use here, a fifth of an eager op; setting
numpy's error-state context variable directly costs about 0.4 µs, so that is used
when this numpy has it, with ``np.errstate`` as the fallback.

    >>> import warnings
    >>> divide = quiet(lambda a, b: a / b)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error")
    ...     divide(np.zeros(1), np.zeros(1)).tolist()
    [nan]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

try:  # numpy 2: the error state is a context variable holding an extobj
    from numpy._core.umath import _extobj_contextvar, _make_extobj

    _IGNORE: Any = _make_extobj(all="ignore")
except (ImportError, AttributeError, TypeError):  # pragma: no cover - other numpy
    _IGNORE = None


def quiet(fn: F) -> F:
    """``fn`` run with numpy's floating-point errors ignored."""
    if getattr(fn, "__ember_quiet__", False):
        return fn

    if _IGNORE is None:  # pragma: no cover - numpy without the context variable

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with np.errstate(all="ignore"):
                return fn(*args, **kwargs)

    else:

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            token = _extobj_contextvar.set(_IGNORE)
            try:
                return fn(*args, **kwargs)
            finally:
                _extobj_contextvar.reset(token)

    run.__ember_quiet__ = True  # type: ignore[attr-defined]
    return run  # type: ignore[return-value]
