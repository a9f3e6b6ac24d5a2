"""Containers: ``Sequential`` chains modules, ``ModuleList`` holds them.

Both name their children ``"0"``, ``"1"``, ... (a ``Sequential`` built from a dict
keeps the dict's names), so parameter names read ``"0.weight"`` as in PyTorch.

    >>> from ember import nn
    >>> nn.Sequential(nn.Linear(2, 3), nn.Tanh())
    Sequential(
      (0): Linear(in_features=2, out_features=3, bias=True)
      (1): Tanh()
    )
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, overload

from ember.errors import IndexingError, UnsupportedError
from ember.nn.module import Module


def _position(index: int, length: int, owner: str) -> int:
    if not -length <= index < length:
        raise IndexingError(
            f"{owner} index {index} is out of range for {length} modules",
            op=owner,
            expected=f"-{length} <= index < {length}",
            actual=index,
        )
    return index % length


class Sequential(Module):
    """Runs its modules one after another, each on the previous one's output.

    >>> import ember
    >>> from ember import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> len(model), type(model[-1]).__name__, model(ember.ones(2, 4)).shape
    (3, 'Linear', (2, 1))
    >>> model[:2]
    Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
    )
    """

    def __init__(self, *modules: Module | Mapping[str, Module]) -> None:
        super().__init__()
        first = modules[0] if len(modules) == 1 else None
        named: Iterable[tuple[str, Any]] = (
            first.items()
            if isinstance(first, Mapping)
            else ((str(i), module) for i, module in enumerate(modules))
        )
        for name, module in named:
            self.register_module(name, module)  # rejects anything not a Module

    @overload
    def __getitem__(self, index: int) -> Module: ...

    @overload
    def __getitem__(self, index: slice) -> Sequential: ...

    def __getitem__(self, index: int | slice) -> Module | Sequential:
        items = list(self._modules.items())
        if isinstance(index, slice):
            return Sequential(dict(items[index]))
        return items[_position(index, len(items), "Sequential")][1]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> Sequential:
        """Add ``module`` at the end, named by its position; returns self."""
        self.register_module(str(len(self)), module)
        return self

    def forward(self, x: Any) -> Any:
        for module in self._modules.values():
            x = module(x)
        return x


class ModuleList(Module):
    """A list of modules whose parameters the owner sees; it has no forward.

    >>> from ember import nn
    >>> layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    >>> len(layers), len(list(layers.parameters()))
    (3, 6)
    """

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __getitem__(self, index: int) -> Module:
        values = list(self._modules.values())
        return values[_position(index, len(values), "ModuleList")]

    def __setitem__(self, index: int, module: Module) -> None:
        position = _position(index, len(self), "ModuleList")
        self.register_module(str(position), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> ModuleList:
        """Add ``module`` at the end; returns self."""
        self.register_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        """Add every module of ``modules`` at the end; returns self."""
        for module in modules:
            self.append(module)
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedError(
            "ModuleList has no forward(): it only holds modules",
            op="forward",
            hint="iterate over it in the owner's forward, or use nn.Sequential",
        )
