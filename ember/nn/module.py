"""``Module``: the base class of every layer and model.

A module owns three ordered tables, filled by plain attribute assignment:

- parameters: ``self.weight = Parameter(...)`` (or :meth:`Module.register_parameter`),
- buffers: tensors that are state but not trained, through
  :meth:`Module.register_buffer` (``persistent=False`` keeps one out of the state
  dict),
- submodules: ``self.encoder = Linear(...)``.

Names compose with dots: the parameter ``weight`` of the submodule ``0`` of a model is
``"0.weight"`` in :meth:`Module.named_parameters` and :meth:`Module.state_dict`.
Assigning a plain tensor creates an ordinary attribute, as in PyTorch.

    >>> import ember
    >>> from ember import nn
    >>> class Affine(nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.scale = nn.Parameter(ember.ones(2))
    ...         self.register_buffer("calls", ember.zeros(()))
    ...     def forward(self, x):
    ...         return x * self.scale
    >>> m = Affine()
    >>> [name for name, _ in m.named_parameters()], list(m.state_dict())
    (['scale'], ['scale', 'calls'])
    >>> m(ember.tensor([1.0, 2.0])).tolist()
    [1.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from ember.errors import DTypeError, UnsupportedError
from ember.ir import dtypes
from ember.nn.parameter import Parameter, clear_grads
from ember.nn.state import check_state, copy_state
from ember.runtime.autograd import no_grad
from ember.runtime.tensor import Tensor

ModuleT = TypeVar("ModuleT", bound="Module")


class IncompatibleKeys(NamedTuple):
    """What a non-strict :meth:`Module.load_state_dict` skipped."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class of layers and models: parameters, buffers, submodules, state.

    Subclasses call ``super().__init__()`` first, assign parameters and submodules
    as attributes, and define ``forward``; calling the module runs ``forward``.

    >>> import ember
    >>> from ember import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    >>> [name for name, _ in model.named_parameters()]
    ['0.weight', '0.bias', '2.weight', '2.bias']
    >>> model.eval().training, model[0].training
    (False, False)
    >>> model(ember.zeros(5, 3)).shape
    (5, 1)
    """

    training: bool

    def __init__(self) -> None:
        # object.__setattr__ because our own __setattr__ needs these tables.
        object.__setattr__(self, "training", True)
        for table in _TABLES:
            object.__setattr__(self, table.attr, {})
        object.__setattr__(self, "_non_persistent", set())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The computation of the module; subclasses define it."""
        raise UnsupportedError(
            f"{type(self).__name__} has no forward()",
            op="forward",
            hint=f"define forward(self, ...) in {type(self).__name__}",
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # Registration -------------------------------------------------------------------

    def _entries(self, table: _Table) -> dict[str, Any]:
        entries = self.__dict__.get(table.attr)
        if entries is None:
            raise AttributeError(
                f"cannot add a {table.kind} to {type(self).__name__} before "
                "Module.__init__() ran; call super().__init__() first in __init__"
            )
        return entries

    def _check_name(self, name: str, kind: str, op: str) -> None:
        if not isinstance(name, str):
            raise DTypeError(
                f"{kind} name must be a str, got {type(name).__name__}", op=op
            )
        if not name or "." in name:
            raise KeyError(f"{kind} name {name!r} must be non-empty and contain no '.'")
        known = any(name in self.__dict__[table.attr] for table in _TABLES)
        if hasattr(self, name) and not known:
            raise KeyError(
                f"attribute {name!r} already exists on {type(self).__name__}"
            )

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add ``param`` as ``name``; None reserves the name (as for a missing bias)."""
        self._register(_PARAMETERS, name, param, "register_parameter")

    def register_buffer(
        self, name: str, tensor: Tensor | None, persistent: bool = True
    ) -> None:
        """Add a tensor that is state but not a parameter (running statistics, masks).

        A persistent buffer is saved in :meth:`state_dict`; ``persistent=False`` keeps
        it out.
        """
        self._register(_BUFFERS, name, tensor, "register_buffer")
        if not persistent:
            self._non_persistent.add(name)

    def register_module(self, name: str, module: Module | None) -> None:
        """Add a submodule under ``name`` (what ``self.name = module`` does)."""
        self._register(_MODULES, name, module, "register_module")

    add_module = register_module

    def _register(self, table: _Table, name: str, value: Any, op: str) -> None:
        entries = self._entries(table)
        self._check_name(name, table.kind, op)
        table.check(value, name, op)
        if isinstance(value, Tensor) and value.grad_fn is not None:
            raise DTypeError(
                f"{table.kind} {name!r} must be a leaf; this one was computed by "
                f"{value.grad_fn.name}",
                op=op,
                hint="create it from a fresh tensor, or use .detach()",
            )
        self._discard(name)
        entries[name] = value

    def _discard(self, name: str) -> None:
        """Forget ``name`` in every table, so a new assignment leaves no twin behind."""
        self.__dict__.pop(name, None)
        for table in _TABLES:
            self.__dict__[table.attr].pop(name, None)
        self._non_persistent.discard(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, (Parameter, Module)):
            table = _PARAMETERS if isinstance(value, Parameter) else _MODULES
            entries = self._entries(table)
            self._discard(name)
            entries[name] = value
            return
        for table in _TABLES:
            existing = self.__dict__.get(table.attr)
            if existing is not None and name in existing:
                table.check(value, name, "setattr")
                existing[name] = value
                return
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: the tables hold the registered names.
        for table in _TABLES:
            entries = self.__dict__.get(table.attr)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}"
        )

    def __delattr__(self, name: str) -> None:
        for table in _TABLES:
            if name in self.__dict__.get(table.attr, ()):
                self._discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self) -> list[str]:
        names = set(super().__dir__())
        for table in _TABLES:
            names.update(self.__dict__.get(table.attr, ()))
        return sorted(names)

    # Traversal ----------------------------------------------------------------------

    def named_modules(
        self,
        prefix: str = "",
        remove_duplicate: bool = True,
        _memo: set[int] | None = None,
    ) -> Iterator[tuple[str, Module]]:
        """This module and every descendant with its dotted name, depth first.

        A module reachable along two paths is listed once, under its first name,
        unless ``remove_duplicate`` is False.
        """
        memo = set() if _memo is None else _memo
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                child_prefix = f"{prefix}.{name}" if prefix else name
                yield from child.named_modules(child_prefix, remove_duplicate, memo)

    def modules(self) -> Iterator[Module]:
        """This module and every descendant."""
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """The direct submodules with their names."""
        seen: set[int] = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self) -> Iterator[Module]:
        """The direct submodules."""
        for _, child in self.named_children():
            yield child

    def _named_members(
        self, table: str, prefix: str, recurse: bool, remove_duplicate: bool
    ) -> Iterator[tuple[str, Any]]:
        modules = (
            self.named_modules(prefix, remove_duplicate)
            if recurse
            else [(prefix, self)]
        )
        seen: set[int] = set()
        for module_prefix, module in modules:
            for name, value in module.__dict__[table].items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield (f"{module_prefix}.{name}" if module_prefix else name), value

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """Every parameter with its dotted name; a shared one appears once."""
        return self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """Every parameter, in registration order, depth first."""
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Tensor]]:
        """Every buffer (persistent or not) with its dotted name."""
        return self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        """Every buffer."""
        for _, buffer in self.named_buffers(recurse=recurse):
            yield buffer

    def get_submodule(self, target: str) -> Module:
        """The descendant at dotted path ``target`` (``""`` is this module)."""
        module: Module = self
        for part in target.split(".") if target else []:
            child = module._modules.get(part)
            if child is None:
                raise AttributeError(
                    f"{type(module).__name__} has no submodule {part!r} (looking up "
                    f"{target!r})"
                )
            module = child
        return module

    def apply(self: ModuleT, fn: Callable[[Module], Any]) -> ModuleT:
        """Call ``fn`` on every submodule (children first) and then on this module."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # Modes and gradients ------------------------------------------------------------

    def train(self: ModuleT, mode: bool = True) -> ModuleT:
        """Set training mode on this module and every descendant; returns self."""
        if not isinstance(mode, bool):
            raise DTypeError(
                f"train(mode) expects a bool, got {type(mode).__name__}", op="train"
            )
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self: ModuleT) -> ModuleT:
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def requires_grad_(self: ModuleT, requires_grad: bool = True) -> ModuleT:
        """Switch gradient tracking of every parameter (False freezes the module)."""
        for param in self.parameters():
            param.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (or fill it with zeros)."""
        clear_grads(self.parameters(), set_to_none)

    def to(self: ModuleT, dtype: Any) -> ModuleT:
        """Convert floating parameters and buffers to ``dtype``; returns self.

        A converted parameter is a new object, so build optimizers after converting.
        """
        target = dtypes.as_dtype(dtype)
        if not target.is_floating_point:
            raise DTypeError(
                f"Module.to() converts to floating dtypes only, got {target.name}",
                op="to",
                expected="float32 or float64",
            )
        with no_grad():
            for module in self.modules():
                _convert_tables(module, target)
        return self

    def float(self: ModuleT) -> ModuleT:
        """``to(ember.float32)``."""
        return self.to(dtypes.float32)

    def double(self: ModuleT) -> ModuleT:
        """``to(ember.float64)``."""
        return self.to(dtypes.float64)

    # State --------------------------------------------------------------------------

    def state_dict(
        self,
        destination: dict[str, Tensor] | None = None,
        prefix: str = "",
        keep_vars: bool = False,
    ) -> dict[str, Tensor]:
        """Parameters and persistent buffers by dotted name.

        The values share memory with the module (detached from autograd unless
        ``keep_vars``): copy them with ``.clone()`` to keep a snapshot.
        """
        state = {} if destination is None else destination
        for name, param in self._parameters.items():
            if param is not None:
                state[prefix + name] = param if keep_vars else param.detach()
        for name, buffer in self._buffers.items():
            if buffer is not None and name not in self._non_persistent:
                state[prefix + name] = buffer if keep_vars else buffer.detach()
        for name, child in self._modules.items():
            if child is not None:
                child.state_dict(state, prefix + name + ".", keep_vars)
        return state

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True
    ) -> IncompatibleKeys:
        """Copy ``state_dict`` into the parameters and buffers, in place.

        Every problem is found before anything is written: one
        :class:`~ember.errors.StateDictError` lists each missing key, each unexpected
        key and each entry whose shape or dtype differs. ``strict=False`` tolerates
        missing and unexpected keys (and returns them) but never a mismatch.
        """
        own = self.state_dict(keep_vars=True)
        report = check_state(type(self).__name__, own, state_dict, strict)
        copy_state(own, state_dict)
        return IncompatibleKeys(report.missing, report.unexpected)

    # Printing -----------------------------------------------------------------------

    def extra_repr(self) -> str:
        """The arguments shown inside this module's parentheses; layers override it."""
        return ""

    def __repr__(self) -> str:
        lines = self.extra_repr().split("\n") if self.extra_repr() else []
        for name, child in self._modules.items():
            lines.append(f"({name}): " + repr(child).replace("\n", "\n  "))
        if len(lines) <= 1 and not self._modules:
            return f"{type(self).__name__}({''.join(lines)})"
        return type(self).__name__ + "(\n  " + "\n  ".join(lines) + "\n)"


@dataclass(frozen=True)
class _Table:
    """One of a module's member tables: its attribute and what it accepts."""

    attr: str
    cls: type
    kind: str
    expected: str
    hint: str | None = None

    def check(self, value: Any, name: str, op: str) -> None:
        """Raise DTypeError unless ``value`` is None or belongs in this table."""
        if value is None or isinstance(value, self.cls):
            return
        raise DTypeError(
            f"cannot use a {type(value).__name__} as {self.kind} {name!r}",
            op=op,
            expected=f"{self.expected} or None",
            actual=type(value).__name__,
            hint=self.hint,
        )


_PARAMETERS = _Table(
    "_parameters",
    Parameter,
    "parameter",
    "ember.nn.Parameter",
    hint="wrap it with nn.Parameter(tensor), or change the values in place with "
    ".copy_() under ember.no_grad(); a tensor that is not trained is a buffer",
)
_BUFFERS = _Table("_buffers", Tensor, "buffer", "ember.Tensor")
_MODULES = _Table("_modules", Module, "submodule", "ember.nn.Module")
_TABLES = (_PARAMETERS, _BUFFERS, _MODULES)


def _convert_tables(module: Module, target: dtypes.DType) -> None:
    params = module.__dict__["_parameters"]
    for name, param in params.items():
        if param is None or not param.dtype.is_floating_point or param.dtype is target:
            continue
        converted = Parameter(param.to(target), param.requires_grad)
        if param.grad is not None:
            converted.grad = param.grad.to(target)
        params[name] = converted
    buffers = module.__dict__["_buffers"]
    for name, buffer in buffers.items():
        if buffer is not None and buffer.dtype.is_floating_point:
            buffers[name] = buffer.to(target)  # the same tensor when already target
