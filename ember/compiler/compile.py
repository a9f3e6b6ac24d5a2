"""``ember.compile``: trace a model on its first call and run the graph after that.

The compiled object specializes on the *signature* of a call: the shape, dtype and
strides of every tensor argument, the values of the other arguments, the module's
training flag and the layout of its parameters. The first call with a new signature
traces the model again and builds a program for it; a call with a known signature
reuses its program. Every recompile is logged on this module's logger (topic
``recompile``: ``EMBER_LOG=recompile``) with each guard that changed.

Most calls skip building the full signature: a call whose arguments are all plain
tensors looks up a *fast key* (each argument's exact shape, dtype, strides and
requires_grad, the training flag, grad mode and the parameters' requires_grad),
and the parameters come from a snapshot of the module's parameter, buffer and
submodule tables that is walked again only when an entry of one of them changed
(compared by identity: a few microseconds for a small model). A fast key
implies the full key, so it never picks a program the full guards would not.

Backends turn a traced graph into something that runs:

- ``"interpret"`` runs the graph on the eager runtime (:mod:`ember.compiler.interpret`),
  so results, views and autograd behave exactly as in eager mode;
- ``"llvm"``, the native backend (:mod:`ember.compiler.backends`): fused kernels in
  machine code, BLAS for large matmuls, buffers planned once.

    >>> import ember
    >>> def f(x):
    ...     return (x * 2).relu().sum(1)
    >>> fast = ember.compile(f)
    >>> fast(ember.ones(2, 3)).tolist()
    [6.0, 6.0]
    >>> [n.op for n in fast.graph.calls()]
    ['mul', 'relu', 'sum']
"""

from __future__ import annotations

import functools
import logging
import operator
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from ember.compiler.interpret import interpret, layout_key
from ember.compiler.trace import (
    Proxy,
    Spec,
    TraceResult,
    flatten,
    model_name,
    trace_call,
    unflatten,
)
from ember.errors import UnsupportedError, is_ember_frame
from ember.ir.graph import Graph
from ember.runtime.autograd import is_grad_enabled
from ember.runtime.tensor import Tensor

logger = logging.getLogger(__name__)

#: A program built from a graph: called with the input tensors and the parameters
#: (by qualified name), it returns the graph's outputs.
Program = Callable[[Sequence[Tensor], Mapping[str, Tensor]], list[Tensor]]

#: How many signatures one compiled object keeps programs for; the oldest goes first.
CACHE_LIMIT = 16


def _interpret_backend(
    graph: Graph, donate: Mapping[int, str] | None = None
) -> Program:
    # The interpreter returns every output: nothing is written in place.
    return functools.partial(interpret, graph)


def _llvm_backend(graph: Graph, donate: Mapping[int, str] | None = None) -> Program:
    # Imported on first use: the native stack loads llvmlite, which plain
    # ``import ember`` never does.
    from ember.compiler.backends import compile_llvm

    return compile_llvm(graph, donate)


#: Backend name -> builder of a program from a traced graph and, optionally, the
#: outputs it may write over a parameter or buffer in place (by index: the
#: argument's qualified name; see :func:`ember.compiler.program.build_program`).
BACKENDS: dict[str, Callable[..., Program]] = {
    "interpret": _interpret_backend,
    "llvm": _llvm_backend,
}


def compile(model: Any, *, backend: str = "interpret") -> Any:  # noqa: A001
    """A compiled version of ``model``, an ``nn.Module`` or a function of tensors.

    For a module the result looks like the module: attribute access, parameters,
    ``state_dict``, ``train``/``eval`` pass through, and calling it runs the compiled
    forward. For a function it is a callable with the function's name and docstring.
    A function that uses an ember optimizer is a training step: it compiles to one
    program of forward, backward and update (:mod:`ember.compiler.step`).
    See the module docstring for specialization and backends.
    """
    _check_backend(backend)
    if hasattr(model, "named_parameters"):
        return CompiledModule(model, backend)
    if callable(model):
        from ember.compiler.step import CompiledStep, find_optimizers

        optimizers = find_optimizers(model)
        if optimizers:
            return CompiledStep(model, backend, optimizers)
        return CompiledFunction(model, backend)
    raise UnsupportedError(
        f"ember.compile expects a module or a function, got {type(model).__name__}",
        expected="an ember.nn.Module or a callable taking tensors",
        actual=type(model).__name__,
    )


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UnsupportedError(
            f"ember.compile: unknown backend {backend!r}",
            expected=sorted(BACKENDS),
            actual=backend,
            hint=f"use one of: {', '.join(sorted(BACKENDS))}",
        )


# Specialization ---------------------------------------------------------------------


@dataclass
class _Entry:
    """The program built for one signature, and the trace it came from."""

    key: tuple[Any, ...]
    traced: TraceResult
    program: Program


def _user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the user's line."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and is_ember_frame(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level


class RecompileLimitWarning(UserWarning):
    """ember.compile saw more input signatures than it keeps programs for."""


class _Specializer:
    """Traces ``model`` once per call signature and runs the matching program."""

    def __init__(self, model: Callable[..., Any], backend: str, label: str) -> None:
        self.model = model
        self.backend = backend
        self.label = label
        self.cache: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
        self.last: _Entry | None = None
        # The fast guard: calls whose arguments are all tensors, by exact layout
        # (see _fast_key), mapped to the entry the full key chose for them. Emptied
        # whenever the module's parameters change or an entry is dropped.
        self._fast: dict[tuple[Any, ...], _Entry] = {}
        self._snapshot: _ModuleSnapshot | None = None

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        fast = None if kwargs else self._fast_key(args)
        entry = None if fast is None else self._fast.get(fast)
        if entry is not None:
            self.last = entry
            params = self._snapshot.params  # type: ignore[union-attr]
            return unflatten(entry.traced.output_spec, entry.program(args, params))
        leaves, spec = flatten((args, kwargs), _is_value)
        if any(isinstance(v, Proxy) for v in leaves):
            # Called from a model being traced: record the model's ops inline.
            return self.model(*args, **kwargs)
        params = self._snapshot_params()
        key = (
            _hashable(spec),
            tuple(layout_key(t.meta) for t in leaves),
            getattr(self.model, "training", None),
            tuple((name, layout_key(t.meta)) for name, t in params.items()),
            _gradient_key(leaves, params),
        )
        entry = self.cache.get(key)
        if entry is None:
            entry = self._build(key, args, kwargs)
        self.last = entry
        if fast is not None:
            if len(self._fast) >= 4 * CACHE_LIMIT:
                # Layouts that differ only in the strides of size-1 dims share an
                # entry; keep their number bounded.
                self._fast.clear()
            self._fast[fast] = entry
        outputs = entry.program(leaves, params)
        return unflatten(entry.traced.output_spec, outputs)

    def _fast_key(self, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """For a call whose arguments are all plain tensors, a key that implies the
        full signature key: each argument's exact shape, dtype, strides and
        requires_grad, the training flag, and with grad mode on which parameters
        require grad. The parameters' names and layouts are not in it: the fast
        entries are dropped whenever the module snapshot sees them change. None
        for other calls."""
        layouts = []
        for arg in args:
            if type(arg) is not Tensor:
                return None
            meta = arg._meta
            layouts.append((meta.shape, meta.dtype, meta.strides, arg.requires_grad))
        params = self._snapshot_params()
        grad = is_grad_enabled() and tuple(t.requires_grad for t in params.values())
        return (tuple(layouts), getattr(self.model, "training", None), grad)

    def _snapshot_params(self) -> dict[str, Tensor]:
        """The parameters and buffers, walked again only when the module changed."""
        snapshot = self._snapshot
        if snapshot is not None and snapshot.unchanged():
            return snapshot.params
        params = self._params()
        self._snapshot = _ModuleSnapshot.take(self.model, params)
        self._fast.clear()
        return params

    def _params(self) -> dict[str, Tensor]:
        found: dict[str, Tensor] = {}
        for method in ("named_parameters", "named_buffers"):
            if hasattr(self.model, method):
                found.update(getattr(self.model, method)())
        return found

    def _build(
        self, key: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> _Entry:
        if self.last is not None:
            changes = _describe_changes(self.last, key)
            logger.info("recompiling %s: %s", self.label, "; ".join(changes))
        traced = trace_call(self.model, args, kwargs)
        build = BACKENDS[self.backend]
        gradient = key[-1]
        if gradient is None:
            program = build(traced.graph)
        else:
            from ember.compiler.training import TrainingProgram

            inputs, names = gradient
            program = TrainingProgram(
                traced.graph, build, inputs, names, overwritten=traced.overwritten
            )
        entry = _Entry(key, traced, program)
        self.cache[key] = entry
        if len(self.cache) > CACHE_LIMIT:
            self.cache.popitem(last=False)
            warnings.warn(
                f"ember.compile({self.label}): more than {CACHE_LIMIT} input "
                "signatures were compiled; the oldest program is dropped and will be "
                "traced again if its signature comes back. Inputs whose shapes or "
                "layouts change on every call defeat compilation: pad or bucket them "
                "to a few fixed shapes.",
                RecompileLimitWarning,
                stacklevel=_user_stacklevel(),
            )
            self._fast.clear()
            logger.info(
                "%s: more than %d signatures; dropped the oldest program",
                self.label,
                CACHE_LIMIT,
            )
        logger.debug(
            "compiled %s: %d nodes, backend %s",
            self.label,
            len(traced.graph),
            self.backend,
        )
        return entry


_META = operator.attrgetter("_meta")


class _ModuleSnapshot:
    """The parameters and buffers of a module, and what they were read from: every
    parameter, buffer and submodule table of every module in the tree, with the
    names and the objects it held. ``unchanged()`` holds while no table was
    replaced and no entry of any table was assigned, added or removed, and every
    parameter still has the layout object it had; objects are compared by
    identity only (comparing tensors with ``==`` would compare their values). A
    model that is not an ember module gets no snapshot and is walked every call;
    a plain function has no tables and nothing to walk.

    The comparisons run as a few passes of builtins over flat lists: a snapshot of
    a small model is checked in about a microsecond.
    """

    TABLES = ("_parameters", "_buffers", "_modules")

    def __init__(self, params: dict[str, Tensor], owners: list[dict[str, Any]]):
        self.params = params
        self._owners = [owner for owner in owners for _ in self.TABLES]
        self._attrs = list(self.TABLES) * len(owners)
        self._tables: list[Any] = list(map(dict.get, self._owners, self._attrs))
        self._sizes = list(map(len, self._tables))
        self._names = list(chain.from_iterable(self._tables))
        self._values = list(chain.from_iterable(map(dict.values, self._tables)))
        # Library code never gives a tensor a new layout, but a forged one must
        # not slip past the layout guard either.
        self._tensors = list(params.values())
        self._metas = list(map(_META, self._tensors))

    @classmethod
    def take(cls, model: Any, params: dict[str, Tensor]) -> _ModuleSnapshot | None:
        modules = getattr(model, "modules", None)
        if modules is None:
            return None if hasattr(model, "named_parameters") else cls(params, [])
        owners = [getattr(module, "__dict__", {}) for module in modules()]
        for owner in owners:
            if any(type(owner.get(attr)) is not dict for attr in cls.TABLES):
                return None
        return cls(params, owners)

    def unchanged(self) -> bool:
        tables: list[Any] = list(map(dict.get, self._owners, self._attrs))
        return (
            all(map(operator.is_, tables, self._tables))
            and list(map(len, tables)) == self._sizes
            and list(chain.from_iterable(tables)) == self._names
            and all(
                map(
                    operator.is_,
                    chain.from_iterable(map(dict.values, tables)),
                    self._values,
                )
            )
            and all(map(operator.is_, map(_META, self._tensors), self._metas))
        )


def _gradient_key(
    leaves: Sequence[Any], params: Mapping[str, Tensor]
) -> tuple[tuple[int, ...], tuple[str, ...]] | None:
    """Which inputs (by position) and parameters (by name) a call differentiates:
    None with grad mode off or when nothing requires grad, and the call then runs
    the plain forward program; otherwise it runs a TrainingProgram."""
    if not is_grad_enabled():
        return None
    inputs = tuple(i for i, t in enumerate(leaves) if t.requires_grad)
    names = tuple(sorted(name for name, t in params.items() if t.requires_grad))
    return (inputs, names) if inputs or names else None


def _show_gradient(key: tuple[tuple[int, ...], tuple[str, ...]] | None) -> str:
    if key is None:
        return "nothing"
    inputs, names = key
    return f"inputs {list(inputs)} and parameters {list(names)}"


def _is_value(value: Any) -> bool:
    return isinstance(value, (Tensor, Proxy))


def _hashable(spec: Spec) -> Any:
    """``spec`` as a dict key; unhashable literal arguments count by identity."""
    try:
        hash(spec)
        return spec
    except TypeError:
        pass
    tag = spec[0]
    if tag == "literal":
        return ("unhashable", type(spec[1]), id(spec[1]))
    if tag == "seq":
        return (tag, spec[1], tuple(_hashable(s) for s in spec[2]))
    if tag == "dict":
        return (tag, spec[1], tuple((k, _hashable(s)) for k, s in spec[2]))
    return spec


def _describe_changes(old: _Entry, key: tuple[Any, ...]) -> list[str]:
    """The guards that differ between ``old`` and the signature ``key``."""
    old_spec, old_inputs, old_training, old_params, old_gradient = old.key
    spec, inputs, training, params, gradient = key
    changes = []
    if gradient != old_gradient:
        before, after = _show_gradient(old_gradient), _show_gradient(gradient)
        changes.append(f"gradients for {before} -> {after}")
    if spec != old_spec:
        changes.append("the argument structure or a non-tensor argument changed")
    names = [n.name for n in old.traced.graph.inputs]
    for i, (before, after) in enumerate(zip(old_inputs, inputs)):
        name = names[i] if i < len(names) else f"input {i}"
        changes.extend(_layout_changes(name, before, after))
    if training != old_training:
        changes.append(f"training {old_training} -> {training}")
    if params != old_params:
        before_params = dict(old_params)
        for name, key in params:
            if name not in before_params:
                changes.append(f"parameter {name} was added")
            else:
                changes.extend(
                    _layout_changes(f"parameter {name}", before_params[name], key)
                )
        removed = set(before_params) - {name for name, _ in params}
        changes.extend(f"parameter {name} was removed" for name in sorted(removed))
    return changes or ["the signature changed"]


def _layout_changes(
    name: str, before: tuple[Any, ...], after: tuple[Any, ...]
) -> list[str]:
    """What differs between two layout keys, as ``x: shape (4, 2) -> (8, 2)``."""
    labels = ("shape", "dtype", "strides")
    # The key of an empty tensor has no strides.
    before = before + (None,) * (3 - len(before))
    after = after + (None,) * (3 - len(after))
    return [
        f"{name}: {label} {_show(a)} -> {_show(b)}"
        for label, a, b in zip(labels, before, after)
        if a != b
    ]


def _show(value: Any) -> str:
    """A dtype by name; strides with ``*`` for the dims whose stride does not count."""
    if isinstance(value, tuple):
        return "(" + ", ".join("*" if v is None else str(v) for v in value) + ")"
    return getattr(value, "name", None) or str(value)


# What the user holds ----------------------------------------------------------------


class CompiledFunction:
    """A compiled function: call it like the original."""

    def __init__(self, fn: Callable[..., Any], backend: str) -> None:
        self._specializer = _Specializer(fn, backend, model_name(fn))
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._specializer(args, kwargs)

    @property
    def graph(self) -> Graph | None:
        """The graph of the most recent call (None before the first call)."""
        last = self._specializer.last
        return None if last is None else last.traced.graph

    def __repr__(self) -> str:
        spec = self._specializer
        return f"CompiledFunction({spec.label}, backend={spec.backend!r})"


class CompiledModule:
    """A compiled module that looks like the module it wraps.

    Calling it (or its ``forward``) runs the compiled program; every other attribute
    is the module's own, read and written through. ``train()`` and ``eval()`` return
    this wrapper, so ``compiled.eval()(x)`` stays compiled.
    """

    def __init__(self, module: Any, backend: str) -> None:
        specializer = _Specializer(module, backend, model_name(module))
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_specializer", specializer)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._specializer(args, kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The compiled forward: the same as calling this object."""
        return self._specializer(args, kwargs)

    @property
    def module(self) -> Any:
        """The module this wraps."""
        return self._module

    @property
    def graph(self) -> Graph | None:
        """The graph of the most recent call (None before the first call)."""
        last = self._specializer.last
        return None if last is None else last.traced.graph

    def train(self, mode: bool = True) -> CompiledModule:
        """Set the module's training mode (a new signature); returns this wrapper."""
        self._module.train(mode)
        return self

    def eval(self) -> CompiledModule:
        """``train(False)``."""
        return self.train(False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._module, name, value)

    # Containers such as Sequential are indexed and iterated like the module.
    def __getitem__(self, index: Any) -> Any:
        return self._module[index]

    def __len__(self) -> int:
        return len(self._module)

    def __iter__(self) -> Any:
        return iter(self._module)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._module)) | set(type(self).__dict__))

    def __repr__(self) -> str:
        return (
            f"CompiledModule(backend={self._specializer.backend!r}, {self._module!r})"
        )
