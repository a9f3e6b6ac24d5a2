"""``Graph`` and ``Node``: the IR that tracing builds and every pass transforms.

A graph is a list of nodes in topological order. Each node defines one value (except
the single ``output`` node, which lists the graph's results) and carries that value's
:class:`TensorMeta` and the user's source line that created it. Use-def links go both
ways: ``node.inputs`` are the values it reads, ``node.users`` the nodes that read it.

Node kinds:

- ``input``: a placeholder for a runtime argument, in call order;
- ``param`` / ``buffer``: a module parameter or buffer, by qualified name (``target``);
- ``const``: a literal tensor (``value``, a numpy array) captured by the trace;
- ``call``: a registry op applied to ``inputs`` with ``attrs``;
- ``output``: the results of the graph, one or several.

    >>> from ember.ir.dtypes import float32
    >>> g = Graph()
    >>> x = g.input("x", TensorMeta.contiguous((2, 3), float32))
    >>> y = g.call("relu", [x])
    >>> _ = g.output([y])
    >>> [n.name for n in g.nodes]
    ['x', 'relu', 'output']
    >>> y.meta
    f32[2, 3]
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ember.errors import IRError, SourceLocation
from ember.ir.meta import TensorMeta
from ember.ir.registry import Attrs, get_op

KINDS = ("input", "param", "buffer", "const", "call", "output")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


class Node:
    """One IR value (or the output list); see the module docstring."""

    __slots__ = (
        "graph",
        "name",
        "kind",
        "op",
        "inputs",
        "attrs",
        "meta",
        "users",
        "loc",
        "target",
        "value",
    )

    def __init__(
        self,
        graph: Graph,
        name: str,
        kind: str,
        *,
        op: str | None = None,
        inputs: Sequence[Node] = (),
        attrs: Attrs | None = None,
        meta: TensorMeta | None = None,
        loc: SourceLocation | None = None,
        target: str | None = None,
        value: np.ndarray | None = None,
    ) -> None:
        assert kind in KINDS, kind
        self.graph = graph
        self.name = name
        self.kind = kind
        self.op = op
        self.inputs: list[Node] = list(inputs)
        self.attrs: Attrs = dict(attrs or {})
        self.meta = meta
        self.users: list[Node] = []
        self.loc = loc
        self.target = target
        self.value = value

    def replace_input(self, old: Node, new: Node) -> None:
        """Make this node read ``new`` wherever it read ``old``."""
        for i, value in enumerate(self.inputs):
            if value is old:
                self.inputs[i] = new
        if self in old.users:
            old.users = [u for u in old.users if u is not self]
        if self not in new.users:
            new.users.append(self)

    def replace_all_uses_with(self, new: Node) -> None:
        """Redirect every user of this node to ``new``."""
        for user in list(self.users):
            user.replace_input(self, new)

    def __repr__(self) -> str:
        what = self.op if self.kind == "call" else self.kind
        return f"%{self.name} = {what}"


class Graph:
    """A list of nodes in topological order with unique names.

    ``name`` labels the graph in its text form, dumps and error messages.
    """

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        self._counters: dict[str, Iterator[int]] = {}
        self._insert_at: int | None = None

    # Naming and insertion -----------------------------------------------------------

    def unique_name(self, hint: str) -> str:
        """``hint`` made a valid, unused value name (``relu``, ``relu_1``, ...)."""
        base = re.sub(r"[^A-Za-z0-9_.]", "_", hint) or "v"
        if not _NAME.fullmatch(base):
            base = "v_" + base
        if base not in self._names:
            self._names.add(base)
            return base
        counter = self._counters.setdefault(base, itertools.count(1))
        while True:
            name = f"{base}_{next(counter)}"
            if name not in self._names:
                self._names.add(name)
                return name

    def _add(self, node: Node) -> Node:
        if node.name in self._names and any(n.name == node.name for n in self.nodes):
            raise IRError(f"duplicate value name %{node.name}")
        self._names.add(node.name)
        if self._insert_at is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self._insert_at, node)
            self._insert_at += 1
        for value in node.inputs:
            if node not in value.users:
                value.users.append(node)
        return node

    def inserting_before(self, node: Node) -> _InsertionPoint:
        """Context manager: new nodes go right before ``node``."""
        return _InsertionPoint(self, self.nodes.index(node))

    def inserting_after(self, node: Node) -> _InsertionPoint:
        """Context manager: new nodes go right after ``node``."""
        return _InsertionPoint(self, self.nodes.index(node) + 1)

    def _append_verbatim(self, node: Node) -> None:
        """Append ``node`` as it is, duplicate name or not, without linking users.

        The parser builds graphs with this so that text which breaks an invariant
        still reads back, leaving the rejection to the verifier.
        """
        self._names.add(node.name)
        self.nodes.append(node)

    # Builders -----------------------------------------------------------------------

    def input(
        self, name: str, meta: TensorMeta, loc: SourceLocation | None = None
    ) -> Node:
        """A placeholder for the next runtime argument."""
        return self._add(
            Node(self, self.unique_name(name), "input", meta=meta, loc=loc)
        )

    def param(
        self,
        target: str,
        meta: TensorMeta,
        kind: str = "param",
        loc: SourceLocation | None = None,
    ) -> Node:
        """A module parameter (or buffer, with ``kind="buffer"``) named ``target``."""
        assert kind in ("param", "buffer")
        node = Node(
            self, self.unique_name(target), kind, meta=meta, target=target, loc=loc
        )
        return self._add(node)

    def const(
        self,
        value: np.ndarray,
        meta: TensorMeta,
        name: str = "const",
        loc: SourceLocation | None = None,
    ) -> Node:
        """A literal tensor held by the graph."""
        node = Node(
            self,
            self.unique_name(name),
            "const",
            meta=meta,
            value=np.array(value, order="C"),
            loc=loc,
        )
        return self._add(node)

    def call(
        self,
        op: str,
        inputs: Sequence[Node],
        attrs: Attrs | None = None,
        *,
        meta: TensorMeta | None = None,
        loc: SourceLocation | None = None,
        name: str | None = None,
    ) -> Node:
        """Apply registry op ``op``; ``meta`` defaults to what its meta rule computes."""
        opdef = get_op(op)
        attrs = dict(attrs or {})
        if meta is None:
            meta = opdef.meta([v.meta for v in inputs], attrs)  # type: ignore[misc]
        node = Node(
            self,
            self.unique_name(name or op),
            "call",
            op=op,
            inputs=inputs,
            attrs=attrs,
            meta=meta,
            loc=loc,
        )
        return self._add(node)

    def output(self, values: Sequence[Node], loc: SourceLocation | None = None) -> Node:
        """The graph's results; a graph has exactly one output node, last."""
        if any(n.kind == "output" for n in self.nodes):
            raise IRError("the graph already has an output node")
        return self._add(
            Node(self, self.unique_name("output"), "output", inputs=values, loc=loc)
        )

    # Editing ------------------------------------------------------------------------

    def erase(self, node: Node) -> None:
        """Remove a node that nothing uses any more."""
        if node.users:
            raise IRError(
                f"cannot erase %{node.name}: still used by "
                f"{', '.join('%' + u.name for u in node.users)}"
            )
        self.nodes.remove(node)
        self._names.discard(node.name)
        for value in node.inputs:
            value.users = [u for u in value.users if u is not node]

    def copy(self) -> Graph:
        """A deep copy: new nodes with the same names, metas, attrs, values and locs.

        Links to nodes outside the graph (only a broken graph has them) are kept.
        """
        clone = Graph(self.name)
        twins: dict[int, Node] = {}
        for node in self.nodes:
            value = None if node.value is None else node.value.copy()
            twin = Node(
                clone,
                node.name,
                node.kind,
                op=node.op,
                attrs=copy.deepcopy(node.attrs),
                meta=node.meta,
                loc=node.loc,
                target=node.target,
                value=value,
            )
            twins[id(node)] = twin
            clone._append_verbatim(twin)
        for node in self.nodes:
            twin = twins[id(node)]
            twin.inputs = [twins.get(id(v), v) for v in node.inputs]
            twin.users = [twins.get(id(u), u) for u in node.users]
        return clone

    # Queries ------------------------------------------------------------------------

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == "input"]

    @property
    def params(self) -> list[Node]:
        return [n for n in self.nodes if n.kind in ("param", "buffer")]

    @property
    def output_node(self) -> Node:
        for node in reversed(self.nodes):
            if node.kind == "output":
                return node
        raise IRError("the graph has no output node")

    @property
    def outputs(self) -> list[Node]:
        return list(self.output_node.inputs)

    def calls(self) -> Iterable[Node]:
        return (n for n in self.nodes if n.kind == "call")

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise IRError(f"no value named %{name}")

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes))

    def __len__(self) -> int:
        return len(self.nodes)

    def __str__(self) -> str:
        from ember.ir.printer import format_graph

        return format_graph(self)


def link_by_name(nodes: Sequence[Node], operands: Sequence[Sequence[str]]) -> None:
    """Set each node's inputs from its operand names, then fill the users lists.

    Readers of the text and JSON forms share this. A name resolves to its latest
    definition before the use, failing that (a use before the definition, which the
    verifier rejects) to the first one after. A name no node defines raises
    ``LookupError((node_index, operand_index))``.
    """
    definitions: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        definitions.setdefault(node.name, []).append(index)
    for index, (node, names) in enumerate(zip(nodes, operands)):
        for position, name in enumerate(names):
            found = definitions.get(name)
            if not found:
                raise LookupError((index, position))
            before = [i for i in found if i < index]
            node.inputs.append(nodes[before[-1] if before else found[0]])
    for node in nodes:
        for value in node.inputs:
            if node not in value.users:
                value.users.append(node)


class _InsertionPoint:
    def __init__(self, graph: Graph, index: int) -> None:
        self.graph = graph
        self.index = index
        self.saved: int | None = None

    def __enter__(self) -> Graph:
        self.saved = self.graph._insert_at
        self.graph._insert_at = self.index
        return self.graph

    def __exit__(self, *exc: Any) -> None:
        self.graph._insert_at = self.saved
