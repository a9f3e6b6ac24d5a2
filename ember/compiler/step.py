"""Compiled training steps: forward, backward and the optimizer update as one program.

``ember.compile(step)`` of a function that uses an ember optimizer (found among the
values the function captures: its closure, the globals it names and, for a bound
method, its object's attributes) returns a :class:`CompiledStep`. Tracing such a
step differs from tracing a model in three ways:

1. every parameter of the optimizers, every tensor of their state (momentum buffers,
   Adam moments) and every existing ``.grad`` is a graph ``param`` (a parameter that
   requires grad) or ``buffer`` node, read by name at each call, never a constant;
   a Python number in the state (Adam's step count) is a float64 0-d graph input;
2. ``loss.backward()`` on a traced loss runs :func:`~ember.compiler.autodiff.
   differentiate` on the trace so far and binds each parameter's ``.grad`` to a
   proxy of its gradient (added to a gradient it already had), so the optimizer
   reads traced gradients; ``zero_grad()`` drops them as it does eagerly;
3. in-place writes into those tensors (``p.sub_(...)``, ``buf.mul_(...)``,
   ``grad.zero_()``) are taken over by a dispatch writer
   (:func:`ember.ir.dispatch.intercept_writes`): each becomes a new graph value that
   later reads see, and the graph outputs the last value of every written tensor.

After the program runs, the written parameters and state tensors receive their new
values in place (views and the model see them), each parameter's ``.grad`` holds
the gradient of this step (a new tensor, or None after a trailing ``zero_grad()``),
as eagerly, and numbers in the state are set from their outputs.

Optimizer state that the step creates (a momentum buffer cloned from the first
gradient, Adam's moments at the first step) cannot be a program input before it
exists, so the first call always runs eagerly, creating gradients and state; the
second traces and compiles. A later call whose trace creates state (a parameter
that gets its first gradient) discards that trace, restores the optimizer's state
and runs eagerly; the next call traces again. A group's learning rate (a Python
number; see :data:`TRACED_OPTIONS`) is a float64 0-d input read at every call, so
a schedule reuses the program; the other group options (betas, momentum) are
constants of the program and part of its signature: changing one compiles a new
program.

    >>> import ember
    >>> model = ember.nn.Linear(3, 1)
    >>> opt = ember.optim.SGD(model.parameters(), lr=0.1)
    >>> def step(x, y):
    ...     loss = ((model(x) - y) ** 2).mean()
    ...     opt.zero_grad()
    ...     loss.backward()
    ...     opt.step()
    ...     return loss
    >>> compiled = ember.compile(step)
    >>> type(compiled).__name__
    'CompiledStep'
    >>> x, y = ember.ones(4, 3), ember.zeros(4, 1)
    >>> for _ in range(3):  # eagerly, then traced and compiled, then compiled
    ...     loss = compiled(x, y)
    >>> compiled.eager_calls, len(compiled.cache)
    (1, 1)
    >>> [n.target for n in compiled.graph.params]
    ['weight', 'bias']
    >>> model.weight.grad.shape
    (1, 3)
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember.compiler.autodiff import differentiate
from ember.compiler.interpret import layout_key
from ember.compiler.trace import (
    Proxy,
    Spec,
    Tracer,
    _code,
    _definition_line,
    _input_names,
    flatten,
    model_name,
    unflatten,
)
from ember.errors import (
    AliasError,
    EmberError,
    SignatureError,
    TraceError,
    UnsupportedError,
)
from ember.ir import dispatch, dtypes
from ember.ir import functions as F
from ember.ir.graph import Graph, Node
from ember.ir.meta import TensorMeta
from ember.runtime import autograd
from ember.runtime.tensor import Storage as _Storage
from ember.runtime.tensor import Tensor

logger = logging.getLogger(__name__)

#: How many signatures one compiled step keeps programs for; the oldest goes first.
CACHE_LIMIT = 16

_NUMBER = TensorMeta.contiguous((), dtypes.float64)

#: Param-group options that are inputs of a compiled step (float64 0-d), read at
#: every call, rather than constants of its program.
TRACED_OPTIONS = frozenset(["lr"])


# Finding the optimizers ------------------------------------------------------------


def _is_optimizer(value: Any) -> bool:
    return all(hasattr(value, a) for a in ("param_groups", "state", "zero_grad"))


def _captured(fn: Callable[..., Any]) -> list[Any]:
    """The values ``fn`` can reach by name: closure cells, the globals its code
    names (also in nested functions) and a bound method's object and attributes."""
    found: list[Any] = []
    owner = getattr(fn, "__self__", None)
    if owner is not None:
        found.append(owner)
        found.extend(getattr(owner, "__dict__", {}).values())
    fn = inspect.unwrap(getattr(fn, "__func__", fn))
    code = getattr(fn, "__code__", None)
    if code is None:
        return found
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            found.append(cell.cell_contents)
        except ValueError:  # a cell not yet assigned
            continue
    scope = getattr(fn, "__globals__", {})
    found.extend(scope[name] for name in _names(code) if name in scope)
    return found


def _names(code: Any) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if inspect.iscode(const):
            yield from _names(const)


def find_optimizers(fn: Callable[..., Any]) -> list[Any]:
    """The ember optimizers ``fn`` captures, in the order it names them."""
    found: list[Any] = []
    for value in _captured(fn):
        if _is_optimizer(value) and all(value is not f for f in found):
            found.append(value)
    return found


def _parameter_names(fn: Callable[..., Any]) -> dict[int, str]:
    """Qualified names of the parameters of the modules ``fn`` captures, by id."""
    names: dict[int, str] = {}
    for value in _captured(fn):
        if hasattr(value, "named_parameters") and not isinstance(value, Tensor):
            for name, tensor in value.named_parameters():
                names.setdefault(id(tensor), name)
    return names


# The state one call reads ----------------------------------------------------------


@dataclass
class _State:
    """What the optimizers hold at one call: tensors by graph name, Python numbers
    (their dict, key and graph name) and the parameters by name."""

    tensors: dict[str, Tensor]
    numbers: list[tuple[dict[str, Any], str, str]]
    params: dict[str, Tensor]
    key: tuple[Any, ...]
    #: Which parameters have a ``.grad``: part of the signature unless every
    #: parameter had one at the trace and the step did not read them (it zeroed
    #: them first), so the program serves calls with or without gradients.
    grad_key: tuple[bool, ...]


def _gather(optimizers: list[Any], names: dict[int, str]) -> _State:
    tensors: dict[str, Tensor] = {}
    numbers: list[tuple[dict[str, Any], str, str]] = []
    params: dict[str, Tensor] = {}
    key: list[Any] = []
    grad_key: list[bool] = []
    for k, opt in enumerate(optimizers):
        prefix = f"opt{k}." if len(optimizers) > 1 else ""
        table = opt.state
        for g, group in enumerate(opt.param_groups):
            options = []
            for option, value in group.items():
                if option == "params" or option == "param_names":
                    continue
                if option in TRACED_OPTIONS and type(value) in (float, int):
                    # An input of the program: a schedule changing it every
                    # step reuses the program.
                    numbers.append((group, option, f"{prefix}group{g}.{option}"))
                    options.append((option, float))
                else:
                    options.append((option, value))
            key.append(tuple(options))
            for param in group["params"]:
                name = names.get(id(param))
                name = prefix + (f"param{len(params)}" if name is None else name)
                params[name] = param
                tensors[name] = param
                key.append((name, param._meta, param.requires_grad))
                grad = param.grad
                grad_key.append(grad is not None)
                if grad is not None:
                    tensors[name + ".grad"] = grad
                entries = table.get(param)
                if not entries:
                    continue
                for entry, value in entries.items():
                    label = f"{name}.{entry}"
                    if isinstance(value, Tensor):
                        tensors[label] = value
                        key.append((label, value._meta))
                    else:
                        numbers.append((entries, entry, label))
                        key.append((label, type(value)))
    return _State(tensors, numbers, params, tuple(key), tuple(grad_key))


class _Guard:
    """Whether the optimizers still hold what a :class:`_State` was gathered from:
    the same groups with the same options and parameters, each parameter with the
    same meta, ``requires_grad`` and presence of a gradient, the same state tensors
    (with the same metas) and numbers of the same types. While it holds, that
    state serves the next call as it is, at a fraction of :func:`_gather`'s cost;
    identity implies equality, so a failed check only means gathering again.

    The check is one boolean expression generated for these very objects
    (``holds``, about 40 ns a condition), not a loop over them: it runs on every
    call of a compiled step. ``source`` is its text.
    """

    def __init__(self, optimizers: list[Any]) -> None:
        objects: list[Any] = []

        def ref(value: Any) -> str:
            objects.append(value)
            return f"o{len(objects) - 1}"

        def subscript(key: Any) -> str:
            # A string is written as a literal; any other key (an enum member,
            # whose repr is no Python expression) is passed in as an object.
            return repr(key) if type(key) is str else ref(key)

        terms: list[str] = []
        for opt in optimizers:
            o, groups, table = ref(opt), ref(opt.param_groups), ref(opt.state)
            terms += [
                f"{o}.param_groups is {groups}",
                f"{o}.state is {table}",
                f"len({groups}) == {len(opt.param_groups)}",
            ]
            for g, group in enumerate(opt.param_groups):
                grp, members = ref(group), group["params"]
                listed = ref(members)
                terms += [
                    f"{groups}[{g}] is {grp}",
                    f"len({grp}) == {len(group)}",
                    f"{grp}['params'] is {listed}",
                    f"len({listed}) == {len(members)}",
                ]
                for key, value in group.items():
                    if key in ("params", "param_names"):
                        continue
                    item = f"{grp}[{subscript(key)}]"
                    if key in TRACED_OPTIONS and type(value) in (float, int):
                        # Read at every call: only its type matters.
                        terms.append(f"type({item}) is {ref(type(value))}")
                    else:
                        v = ref(value)
                        terms.append(f"({item} is {v} or _same({item}, {v}))")
                for k, param in enumerate(members):
                    p = ref(param)
                    requires = "True" if param.requires_grad is True else "False"
                    terms += [
                        f"{listed}[{k}] is {p}",
                        f"{p}._meta is {ref(param._meta)}",
                        f"{p}.requires_grad is {requires}",
                        f"{p}.grad is {'' if param.grad is None else 'not '}None",
                    ]
                    entries = opt.state.get(param)
                    e = ref(entries)
                    terms.append(f"{table}.get({p}) is {e}")
                    if not entries:
                        continue
                    terms.append(f"len({e}) == {len(entries)}")
                    for key, value in entries.items():
                        item = f"{e}[{subscript(key)}]"
                        if isinstance(value, Tensor):
                            terms.append(f"{item} is {ref(value)}")
                            terms.append(f"{item}._meta is {ref(value._meta)}")
                        else:
                            # A number (Adam's step count) changes: its type stays.
                            terms.append(f"type({item}) is {ref(type(value))}")
        names = ", ".join(f"o{k}=o{k}" for k in range(len(objects)))
        body = " and\n        ".join(terms) or "True"
        self.source = f"def holds({names}):\n    return (\n        {body}\n    )\n"
        namespace: dict[str, Any] = {f"o{k}": v for k, v in enumerate(objects)}
        namespace["_same"] = _same
        exec(compile(self.source, "<ember guard>", "exec"), namespace)  # noqa: S102
        self.holds: Callable[[], bool] = namespace["holds"]


def _same(now: Any, then: Any) -> bool:
    """An option value equal to the traced one: a float assigned anew, say."""
    return type(now) is type(then) and bool(now == then)


class _Lean:
    """The steady state of a compiled step: the same program, the same optimizer
    state (checked by a :class:`_Guard`) and arguments of the same layouts as the
    call it was made after. :meth:`run` returns ``_MISS`` when any of that
    changed; the caller then takes the general path."""

    def __init__(
        self,
        entry: _StepProgram,
        direct: _Direct,
        state: _State,
        guard: _Guard,
        args: Sequence[Tensor],
    ) -> None:
        self.entry = entry
        self.direct = direct
        # The state without the gradients it was gathered with: they are replaced
        # at every step, and holding them would keep their arrays from recycling.
        tensors = {k: t for k, t in state.tensors.items() if not k.endswith(".grad")}
        self.state = dataclasses.replace(state, tensors=tensors)
        self.guard = guard
        self.metas = [a._meta for a in args]
        self.layouts = [(m.shape, m.dtype, m.strides) for m in self.metas]
        self.count = len(args)
        self.targets = [state.tensors[t] for t in direct.targets]
        # One 0-d float64 tensor per number of the state, its value set per call.
        numbers = [Tensor._from_array(np.zeros((), np.float64)) for _ in state.numbers]
        self.numbers = [
            (owner, key, t._storage.data)
            for (owner, key, _), t in zip(state.numbers, numbers)
        ]
        self.inputs = numbers + self.targets
        self.bumped = [state.tensors[name] for name in direct.in_place]
        self.grads = [(state.params[name], index) for name, index in entry.grads]
        self.results = range(entry.num_results)
        # A step that returns one tensor (the loss): no nest to rebuild.
        spec = entry.output_spec
        self.single = spec[1] if spec[0] == "leaf" else None
        # The program's runner for the calls of a loop; None when it has none.
        self.steady = None
        if not direct.writes:
            steady = getattr(entry.program, "steady", None)
            self.steady = steady() if steady is not None else None
        # The numbers a step updates (an Adam step count): each call's new value,
        # an element of a result, is the next call's input in a native loop.
        layouts: Any = direct.layouts
        self.feedback = [
            (output, layouts[output].offset, self.numbers[number][2])
            for number, output in entry.numbers
        ]

    def run(self, args: tuple[Any, ...]) -> Any:
        if len(args) != self.count:
            return _MISS
        metas = self.metas
        changed = False  # a new batch: the program need not look for the last one
        for k, arg in enumerate(args):
            if type(arg) is not Tensor:
                return _MISS
            meta = arg._meta
            if meta is not metas[k]:
                shape, dtype, strides = self.layouts[k]
                if (
                    meta.strides != strides
                    or meta.shape != shape
                    or meta.dtype is not dtype
                ):
                    return _MISS
                metas[k] = meta
                changed = True
        try:
            holds = self.guard.holds()
        except Exception:  # noqa: BLE001 - an option gone or not comparable
            holds = False  # the general path gathers the state again
        if not holds:
            return _STALE
        for owner, key, number in self.numbers:
            number[0] = owner[key]
        direct, entry = self.direct, self.entry
        arrays = None
        if changed and self.steady is not None and not entry.numbers:
            # The arguments' layouts are the program's: compared above.
            arrays = self.steady.run(args, self.inputs)
        if arrays is None:
            values = [*args, *self.inputs]
            if direct.writes or entry.numbers:
                return _run_direct(entry, direct, values, self.state)
            arrays = entry.program.run_fresh_arrays(values, changed)
        self._finish(arrays, 1)
        layouts: Any = direct.layouts
        new = Tensor._new
        single = self.single
        if single is not None:
            return new(_Storage(arrays[single]), layouts[single], None)
        results = [new(_Storage(arrays[i]), layouts[i], None) for i in self.results]
        return unflatten(entry.output_spec, results)

    def _finish(self, arrays: Sequence[Any], calls: int) -> None:
        """What ``calls`` calls that ran leave behind besides their results: the
        versions of the tensors they update, each parameter's ``.grad`` (the
        last call's, in ``arrays``)."""
        for tensor in self.bumped:
            tensor._storage.version += calls
        layouts: Any = self.direct.layouts
        new = Tensor._new
        for param, index in self.grads:
            param.grad = (
                None
                if index is None
                else new(_Storage(arrays[index]), layouts[index], None)
            )

    def run_many(self, batches: Sequence[tuple[Any, ...]], start: int) -> list[Any]:
        """Run the calls on ``batches[start:]`` that this steady state serves by
        one native loop (:meth:`~ember.compiler.program._Steady.run_many`): the
        batches from ``start`` on of this state's layouts over the storages of
        the last call's, up to the first that is not. Returns their results, or
        an empty list when none ran."""
        steady = self.steady
        if steady is None:
            return []
        # The first batch's layouts decide which steady state tries the batches.
        first = batches[start]
        if len(first) != self.count:
            return []
        for arg, (shape, dtype, strides) in zip(first, self.layouts):
            if type(arg) is not Tensor:
                return []
            meta = arg._meta
            if (
                meta.strides != strides
                or meta.shape != shape
                or meta.dtype is not dtype
            ):
                return []
        try:
            if not self.guard.holds():
                return []
        except Exception:  # noqa: BLE001 - an option gone or not comparable
            return []
        for owner, key, number in self.numbers:
            number[0] = owner[key]
        window = batches[start:] if start else batches
        served = steady.run_many(window, self.inputs, self.results, self.feedback)
        if served is None:
            return []
        ran, arrays = served
        self.metas = [arg._meta for arg in batches[start + ran - 1]]
        self._finish(arrays, ran)
        layouts_out: Any = self.direct.layouts
        new = Tensor._new
        numbers = self.state.numbers
        for which, output in self.entry.numbers:
            owner, key, _ = numbers[which]
            value = arrays[output][layouts_out[output].offset]  # type: ignore[index]
            owner[key] = type(owner[key])(value.item())
        stacks = [arrays[i] for i in self.results]
        single = self.single
        if single is not None:
            stack, layout = stacks[single], layouts_out[single]
            return [new(_Storage(row), layout, None) for row in stack]
        spec = self.entry.output_spec
        return [
            unflatten(
                spec,
                [
                    new(_Storage(s[k]), layouts_out[i], None)
                    for i, s in enumerate(stacks)
                ],
            )
            for k in range(ran)
        ]


#: What :meth:`_Lean.run` returns when the general path must run the call: for
#: arguments of other layouts, and for a state that changed since (``_STALE``).
_MISS: Any = object()
_STALE: Any = object()
#: Steady states a compiled step keeps, each for other argument layouts.
LEANS_KEPT = 4
#: How many batches :meth:`CompiledStep.loop` draws from its iterable at a time.
LOOP_WINDOW = 512


# Tracing a step --------------------------------------------------------------------


class StepTracer(Tracer):
    """A tracer for a training step; see the module docstring."""

    def __init__(self, graph: Graph, state: _State) -> None:
        super().__init__(graph)
        self.by_name: dict[str, Tensor] = {}
        for name, tensor in state.tensors.items():
            kind = (
                "param" if name in state.params and tensor.requires_grad else "buffer"
            )
            self._tracked[id(tensor)] = (kind, name, tensor)
            self.by_name[name] = tensor
        #: The tracked tensors written in the step, by id, in the order written.
        self.written: dict[int, tuple[str, Tensor]] = {}
        self._storages = {id(t._storage) for t in state.tensors.values()}
        self._twins: dict[str, Node] | None = None
        #: Whether the trace failed writing a traced value into an untracked tensor.
        self.new_tensor_written = False
        #: The node each number of the state starts as (set by the step's trace).
        self.number_nodes: list[Node] = []

    def current(self, node: Node) -> Node:
        """``node``, or its twin in the joint graph when backward() switched to it."""
        if node.graph is self.graph:
            return node
        assert self._twins is not None
        return self._twins[node.name]

    def node_of(self, value: Any) -> Node:
        if isinstance(value, Proxy) and value.node.graph is not self.graph:
            # A proxy made before backward() switched to the joint graph.
            assert self._twins is not None
            value.node = self._twins[value.node.name]
        return super().node_of(value)

    def backward(self, root: Proxy, gradient: Any) -> None:
        """Bind every parameter's ``.grad`` to a proxy of its gradient."""
        if gradient is not None:
            raise UnsupportedError(
                f"`{_code()}`: backward(gradient) in a compiled training step",
                op="backward",
                hint="reduce the loss to one element and call loss.backward()",
            )
        wrt = [n for n in self.graph.params if n.kind == "param"]
        output = self.graph.output([self.node_of(root)])
        try:
            joint = differentiate(self.graph, wrt, implicit=True, allow_unused=True)
        finally:
            self.graph.erase(output)
        joint.graph.erase(joint.graph.output_node)
        self._switch(joint.graph)
        for target, grad in zip(joint.wrt, joint.gradients):
            if grad is None:
                continue
            param = self.by_name[target.target or ""]
            proxy: Any = Proxy(grad, self)
            # While tracing, .grad holds a proxy; the snapshot puts tensors back.
            param.grad = proxy if param.grad is None else param.grad + proxy

    def _switch(self, graph: Graph) -> None:
        """Record into ``graph``, a copy of the current graph with more nodes."""
        twins = {n.name: n for n in graph.nodes}
        self._twins = twins
        self.graph = graph
        self._lifted = {k: (twins[n.name], t) for k, (n, t) in self._lifted.items()}
        self._scalars = {k: twins[n.name] for k, n in self._scalars.items()}

    def write(self, target: Any, value: Any, op: str) -> bool:
        """The dispatch writer: record a write into a tracked tensor."""
        if threading.get_ident() != self.thread:
            return False
        tracked = self._tracked.get(id(target))
        if tracked is None:
            if id(target._storage) in self._storages:
                raise TraceError(
                    f"`{_code()}` writes ({op}) into a view of a parameter or of "
                    "optimizer state",
                    op=op,
                    hint="in a compiled training step, write into whole parameters "
                    "and optimizer state tensors",
                )
            if isinstance(value, Proxy):
                # New optimizer state (the step then runs eagerly and stores it),
                # or a tensor the step cannot update.
                self.new_tensor_written = True
                raise TraceError(
                    f"`{_code()}` writes ({op}) a traced value into an eager tensor "
                    "that is neither a parameter nor optimizer state",
                    op=op,
                    hint="build the value out of place (x = x + y)",
                )
            return False
        if value.dtype is not target.dtype:
            value = F.cast(value, target.dtype)
        if value.shape != target.shape:
            value = F.broadcast_to(value, target.shape)
        node = self.node_of(value)
        self._lifted[id(target)] = (node, target)
        self.written[id(target)] = (tracked[1], target)
        return True


#: The cache entry of a signature whose step cannot be traced: it runs eagerly.
_EAGER: Any = object()


@dataclass
class _StepProgram:
    """The program of one signature, and how to hand its outputs back."""

    program: Any
    graph: Graph
    output_spec: Spec
    num_results: int
    writes: list[str]  # tensors written in place, in output order
    grads: list[tuple[str, int | None]]  # each parameter's new .grad (None: dropped)
    numbers: list[tuple[int, int]]  # (index into _State.numbers, output index)
    reads_grads: bool  # whether the program reads gradients from before the step
    #: For each written tensor, whether target and result fill their storage in
    #: order (a flat copy serves); found at the first run.
    flat: list[bool] | None = None
    #: How the program is run without wrapping its results in tensors, or False
    #: when it cannot be; found at the first run.
    direct: _Direct | None | bool = None

    @property
    def interpreted(self) -> bool:
        """Whether the graph interpreter runs this program (the backend could not)."""
        return isinstance(self.program, functools.partial)


class CompiledStep:
    """A compiled training step; call it like the original. See the module."""

    def __init__(self, fn: Callable[..., Any], backend: str, optimizers: list[Any]):
        self.fn = fn
        self.backend = backend
        self.optimizers = optimizers
        self.label = model_name(fn)
        self.cache: dict[tuple[Any, ...], _StepProgram] = {}
        #: Calls so far, and those that ran the step eagerly.
        self.calls = 0
        self.eager_calls = 0
        self._names = _parameter_names(fn)
        # Calls whose arguments are all tensors, by exact layout and state
        # signature, mapped to the entry the full key chose for them.
        self._fast: dict[tuple[Any, ...], _StepProgram] = {}
        # The last fast key and its entry: a key built from the same objects
        # compares equal element by element by identity, without hashing the
        # metas in it as a dict lookup does.
        self._last: tuple[tuple[Any, ...], _StepProgram] | None = None
        # The steady states of the last calls with different argument layouts
        # (the full batches of an epoch and its shorter last one), the most
        # recent first; they share one guard, since they share the state.
        self._leans: list[_Lean] = []
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            leans = self._leans
            if leans and not kwargs:
                for lean in leans:
                    result = lean.run(args)
                    if result is _STALE:
                        # The state changed: no steady state serves this call.
                        self._leans = []
                        break
                    if result is not _MISS:
                        if lean is not leans[0]:
                            leans.remove(lean)
                            leans.insert(0, lean)
                        self.calls += 1
                        return result
            return self._call(args, kwargs)
        except AliasError as error:
            # An argument shares memory with a tensor the program updates in
            # place (nothing was written yet): this call runs eagerly.
            logger.info("%s runs this call eagerly: %s", self.label, error.message)
            self._leans = []
            self.eager_calls += 1
            return self.fn(*args, **kwargs)

    def loop(self, batches: Iterable[Any]) -> list[Any]:
        """Call the step on each batch in turn; return the list of results.

        ``step.loop(batches)`` does what ``[step(*batch) for batch in batches]``
        does, to the same bytes: the same updates in the same order, the same
        results, each parameter's ``.grad`` the last call's. A batch is a tuple
        or list of the step's positional arguments, or one tensor. Calls whose
        arguments are views of the same storages as the call before, of the
        layouts of a steady call (the batches an epoch slices from one dataset),
        run one after the other in native code without returning to Python in
        between (docs/training.md); any other call goes through ``step(*batch)``.
        Batches are drawn from ``batches`` a few hundred at a time.
        """
        try:
            source = iter(batches)
        except TypeError:
            raise SignatureError(
                f"{self.label}.loop takes an iterable of batches",
                expected="a list of argument tuples, or of tensors",
                actual=type(batches).__name__,
                hint="pass [(x[s : s + n], y[s : s + n]) for s in range(0, len(x), n)]",
            ) from None
        results: list[Any] = []
        while True:
            window = [
                b
                if type(b) is tuple
                else tuple(b)
                if isinstance(b, tuple | list)
                else (b,)
                for b in itertools.islice(source, LOOP_WINDOW)
            ]
            if not window:
                return results
            start = 0
            while start < len(window):
                served: list[Any] = []
                for lean in self._leans:
                    served = lean.run_many(window, start)
                    if served:
                        break
                if served:
                    self.calls += len(served)
                    results.extend(served)
                    start += len(served)
                else:
                    results.append(self(*window[start]))
                    start += 1

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.calls == 0:
            # The first step creates gradients and optimizer state eagerly.
            self.calls = self.eager_calls = 1
            return self.fn(*args, **kwargs)
        # The steady states (_Lean) were tried by __call__.
        self.calls += 1
        state = _gather(self.optimizers, self._names)
        fast = None if kwargs else _fast_key(args, state)
        if fast is not None:
            last = self._last
            if last is not None and fast == last[0]:
                return self._run(last[1], args, state, plain=True)
            entry = self._fast.get(fast)
            if entry is not None:
                self._last = (fast, entry)
                return self._run(entry, args, state, plain=True)
        leaves, spec = flatten((args, kwargs), lambda v: isinstance(v, Tensor))
        key = (
            _hashable(spec),
            tuple(layout_key(t._meta) for t in leaves),
            state.key,
        )
        entry = self.cache.get(key + (state.grad_key,)) or self.cache.get(key)
        if entry is None:
            entry = self._build(args, kwargs, leaves, spec, state)
            if entry is None:
                return self._run_eagerly(args, kwargs, key + (state.grad_key,))
            self._store(key, state, entry)
        if entry is _EAGER:
            self.eager_calls += 1
            return self.fn(*args, **kwargs)
        if fast is not None:
            if len(self._fast) >= 4 * CACHE_LIMIT:
                self._fast.clear()
                self._last = None
            self._fast[fast] = entry
        return self._run(entry, leaves, state, plain=fast is not None)

    def _run_eagerly(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], key: tuple[Any, ...]
    ) -> Any:
        """Run a step whose trace failed; remember it when it created no state (a
        new trace would fail again)."""
        self.eager_calls += 1
        result = self.fn(*args, **kwargs)
        if _gather(self.optimizers, self._names).key == key[2]:
            logger.info("%s runs eagerly from now on", self.label)
            self.cache[key] = _EAGER
        return result

    def _store(self, key: tuple[Any, ...], state: _State, entry: _StepProgram) -> None:
        """Cache ``entry``; without the gradients' presence in the key when every
        parameter had one and the program does not read them."""
        general = all(state.grad_key) and not entry.reads_grads
        self.cache[key if general else key + (state.grad_key,)] = entry
        if len(self.cache) > CACHE_LIMIT:
            self.cache.pop(next(iter(self.cache)))
            self._fast.clear()
            self._last = None
            logger.info("%s: dropped the oldest program", self.label)

    def _run(
        self,
        entry: _StepProgram,
        leaves: Sequence[Tensor],
        state: _State,
        plain: bool = False,
    ) -> Any:
        """Run ``entry`` on the call's tensors ``leaves``; ``plain`` says they are
        the call's positional arguments themselves (no keyword, nothing else), so
        that the steady state (:class:`_Lean`) may serve the next call."""
        inputs = list(leaves)
        if state.numbers:
            inputs += [
                Tensor._from_array(np.array(float(d[k]))) for d, k, _ in state.numbers
            ]
        direct = entry.direct
        if direct is None:
            direct = entry.direct = _Direct.of(entry, len(inputs)) or False
        tensors = state.tensors
        if (
            isinstance(direct, _Direct)
            and len(inputs) == direct.input_count
            and all(t in tensors for t in direct.targets)
        ):
            # A missing target takes the general path, whose binding names it.
            values = inputs + [tensors[t] for t in direct.targets]
            result = _run_direct(entry, direct, values, state)
            # A call with other arguments (a number, a default left out) has a
            # spec the steady state does not compare: it never serves such calls.
            if plain and not entry.reads_grads:
                self._remember_lean(_Lean(entry, direct, state, self._guard(), leaves))
            return result
        if entry.interpreted:
            # The interpreter runs eager ops: no autograd history on the results.
            with autograd.no_grad():
                outputs = entry.program(inputs, state.tensors)
        else:
            outputs = entry.program(inputs, state.tensors)
        tensors = state.tensors
        written = outputs[entry.num_results :]
        if entry.flat is None:
            # Layouts are fixed per signature: decide once how to copy each.
            entry.flat = [
                _fills_storage(tensors[name]) and _fills_storage(value)
                for name, value in zip(entry.writes, written)
            ]
        for name, flat, value in zip(entry.writes, entry.flat, written):
            target = tensors[name]
            storage = target._storage
            whole, source = storage.data, value._storage.data
            # A value the program wrote over the target in place needs no copy.
            if value._storage is not storage:
                if flat and whole.shape == source.shape:
                    # Both fill their whole flat buffers in order: one flat copy.
                    np.copyto(whole, source)
                else:
                    np.copyto(target.numpy(), value.numpy())
            storage.version += 1
        params = state.params
        for name, index in entry.grads:
            params[name].grad = None if index is None else outputs[index]
        for number, index in entry.numbers:
            owner, k, _ = state.numbers[number]
            owner[k] = type(owner[k])(outputs[index].item())
        return unflatten(entry.output_spec, outputs[: entry.num_results])

    def _guard(self) -> _Guard:
        """A guard of the optimizers' state now: a steady state's when it still
        holds (generating one costs far more than checking it), else a new one.
        The steady states kept all share the first one's guard."""
        if self._leans:
            guard = self._leans[0].guard
            try:
                if guard.holds():
                    return guard
            except Exception:  # noqa: BLE001 - an option gone or not comparable
                pass
        return _Guard(self.optimizers)

    def _remember_lean(self, lean: _Lean) -> None:
        """Put ``lean`` first; keep the others while their guard is the same (the
        state did not change) and they serve other layouts, at most LEANS_KEPT."""
        kept = [
            other
            for other in self._leans
            if other.guard is lean.guard and other.layouts != lean.layouts
        ]
        self._leans = [lean, *kept[: LEANS_KEPT - 1]]

    def _build(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        leaves: list[Tensor],
        spec: Spec,
        state: _State,
    ) -> _StepProgram | None:
        graph = Graph(self.label)
        tracer = StepTracer(graph, state)
        names = _input_names(self.fn, args, kwargs, spec)
        loc = _definition_line(self.fn)
        proxies = [tracer.input(name, t, loc) for name, t in zip(names, leaves)]
        # A clone of each number input, so that `state["step"] += 1` may rebind it.
        number_proxies = [
            F.clone(Proxy(graph.input(label, _NUMBER, loc=loc), tracer))
            for _, _, label in state.numbers
        ]
        # What each number starts as: one still there at the end is no output.
        tracer.number_nodes = [p.node for p in number_proxies]
        saved = _Snapshot(self.optimizers, state)
        for (owner, k, _), proxy in zip(state.numbers, number_proxies):
            owner[k] = proxy
        call_args, call_kwargs = unflatten(spec, proxies)
        failure: EmberError | None = None
        try:
            with (
                dispatch.intercept(tracer.intercept),
                dispatch.intercept_writes(tracer.write),
            ):
                result = self.fn(*call_args, **call_kwargs)
            finals = saved.finals(state)
        except EmberError as error:
            failure = error
        finally:
            tracer.finished = True
            created = saved.restore()
        if created or tracer.new_tensor_written:
            # A trace that creates state (Adam's moments) may fail before the
            # optimizer stores it, at the first write into a new moment tensor.
            logger.info(
                "%s: this call runs eagerly (it creates optimizer state, or %s)",
                self.label,
                failure.message if failure is not None else "no failure",
            )
            return None
        if failure is not None:
            raise type(failure)(
                f"while tracing {self.label}: {failure.message}",
                op=failure.op,
                expected=failure.expected,
                actual=failure.actual,
                hint=failure.hint,
                location=failure.location,
            ) from None
        return self._finish(tracer, result, finals, state)

    def _finish(
        self, tracer: StepTracer, result: Any, finals: _Finals, state: _State
    ) -> _StepProgram:
        from ember.compiler.compile import BACKENDS

        graph = tracer.graph
        outputs, output_spec = flatten(result, lambda v: isinstance(v, (Proxy, Tensor)))
        nodes = [tracer.node_of(v) for v in outputs]
        count = len(nodes)
        writes = []
        for name, tensor in tracer.written.values():
            writes.append(name)
            nodes.append(tracer.node_of(tensor))
        grads: list[tuple[str, int | None]] = []
        for name, grad in finals.grads.items():
            if grad is None:
                grads.append((name, None))
            else:
                grads.append((name, len(nodes)))
                nodes.append(tracer.node_of(grad))
        numbers = []
        for index, value in finals.numbers.items():
            node = tracer.node_of(value)
            if node is tracer.current(tracer.number_nodes[index]):
                continue  # left as it was (a learning rate): nothing to write back
            numbers.append((index, len(nodes)))
            nodes.append(node)
        graph.output(nodes)
        # The new values of parameters and state may be written over the old.
        donate = {count + k: name for k, name in enumerate(writes)}
        program = _build_program(BACKENDS, self.backend, graph, donate)
        logger.debug("compiled training step %s: %d nodes", self.label, len(graph))
        reads = any(t.endswith(".grad") for t in (n.target or "" for n in graph.params))
        return _StepProgram(
            program, graph, output_spec, count, writes, grads, numbers, reads
        )

    @property
    def graph(self) -> Graph | None:
        """The graph of the most recently compiled signature."""
        programs = [e for e in self.cache.values() if e is not _EAGER]
        return programs[-1].graph if programs else None

    def __repr__(self) -> str:
        return f"CompiledStep({self.label}, backend={self.backend!r})"


@dataclass
class _Direct:
    """How a backend program of a step runs on a precomputed argument order and
    hands back flat result arrays (:meth:`Program.run_fresh_arrays`): new
    parameter and state values are copied out of them without being wrapped in
    tensors, and an array nobody keeps is written again by the next call."""

    input_count: int
    targets: tuple[str, ...]  # the parameters and buffers the program reads, in order
    #: Each result's layout in its array; None for one written in place.
    layouts: list[TensorMeta | None]
    #: For each written tensor: (its name, its result index, whether the result
    #: fills its array in row-major order, so that a flat copy may serve).
    writes: list[tuple[str, int, bool]]
    #: The written tensors the program updates in place: nothing to copy.
    in_place: list[str]
    #: Per written tensor, the last meta of its target found contiguous from
    #: offset 0 (metas are immutable, and an in-place step keeps a tensor's).
    dense: list[TensorMeta | None]

    @staticmethod
    def of(entry: _StepProgram, input_count: int) -> _Direct | None:
        program = entry.program
        layouts = getattr(program, "result_layouts", None)
        if entry.interpreted or layouts is None:
            return None
        args = program.args
        if sum(a.kind == "input" for a in args) != input_count:
            return None
        targets = tuple(a.target for a in args if a.kind != "input")
        writes, in_place = [], []
        for k, name in enumerate(entry.writes):
            index = entry.num_results + k
            layout = layouts[index]
            if layout is None:
                in_place.append(name)
                continue
            writes.append((name, index, layout.offset == 0 and layout.is_contiguous()))
        if any(layouts[i] is None for i in range(entry.num_results)):
            return None
        if any(g is not None and layouts[g] is None for _, g in entry.grads):
            return None
        if any(layouts[i] is None for _, i in entry.numbers):
            return None
        dense: list[TensorMeta | None] = [None] * len(writes)
        return _Direct(input_count, targets, layouts, writes, in_place, dense)


def _run_direct(
    entry: _StepProgram, direct: _Direct, values: list[Any], state: _State
) -> Any:
    """Run ``entry`` as :class:`_Direct` describes and hand its results back as
    :meth:`CompiledStep._run` does."""
    arrays = entry.program.run_fresh_arrays(values)
    layouts: Any = direct.layouts
    tensors = state.tensors
    dense = direct.dense
    for name in direct.in_place:
        tensors[name]._storage.version += 1
    for position, (name, index, flat) in enumerate(direct.writes):
        target = tensors[name]
        storage = target._storage
        whole, source = storage.data, arrays[index]
        meta = target._meta
        known = dense[position]
        if flat and meta is not known and meta.offset == 0 and meta.is_contiguous():
            dense[position] = known = meta
        if flat and meta is known and whole.shape == source.shape:
            # Both are their whole flat arrays, element for element: one flat copy.
            np.copyto(whole, source)
        else:
            value = Tensor._new(_Storage(source), layouts[index], None)
            np.copyto(target.numpy(), value.numpy())
        storage.version += 1
    params = state.params
    for name, grad in entry.grads:
        params[name].grad = (
            None
            if grad is None
            else Tensor._new(_Storage(arrays[grad]), layouts[grad], None)
        )
    for number, output in entry.numbers:
        owner, key, _ = state.numbers[number]
        owner[key] = type(owner[key])(arrays[output][layouts[output].offset].item())
    results = [
        Tensor._new(_Storage(arrays[i]), layouts[i], None)
        for i in range(entry.num_results)
    ]
    return unflatten(entry.output_spec, results)


def _fills_storage(tensor: Tensor) -> bool:
    """Whether ``tensor`` is its whole storage, in row-major order."""
    meta = tensor._meta
    return tensor._storage.size == meta.numel and meta.is_contiguous()


def _build_program(
    backends: dict[str, Any], backend: str, graph: Graph, donate: dict[int, str]
) -> Any:
    """The backend's program; the interpreter's when the backend cannot lower an op."""
    from ember.compiler.interpret import interpret
    from ember.errors import LoweringError

    try:
        return backends[backend](graph, donate)
    except LoweringError as error:
        logger.info("%s runs on the interpreter: %s", graph.name, error.message)
        return functools.partial(interpret, graph)


@dataclass
class _Finals:
    """The values the traced step left: each parameter's ``.grad`` (a proxy, a
    tensor, or None) and the numbers of the state that changed (by index)."""

    grads: dict[str, Any]
    numbers: dict[int, Any]


class _Snapshot:
    """The optimizers' state dicts and the parameters' gradients before tracing, to
    put back afterwards: the trace must leave no proxy behind."""

    def __init__(self, optimizers: list[Any], state: _State) -> None:
        self.optimizers = optimizers
        self.tables = [(opt.state, dict(opt.state)) for opt in optimizers]
        self.entries = [
            (entry, dict(entry)) for opt in optimizers for entry in opt.state.values()
        ]
        self.grads = {name: p.grad for name, p in state.params.items()}
        self.params = state.params
        self.slots = [(d, k) for d, k, _ in state.numbers]
        self.numbers = [d[k] for d, k in self.slots]

    def finals(self, state: _State) -> _Finals:
        grads = {}
        for name, param in self.params.items():
            if param.grad is not self.grads[name]:
                grads[name] = param.grad
        numbers = {}
        for index, (owner, k, _) in enumerate(state.numbers):
            numbers[index] = owner[k]
        return _Finals(grads, numbers)

    def restore(self) -> bool:
        """Put everything back; True when the trace created optimizer state."""
        created = False
        for table, before in self.tables:
            created |= table.keys() != before.keys()
            table.clear()
            table.update(before)
        for entry, before in self.entries:
            created |= entry.keys() != before.keys()
            entry.clear()
            entry.update(before)
        for name, param in self.params.items():
            param.grad = self.grads[name]
        for (owner, k), value in zip(self.slots, self.numbers):
            owner[k] = value  # group options; state entries were put back above
        return created


def _fast_key(args: tuple[Any, ...], state: _State) -> tuple[Any, ...] | None:
    """For a call whose arguments are all plain tensors, a key that implies the full
    signature: each argument's shape, dtype and strides, and the state's key."""
    layouts = []
    for arg in args:
        if type(arg) is not Tensor:
            return None
        meta = arg._meta
        layouts.append((meta.shape, meta.dtype, meta.strides))
    return (tuple(layouts), state.key, state.grad_key)


def _hashable(spec: Spec) -> Any:
    from ember.compiler.compile import _hashable as hashable

    return hashable(spec)
