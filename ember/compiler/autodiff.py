"""Autodiff on the graph: append the backward computation to a forward graph.

:func:`differentiate` takes a forward graph and the values that need a gradient
(parameters, and inputs that require grad) and returns a :class:`JointGraph`: a copy
of the forward graph followed by the gradient nodes, whose output lists the forward
outputs and then the gradient of every requested value.

It runs each op's gradient rule from the registry (:mod:`ember.ir.gradients`) on
graph nodes, through a :class:`~ember.compiler.passes.graph_builder.GraphBuilder`, in
the order the eager engine uses (:class:`ember.ir.schedule.ReverseOrder`: reverse
topological order with dependency counts, latest node first among the ready ones).
A value used on several paths receives the sum of its gradients, added in the order
they arrive, before its own rule runs, so the graph computes what eager backward
computes, operation for operation. Each gradient node carries the source line of
the forward node whose rule created it.

Which values take part follows eager ``requires_grad``: a value needs a gradient when
it is one of ``wrt``, or a floating-point result of a differentiable op on a value
that needs one. The outputs that start backward (``roots``, all by default) get an
explicit gradient, an ``input`` node named ``<output>.grad``, or with
``implicit=True`` the implied gradient 1, which only a one-element output has.

What it changes and keeps true: the graph handed in is not modified; the joint
graph holds an exact copy of it (names, metas, source lines), followed by the
gradient nodes, and verifies.

Errors are the eager engine's: :class:`~ember.errors.NonScalarLossError` for an
implied gradient of a bigger output, :class:`~ember.errors.MissingGradError` for a
requested value no root depends on (unless ``allow_unused``) and for a rule that
returns no gradient for an input that needs one; both name the node and the user's
line that created it.

    >>> import ember
    >>> from ember.compiler.trace import trace
    >>> g = trace(lambda x: (x * x).sum(), ember.ones(3))
    >>> joint = differentiate(g, [g.inputs[0]], implicit=True)
    >>> [n.op or n.kind for n in joint.graph.nodes]
    ['input', 'mul', 'sum', 'const', 'view', 'expand', 'mul', 'mul', 'add', 'output']
    >>> joint.stats
    ScheduleStats(nodes=2, edges=3, accumulations=1)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ember.compiler.passes.graph_builder import GraphBuilder, NodeValue
from ember.errors import (
    AutogradError,
    GradientMismatchError,
    InplaceModificationError,
    MissingGradError,
    NonScalarLossError,
    SourceLocation,
)
from ember.ir import functions as F
from ember.ir import gradients  # noqa: F401  (fills the registry's gradient slots)
from ember.ir.gradients import fit_gradient, save_plan
from ember.ir.graph import Graph, Node
from ember.ir.registry import GradContext, get_op
from ember.ir.schedule import ReverseOrder

logger = logging.getLogger(__name__)


@dataclass
class ScheduleStats:
    """What one graph backward did: rules run (``nodes``), gradients sent along an
    edge (``edges``) and additions that summed two gradients of one value."""

    nodes: int = 0
    edges: int = 0
    accumulations: int = 0

    def summary(self) -> str:
        """``12 nodes, 19 edges, 3 accumulations``."""
        return (
            f"{self.nodes} nodes, {self.edges} edges, "
            f"{self.accumulations} accumulations"
        )


@dataclass
class JointGraph:
    """A forward graph with its backward appended; see :func:`differentiate`.

    ``graph`` outputs the ``num_outputs`` forward outputs, then one gradient per
    entry of ``gradients`` that is not None. ``wrt`` are the differentiated values
    (nodes of ``graph``); ``gradients[i]`` is the node holding the gradient of
    ``wrt[i]`` (None for an unused value with ``allow_unused``). ``seeds[i]`` is the
    node the backward of forward output ``i`` starts from (an ``input`` node, or a
    constant 1 with ``implicit``; None when it starts no backward).
    """

    graph: Graph
    num_outputs: int
    wrt: list[Node]
    gradients: list[Node | None]
    seeds: list[Node | None]
    stats: ScheduleStats


def differentiate(
    graph: Graph,
    wrt: Sequence[Node],
    *,
    roots: Sequence[int] | None = None,
    implicit: bool = False,
    allow_unused: bool = False,
) -> JointGraph:
    """The joint forward-backward graph of ``graph`` (left unchanged); see the module.

    ``wrt`` are nodes of ``graph``; ``roots`` the positions of the outputs that
    start backward (all of them by default).
    """
    joint = graph.copy()
    twins = {n.name: n for n in joint.nodes}
    targets = [twins[n.name] for n in wrt]
    requires = needs_gradient(joint, targets)
    output = joint.output_node
    outputs = list(output.inputs)
    order = {node: index for index, node in enumerate(joint.nodes)}
    run = _Backward(joint, requires)
    seeds: list[Node | None] = [None] * len(outputs)
    with GraphBuilder(joint, before=output) as builder:
        run.builder = builder
        for position in range(len(outputs)) if roots is None else roots:
            value = outputs[position]
            if value in requires:
                seed = _seed(joint, builder, value, implicit)
                seeds[position] = seed
                run.send(value, seed)
        starts = [outputs[i] for i, s in enumerate(seeds) if s is not None]
        for node in ReverseOrder(starts, run.edges_of, order.__getitem__):
            run.apply(node)
    found = [run.grads.get(t) for t in targets]
    _check_unused(targets, found, allow_unused)
    _name_gradients(joint, targets, found, set(order))
    joint.erase(output)
    joint.output(outputs + [g for g in found if g is not None], loc=output.loc)
    logger.debug("autodiff of %s: %s", graph.name, run.stats.summary())
    return JointGraph(joint, len(outputs), targets, found, seeds, run.stats)


def needs_gradient(graph: Graph, wrt: Sequence[Node]) -> set[Node]:
    """The nodes that need a gradient: ``wrt``, and floating-point results of
    differentiable ops on a node that needs one (eager ``requires_grad``)."""
    requires = set(wrt)
    for node in graph.nodes:
        if node.kind != "call" or node in requires:
            continue
        assert node.op is not None and node.meta is not None
        if (
            get_op(node.op).differentiable
            and node.meta.dtype.is_floating_point
            and any(v in requires for v in node.inputs)
        ):
            requires.add(node)
    return requires


def _seed(graph: Graph, builder: GraphBuilder, value: Node, implicit: bool) -> Node:
    """The gradient backward starts from at output ``value``."""
    meta = value.meta
    assert meta is not None
    if not implicit:
        return graph.input(f"{value.name}.grad", meta, loc=value.loc)
    if meta.numel != 1:
        raise NonScalarLossError(
            f"backward on %{value.name} ({meta.type_str()}) needs an explicit "
            "gradient: only a one-element output has the implied gradient 1",
            op=value.op,
            expected="a one-element tensor, or gradient=...",
            actual=meta.shape,
            hint="reduce the loss first (loss.mean() or loss.sum()), or pass "
            "gradient=ember.ones_like(loss)",
            location=value.loc,
        )
    builder.loc = value.loc
    return builder.constant(np.ones(meta.shape, meta.dtype.np_dtype)).node


class _Backward:
    """The gradients received so far, and the rule runner."""

    def __init__(self, graph: Graph, requires: set[Node]) -> None:
        self.graph = graph
        self.requires = requires
        self.grads: dict[Node, Node] = {}
        self.stats = ScheduleStats()
        self.builder: GraphBuilder | None = None

    def edges_of(self, node: Node) -> list[Node]:
        """Where ``node``'s rule sends gradients: each operand that needs one."""
        if node.kind != "call":
            return []
        return [v for v in node.inputs if v in self.requires]

    def send(self, target: Node, value: Node) -> None:
        """Add ``value`` to the gradient ``target`` has received so far."""
        current = self.grads.get(target)
        if current is None:
            self.grads[target] = value
            return
        self.grads[target] = F.add(NodeValue(current), NodeValue(value)).node
        self.stats.accumulations += 1

    def apply(self, node: Node) -> None:
        """Run ``node``'s rule on its summed gradient and send the results on."""
        if node.kind != "call":
            return  # a leaf: its gradient is complete
        assert self.builder is not None and node.op is not None
        self.builder.loc = node.loc
        self.stats.nodes += 1
        for target, value in zip(node.inputs, self._rule(node)):
            if value is not None:
                self.stats.edges += 1
                self.send(target, value)

    def _rule(self, node: Node) -> list[Node | None]:
        op = get_op(node.op or "")
        if op.grad is None:
            raise AutogradError(
                f"%{node.name} ({op.name}) has no gradient rule",
                op=op.name,
                location=node.loc,
            )
        needs = tuple(v in self.requires for v in node.inputs)
        ctx = GradContext(
            tuple(NodeValue(v) for v in node.inputs), NodeValue(node), node.attrs, needs
        )
        grads = tuple(op.grad(ctx, NodeValue(self.grads[node])))
        if len(grads) != len(node.inputs):
            raise GradientMismatchError(
                f"the gradient rule of {op.name} returned {len(grads)} gradients for "
                f"{len(node.inputs)} inputs",
                op=op.name,
                location=node.loc,
            )
        fitted: list[Node | None] = []
        for i, (value, operand, need) in enumerate(zip(grads, node.inputs, needs)):
            meta = operand.meta
            assert meta is not None
            if not need:
                fitted.append(None)
            elif value is None:
                raise MissingGradError(
                    f"the gradient rule of {op.name} returned no gradient for input "
                    f"{i} of %{node.name} ({meta.type_str()}), which needs one",
                    op=op.name,
                    location=node.loc,
                )
            else:
                fitted.append(fit_gradient(value, meta, op.name).node)
        return fitted


def _check_unused(
    targets: Sequence[Node], found: Sequence[Node | None], allow_unused: bool
) -> None:
    for target, grad in zip(targets, found):
        if grad is None and not allow_unused:
            assert target.meta is not None
            raise MissingGradError(
                f"%{target.name} ({target.meta.type_str()}) needs a gradient, but no "
                "output that starts backward depends on it",
                op=target.op or target.kind,
                hint="use the value in the loss, or stop asking for its gradient "
                "(requires_grad=False)",
                location=target.loc,
            )


def _name_gradients(
    graph: Graph,
    targets: Sequence[Node],
    found: Sequence[Node | None],
    forward: set[Node],
) -> None:
    """Name each gradient node ``<value>.grad`` when backward created it for that
    value alone, so dumps say what each result is."""
    counts: dict[Node, int] = {}
    for grad in found:
        if grad is not None:
            counts[grad] = counts.get(grad, 0) + 1
    for target, grad in zip(targets, found):
        if grad is None or grad in forward or counts[grad] > 1:
            continue
        if grad.kind == "call" and not grad.name.endswith(".grad"):
            grad.name = graph.unique_name(f"{target.name}.grad")


def check_inplace_writes(
    graph: Graph,
    wrt: Sequence[Node],
    overwritten: dict[str, SourceLocation | None],
) -> None:
    """Fail as eager autograd would when the model wrote in place into a value that
    requires grad (AutogradError), or into a value a gradient rule reads, after it
    read it (InplaceModificationError); tracing recorded each write as a new value.

    ``overwritten`` maps the names of the values written in place to the line of
    the write (:attr:`ember.compiler.trace.TraceResult.overwritten`). Only rules
    that backward from the outputs would run are checked, each reading what
    :func:`ember.ir.gradients.save_plan` declares, so this raises exactly where the
    eager version check does.
    """
    if not overwritten:
        return
    requires = needs_gradient(graph, wrt)
    for node in graph.nodes:
        if node.name in overwritten and node in requires:
            raise AutogradError(
                f"%{node.name}: in-place operation on a tensor that requires grad",
                op=node.op,
                hint="wrap the update in `with ember.no_grad():`, or use the "
                "out-of-place form (x = x + y)",
                location=overwritten[node.name],
            )
    reached = {n for n in ancestors(graph.outputs) if n in requires}
    for node in graph.nodes:
        if node not in reached or node.kind != "call":
            continue
        needs = tuple(v in requires for v in node.inputs)
        positions, reads_output = save_plan(node.op or "", needs)
        read = [(f"input {p}", node.inputs[p]) for p in positions]
        if reads_output:
            read.append(("output", node))
        for which, value in read:
            if value.name in overwritten:
                _inplace_error(node, which, value, overwritten[value.name])


def ancestors(values: Iterable[Node], stop: set[Node] | None = None) -> set[Node]:
    """``values`` and every node they read, not looking past the nodes in ``stop``."""
    found: set[Node] = set()
    stack = list(values)
    while stack:
        node = stack.pop()
        if node in found:
            continue
        found.add(node)
        if stop is None or node not in stop:
            stack.extend(node.inputs)
    return found


def _inplace_error(
    node: Node, which: str, value: Node, where: SourceLocation | None
) -> None:
    assert value.meta is not None
    at = f" at {where.file}:{where.line}" if where is not None else ""
    raise InplaceModificationError(
        f"{value.meta.type_str()} %{value.name}, the {which} of {node.op} saved for "
        f"backward, is modified in place afterwards{at}: its gradient would be wrong",
        op=node.op,
        expected="the value the op read",
        actual="a value written in place after the op read it",
        hint="use the out-of-place form of the later op (x = x * 2), or .clone() "
        "the value before modifying it",
        location=node.loc,
    )
