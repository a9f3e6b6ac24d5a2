"""Independent matrix products of one program, run side by side on two threads.

The backward pass of a layer computes two products from the same incoming gradient:
the gradient of the layer's input (``dy @ w``) and the gradient of its weight
(``dy.T @ x``). Neither reads what the other writes, and each takes hundreds of
microseconds for a 256-wide layer. :func:`pair_products` finds such pairs in a
program's schedule and moves the second product up beside the first; the program
then runs each pair as one
:class:`~ember.compiler.codegen.launch.ConcurrentLaunches`, the calling thread on
one product and the native helper (:mod:`ember.compiler.codegen.worker`) on the
other.

What stays true:

- every step still runs after the steps whose results it reads, and before any
  step that overwrites what it reads (a parameter updated in place): a product is
  moved only above steps it has no such tie to;
- the two products of a pair write disjoint memory and neither reads what the
  other writes: :func:`step_times` gives both the same time, so the buffer plan
  never lets one's product share a buffer with anything the other touches;
- results do not depend on the threads: each product (or half) runs whole on
  one thread, with the same BLAS call whether the pair runs side by side or in
  turn. A pair of whole products gives the bytes of the program without pairs;
  the halves of a split product are two BLAS calls instead of one, which for the
  wide, not thin, products that are split gave the same bytes in our tests
  (``tests/test_concurrency.py``) but are not promised to in every shape.

Only BLAS products of at least :data:`CONCURRENT_MACS` multiply-adds pair up (a
threshold measured when a pair woke a pool thread; see docs/codegen.md). A product of at least
:data:`SPLIT_MACS` that found no partner (the forward product of a wide layer,
which the next layer waits for) is split into two products over halves of its
rows, which pair up with each other (:func:`split_unpaired`). The setting
``concurrent_products`` (``EMBER_CONCURRENT=0``) turns both off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: The fewest multiply-adds of each product of a pair (a 128-cubed product; about
#: 50 µs here, against about 20 µs to wake a pool thread and join it, measured
#: before pairs ran on the native helper, which takes a part in about 0.1 µs).
CONCURRENT_MACS = 1 << 21
#: The fewest multiply-adds of a product split in two when it has no partner (a
#: 203-cubed product; each half then takes over 100 µs here).
SPLIT_MACS = 1 << 23
#: The fewest rows of each half, and columns of the product, of a split product.
SPLIT_MIN_ROWS = 64


def product_macs(step: Any) -> int:
    """The multiply-adds of a step that runs a BLAS product, else 0."""
    gemm = getattr(step, "compiled", None)
    matrices = getattr(gemm, "matrices", None)
    if matrices is None:
        return 0
    (m, k), (_, n) = matrices[0][0], matrices[1][0]
    return int(m * n * k)


def _slots(operands: Sequence[Any]) -> set[int]:
    return {operand.slot for operand in operands}


def pair_products(steps: Sequence[Any]) -> tuple[list[Any], set[int]]:
    """The steps reordered so that independent large products stand in pairs, and
    the index of the first step of each pair.

    Walking the schedule, each large product not yet paired looks ahead for the
    first large product that reads nothing written, and writes nothing read or
    written, by the steps from it up to that product; that one moves up beside
    it. Steps keep their order otherwise.

        >>> pair_products([])
        ([], set())
    """
    order = list(steps)
    pairs: set[int] = set()
    index = 0
    while index < len(order):
        first = order[index]
        if product_macs(first) >= CONCURRENT_MACS:
            partner = _partner(order, index)
            if partner is not None:
                order.insert(index + 1, order.pop(partner))
                pairs.add(index)
                index += 2
                continue
        index += 1
    return order, pairs


def _partner(order: list[Any], index: int) -> int | None:
    """The position of the product that may move up beside ``order[index]``."""
    written = _slots(order[index].writes)
    read = _slots(order[index].reads)
    for position in range(index + 1, len(order)):
        step = order[position]
        reads, writes = _slots(step.reads), _slots(step.writes)
        if (
            product_macs(step) >= CONCURRENT_MACS
            and not reads & written
            and not writes & (read | written)
        ):
            return position
        written |= writes
        read |= reads
    return None


def step_times(count: int, pairs: set[int]) -> list[int]:
    """The time of each of ``count`` steps for the buffer plan: the two steps of
    a pair run at once, so they share one.

        >>> step_times(5, {1})
        [0, 1, 1, 2, 3]
    """
    times: list[int] = []
    now = 0
    for index in range(count):
        if index - 1 in pairs:
            times.append(times[-1])
            continue
        times.append(now)
        now += 1
    return times


def split_unpaired(order: Sequence[Any], pairs: set[int]) -> tuple[list[Any], set[int]]:
    """The steps with each large product left without a partner replaced by two
    products over halves of its rows (:func:`split_rows`), paired; the pairs
    already formed stay.

        >>> split_unpaired([], set())
        ([], set())
    """
    steps: list[Any] = []
    paired: set[int] = set()
    index = 0
    while index < len(order):
        if index in pairs:
            paired.add(len(steps))
            steps += order[index : index + 2]
            index += 2
            continue
        step = order[index]
        halves = split_rows(step) if product_macs(step) >= SPLIT_MACS else None
        if halves is None:
            steps.append(step)
        else:
            paired.add(len(steps))
            steps += halves
        index += 1
    return steps, paired


def split_rows(step: Any) -> tuple[Any, Any] | None:
    """Two BLAS product steps that each compute half of the rows of ``step``'s
    product (row ``i`` of ``a @ b`` reads only row ``i`` of ``a``), or None when
    ``step`` is not a BLAS product or a half cannot be planned. Each half reads
    the same memory as the whole, at an offset: a half of ``a`` is a view of it
    (``a.T`` included, through its strides), and the halves of the product are
    its first and last rows."""
    from ember.compiler.program import GemmStep, _plan_gemm

    if not isinstance(step, GemmStep):
        return None
    a, b = step.reads
    (product,) = step.writes
    rows, columns = product.meta.shape
    if rows < 2 * SPLIT_MIN_ROWS or columns < SPLIT_MIN_ROWS:
        # Thin products stay whole: OpenBLAS picks its kernels by shape, and
        # halves of a thin product can differ from the whole in the last bits.
        return None
    cut = rows // 2
    halves = []
    for start, stop in ((0, cut), (cut, rows)):
        a_half, product_half = _rows(a, start, stop), _rows(product, start, stop)
        gemm = _plan_gemm(a_half, b, product_half)
        if gemm is None:
            return None
        name = f"{step.name} rows {start}:{stop}"
        halves.append(GemmStep(name, gemm, [a_half, b], product_half))
    return halves[0], halves[1]


def _rows(operand: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a 2-D operand: the same slot at a further offset."""
    from ember.compiler.program import Operand
    from ember.ir.meta import TensorMeta

    meta = operand.meta
    delta = start * meta.strides[0]
    shape = (stop - start, *meta.shape[1:])
    return Operand(
        operand.slot,
        TensorMeta(shape, meta.dtype, meta.strides, meta.offset + delta),
        operand.offset + delta,
    )
