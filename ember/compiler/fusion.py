"""Fusion: group the primitive ops of an optimized graph into kernels.

The stage reads a graph whose call nodes are primitives (pointwise, reduction, matmul,
view) and returns a :class:`FusedGraph`: the same graph, untouched, plus a partition of
its non-view call nodes into :class:`FusionGroup` objects, one kernel each, and a
record of every producer-consumer pair that was *not* fused, with the rule that
stopped it.

What fuses:

- pointwise ops of one shape fuse into one loop over that shape (inputs of other
  shapes broadcast through their strides);
- pointwise producers fuse into the reduction that consumes them (a prologue), and
  pointwise consumers of a reduction join it when they have the reduced shape (an
  epilogue) or the full shape and read the reduced value broadcast along the reduced
  dims; several reductions over the same dims of the same shape share one kernel
  that makes one pass over the reduced dims per reduction (row softmax is one kernel
  of three passes);
- a matmul is its own kernel; pointwise consumers of its output shape fuse into it as
  an epilogue that runs over the product in place (bias add, relu);
- views never form a group: consumers read the viewed storage through the view's
  strides and offset.

What the stage keeps true: groups are disjoint and cover every non-view call node;
the graph of groups is acyclic (every merge is checked for a path through a third
group); the graph itself is not modified.

    >>> from ember.ir.dtypes import float32
    >>> from ember.ir.graph import Graph
    >>> from ember.ir.meta import TensorMeta
    >>> g = Graph()
    >>> x = g.input("x", TensorMeta.contiguous((4, 8), float32))
    >>> y = g.call("exp", [g.call("relu", [x])])
    >>> _ = g.output([g.call("sum", [y], {"dims": (1,), "keepdim": False})])
    >>> fused = fuse(g)
    >>> [(grp.kind.value, [n.name for n in grp.nodes]) for grp in fused.groups]
    [('reduction', ['relu', 'exp', 'sum'])]
"""

from __future__ import annotations

import enum
import heapq
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ember.compiler.passes.base import is_view, meta_of, op_of
from ember.errors import LoweringError
from ember.ir.graph import Graph, Node
from ember.ir.layout import Shape
from ember.ir.printer import format_node
from ember.ir.registry import OpKind

logger = logging.getLogger(__name__)


class GroupKind(enum.Enum):
    """What loop structure a group lowers to."""

    POINTWISE = "pointwise"
    REDUCTION = "reduction"
    MATMUL = "matmul"


@dataclass
class FusionGroup:
    """A set of call nodes that become one kernel.

    ``nodes`` are in graph order. ``domain`` is the iteration shape: the output shape
    of a pointwise group, the shape the reductions read for a reduction group, the
    product's shape for a matmul group. ``reduce_dims`` are the dims a reduction group
    reduces (empty otherwise).
    """

    id: int
    kind: GroupKind
    nodes: list[Node]
    domain: Shape
    reduce_dims: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return f"g{self.id}"

    @property
    def anchor(self) -> Node | None:
        """The matmul node of a matmul group (its epilogue follows it)."""
        if self.kind is not GroupKind.MATMUL:
            return None
        return next(n for n in self.nodes if n.op == "matmul")

    def reductions(self) -> list[Node]:
        """The reduction nodes, in graph order (one pass over the reduced dims each)."""
        return [n for n in self.nodes if _kind(n) is OpKind.REDUCTION]

    def __repr__(self) -> str:
        members = [n.name for n in self.nodes]
        return f"FusionGroup({self.name}, {self.kind.value}, {members})"


@dataclass(frozen=True)
class DeclinedFusion:
    """A producer-consumer pair left in different kernels, and the rule that said no."""

    producer: Node
    consumer: Node
    reason: str

    def __str__(self) -> str:
        return f"%{self.producer.name} -> %{self.consumer.name}: {self.reason}"


@dataclass
class FusedGraph:
    """The result of :func:`fuse`: the graph, its groups in execution order, the
    declined fusions and the memory traffic the fusion saved."""

    graph: Graph
    groups: list[FusionGroup]
    declined: list[DeclinedFusion] = field(default_factory=list)

    def group_of(self, node: Node) -> FusionGroup | None:
        """The group that computes ``node`` (None for views, inputs and constants)."""
        for group in self.groups:
            if any(n is node for n in group.nodes):
                return group
        return None

    def saved_bytes(self, group: FusionGroup | None = None) -> int:
        """Bytes of memory traffic that fusion avoided, for one group or all of them.

        A value computed and consumed inside a group is never written to memory nor
        read back: it saves its size once for the write and once per consumer read.
        """
        groups = [group] if group is not None else self.groups
        return sum(_saved_bytes(g, self.graph) for g in groups)

    def __str__(self) -> str:
        return format_fused(self)


# Classification -------------------------------------------------------------------


def _kind(node: Node) -> OpKind | None:
    return op_of(node).kind if node.kind == "call" else None


def view_root(node: Node) -> Node:
    """The first value that is not a view, following ``node`` through view chains."""
    while is_view(node):
        node = node.inputs[0]
    return node


def group_outputs(group: FusionGroup, graph: Graph) -> list[Node]:
    """The nodes of ``group`` whose values are read outside it (other groups, views
    read by other groups, or the graph's outputs), in graph order."""
    members = {id(n) for n in group.nodes}
    result = []
    for node in group.nodes:
        if any(id(user) not in members for user in _value_users(node)):
            result.append(node)
    return result


def group_inputs(group: FusionGroup) -> list[Node]:
    """The values a group reads from memory: each as the node it loads (a view when
    it reads through one), in first-use order, without repeats."""
    members = {id(n) for n in group.nodes}
    seen: set[int] = set()
    result = []
    for node in group.nodes:
        for value in node.inputs:
            if id(value) not in members and id(value) not in seen:
                seen.add(id(value))
                result.append(value)
    return result


def _value_users(node: Node) -> list[Node]:
    """Users of ``node`` seen through views: the nodes that read its storage (the
    output node among them when the value, or a view of it, is a graph result)."""
    result: list[Node] = []
    for user in node.users:
        if is_view(user):
            result.extend(_value_users(user))
        else:
            result.append(user)
    return result


def _reduce_dims(node: Node) -> tuple[int, ...]:
    source = meta_of(node.inputs[0])
    if node.op in ("argmax", "argmin"):
        dim = node.attrs.get("dim")
        if dim is None or source.ndim == 0:
            return tuple(range(source.ndim))
        return (dim % source.ndim,)
    return tuple(sorted(node.attrs["dims"]))


def reduced_keep_shape(domain: Shape, dims: Iterable[int]) -> Shape:
    """``domain`` with the reduced dims set to 1."""
    dims = set(dims)
    return tuple(1 if i in dims else s for i, s in enumerate(domain))


def _is_reduced_shape(shape: Shape, domain: Shape, dims: Sequence[int]) -> bool:
    """Does a value of ``shape`` hold one element per outer index of the domain?

    Either the keepdim form, or a shape that broadcasts (right-aligned) onto it.
    """
    keep = reduced_keep_shape(domain, dims)
    if len(shape) > len(keep):
        return False
    padded = (1,) * (len(keep) - len(shape)) + tuple(shape)
    dropped = tuple(s for i, s in enumerate(domain) if i not in set(dims))
    return padded == keep or tuple(shape) == dropped


def _singleton(node: Node, group_id: int) -> FusionGroup:
    kind = _kind(node)
    if kind is OpKind.POINTWISE:
        return FusionGroup(group_id, GroupKind.POINTWISE, [node], meta_of(node).shape)
    if kind is OpKind.REDUCTION:
        return FusionGroup(
            group_id,
            GroupKind.REDUCTION,
            [node],
            meta_of(node.inputs[0]).shape,
            _reduce_dims(node),
        )
    if kind is OpKind.MATMUL:
        return FusionGroup(group_id, GroupKind.MATMUL, [node], meta_of(node).shape)
    raise LoweringError(
        f"{node.op} (%{node.name}) cannot be compiled: "
        + (
            "composite ops must be decomposed into primitives before fusion"
            if kind is OpKind.COMPOSITE
            else f"ops of class {kind.value if kind else node.kind} have no lowering"
        ),
        op=node.op,
        expected="pointwise, reduction, matmul or view primitives",
        actual=f"%{node.name} = {node.op}",
        hint="run the optimization passes first, or use backend='interpret'",
        location=node.loc,
    )


# The fusion rules -----------------------------------------------------------------


class _Partition:
    """Mutable state of the fusion algorithm: which group holds which node."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.groups: dict[int, FusionGroup] = {}
        self.owner: dict[int, int] = {}
        self.order = {id(n): i for i, n in enumerate(graph.nodes)}
        self._deps: dict[int, set[int]] | None = None
        for node in graph.calls():
            if is_view(node):
                continue
            group = _singleton(node, len(self.groups))
            self.groups[group.id] = group
            self.owner[id(node)] = group.id

    def group(self, node: Node) -> FusionGroup | None:
        gid = self.owner.get(id(node))
        return None if gid is None else self.groups[gid]

    def dependency_graph(self) -> dict[int, set[int]]:
        """Group id -> ids of the groups that read its values."""
        if self._deps is not None:
            return self._deps
        deps: dict[int, set[int]] = {gid: set() for gid in self.groups}
        for node in self.graph.calls():
            consumer = self.owner.get(id(node))
            if consumer is None:
                continue
            for value in node.inputs:
                producer = self.owner.get(id(view_root(value)))
                if producer is not None and producer != consumer:
                    deps[producer].add(consumer)
        self._deps = deps
        return deps

    def merge(
        self,
        first: FusionGroup,
        second: FusionGroup,
        kind: GroupKind,
        domain: Shape,
        dims: tuple[int, ...],
    ) -> None:
        nodes = sorted(first.nodes + second.nodes, key=lambda n: self.order[id(n)])
        keep = FusionGroup(min(first.id, second.id), kind, nodes, domain, dims)
        drop = max(first.id, second.id)
        del self.groups[drop]
        if self._deps is not None:
            # Update the dependency graph in place: the kept group inherits the
            # dropped one's edges, both ways.
            deps = self._deps
            deps[keep.id] = (deps[keep.id] | deps.pop(drop)) - {keep.id, drop}
            for gid, successors in deps.items():
                if drop in successors:
                    successors.discard(drop)
                    if gid != keep.id:
                        successors.add(keep.id)
        self.groups[keep.id] = keep
        for node in nodes:
            self.owner[id(node)] = keep.id


#: The kind, domain and reduced dims of a group.
_Shape = tuple[GroupKind, Shape, tuple[int, ...]]


def _merged_shape(producer: FusionGroup, consumer: FusionGroup) -> _Shape | str:
    """The kind, domain and reduced dims of the merged group, or why they clash."""
    pk, ck = producer.kind, consumer.kind
    if GroupKind.MATMUL in (pk, ck):
        if pk is GroupKind.MATMUL and ck is GroupKind.MATMUL:
            return "each matmul is its own kernel"
        if ck is GroupKind.MATMUL:
            return "matmul operands are read from memory (a matmul takes no prologue)"
        if ck is not GroupKind.POINTWISE:
            return "only pointwise ops fuse into a matmul epilogue"
        if consumer.domain != producer.domain:
            return (
                f"shape mismatch: epilogue shape {consumer.domain} differs from the "
                f"product's {producer.domain}"
            )
        return GroupKind.MATMUL, producer.domain, ()
    if pk is GroupKind.POINTWISE and ck is GroupKind.POINTWISE:
        if producer.domain != consumer.domain:
            return _mismatch(producer.domain, consumer.domain)
        return GroupKind.POINTWISE, producer.domain, ()
    if pk is GroupKind.REDUCTION and ck is GroupKind.REDUCTION:
        if producer.domain != consumer.domain:
            return (
                f"reduction over a different shape: {producer.domain} and "
                f"{consumer.domain}"
            )
        if producer.reduce_dims != consumer.reduce_dims:
            return (
                f"reduction over a different axis: dims {producer.reduce_dims} and "
                f"{consumer.reduce_dims}"
            )
        return GroupKind.REDUCTION, producer.domain, producer.reduce_dims
    reduction = producer if pk is GroupKind.REDUCTION else consumer
    pointwise = consumer if reduction is producer else producer
    domain, dims = reduction.domain, reduction.reduce_dims
    if pointwise.domain == domain:
        return GroupKind.REDUCTION, domain, dims
    if reduction is producer and _is_reduced_shape(pointwise.domain, domain, dims):
        return GroupKind.REDUCTION, domain, dims
    return _mismatch(producer.domain, consumer.domain)


def _mismatch(producer: Shape, consumer: Shape) -> str:
    return f"shape mismatch: producer shape {producer}, consumer shape {consumer}"


def _edge_rule(producer: Node, consumer: Node, merged: FusionGroup) -> str | None:
    """Per-edge rules once the group shapes agree; None when the edge may fuse."""
    if merged.kind is not GroupKind.REDUCTION:
        return None
    if _kind(consumer) is OpKind.REDUCTION and meta_of(producer).shape != merged.domain:
        return "a reduction reads a value of a different shape"
    if (
        meta_of(producer).shape != merged.domain
        and meta_of(consumer).shape == merged.domain
    ):
        # A reduced value read by a full-shape node must broadcast along the reduced
        # dims only, so that every step of the row sees the one value of that row.
        keep = reduced_keep_shape(merged.domain, merged.reduce_dims)
        padded = (1,) * (len(keep) - meta_of(producer).ndim) + meta_of(producer).shape
        if padded != keep:
            return (
                f"reduced value {meta_of(producer).type_str()} does not broadcast "
                f"along the reduced dims {list(merged.reduce_dims)} of "
                f"{list(merged.domain)}"
            )
    return None


def _crossing_edges(pg: FusionGroup, cg: FusionGroup) -> list[tuple[Node, Node, Node]]:
    """Every (producer, consumer, value read) edge from group ``pg`` into ``cg``."""
    members = {id(n) for n in pg.nodes}
    return [
        (view_root(value), node, value)
        for node in cg.nodes
        for value in node.inputs
        if id(view_root(value)) in members
    ]


def _check_pair(pg: FusionGroup, cg: FusionGroup, part: _Partition) -> str | _Shape:
    """Why groups ``pg`` (producer) and ``cg`` (consumer) cannot merge, or the
    kind, domain and reduced dims of the merged group."""
    if _would_cycle(pg.id, cg.id, part):
        return "would create a cycle between kernels"
    edges = _crossing_edges(pg, cg)
    for producer, _, via in edges:
        if via is not producer:
            return f"the consumer reads %{producer.name} through view %{via.name}"
    shape = _merged_shape(pg, cg)
    if isinstance(shape, str):
        return shape
    kind, domain, dims = shape
    trial = FusionGroup(-1, kind, pg.nodes + cg.nodes, domain, dims)
    for producer, consumer, _ in edges:
        rule = _edge_rule(producer, consumer, trial)
        if rule is not None:
            return rule
    if kind is GroupKind.MATMUL:
        reason = _matmul_epilogue_rule(pg, cg)
        if reason is not None:
            return reason
    return shape


def _matmul_epilogue_rule(pg: FusionGroup, cg: FusionGroup) -> str | None:
    """An epilogue overwrites the product in place: no one else may read it, and the
    epilogue must consume it."""
    mm = pg.anchor if pg.kind is GroupKind.MATMUL else cg.anchor
    assert mm is not None
    members = {id(n) for n in pg.nodes + cg.nodes}
    outside = [u for u in _value_users(mm) if id(u) not in members]
    if outside:
        return (
            f"multiple consumers: the product %{mm.name} is also read by "
            + ", ".join("%" + u.name for u in outside[:3])
        )
    return None


def _would_cycle(producer: int, consumer: int, part: _Partition) -> bool:
    """Does a path lead from ``producer`` to ``consumer`` through a third group?

    Merging the two would then put that group both before and after the merged one.
    """
    deps = part.dependency_graph()
    pending = [g for g in deps[producer] if g != consumer]
    seen = set(pending)
    while pending:
        group = pending.pop()
        if group == consumer:
            return True
        for successor in deps[group] - seen:
            seen.add(successor)
            pending.append(successor)
    return False


def _edges(graph: Graph) -> list[tuple[Node, Node]]:
    """Every (producer, consumer) pair of computing nodes, seen through views."""
    result = []
    for consumer in graph.calls():
        if is_view(consumer):
            continue
        seen: set[int] = set()
        for value in consumer.inputs:
            producer = view_root(value)
            if producer.kind != "call" or id(producer) in seen:
                continue
            seen.add(id(producer))
            result.append((producer, consumer))
    return result


def fuse(graph: Graph) -> FusedGraph:
    """Partition the call nodes of ``graph`` into kernels; see the module docstring.

    Merges are greedy over producer-consumer edges in graph order, repeated until no
    merge applies (a value read by two consumers fuses once both consumers share a
    group). The last round's refusals are the declined fusions, logged on the
    ``ember.compiler.fusion`` logger.
    """
    part = _Partition(graph)
    edges = _edges(graph)
    while True:
        declined: list[DeclinedFusion] = []
        merged_any = False
        for producer, consumer in edges:
            pg, cg = part.group(producer), part.group(consumer)
            if pg is None or cg is None or pg.id == cg.id:
                continue
            verdict = _check_pair(pg, cg, part)
            if isinstance(verdict, str):
                declined.append(DeclinedFusion(producer, consumer, verdict))
            else:
                part.merge(pg, cg, *verdict)
                merged_any = True
        if not merged_any:
            break
    for item in declined:
        logger.debug("declined fusion %s", item)
    groups = _schedule(part)
    return FusedGraph(graph, groups, declined)


def _schedule(part: _Partition) -> list[FusionGroup]:
    """Groups in a topological order of their dependencies (ties broken by graph
    order of their first node), renumbered from 0."""
    deps = part.dependency_graph()
    first = {
        gid: min(part.order[id(n)] for n in g.nodes) for gid, g in part.groups.items()
    }
    waiting = {gid: 0 for gid in deps}
    for successors in deps.values():
        for gid in successors:
            waiting[gid] += 1
    ready = [(first[gid], gid) for gid, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    result: list[FusionGroup] = []
    while ready:
        _, gid = heapq.heappop(ready)
        group = part.groups[gid]
        group.id = len(result)
        result.append(group)
        for successor in deps[gid]:
            waiting[successor] -= 1
            if waiting[successor] == 0:
                heapq.heappush(ready, (first[successor], successor))
    assert len(result) == len(part.groups), "fusion created a cycle between groups"
    return result


# Memory traffic and the printed form ---------------------------------------------


def _saved_bytes(group: FusionGroup, graph: Graph) -> int:
    outputs = {id(n) for n in group_outputs(group, graph)}
    members = {id(n) for n in group.nodes}
    saved = 0
    for node in group.nodes:
        readers = sum(
            1
            for user in node.users
            if id(user) in members
            for value in user.inputs
            if value is node
        )
        if readers == 0:
            continue
        if id(node) not in outputs:
            saved += meta_of(node).nbytes
        saved += readers * meta_of(node).nbytes
    return saved


def _bytes_text(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_fused(fused: FusedGraph) -> str:
    """The text of the ``fused`` stage: every group with its nodes, inputs, outputs
    and saved traffic, then the declined fusions with their reasons."""
    graph = fused.graph
    lines = [
        f"fused: {len(fused.groups)} kernels, {len(fused.declined)} declined fusions, "
        f"{_bytes_text(fused.saved_bytes())} of memory traffic saved"
    ]
    for group in fused.groups:
        head = f"{group.name} {group.kind.value} over {list(group.domain)}"
        if group.reduce_dims:
            head += f" reducing dims {list(group.reduce_dims)}"
        lines.append(f"{head}  (saves {_bytes_text(fused.saved_bytes(group))})")
        reads = ", ".join(_read_text(v) for v in group_inputs(group)) or "-"
        lines.append(f"  reads  {reads}")
        for node in group.nodes:
            lines.append(f"    {format_node(node)}")
        writes = ", ".join("%" + n.name for n in group_outputs(group, graph))
        lines.append(f"  writes {writes}")
    if fused.declined:
        lines.append("declined:")
        lines.extend(f"  {item}" for item in fused.declined)
    return "\n".join(lines)


def _read_text(value: Node) -> str:
    if is_view(value):
        root = view_root(value)
        return f"%{value.name} (view of %{root.name}, strides {meta_of(value).strides})"
    return "%" + value.name
