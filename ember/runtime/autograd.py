"""The eager autograd engine.

Every differentiable op run on a tensor that requires grad records a :class:`Node`
(the output's ``grad_fn``) holding the op, its attributes, the inputs and output it
saved and the version of their storage at that moment. Backward then:

1. collects the nodes reachable from the roots (iteratively: depth is unbounded),
2. counts for every node how many reachable consumers will send it a gradient,
3. runs a node only when all of them have, newest node first among the ready ones,
   so a value used on several paths receives the sum of all its gradients, added in
   a fixed order, before its own rule runs; two runs are bit-identical,
4. accumulates leaf gradients into ``.grad``.

Gradient rules come from the op registry (``ember.ir.gradients``) and run with grad
mode off: ember has no higher-order gradients (``docs/limitations.md``).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
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
    NoGradError,
    NonScalarLossError,
    SourceLocation,
)
from ember.ir import gradients  # noqa: F401  (fills the registry's gradient slots)
from ember.ir.gradients import fit_gradient
from ember.ir.meta import TensorMeta
from ember.ir.registry import Attrs, GradContext, OpDef

logger = logging.getLogger(__name__)

_grad_enabled = True
_sequence = itertools.count()


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
    """Context manager in which ops record nothing for backward."""
    return _grad_mode(False)


def enable_grad() -> contextlib.AbstractContextManager[None]:
    """Context manager that turns recording back on inside ``no_grad``."""
    return _grad_mode(True)


def set_requires_grad(tensor: Any, flag: bool) -> None:
    """``tensor.requires_grad_(flag)``, for leaves of floating dtype only."""
    if flag and not tensor.dtype.is_floating_point:
        raise AutogradError(
            f"only floating-point tensors can require gradients, got {tensor.dtype.name}",
            op="requires_grad_",
            hint="convert with .float() first",
        )
    if not flag and tensor.grad_fn is not None:
        raise AutogradError(
            "requires_grad_(False) on a non-leaf tensor; use .detach() instead",
            op="requires_grad_",
        )
    tensor.requires_grad = bool(flag)


def _caller() -> tuple[str, int] | None:
    from ember.errors import _is_internal

    frame = sys._getframe(2)
    while frame is not None and _is_internal(frame.f_code.co_filename):
        frame = frame.f_back  # type: ignore[assignment]
    return (frame.f_code.co_filename, frame.f_lineno) if frame is not None else None


class Node:
    """The record of one op for backward: a tensor's ``grad_fn``."""

    __slots__ = ("op", "attrs", "saved", "versions", "input_metas", "edges",
                 "needs", "sequence", "output_ref", "where")

    def __init__(self, op: OpDef, inputs: Sequence[Any], attrs: Attrs, output: Any) -> None:
        self.op = op
        self.attrs = attrs
        detached = tuple(t.detach() for t in inputs)
        out = output.detach()
        self.saved: tuple[tuple[Any, ...], Any] | None = (detached, out)
        self.versions = tuple(t._storage.version for t in inputs) + (output._storage.version,)
        self.input_metas: tuple[TensorMeta, ...] = tuple(t._meta for t in inputs)
        self.needs = tuple(bool(t.requires_grad) for t in inputs)
        # Each edge leads where the input's gradient goes: its grad_fn, the leaf
        # tensor itself, or nowhere.
        self.edges: tuple[Any, ...] = tuple(
            (t.grad_fn if t.grad_fn is not None else t) if t.requires_grad else None
            for t in inputs
        )
        self.sequence = next(_sequence)
        self.output_ref = weakref.ref(output)
        self.where = _caller()

    @property
    def name(self) -> str:
        return self.op.name

    def location(self) -> SourceLocation | None:
        if self.where is None:
            return None
        import linecache

        file, line = self.where
        return SourceLocation(file, line, linecache.getline(file, line).strip())

    def __repr__(self) -> str:
        return f"<{self.op.name}Backward #{self.sequence}>"


def is_recording(op: OpDef, inputs: Sequence[Any]) -> bool:
    """Should this eager call be recorded for backward?"""
    return _grad_enabled and op.differentiable and any(t.requires_grad for t in inputs)


def record(op: OpDef, inputs: Sequence[Any], attrs: Attrs, output: Any) -> None:
    """Attach a Node to ``output`` (floating outputs only carry gradients)."""
    if not output.dtype.is_floating_point:
        return
    output.grad_fn = Node(op, inputs, attrs, output)
    output.requires_grad = True


@dataclass
class BackwardStats:
    """What one backward did: readable through :func:`last_stats`."""

    nodes_run: int = 0
    edges: int = 0
    accumulations: int = 0
    peak_ready: int = 0
    leaves: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"backward: {self.nodes_run} nodes, {self.edges} edges, "
            f"{self.accumulations} accumulations, peak ready {self.peak_ready}, "
            f"{self.leaves} leaves, {self.seconds * 1e3:.3f} ms"
        )


_last_stats = BackwardStats()


def last_stats() -> BackwardStats:
    """Statistics of the most recent backward or grad call."""
    return _last_stats


def _check_gradient(root: Any, gradient: Any) -> Any:
    from ember.runtime.factories import ones_like
    from ember.runtime.tensor import Tensor

    if gradient is None:
        if root.numel() != 1:
            raise NonScalarLossError(
                f"backward() on a tensor of shape {root.shape} needs an explicit "
                "gradient: only a one-element output has an implied gradient of 1",
                op=root.grad_fn.name if root.grad_fn else None,
                expected="a one-element tensor, or backward(gradient=...)",
                actual=root.shape,
                hint="reduce the loss first (loss.mean() or loss.sum()), or pass "
                "gradient=ember.ones_like(loss)",
            )
        return ones_like(root)
    if not isinstance(gradient, Tensor):
        raise GradientMismatchError(
            f"the gradient must be a tensor, got {type(gradient).__name__}"
        )
    if gradient.shape != root.shape or gradient.dtype is not root.dtype:
        raise GradientMismatchError(
            f"the gradient has {gradient.meta.type_str()} but the output is "
            f"{root.meta.type_str()}",
            expected=root.meta.type_str(),
            actual=gradient.meta.type_str(),
            hint="pass a gradient with the output's shape and dtype",
        )
    return gradient.detach()


def _require_grad(t: Any, what: str) -> None:
    if not t.requires_grad:
        raise NoGradError(
            f"{what} on a tensor that does not require grad and has no grad_fn "
            f"({t.meta.type_str()})",
            hint="create the leaf with requires_grad=True, or check that no_grad() "
            "or .detach() did not cut the graph",
        )


def backward(root: Any, gradient: Any = None, *, retain_graph: bool = False) -> None:
    """Backpropagate from ``root`` and accumulate into the leaves' ``.grad``."""
    _require_grad(root, "backward()")
    grad = _check_gradient(root, gradient)
    leaf_grads = _run([(root, grad)], retain_graph, capture=None)
    for leaf, value in leaf_grads.items():
        leaf.grad = value if leaf.grad is None else leaf.grad + value


def grad(
    outputs: Any, inputs: Any, grad_outputs: Any = None, retain_graph: bool = False,
    allow_unused: bool = False,
) -> tuple[Any, ...]:
    """Gradients of ``outputs`` with respect to ``inputs``, without touching ``.grad``."""
    from ember.errors import MissingGradError

    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    single = not isinstance(inputs, (list, tuple))
    inputs = [inputs] if single else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif not isinstance(grad_outputs, (list, tuple)):
        grad_outputs = [grad_outputs]
    roots = []
    for out, g in zip(outputs, grad_outputs):
        _require_grad(out, "grad()")
        roots.append((out, _check_gradient(out, g)))
    for t in inputs:
        _require_grad(t, "grad() input")
    found = _run(roots, retain_graph, capture=inputs)
    result = []
    for t in inputs:
        value = found.get(t)
        if value is None and not allow_unused:
            raise MissingGradError(
                f"an input ({t.meta.type_str()}) is not reachable from the outputs, so "
                "it receives no gradient",
                hint="pass allow_unused=True to get None for it",
            )
        result.append(value)
    return tuple(result)


def _collect(roots: Sequence[Node]) -> tuple[dict[Node, int], int]:
    """Count, for each reachable node, the consumers that will send it a gradient."""
    pending: dict[Node, int] = {}
    stack = list(roots)
    seen = set(stack)
    edges = 0
    while stack:
        node = stack.pop()
        for target in node.edges:
            if not isinstance(target, Node):
                continue
            edges += 1
            pending[target] = pending.get(target, 0) + 1
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return pending, edges


def _saved(node: Node) -> tuple[tuple[Any, ...], Any]:
    if node.saved is None:
        raise GraphFreedError(
            f"backward through {node.name} a second time: its saved values were "
            "freed after the first backward",
            op=node.name,
            hint="pass retain_graph=True to the first backward() if you need two",
            location=node.location(),
        )
    inputs, output = node.saved
    for i, t in enumerate((*inputs, output)):
        if t._storage.version != node.versions[i]:
            which = "its output" if i == len(inputs) else f"input {i}"
            raise InplaceModificationError(
                f"a tensor saved by {node.name} ({which}, {t.meta.type_str()}) was "
                "modified in place after it was saved, so its gradient would be wrong",
                op=node.name,
                expected=f"version {node.versions[i]}",
                actual=f"version {t._storage.version}",
                hint="use the out-of-place form of the later op, or .clone() the "
                "value before modifying it",
                location=node.location(),
            )
    return inputs, output


def _apply(node: Node, grad_out: Any, retain_graph: bool) -> tuple[Any, ...]:
    inputs, output = _saved(node)
    rule = node.op.grad
    if rule is None:
        raise AutogradError(f"{node.name} has no gradient rule", op=node.name,
                            location=node.location())
    ctx = GradContext(inputs, output, node.attrs, node.needs)
    grads = tuple(rule(ctx, grad_out))
    if len(grads) != len(inputs):
        raise GradientMismatchError(
            f"the gradient rule of {node.name} returned {len(grads)} gradients for "
            f"{len(inputs)} inputs",
            op=node.name,
        )
    if not retain_graph:
        node.saved = None
    return tuple(
        fit_gradient(g, meta, node.name) if g is not None and need else None
        for g, meta, need in zip(grads, node.input_metas, node.needs)
    )


def _run(
    roots: Sequence[tuple[Any, Any]], retain_graph: bool, capture: Sequence[Any] | None
) -> dict[Any, Any]:
    """The scheduler shared by backward() and grad()."""
    global _last_stats
    start = time.perf_counter()
    stats = BackwardStats()
    captured_nodes = {t.grad_fn: t for t in capture or () if t.grad_fn is not None}
    captured_leaves = {t for t in capture or () if t.grad_fn is None}
    buffers: dict[Any, Any] = {}
    leaf_grads: dict[Any, Any] = {}
    result: dict[Any, Any] = {}

    def send(target: Any, value: Any) -> None:
        store = buffers if isinstance(target, Node) else leaf_grads
        if target in store:
            store[target] = store[target] + value
            stats.accumulations += 1
        else:
            store[target] = value

    root_nodes = []
    for tensor, g in roots:
        if tensor.grad_fn is None:
            send(tensor, g)
        else:
            send(tensor.grad_fn, g)
            root_nodes.append(tensor.grad_fn)
    pending, stats.edges = _collect(root_nodes)
    ready = [(-n.sequence, n) for n in set(root_nodes) if pending.get(n, 0) == 0]
    heapq.heapify(ready)
    with no_grad():
        while ready:
            stats.peak_ready = max(stats.peak_ready, len(ready))
            _, node = heapq.heappop(ready)
            grad_out = buffers.pop(node)
            stats.nodes_run += 1
            _deliver(node, grad_out, captured_nodes, result)
            for target, g in zip(node.edges, _apply(node, grad_out, retain_graph)):
                if target is None or g is None:
                    continue
                send(target, g)
                if isinstance(target, Node):
                    pending[target] -= 1
                    if pending[target] == 0:
                        heapq.heappush(ready, (-target.sequence, target))
    stats.leaves = len(leaf_grads)
    stats.seconds = time.perf_counter() - start
    _last_stats = stats
    logger.debug("%s", stats.summary())
    if capture is None:
        return leaf_grads
    for leaf in captured_leaves:
        if leaf in leaf_grads:
            result[leaf] = leaf_grads[leaf]
    return result


def _deliver(node: Node, grad_out: Any, captured: dict[Node, Any], result: dict) -> None:
    """Hand a finished gradient to grad() captures and to retain_grad tensors."""
    if node in captured:
        result[captured[node]] = grad_out
    output = node.output_ref()
    if output is not None and output._retains_grad:
        output.grad = grad_out if output.grad is None else output.grad + grad_out

