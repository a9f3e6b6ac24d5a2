"""``Optimizer``: parameter groups, gradient clearing, stepping and named state.

An optimizer takes any of

- an iterable of parameters (``model.parameters()``),
- an iterable of ``(name, parameter)`` pairs (``model.named_parameters()``),
- an iterable of param-group dicts, each with a ``"params"`` entry of either kind
  plus options that override the optimizer's defaults for that group.

**Named and unnamed parameters.** With names, :meth:`Optimizer.state_dict` keys each
parameter's state by its name, so the state restores into an optimizer whose
parameters come in another order (a model whose layers were declared in a different
order, groups listed differently inside, a list built by hand). Without names,
parameters are keyed by position (0, 1, ... counting through the groups in order),
as PyTorch does: such a state restores only into an optimizer given the parameters
in the same order. One optimizer holds either named or unnamed parameters, never a
mix (the keys would be ambiguous); a state saved one way refuses to load the other
way.

**Parameters without a gradient.** :meth:`Optimizer.step` skips a parameter whose
``.grad`` is None, as PyTorch does: its value, its state and its step count stay as
they were (a frozen layer, or one that the loss did not reach). A gradient whose
shape or dtype differs from the parameter's is an error, never broadcast.

**Updates.** ``step`` runs under ``ember.no_grad()`` and writes every parameter in
place, so views, the model and other references see the new values.

    >>> import ember
    >>> from ember import nn, optim
    >>> model = nn.Linear(2, 1)
    >>> opt = optim.SGD(model.named_parameters(), lr=0.1)
    >>> model(ember.ones(3, 2)).sum().backward()
    >>> opt.step()
    >>> opt.zero_grad()
    >>> model.weight.grad is None, sorted(opt.state_dict()["param_groups"][0]["params"])
    (True, ['bias', 'weight'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ember.errors import (
    CheckpointVersionError,
    ConfigError,
    DTypeError,
    GradientMismatchError,
    UnsupportedError,
)
from ember.nn.parameter import clear_grads
from ember.nn.state import compare, raise_problems
from ember.runtime.autograd import enable_grad, no_grad
from ember.runtime.factories import tensor as make_tensor
from ember.runtime.tensor import Tensor

FORMAT_VERSION = 1
"""Version of the dict :meth:`Optimizer.state_dict` returns."""

ParamsT = Iterable[Tensor] | Iterable[tuple[str, Tensor]] | Iterable[Mapping[str, Any]]
Key = str | int


class Optimizer:
    """Base class of optimizers; subclasses define ``_update`` and ``_check``.

    ``param_groups`` is a list of dicts, each with ``"params"`` (the tensors),
    ``"param_names"`` (when named) and every option; change ``group["lr"]`` to
    schedule the learning rate. ``state`` maps each parameter to its dict of
    buffers, created at its first update.
    """

    def __init__(self, params: ParamsT, defaults: Mapping[str, Any]) -> None:
        self.defaults: dict[str, Any] = dict(defaults)
        self.state: dict[Tensor, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        self._named: bool | None = None
        for group in _as_groups(params, type(self).__name__):
            self.add_param_group(group)

    # Groups -------------------------------------------------------------------------

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group: a dict with ``"params"`` and options overriding the defaults."""
        owner = type(self).__name__
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise ConfigError(
                f"{owner}: a param group must be a dict with a 'params' entry",
                op=owner,
                actual=type(param_group).__name__,
                hint="write {'params': model.parameters(), 'lr': 0.01}",
            )
        group = dict(param_group)
        names, params = _split_names(group, owner)
        self._check_naming(names is not None, owner)
        self._check_new_params(params, names, owner)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check(group)
        group["params"] = params
        if names is not None:
            group["param_names"] = names
        else:
            group.pop("param_names", None)
        self.param_groups.append(group)

    def _check_naming(self, named: bool, owner: str) -> None:
        if self._named is None:
            self._named = named
        elif self._named != named:
            raise ConfigError(
                f"{owner}: some parameter groups are named and some are not, so the "
                "state dict would have no consistent keys",
                op=owner,
                hint="pass model.named_parameters() (or (name, tensor) pairs) for "
                "every group, or plain parameters for every group",
            )

    def _check_new_params(
        self, params: list[Tensor], names: list[str] | None, owner: str
    ) -> None:
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        known_names = {n for g in self.param_groups for n in g.get("param_names", ())}
        for i, param in enumerate(params):
            label = repr(names[i]) if names is not None else f"#{i}"
            _check_param(param, label, owner)
            if id(param) in seen:
                raise ConfigError(
                    f"{owner}: parameter {label} appears more than once",
                    op=owner,
                    hint="list each parameter in one group only",
                )
            seen.add(id(param))
            if names is not None and names[i] in known_names:
                raise ConfigError(
                    f"{owner}: two parameters are named {names[i]!r}",
                    op=owner,
                    hint="names key the state; make them unique",
                )
            if names is not None:
                known_names.add(names[i])

    def _check(self, group: dict[str, Any]) -> None:
        """Validate a group's options (subclasses raise ConfigError)."""

    def _params_with_keys(self) -> list[tuple[Key, Tensor, int]]:
        """(key, parameter, group index) for every parameter, in group order."""
        found: list[tuple[Key, Tensor, int]] = []
        for index, group in enumerate(self.param_groups):
            names = group.get("param_names")
            for i, param in enumerate(group["params"]):
                found.append(
                    (names[i] if names is not None else len(found), param, index)
                )
        return found

    # Stepping -----------------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (or fill it with zeros)."""
        params = (p for group in self.param_groups for p in group["params"])
        clear_grads(params, set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; returns ``closure()`` if given.

        ``closure`` recomputes the loss (with gradients enabled) before the update.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        with no_grad():
            for group in self.param_groups:
                for param in group["params"]:
                    grad = param.grad
                    if grad is None:
                        continue
                    _check_grad(param, grad)
                    state = self.state.get(param, {})
                    self._update(param, grad, state, group)
                    if state:  # plain SGD keeps no state, as in PyTorch
                        self.state[param] = state
        return loss

    def _update(
        self, param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        """Apply one update to ``param`` in place (subclasses define it)."""
        raise UnsupportedError(
            f"{type(self).__name__} does not define _update()",
            op="step",
            hint="define _update(param, grad, state, group), or override step()",
        )

    # State --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Options and per-parameter buffers, keyed by parameter name (or position).

        The buffers are shared with the optimizer, not copied.
        """
        keyed = self._params_with_keys()
        keys = {id(param): key for key, param, _ in keyed}
        state = {
            keys[id(p)]: dict(self.state[p]) for _, p, _ in keyed if p in self.state
        }
        groups = []
        for group in self.param_groups:
            saved = {
                k: v for k, v in group.items() if k not in ("params", "param_names")
            }
            saved["params"] = [keys[id(p)] for p in group["params"]]
            groups.append(saved)
        return {
            "format_version": FORMAT_VERSION,
            "keyed_by": "name" if self._named else "position",
            "state": state,
            "param_groups": groups,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore options and buffers saved by :meth:`state_dict`.

        Parameters are matched by name (or by position for unnamed ones). Every
        problem is found before anything changes, and one StateDictError lists them
        all: missing or unexpected parameters, a parameter in another group, a
        different number of groups, buffers whose shape or dtype differ.
        """
        owner = f"{type(self).__name__}.load_state_dict"
        saved_groups, saved_state = _unpack(state_dict, owner, self._named)
        own = {key: (param, index) for key, param, index in self._params_with_keys()}
        lines = _group_problems(own, saved_groups, len(self.param_groups))
        lines += _state_problems(own, saved_state)
        if lines:
            raise_problems(
                owner,
                lines,
                "build the optimizer from the same model and "
                "param groups that produced the state",
            )
        for group, saved in zip(self.param_groups, saved_groups):
            group.update(
                {k: v for k, v in saved.items() if k not in ("params", "param_names")}
            )
        self.state = {
            own[key][0]: {name: _restored(value) for name, value in entry.items()}
            for key, entry in saved_state.items()
        }

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.append(
                f"    params: {len(group['params'])}"
                + (" (named)" if "param_names" in group else "")
            )
            lines += [
                f"    {key}: {group[key]}"
                for key in sorted(group)
                if key not in ("params", "param_names")
            ]
        return "\n".join(lines + [")"])


def require_non_negative(group: dict[str, Any], owner: str, *keys: str) -> None:
    """Raise ConfigError unless every option in ``keys`` is a number >= 0."""
    for key in keys:
        value = group[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(
                f"{owner}: {key} must be a number >= 0, got {value!r}",
                op=owner,
                expected=f"{key} >= 0",
                actual=value,
            )


def _as_groups(params: Any, owner: str) -> list[Mapping[str, Any]]:
    if isinstance(params, (Tensor, Mapping)):
        raise ConfigError(
            f"{owner}: params must be an iterable of tensors, of (name, tensor) pairs "
            f"or of param-group dicts, got a single {type(params).__name__}",
            op=owner,
            hint="pass model.parameters() or model.named_parameters()",
        )
    items = list(params)
    if not items:
        raise ConfigError(
            f"{owner}: got an empty parameter list",
            op=owner,
            hint="does the model have parameters yet?",
        )
    is_group = [isinstance(item, Mapping) for item in items]
    if all(is_group):
        return items
    if any(is_group):
        raise ConfigError(
            f"{owner}: params mixes param-group dicts with tensors",
            op=owner,
            hint="put every tensor inside a group dict",
        )
    return [{"params": items}]


def _split_names(group: dict[str, Any], owner: str) -> tuple[list[str] | None, list]:
    """The names (None when unnamed) and the tensors of a group's ``params``."""
    entries = group["params"]
    if isinstance(entries, Tensor):
        entries = [entries]
    elif isinstance(entries, (Mapping, set, frozenset)):
        raise ConfigError(
            f"{owner}: a group's params must be an ordered iterable, got a "
            f"{type(entries).__name__}",
            op=owner,
            hint="use a list, or model.named_parameters() for a dict of names",
        )
    entries = list(entries)
    pairs = [
        isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str) for e in entries
    ]
    if entries and all(pairs):
        return [e[0] for e in entries], [e[1] for e in entries]
    if any(pairs):
        raise ConfigError(
            f"{owner}: a group mixes (name, tensor) pairs with bare tensors",
            op=owner,
            hint="name every parameter or none",
        )
    names = group.get("param_names")
    if names is not None and len(names) != len(entries):
        raise ConfigError(
            f"{owner}: {len(names)} param_names for {len(entries)} params", op=owner
        )
    return (list(names) if names is not None else None), entries


def _check_param(param: Any, label: str, owner: str) -> None:
    if not isinstance(param, Tensor):
        raise DTypeError(
            f"{owner}: parameter {label} is a {type(param).__name__}, not a tensor",
            op=owner,
            expected="ember.Tensor",
        )
    if not param.dtype.is_floating_point:
        raise DTypeError(
            f"{owner}: parameter {label} has dtype {param.dtype.name}; only "
            "floating tensors can be optimized",
            op=owner,
            expected="float32 or float64",
            actual=param.dtype.name,
        )
    if not param.is_leaf:
        raise ConfigError(
            f"{owner}: parameter {label} was computed by {param.grad_fn.name}; only "
            "leaf tensors can be optimized",
            op=owner,
            hint="optimize the leaf it came from, or .detach().requires_grad_() a copy",
        )


def _check_grad(param: Tensor, grad: Tensor) -> None:
    if grad.shape != param.shape or grad.dtype is not param.dtype:
        raise GradientMismatchError(
            f"the gradient of a parameter {param.meta.type_str()} is "
            f"{grad.meta.type_str()}",
            op="step",
            expected=param.meta.type_str(),
            actual=grad.meta.type_str(),
            hint="a gradient set by hand must match its parameter's shape and dtype",
        )


def _unpack(
    state_dict: Any, owner: str, named: bool | None
) -> tuple[list[Mapping[str, Any]], Mapping[Key, Mapping[str, Any]]]:
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(
        state_dict
    ):
        raise DTypeError(
            f"{owner} expects the dict that optimizer.state_dict() returns",
            op="load_state_dict",
            expected="a dict with 'state' and 'param_groups'",
            actual=type(state_dict).__name__,
        )
    version = state_dict.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise CheckpointVersionError(
            f"{owner}: the state has format version {version}; this ember reads up to "
            f"{FORMAT_VERSION}",
            op="load_state_dict",
            hint="upgrade ember to load it",
        )
    keyed_by = state_dict.get("keyed_by", "name" if named else "position")
    if keyed_by != ("name" if named else "position"):
        mine = "names" if named else "positions"
        raise_problems(
            owner,
            [
                f"the state is keyed by {keyed_by} but this optimizer's "
                f"parameters are keyed by {mine}"
            ],
            "build both optimizers from model.named_parameters(), or both "
            "from model.parameters()",
        )
    return list(state_dict["param_groups"]), state_dict["state"]


def _group_problems(
    own: Mapping[Key, tuple[Tensor, int]], groups: list[Mapping[str, Any]], count: int
) -> list[str]:
    lines = []
    if len(groups) != count:
        lines.append(
            f"the state has {len(groups)} param groups, this optimizer {count}"
        )
    saved = {key: index for index, g in enumerate(groups) for key in g["params"]}
    for key, (param, index) in own.items():
        if key not in saved:
            lines.append(
                f"missing parameter {key!r} ({param.meta.type_str()}, group {index})"
            )
        elif saved[key] != index:
            lines.append(
                f"parameter {key!r} is in group {index} here but in group "
                f"{saved[key]} in the state"
            )
    lines += [
        f"unexpected parameter {key!r} (group {index})"
        for key, index in saved.items()
        if key not in own
    ]
    return lines


def _state_problems(
    own: Mapping[Key, tuple[Tensor, int]], state: Mapping[Key, Mapping[str, Any]]
) -> list[str]:
    lines = []
    for key, entry in state.items():
        if key not in own:
            lines.append(f"state for unknown parameter {key!r}")
            continue
        meta = own[key][0].meta
        for name, value in entry.items():
            if isinstance(value, (Tensor, np.ndarray)):
                line = compare(
                    f"{key}.{name}" if isinstance(key, str) else f"#{key}.{name}",
                    meta,
                    value,
                    "the state",
                )
                if line is not None:
                    lines.append(line)
    return lines


def _restored(value: Any) -> Any:
    """A private copy of a saved buffer (tensors are cloned, numbers kept)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return make_tensor(value)
    return value
