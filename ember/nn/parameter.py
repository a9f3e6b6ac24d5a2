"""``Parameter``: a tensor that a module owns and an optimizer updates.

A parameter is a :class:`~ember.runtime.tensor.Tensor` subclass with no extra fields:
``isinstance(p, ember.Tensor)`` holds, every tensor op accepts it, and what an op
returns is a plain ``Tensor`` (only the leaf itself is a parameter). The subclass is
the marker :class:`~ember.nn.Module` looks for when an attribute is assigned, so
``self.weight = Parameter(...)`` registers the tensor while ``self.cache = tensor``
does not.

``Parameter(data)`` shares ``data``'s storage (a write to one shows in the other) and
starts a fresh leaf: whatever graph produced ``data`` is not part of it.

    >>> import ember
    >>> from ember.nn import Parameter
    >>> p = Parameter(ember.zeros(2))
    >>> p
    Parameter containing:
    tensor([0., 0.], requires_grad=True)
    >>> isinstance(p, ember.Tensor), type(p * 2).__name__
    (True, 'Tensor')
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ember.errors import DTypeError
from ember.ir.dtypes import DType
from ember.runtime.autograd import no_grad
from ember.runtime.factories import zeros
from ember.runtime.tensor import Tensor


class Parameter(Tensor):
    """A leaf tensor registered by a module; requires grad unless told otherwise.

    >>> import ember
    >>> w = ember.nn.Parameter(ember.ones(2, 3))
    >>> w.requires_grad, w.is_leaf, w.shape
    (True, True, (2, 3))
    """

    __slots__ = ()

    def __new__(
        cls, data: Tensor | None = None, requires_grad: bool = True
    ) -> Parameter:
        if data is None:
            data = zeros(0)
        if not isinstance(data, Tensor):
            raise DTypeError(
                f"Parameter() expects an ember Tensor, got {type(data).__name__}",
                op="Parameter",
                expected="ember.Tensor",
                actual=type(data).__name__,
                hint="wrap the values first: Parameter(ember.tensor(values))",
            )
        param = cls._make(data._storage, data._meta)
        assert isinstance(param, Parameter)  # _make builds an instance of cls
        if requires_grad:
            param.requires_grad_(True)
        return param

    def __init__(self, data: Tensor | None = None, requires_grad: bool = True) -> None:
        # __new__ builds the parameter; Tensor.__init__ exists only to refuse
        # direct construction, so it must not run here.
        pass

    @classmethod
    def __ember_constant__(cls, value: Any, dtype: DType) -> Tensor:
        # A Python number mixed into an op on a parameter is a plain constant.
        return Tensor.__ember_constant__(value, dtype)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


def clear_grads(tensors: Iterable[Tensor], set_to_none: bool = True) -> None:
    """Drop the ``.grad`` of every tensor, or fill it with zeros in place.

    >>> import ember
    >>> p = Parameter(ember.ones(2))
    >>> p.grad = ember.ones(2)
    >>> clear_grads([p], set_to_none=False)
    >>> p.grad.tolist()
    [0.0, 0.0]
    """
    for tensor in tensors:
        if tensor.grad is None:
            continue
        if set_to_none:
            tensor.grad = None
        else:
            with no_grad():
                tensor.grad.zero_()
