"""The order in which backward runs: reverse topological, with dependency counts.

The eager autograd engine (:mod:`ember.runtime.autograd`) and the graph autodiff
(:mod:`ember.compiler.autodiff`) both walk a graph of values from its roots (the
outputs that receive a gradient) towards its leaves, and both must run a value's
gradient rule only once every consumer has sent its gradient, so that a value used
on several paths gets the sum of all of them first. :class:`ReverseOrder` is that
walk, written once for both:

1. it counts, for every value reachable from the roots, the edges that lead into it
   (an operand used twice by one consumer counts twice);
2. it yields a value once all those edges have been released, the latest value
   first (highest ``order``) among the ready ones, so two runs visit values in the
   same order and sum gradients in the same order;
3. after the caller has handled a yielded value (sent its gradients on), resuming
   the iteration releases the value's edges.

``edges_of`` must give the same edges each time it is called for a value.

    >>> deps = {"loss": ["h", "h"], "h": ["x"], "x": []}
    >>> order = {"x": 0, "h": 1, "loss": 2}
    >>> walk = ReverseOrder(["loss"], deps.__getitem__, order.__getitem__)
    >>> list(walk), walk.pending
    (['loss', 'h', 'x'], {'h': 0, 'x': 0})
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

V = TypeVar("V", bound=Hashable)


class ReverseOrder(Generic[V]):
    """Iterate the values reachable from ``roots`` consumers first; see the module.

    ``pending`` maps each reachable non-root value to the number of edges into it
    not yet released; ``peak_ready`` is the longest the ready queue grew.
    """

    def __init__(
        self,
        roots: Sequence[V],
        edges_of: Callable[[V], Iterable[V]],
        order: Callable[[V], int],
    ) -> None:
        self.roots = list(dict.fromkeys(roots))
        self.edges_of = edges_of
        self.order = order
        self.pending: dict[V, int] = {}
        self.peak_ready = 0
        self._count()

    def _count(self) -> None:
        pending = self.pending
        stack = list(self.roots)
        seen = set(stack)
        while stack:
            value = stack.pop()
            for target in self.edges_of(value):
                pending[target] = pending.get(target, 0) + 1
                if target not in seen:
                    seen.add(target)
                    stack.append(target)

    def __iter__(self) -> Iterator[V]:
        order, pending, edges_of = self.order, self.pending, self.edges_of
        ready = [(-order(v), v) for v in self.roots if v not in pending]
        heapq.heapify(ready)
        push, pop = heapq.heappush, heapq.heappop
        while ready:
            if len(ready) > self.peak_ready:
                self.peak_ready = len(ready)
            value = pop(ready)[1]
            yield value
            for target in edges_of(value):
                pending[target] -= 1
                if not pending[target]:
                    push(ready, (-order(target), target))
