"""The eager autograd engine.

Every differentiable op run on a tensor that requires grad records a :class:`Node`,
the output's ``grad_fn``: the op, its attributes, one edge per input (the input's own
``grad_fn``, the leaf tensor itself, or None when the input needs no gradient) and
the values its gradient rule reads (``ember.ir.gradients.save_plan``), together with
the version of their storage at that moment. Only floating-point outputs are
recorded: integer and bool results carry no gradient.

Backward (:func:`backward` and :func:`grad`) then:

1. collects the nodes reachable from the roots, iteratively (depth is unbounded),
2. counts, for every node, the consumers that will send it a gradient,
3. runs a node only after all of them have, newest node first among the ready ones,
   so a value used on several paths receives the sum of its gradients, added in a
   fixed order, before its own rule runs; two runs are bit-identical (the walk is
   :class:`ember.ir.schedule.ReverseOrder`, which the graph autodiff shares),
4. hands leaf gradients to ``.grad`` (backward) or to the caller (grad).

It fails fast with typed errors that name the tensor and the op: see
:func:`backward`. Every run leaves a :class:`BackwardStats` in :func:`last_stats` and
logs its one-line summary at DEBUG on this module's logger (``EMBER_LOG=autograd``).
Gradient rules run with recording off: ember has no higher-order gradients
(``docs/limitations.md``).

    >>> import ember
    >>> x = ember.tensor([1.0, 2.0, 3.0], requires_grad=True)
    >>> (x * x).sum().backward()
    >>> x.grad.tolist()
    [2.0, 4.0, 6.0]
    >>> last_stats().nodes_run
    2
"""

from __future__ import annotations

import contextlib
import itertools
import linecache
import logging
import os
import sys
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ember.errors import (
    AutogradError,
    GradientMismatchError,
    GraphFreedError,
    InplaceModificationError,
    MissingGradError,
    NoGradError,
    NonScalarLossError,
    SourceLocation,
    is_ember_frame,
)
from ember.ir import functions as F
from ember.ir.gradients import fit_gradient, save_plan
from ember.ir.meta import TensorMeta
from ember.ir.registry import Attrs, GradContext, OpDef
from ember.ir.schedule import ReverseOrder
from ember.runtime.factories import ones_like
from ember.runtime.tensor import Storage, Tensor

logger = logging.getLogger(__name__)

_grad_enabled = True
_sequence = itertools.count()


# Grad mode --------------------------------------------------------------------------


def is_grad_enabled() -> bool:
    """True unless inside ``ember.no_grad()``."""
    return _grad_enabled


@contextlib.contextmanager
def _grad_mode(enabled: bool) -> Iterator[None]:
    global _grad_enabled
    previous = _grad_enabled
    _grad_enabled = enabled
    try:
        yield
    finally:
        _grad_enabled = previous


def no_grad() -> contextlib.AbstractContextManager[None]:
    """Context manager (or decorator) in which ops record nothing for backward.

    >>> import ember
    >>> x = ember.ones(2, requires_grad=True)
    >>> with ember.no_grad():
    ...     y = x * 2
    >>> y.requires_grad
    False
    """
    return _grad_mode(False)


def enable_grad() -> contextlib.AbstractContextManager[None]:
    """Context manager that turns recording back on inside ``no_grad``."""
    return _grad_mode(True)


def set_requires_grad(tensor: Tensor, flag: bool) -> None:
    """``tensor.requires_grad_(flag)``, for leaves of floating dtype only."""
    if flag and not tensor.dtype.is_floating_point:
        raise AutogradError(
            f"requires_grad_() on a {tensor.meta.type_str()} tensor: only "
            "floating-point tensors can require gradients",
            op="requires_grad_",
            hint="convert with .float() first",
        )
    if not flag and tensor.grad_fn is not None:
        raise AutogradError(
            f"requires_grad_(False) on {describe(tensor)}, which is not a leaf",
            op="requires_grad_",
            hint="use .detach() to get a tensor cut from the graph",
        )
    tensor.requires_grad = bool(flag)


# Recording --------------------------------------------------------------------------

#: co_filename -> "lies inside the ember package"; frames are walked on every record.
_internal_files: dict[str, bool] = {}


def _user_line() -> tuple[str, int] | None:
    """File and line of the innermost caller outside ember (cached per file)."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        internal = _internal_files.get(filename)
        if internal is None:
            internal = _internal_files[filename] = is_ember_frame(filename)
        if not internal:
            return filename, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return None


class _Unsaved:
    """Stands in a GradContext for a value the rule declared it does not read."""

    __slots__ = ("meta",)

    def __init__(self, meta: TensorMeta) -> None:
        self.meta = meta

    def __repr__(self) -> str:
        return f"<unsaved {self.meta.type_str()}>"


class Node:
    """The record of one op for backward: a tensor's ``grad_fn``.

    ``edges[i]`` is where the gradient of input ``i`` goes: that input's ``grad_fn``,
    the input itself when it is a leaf, or None when it needs no gradient.
    ``saved`` holds the inputs the rule reads (None once backward freed them).
    """

    __slots__ = (
        "op",
        "attrs",
        "edges",
        "needs",
        "metas",
        "out_meta",
        "plan",
        "saved",
        "versions",
        "out_storage",
        "out_version",
        "sequence",
        "output_ref",
        "where",
    )

    def __init__(
        self, op: OpDef, inputs: Sequence[Tensor], attrs: Attrs, output: Tensor
    ) -> None:
        self.op = op
        self.attrs = attrs
        # List comprehensions: this runs for every recorded op, and they are the
        # fastest way to build these small tuples.
        self.edges = edges = tuple(
            [(t.grad_fn or t) if t.requires_grad else None for t in inputs]
        )
        self.needs = needs = tuple([e is not None for e in edges])
        self.metas = tuple([t._meta for t in inputs])
        self.out_meta = output._meta
        self.plan = plan = save_plan(op.name, needs)
        self.saved: tuple[Tensor, ...] | None = tuple([inputs[i] for i in plan[0]])
        self.versions = tuple([inputs[i]._storage.version for i in plan[0]])
        # The output is kept as storage and meta, not as the tensor: the tensor
        # holds this node, and a cycle would outlive its last reference.
        self.out_storage = output._storage if plan[1] else None
        self.out_version = output._storage.version
        self.sequence = next(_sequence)
        self.output_ref = weakref.ref(output)
        self.where = _user_line()

    @property
    def name(self) -> str:
        """The op's name."""
        return self.op.name

    def location(self) -> SourceLocation | None:
        """Where the user's code ran the op, if it ran from outside ember."""
        if self.where is None:
            return None
        file, line = self.where
        return SourceLocation(file, line, linecache.getline(file, line).strip())

    def __repr__(self) -> str:
        return f"<{self.op.name}Backward #{self.sequence}>"


def is_recording(op: OpDef, inputs: Sequence[Tensor]) -> bool:
    """Should this eager call be recorded for backward?"""
    return _grad_enabled and op.differentiable and any(t.requires_grad for t in inputs)


def record(op: OpDef, inputs: Sequence[Tensor], attrs: Attrs, output: Tensor) -> None:
    """Attach a Node to ``output``; integer and bool outputs are not differentiable."""
    if output._meta.dtype.is_floating_point:
        output.grad_fn = Node(op, inputs, attrs, output)
        output.requires_grad = True


def describe(tensor: Tensor) -> str:
    """``f32[2, 3] (output of mul at model.py:12)``: a tensor, for error messages."""
    node = tensor.grad_fn
    if node is None:
        kind = "a leaf" if tensor.requires_grad else "not in any graph"
        return f"{tensor.meta.type_str()} ({kind})"
    return f"{tensor.meta.type_str()} (output of {node.name}{_at(node)})"


def _at(node: Node) -> str:
    """`` at model.py:12``: where the user's code ran the node's op, if known."""
    if node.where is None:
        return ""
    return f" at {os.path.basename(node.where[0])}:{node.where[1]}"


# Statistics -------------------------------------------------------------------------


@dataclass
class BackwardStats:
    """What one backward did; :func:`last_stats` returns the latest.

    ``edges`` counts gradient edges into nodes and leaves, ``accumulations`` the
    additions that summed two gradients of one value, ``peak_ready`` the longest
    the queue of runnable nodes grew.
    """

    nodes_run: int = 0
    edges: int = 0
    accumulations: int = 0
    peak_ready: int = 0
    leaves: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """The one line logged at DEBUG after every backward."""
        return (
            f"backward: {self.nodes_run} nodes, {self.edges} edges, "
            f"{self.accumulations} accumulations, peak ready {self.peak_ready}, "
            f"{self.leaves} leaves, {self.seconds * 1e3:.3f} ms"
        )

    __str__ = summary


_last_stats = BackwardStats()


def last_stats() -> BackwardStats:
    """Statistics of the most recent backward or grad call."""
    return _last_stats


# Public entry points ----------------------------------------------------------------


def backward(
    root: Tensor, gradient: Tensor | None = None, *, retain_graph: bool = False
) -> None:
    """Backpropagate from ``root`` and accumulate into the leaves' ``.grad``.

    Raises NoGradError when ``root`` does not require grad, NonScalarLossError when
    it has several elements and no ``gradient`` is given, GradientMismatchError for
    a ``gradient`` of another shape or dtype, GraphFreedError when the graph already
    ran without ``retain_graph=True``, and InplaceModificationError when a value
    saved for backward was modified in place since. ``.grad`` is only touched once
    the whole backward succeeded.
    """
    _require_grad(root, "backward() from")
    roots = [(root, _root_gradient(root, gradient))]
    leaf_grads, retained = _execute(roots, retain_graph, None)
    for tensor, (value, owned) in (leaf_grads | retained).items():
        _accumulate_grad(tensor, value, owned)


def grad(
    outputs: Tensor | Sequence[Tensor],
    inputs: Tensor | Sequence[Tensor],
    grad_outputs: Tensor | Sequence[Tensor | None] | None = None,
    retain_graph: bool = False,
    allow_unused: bool = False,
) -> tuple[Tensor | None, ...]:
    """Gradients of ``outputs`` with respect to ``inputs``, leaving ``.grad`` alone.

    Only the part of the graph between them runs (and is freed). An input the
    outputs do not depend on raises MissingGradError, or gives None with
    ``allow_unused=True``.

    >>> import ember
    >>> x = ember.tensor([1.0, 2.0], requires_grad=True)
    >>> y = x * x
    >>> grad(y.sum(), y)[0].tolist()
    [1.0, 1.0]
    """
    outputs = _as_list(outputs)
    inputs = _as_list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    grad_outputs = _as_list(grad_outputs)
    if len(grad_outputs) != len(outputs):
        raise GradientMismatchError(
            f"grad(): {len(grad_outputs)} grad_outputs for {len(outputs)} outputs",
            expected=len(outputs),
            actual=len(grad_outputs),
            hint="pass one gradient (or None) per output",
        )
    for out in outputs:
        _require_grad(out, "grad() of")
    for t in inputs:
        _require_grad(t, "grad() with respect to")
    roots = [(out, _root_gradient(out, g)) for out, g in zip(outputs, grad_outputs)]
    _, found = _execute(roots, retain_graph, inputs)
    result = []
    for t in inputs:
        value = found.get(t)
        if value is None and not allow_unused:
            raise MissingGradError(
                f"grad(): the input {describe(t)} is not reachable from the outputs, "
                "so it receives no gradient",
                op=t.grad_fn.name if t.grad_fn else None,
                hint="pass allow_unused=True to get None for it",
            )
        result.append(None if value is None else _owned(value[0], value[1]))
    return tuple(result)


def _as_list(values: Any) -> list[Any]:
    return list(values) if isinstance(values, (list, tuple)) else [values]


def _require_grad(tensor: Tensor, what: str) -> None:
    if not getattr(tensor, "requires_grad", False):
        raise NoGradError(
            f"{what} {describe(tensor)}, which does not require grad and has no "
            "grad_fn",
            hint="create the leaf with requires_grad=True, and check that no_grad() "
            "or .detach() did not cut the graph",
        )


def _root_gradient(root: Tensor, gradient: Tensor | None) -> Tensor:
    op = root.grad_fn.name if root.grad_fn else None
    if gradient is None:
        if root.numel() != 1:
            raise NonScalarLossError(
                f"backward on {describe(root)} needs an explicit gradient: only a "
                "one-element output has the implied gradient 1",
                op=op,
                expected="a one-element tensor, or gradient=...",
                actual=root.shape,
                hint="reduce the loss first (loss.mean() or loss.sum()), or pass "
                "gradient=ember.ones_like(loss)",
            )
        return ones_like(root)
    if not isinstance(gradient, Tensor):
        raise GradientMismatchError(
            f"the gradient for {describe(root)} must be a tensor, got "
            f"{type(gradient).__name__}",
            op=op,
            hint="wrap it with ember.tensor(...)",
        )
    if gradient.shape != root.shape or gradient.dtype is not root.dtype:
        raise GradientMismatchError(
            f"the gradient for {describe(root)} is {gradient.meta.type_str()}",
            op=op,
            expected=root.meta.type_str(),
            actual=gradient.meta.type_str(),
            hint="pass a gradient with the output's shape and dtype",
        )
    return gradient.detach()


def _owned(value: Tensor, owned: bool) -> Tensor:
    """A dense gradient no other tensor shares: the engine may hand the same buffer
    (or a stride-0 view) to several places, and callers write into ``.grad``."""
    if owned and value.is_contiguous():
        return value
    return F.clone(value)


def _accumulate_grad(tensor: Tensor, value: Tensor, owned: bool) -> None:
    """``tensor.grad += value``, out of place, checking what is already there."""
    current = tensor.grad
    if current is None:
        tensor.grad = _owned(value, owned)
        return
    if current.shape != tensor.shape or current.dtype is not tensor.dtype:
        raise GradientMismatchError(
            f"the .grad of {describe(tensor)} is {current.meta.type_str()}, so the "
            "new gradient cannot be added to it",
            expected=tensor.meta.type_str(),
            actual=current.meta.type_str(),
            hint="set .grad = None (or a tensor of the right shape and dtype)",
        )
    tensor.grad = current + value


# The scheduler ----------------------------------------------------------------------

#: A gradient and whether the engine made it for this value alone (``owned``), or it
#: may be shared with a rule's input, another edge or the caller.
Received = tuple[Any, bool]


class _Run:
    """One backward pass: the gradients received so far and the ready queue."""

    def __init__(
        self,
        roots: Sequence[tuple[Tensor, Tensor]],
        keep: set[Any] | None,
        captured: dict[Node, Tensor],
    ) -> None:
        self.roots = roots
        self.keep = keep
        self.captured = captured
        self.stats = BackwardStats()
        self.buffers: dict[Any, Received] = {}  # Node or leaf tensor -> gradient
        self.found: dict[Tensor, Received] = {}  # captured or retained tensors

    def receives(self, target: Any) -> bool:
        """Does ``target`` take part? (grad() skips what leads to no input.)"""
        keep = self.keep
        return target is not None and (
            keep is None or target in keep or target in self.captured
        )

    def send(self, target: Any, value: Tensor) -> None:
        buffers = self.buffers
        if target in buffers:
            buffers[target] = (buffers[target][0] + value, True)
            self.stats.accumulations += 1
        else:
            buffers[target] = (value, False)

    def edges_into_nodes(self, node: Node) -> list[Node]:
        """The recorded nodes ``node`` sends a gradient to (none if it does not run)."""
        keep = self.keep
        if keep is None:  # backward(): every edge takes part
            return [t for t in node.edges if type(t) is Node]
        if node not in keep:
            return []
        return [t for t in node.edges if type(t) is Node and self.receives(t)]

    def run(self, retain_graph: bool, retain_grads: bool) -> None:
        """Run every node once, after all its consumers (see ember.ir.schedule)."""
        root_nodes = []
        for tensor, gradient in self.roots:
            self.send(tensor.grad_fn or tensor, gradient)
            if tensor.grad_fn is not None:
                root_nodes.append(tensor.grad_fn)
        walk = ReverseOrder(root_nodes, self.edges_into_nodes, _sequence_of)
        # Locals: this loop runs once per node.
        stats, buffers, found = self.stats, self.buffers, self.found
        captured, keep = self.captured, self.keep
        send = self.send
        for node in walk:
            grad_out = buffers.pop(node)
            if node in captured:
                found[captured[node]] = grad_out
            elif retain_grads:
                self._retain(node, grad_out)
            if keep is not None and node not in keep:
                continue
            stats.nodes_run += 1
            for target, value in zip(node.edges, _apply(node, grad_out[0], self.roots)):
                # value is None exactly where the edge is (no gradient needed).
                if value is None or (keep is not None and not self.receives(target)):
                    continue
                stats.edges += 1
                send(target, value)
            if not retain_graph:
                node.saved = None
        stats.peak_ready = walk.peak_ready

    def _retain(self, node: Node, grad_out: Received) -> None:
        output = node.output_ref()
        if output is not None and output._retains_grad:
            self.found[output] = grad_out


def _sequence_of(node: Node) -> int:
    return node.sequence


def _execute(
    roots: Sequence[tuple[Tensor, Tensor]],
    retain_graph: bool,
    capture: Sequence[Tensor] | None,
) -> tuple[dict[Tensor, Received], dict[Tensor, Received]]:
    """The scheduler behind backward() and grad(): the gradients of the leaves, and
    of ``capture`` (which may hold non-leaf tensors) or else of the non-leaf tensors
    that called retain_grad()."""
    global _last_stats
    start = time.perf_counter()
    captured = {t.grad_fn: t for t in capture or () if t.grad_fn is not None}
    keep = None
    if capture is not None:
        root_nodes = [t.grad_fn for t, _ in roots if t.grad_fn is not None]
        keep = _leading_to(root_nodes, captured, capture)
    run = _Run(roots, keep, captured)
    with no_grad():
        run.run(retain_graph, retain_grads=capture is None)
    leaves = {t: g for t, g in run.buffers.items() if type(t) is not Node}
    if capture is not None:
        run.found.update((t, leaves[t]) for t in capture if t in leaves)
    stats = run.stats
    stats.leaves = len(leaves)
    stats.seconds = time.perf_counter() - start
    _last_stats = stats
    logger.debug("%s", stats)
    return leaves, run.found


def _leading_to(
    roots: Sequence[Node], captured: dict[Node, Tensor], capture: Sequence[Tensor]
) -> set[Any]:
    """The nodes from which a captured tensor can be reached, and the captured
    leaves: grad() runs only these nodes and sends gradients only to them (and to
    the captured nodes themselves)."""
    leaves = {t for t in capture if t.grad_fn is None}
    useful: set[Any] = set(leaves)
    # Iterative depth-first post-order: a node is useful when one of its edges
    # leads to a captured tensor or to a useful node.
    done: set[Node] = set()
    stack: list[tuple[Node, bool]] = [(n, False) for n in dict.fromkeys(roots)]
    while stack:
        node, expanded = stack.pop()
        if node in done:
            continue
        if not expanded:
            stack.append((node, True))
            stack.extend(
                (t, False) for t in node.edges if type(t) is Node and t not in done
            )
            continue
        done.add(node)
        if any(t is not None and (t in useful or t in captured) for t in node.edges):
            useful.add(node)
    return useful


def _context(node: Node, roots: Sequence[tuple[Tensor, Tensor]]) -> GradContext:
    """The rule's view of the op, after checking the saved values are intact."""
    saved = node.saved
    if saved is None:
        raise GraphFreedError(
            f"a second backward from {describe(roots[0][0])} reached {node.name}"
            f"{_at(node)}, whose saved values the first backward freed",
            op=node.name,
            hint="pass retain_graph=True to the first backward() if you need two",
            location=node.location(),
        )
    positions = node.plan[0]
    inputs: list[Any] = [_Unsaved(m) for m in node.metas]
    for position, value, version in zip(positions, saved, node.versions):
        _check_version(node, f"input {position}", value.meta, value._storage, version)
        inputs[position] = value
    output: Any = _Unsaved(node.out_meta)
    if node.out_storage is not None:
        _check_version(
            node, "output", node.out_meta, node.out_storage, node.out_version
        )
        output = Tensor._make(node.out_storage, node.out_meta)
    return GradContext(tuple(inputs), output, node.attrs, node.needs)


def _check_version(
    node: Node, which: str, meta: TensorMeta, storage: Storage, saved: int
) -> None:
    if storage.version != saved:
        raise InplaceModificationError(
            f"{meta.type_str()}, the {which} of {node.name}{_at(node)} saved for "
            "backward, was modified in place afterwards: its gradient would be wrong",
            op=node.name,
            expected=f"version {saved}",
            actual=f"version {storage.version}",
            hint="use the out-of-place form of the later op (x = x * 2), or .clone() "
            "the value before modifying it",
            location=node.location(),
        )


def _apply(
    node: Node, grad_out: Tensor, roots: Sequence[tuple[Tensor, Tensor]]
) -> tuple[Tensor | None, ...]:
    """Run the node's rule and fit each gradient to its input."""
    rule = node.op.grad
    if rule is None:
        raise AutogradError(
            f"{node.name} has no gradient rule", op=node.name, location=node.location()
        )
    grads = tuple(rule(_context(node, roots), grad_out))
    if len(grads) != len(node.metas):
        raise GradientMismatchError(
            f"the gradient rule of {node.name} returned {len(grads)} gradients for "
            f"{len(node.metas)} inputs",
            op=node.name,
            location=node.location(),
        )
    fitted: list[Tensor | None] = []
    for i, (value, meta, need) in enumerate(zip(grads, node.metas, node.needs)):
        if not need:
            fitted.append(None)
        elif value is None:
            raise MissingGradError(
                f"the gradient rule of {node.name} returned no gradient for input "
                f"{i} ({meta.type_str()}), which needs one",
                op=node.name,
                location=node.location(),
            )
        else:
            fitted.append(fit_gradient(value, meta, node.name))
    return tuple(fitted)
