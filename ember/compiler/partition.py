"""Split a joint forward-backward graph into a forward and a backward graph.

:func:`partition` reads a :class:`~ember.compiler.autodiff.JointGraph` and returns
:class:`TrainingGraphs`:

- the *forward* graph computes the original outputs and then every activation the
  backward reads (``saved``), in forward order; its inputs and parameters are the
  original graph's;
- the *backward* graph takes the saved activations as inputs, in the same order,
  then the gradient of every forward output that starts backward (``<out>.grad``),
  reads parameters by name like the forward, and outputs the gradients of the
  differentiated values.

What to save and what to recompute: a value the backward reads is recomputed in
the backward graph instead of saved when it is a view, or a pointwise op whose
backward consumers are all pointwise ops or reductions (so the recomputation fuses
into the backward kernel that reads it), and recomputing it needs fewer new saved
bytes than saving it: its operands are parameters or constants, are saved anyway,
or are themselves recomputable within a few steps. Everything else the backward
reads is saved; forward inputs and outputs are saved at no cost, since the caller
holds them anyway. The backward dump lists each decision with its reason.

What this keeps true: both graphs verify; the forward graph's inputs are the joint
graph's forward inputs in order; backward nodes keep the names and source lines
they had in the joint graph.

    >>> import ember
    >>> from ember.compiler.trace import trace
    >>> g = trace(lambda x, w: ((x @ w).sigmoid() * (x @ w)).sum(),
    ...           ember.ones(8, 4), ember.ones(4, 2))
    >>> parts = build_training_graphs(g, [g.inputs[1]])
    >>> for saved in parts.saved:
    ...     print(saved.name, "|", saved.reason)
    x | a forward input
    matmul | read by %mul_1 (mul); a matmul is not recomputed
    >>> parts.recomputed
    ['%sigmoid (sigmoid): recomputed from %matmul instead of saving 64 bytes']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ember.compiler.autodiff import (
    JointGraph,
    ScheduleStats,
    ancestors,
    differentiate,
)
from ember.errors import SourceLocation
from ember.ir.graph import Graph, Node
from ember.ir.meta import TensorMeta
from ember.ir.registry import OpKind, get_op

#: How far back a recomputation may reach through pointwise ops.
RECOMPUTE_DEPTH = 3

_FREE = ("param", "buffer", "const")
_FUSIBLE = (OpKind.POINTWISE, OpKind.REDUCTION)


@dataclass(frozen=True)
class SavedActivation:
    """A forward value the backward reads: what it is, where it came from, and why
    it is saved (``reason``); ``extra`` is False for values the caller holds anyway
    (forward inputs and outputs), which cost no memory of their own."""

    name: str
    meta: TensorMeta
    loc: SourceLocation | None
    reason: str
    extra: bool = True

    @property
    def nbytes(self) -> int:
        return self.meta.nbytes


@dataclass
class TrainingGraphs:
    """The result of :func:`partition`; see the module docstring.

    ``seeds`` are the positions of the forward outputs whose gradients the backward
    takes (its last inputs, in this order); ``gradients[i]`` is the position among
    the backward's outputs of the gradient of ``wrt[i]`` (None when unused).
    ``recomputed`` says, for each value the backward computes again, why.
    """

    forward: Graph
    backward: Graph
    num_outputs: int
    saved: list[SavedActivation]
    seeds: list[int]
    wrt: list[str]
    gradients: list[int | None]
    stats: ScheduleStats
    recomputed: list[str] = field(default_factory=list)

    @property
    def saved_bytes(self) -> int:
        """Memory the saved activations hold beyond what the caller holds anyway."""
        return sum(s.nbytes for s in self.saved if s.extra)


def build_training_graphs(
    graph: Graph,
    wrt: Sequence[Node],
    *,
    roots: Sequence[int] | None = None,
    allow_unused: bool = True,
) -> TrainingGraphs:
    """Differentiate ``graph`` (an optimized forward graph) with respect to ``wrt``,
    simplify the joint graph with the default passes and partition it."""
    from ember.compiler.passes import optimize

    joint = differentiate(graph, wrt, roots=roots, allow_unused=allow_unused)
    optimize(joint.graph)
    return partition(joint)


def backward_stage(graph: Graph) -> TrainingGraphs:
    """The ``backward`` stage: the gradients of every parameter of an optimized
    graph, each output taking an explicit gradient."""
    params = [n for n in graph.nodes if n.kind == "param"]
    return build_training_graphs(graph, params)


def partition(joint: JointGraph) -> TrainingGraphs:
    """Split ``joint`` into forward and backward graphs; see the module docstring."""
    graph = joint.graph
    outputs = graph.outputs
    forward_outputs = outputs[: joint.num_outputs]
    grad_outputs = outputs[joint.num_outputs :]
    # An implied gradient (a constant 1) stays a constant of the backward graph.
    seed_nodes = [s for s in joint.seeds if s is not None and s.kind == "input"]
    seeds = set(seed_nodes)
    forward = ancestors(forward_outputs)
    backward = ancestors(grad_outputs) - forward
    plan = _SavePlan(graph, forward, backward, set(forward_outputs))
    for value in _read_by(backward, grad_outputs, forward):
        plan.decide(value)
    saved = plan.saved_in_order()

    forward_graph = _extract(
        graph,
        ancestors(forward_outputs + saved) | _forward_inputs(graph, seeds),
        {},
        forward_outputs + saved,
        graph.name,
    )
    backward_graph = _extract(
        graph,
        ancestors(grad_outputs, stop=set(saved) | seeds),
        {v: _meta(v) for v in saved}
        | {
            s: TensorMeta.contiguous(_meta(s).shape, _meta(s).dtype) for s in seed_nodes
        },
        grad_outputs,
        f"{graph.name}.backward",
    )
    positions = iter(range(len(grad_outputs)))
    return TrainingGraphs(
        forward_graph,
        backward_graph,
        joint.num_outputs,
        [plan.describe(v) for v in saved],
        [i for i, s in enumerate(joint.seeds) if s in seeds],
        [n.name for n in joint.wrt],
        [None if g is None else next(positions) for g in joint.gradients],
        joint.stats,
        plan.recomputed,
    )


def _meta(node: Node) -> TensorMeta:
    assert node.meta is not None, f"%{node.name} has no meta"
    return node.meta


def _forward_inputs(graph: Graph, seeds: set[Node]) -> set[Node]:
    """Every input of the forward, used or not: the signature stays the same."""
    return {n for n in graph.inputs if n not in seeds}


def _read_by(
    backward: set[Node], grad_outputs: Sequence[Node], forward: set[Node]
) -> list[Node]:
    """The forward values the backward reads, in graph order."""
    read = {v for node in backward for v in node.inputs if v in forward}
    read.update(v for v in grad_outputs if v in forward)
    graph = next(iter(read)).graph if read else None
    return [n for n in graph.nodes if n in read] if graph is not None else []


class _SavePlan:
    """Decides, value by value in forward order, what to save and what to recompute."""

    def __init__(
        self,
        graph: Graph,
        forward: set[Node],
        backward: set[Node],
        outputs: set[Node],
    ) -> None:
        self.graph = graph
        self.forward = forward
        self.backward = backward
        self.outputs = outputs
        self.reasons: dict[Node, str] = {}
        self.recomputed: list[str] = []
        self.recompute: set[Node] = set()

    def decide(self, value: Node) -> None:
        if value.kind in _FREE or value in self.reasons or value in self.recompute:
            return
        if value.kind == "input":
            self.reasons[value] = "a forward input"
            return
        if value in self.outputs:
            self.reasons[value] = "a forward output"
            return
        plan = self._recompute_plan(value, RECOMPUTE_DEPTH)
        if plan is not None and self._worth_recomputing(value, plan[1]):
            self._recompute(value, *plan)
            return
        self.reasons[value] = self._why_saved(value, plan)

    def _why_saved(self, value: Node, plan: tuple[set[Node], set[Node]] | None) -> str:
        readers = [u for u in value.users if u in self.backward]
        reader = readers[0] if readers else value
        text = f"read by %{reader.name} ({reader.op})"
        if plan is not None:
            names = ", ".join(sorted(f"%{n.name}" for n in plan[1]))
            return f"{text}; recomputing it needs {names} saved, no fewer bytes"
        kind = get_op(value.op or "").kind
        if kind not in (OpKind.POINTWISE, OpKind.VIEW):
            return f"{text}; a {kind.value} is not recomputed"
        blocking = next(u for u in readers if get_op(u.op or "").kind not in _FUSIBLE)
        if blocking is reader:
            return f"{text}, which cannot fuse a recomputation"
        return f"{text}; %{blocking.name} ({blocking.op}) cannot fuse a recomputation"

    def _recompute_plan(
        self, value: Node, depth: int
    ) -> tuple[set[Node], set[Node]] | None:
        """How to compute ``value`` again in the backward: the forward nodes to
        recompute on the way, and the values that must then be saved. None when it
        is not a candidate: not a view or a pointwise op, or read by a backward op
        that cannot fuse the recomputation."""
        kind = get_op(value.op or "").kind if value.kind == "call" else None
        if kind is OpKind.POINTWISE:
            readers = [u for u in value.users if u in self.backward]
            if any(get_op(u.op or "").kind not in _FUSIBLE for u in readers):
                return None
        elif kind is not OpKind.VIEW:
            return None
        chain: set[Node] = set()
        frontier: set[Node] = set()
        for operand in value.inputs:
            if self._available(operand):
                continue
            deeper = None
            if depth > 1 and operand.kind == "call" and operand not in self.outputs:
                deeper = self._recompute_plan(operand, depth - 1)
            if deeper is None:
                frontier.add(operand)
            else:
                chain |= deeper[0] | {operand}
                frontier |= deeper[1]
        return chain, frontier

    def _available(self, value: Node) -> bool:
        """Can the backward read ``value`` without saving anything new?"""
        return value.kind in _FREE or value in self.reasons or value in self.recompute

    def _worth_recomputing(self, value: Node, frontier: set[Node]) -> bool:
        cost = sum(_meta(n).nbytes for n in frontier if n.kind != "input")
        return cost == 0 or cost < _meta(value).nbytes

    def _recompute(self, value: Node, chain: set[Node], frontier: set[Node]) -> None:
        self.recompute |= chain | {value}
        for node in frontier:
            self.reasons[node] = (
                "a forward input"
                if node.kind == "input"
                else f"read to recompute %{value.name}"
            )
        steps = chain | {value}
        sources = {
            f"%{v.name}"
            for node in steps
            for v in node.inputs
            if v not in steps and v.kind != "const"
        }
        self.recomputed.append(
            f"%{value.name} ({value.op}): recomputed from "
            f"{', '.join(sorted(sources)) or 'constants'} instead of saving "
            f"{_meta(value).nbytes} bytes"
        )

    def saved_in_order(self) -> list[Node]:
        return [n for n in self.graph.nodes if n in self.reasons]

    def describe(self, value: Node) -> SavedActivation:
        reason = self.reasons[value]
        extra = not (value.kind == "input" or value in self.outputs)
        assert value.meta is not None
        return SavedActivation(value.name, value.meta, value.loc, reason, extra)


def _extract(
    graph: Graph,
    keep: set[Node],
    as_inputs: dict[Node, TensorMeta],
    outputs: Sequence[Node],
    name: str,
) -> Graph:
    """A new graph of the nodes of ``graph`` in ``keep``, in order; the nodes of
    ``as_inputs`` become ``input`` nodes (inputs first, in the dict's order)."""
    result = Graph(name)
    twins: dict[Node, Node] = {}
    for node, meta in as_inputs.items():
        layout = TensorMeta(meta.shape, meta.dtype, meta.strides, 0)
        twins[node] = result.input(node.name, layout, loc=node.loc)
    for node in graph.nodes:
        if node not in keep or node in twins or node.kind == "output":
            continue
        twins[node] = _copy_node(result, node, twins)
    result.output([twins[v] for v in outputs], loc=graph.output_node.loc)
    return result


def _copy_node(graph: Graph, node: Node, twins: dict[Node, Node]) -> Node:
    assert node.meta is not None
    if node.kind == "input":
        return graph.input(node.name, node.meta, loc=node.loc)
    if node.kind in ("param", "buffer"):
        twin = graph.param(node.target or node.name, node.meta, node.kind, node.loc)
        return twin
    if node.kind == "const":
        assert node.value is not None
        return graph.const(node.value, node.meta, node.name, loc=node.loc)
    # The meta comes from the op's rule again: a saved view becomes an input whose
    # offset is 0, and the views the backward takes of it move with it.
    return graph.call(
        node.op or "",
        [twins[v] for v in node.inputs],
        node.attrs,
        loc=node.loc,
        name=node.name,
    )


# The backward stage's text ---------------------------------------------------------


def format_backward(graphs: TrainingGraphs) -> str:
    """The backward graph, the table of saved activations, what was recomputed and
    the schedule statistics: what ``ember dump --stage backward`` prints."""
    from ember.ir.printer import format_graph

    lines = [format_graph(graphs.backward).rstrip("\n"), ""]
    lines.append(
        f"saved activations: {_count(len(graphs.saved), 'value')}, "
        f"{graphs.saved_bytes} bytes beyond the forward's inputs and outputs (whose "
        "bytes are in parentheses: the caller holds them anyway)"
    )
    rows = [("name", "shape", "dtype", "bytes", "reason", "source")]
    for saved in graphs.saved:
        rows.append(
            (
                f"%{saved.name}",
                str(list(saved.meta.shape)),
                saved.meta.dtype.short,
                str(saved.nbytes) if saved.extra else f"({saved.nbytes})",
                saved.reason,
                _source(saved.loc),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        lines.append(("  " + "  ".join(cells) + "  " + row[5]).rstrip())
    lines.append(f"recomputed in backward: {_count(len(graphs.recomputed), 'value')}")
    lines.extend(f"  {text}" for text in graphs.recomputed)
    lines.append(f"schedule: {graphs.stats.summary()}")
    return "\n".join(lines) + "\n"


def _source(loc: SourceLocation | None) -> str:
    if loc is None:
        return "-"
    return (
        f"{loc.file}:{loc.line}: {loc.code}" if loc.code else f"{loc.file}:{loc.line}"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
