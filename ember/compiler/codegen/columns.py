"""Column reductions: walk memory row by row and accumulate a row of outputs.

A reduction kernel runs its stages once per outer point, so a reduction whose
reduced axis is outer in memory (a sum over the batch axis of a row-major matrix,
``x.sum(0)``) reads one element per row of the input for each output: stride-n
loads, which the vectorizer can only gather. :func:`column_plan` recognizes such a
kernel (what it reads and writes at each inner point is contiguous along the last
outer axis, the *column* axis, more often than along the last reduced axis) and
:func:`emit_columns` runs it interchanged, a tile of ``width`` columns at a time,
each stage over the whole tile before the next:

    for every outer point but the column axis, for every tile of columns:
        Reduce:  row[:] = initial value          (one accumulator row per Reduce)
                 for every reduced point i, in order:
                     for j in tile: row[j] = row[j] ⊕ value(i, j)   <- vectorized
        Store:   for j in tile: out[j] = value(j, rows[j])
        Store inner: for every reduced point i: for j in tile: out[i, j] = ...

Points of different columns never share an output element, so running a tile's
columns side by side computes what one outer point at a time computes.

The rows live on the stack (:data:`COLUMN_ROW_BYTES` at most, inside L1), so the
input streams row by row at memory speed. Every column still combines its terms
in reduced-axis order. Float sums keep a block row beside the total row: the terms
of :data:`COLUMN_SUM_BLOCK` reduced points are added in order into the block row,
which is then added into the total row and cleared. A term thus goes through at most
``COLUMN_SUM_BLOCK - 1 + ceil(n / COLUMN_SUM_BLOCK)`` roundings, within the bound
docs/codegen.md documents for sums (its ``n/8 + 64``), where a plain sequential sum
would take up to ``n - 1``. The adds carry no fast-math flags: the order is exactly
this one, on any machine and for any split of the columns across threads.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llvmlite import ir

from ember.compiler.codegen.mathlib import I64
from ember.compiler.kernel import AccRef, Expr, Load, LoopKernel, Reduce, Store
from ember.ir import layout

if TYPE_CHECKING:
    from ember.compiler.codegen.emit import _FunctionEmitter

#: Stack bytes of accumulator rows per tile of columns (within L1 beside the rows
#: of input that stream through).
COLUMN_ROW_BYTES = 16 * 1024
#: Reduced points a float sum adds into its block row before the block joins the
#: total (see the module docstring for the error bound this keeps).
COLUMN_SUM_BLOCK = 64
#: Fewest columns worth interchanging for: one vector of float32 lanes on AVX-512.
COLUMN_MIN_WIDTH = 16


@dataclass(frozen=True)
class ColumnPlan:
    """How :func:`emit_columns` runs a kernel: ``width`` columns per tile."""

    width: int


def column_plan(kernel: LoopKernel) -> ColumnPlan | None:
    """The plan for ``kernel`` (coalesced), or None to keep one outer point at a time.

    A kernel qualifies when it has outer and inner axes, its last outer axis has at
    least :data:`COLUMN_MIN_WIDTH` points, and the memory it walks at every inner
    point (the loads of its reductions and inner stores, and the elements those
    stores write) is more often contiguous along the last outer axis (stride 1,
    another stride along the last inner axis) than along the last inner axis.
    Walks that stay put along either axis (stride 0: a bias, a broadcast row) count
    for neither order.
    """
    if not kernel.outer or not kernel.inner:
        return None
    column, last = len(kernel.outer) - 1, len(kernel.domain) - 1
    by_columns = by_rows = 0
    for walk in _inner_walks(kernel):
        along_column, along_row = walk[column], walk[last]
        by_columns += along_column == 1 and along_row not in (0, 1)
        by_rows += along_row == 1 and along_column not in (0, 1)
    if by_columns <= by_rows or kernel.outer[-1] < COLUMN_MIN_WIDTH:
        return None
    per_column = sum(_row_bytes(s) for s in kernel.stages if isinstance(s, Reduce))
    width = COLUMN_ROW_BYTES // per_column // COLUMN_MIN_WIDTH * COLUMN_MIN_WIDTH
    if width < COLUMN_MIN_WIDTH:
        return None
    return ColumnPlan(min(width, kernel.outer[-1]))


def _inner_walks(kernel: LoopKernel) -> list[tuple[int, ...]]:
    """The strides of every load and store made at each inner point."""
    walks: list[tuple[int, ...]] = []
    for stage in kernel.stages:
        if isinstance(stage, Store) and not stage.inner:
            continue
        loads = {n for n in stage.value.walk() if isinstance(n, Load)}
        walks += [load.strides for load in loads]
        if isinstance(stage, Store):
            walks.append(_store_strides(kernel, stage))
    return walks


def _store_strides(kernel: LoopKernel, stage: Store) -> tuple[int, ...]:
    """The output element an inner store writes, as strides over the domain."""
    if stage.strides is not None:
        return tuple(stage.strides)
    return layout.contiguous_strides(kernel.domain)


def _blocked(stage: Reduce) -> bool:
    """Float sums keep a block row beside the total (module docstring)."""
    return stage.kind == "sum" and stage.value.dtype.is_floating_point


def _row_bytes(stage: Reduce) -> int:
    """Stack bytes per column of a reduction's rows (8-byte accumulators)."""
    return 16 if _blocked(stage) else 8


@dataclass(frozen=True)
class _Rows:
    """The stack rows of one reduction: its total and, for float sums, its block."""

    total: ir.Value
    block: ir.Value | None


class _ColumnEmitter:
    """Emits the interchanged loops of one kernel through a function emitter."""

    def __init__(self, emitter: _FunctionEmitter, plan: ColumnPlan) -> None:
        self.e = emitter
        self.kernel = emitter.kernel
        self.width = plan.width
        self.rows: dict[str, _Rows] = {}
        self.reduces = {s.name: s for s in self.kernel.stages if isinstance(s, Reduce)}
        for stage in self.reduces.values():
            self.rows[stage.name] = _Rows(
                self._stack_row(stage),
                self._stack_row(stage) if _blocked(stage) else None,
            )

    def _stack_row(self, stage: Reduce) -> ir.Value:
        b = self.e.b
        with b.goto_entry_block():
            row = b.alloca(self.e._acc_type(stage), size=_i64(self.width))
        row.align = 64
        return row

    # Loops -----------------------------------------------------------------------

    def run(self, ranges: list[tuple[ir.Value, ir.Value]]) -> None:
        """Every outer point of ``ranges`` (the last axis by tiles of columns)."""
        lo, hi = ranges[-1]
        width = _i64(self.width)
        b = self.e.b

        def tiles(head: list[ir.Value]) -> None:
            count = b.sdiv(b.add(b.sub(hi, lo), _i64(self.width - 1)), width)

            def tile(t: ir.Value) -> None:
                first = b.add(lo, b.mul(t, width, flags=["nsw"]), flags=["nsw"])
                end = b.add(first, width, flags=["nsw"])
                last = b.select(b.icmp_signed("<", end, hi), end, hi)
                self._tile(head, first, b.sub(last, first))

            self.e.loop(_i64(0), count, tile)

        self.e.nest(ranges[:-1], tiles)

    def _tile(self, head: list[ir.Value], first: ir.Value, count: ir.Value) -> None:
        """The stages over columns ``first .. first + count`` at outer point ``head``."""
        dense = layout.contiguous_strides(self.kernel.outer)
        base = first
        for i, stride in zip(head, dense):
            base = self.e.b.add(base, self.e.b.mul(i, _i64(stride), flags=["nsw"]))
        for stage in self.kernel.stages:
            if isinstance(stage, Reduce):
                self._reduce(stage, head, first, count)
            elif stage.inner:
                self._inner_store(stage, head, first, count)
            else:
                self._store(stage, head, first, base, count)

    def _store(
        self,
        stage: Store,
        head: list[ir.Value],
        first: ir.Value,
        base: ir.Value,
        count: ir.Value,
    ) -> None:
        """A per-outer-point store at every column of the tile (``base`` is the
        dense index of the tile's first column)."""
        b = self.e.b

        def column(j: ir.Value) -> None:
            value = self._value(stage.value, head, first, j, [])
            self.e._store(stage.buffer, b.add(base, j, flags=["nsw"]), value)

        self._columns(count, column)

    def _inner_store(
        self, stage: Store, head: list[ir.Value], first: ir.Value, count: ir.Value
    ) -> None:
        """A store at every inner point, every column of the tile in turn."""
        e, b = self.e, self.e.b
        strides = _store_strides(self.kernel, stage)

        def point(inner: list[ir.Value]) -> None:
            def column(j: ir.Value) -> None:
                value = self._value(stage.value, head, first, j, inner)
                at = [*head, b.add(first, j, flags=["nsw"]), *inner]
                e._store(stage.buffer, e.affine(at, strides), value)

            self._columns(count, column)

        e.nest([(_i64(0), _i64(n)) for n in self.kernel.inner], point)

    def _columns(
        self, count: ir.Value, body: Callable[[ir.Value], None], lanes: int = 0
    ) -> None:
        """``body(j)`` for every column ``j`` of the tile (the vectorized loop)."""
        self.e.loop(_i64(0), count, body, lanes)

    # Reductions --------------------------------------------------------------------

    def _reduce(
        self, stage: Reduce, head: list[ir.Value], first: ir.Value, count: ir.Value
    ) -> None:
        e, b = self.e, self.e.b
        rows = self.rows[stage.name]
        lanes = e._sum_lanes(stage)
        initial = e._acc_init(stage)
        for row in (rows.total, rows.block):
            if row is not None:
                self._fill(row, initial, count)
        target = rows.block if rows.block is not None else rows.total
        pending = e.alloca(I64)
        b.store(_i64(0), pending)

        def accumulate(inner: list[ir.Value]) -> None:
            def column(j: ir.Value) -> None:
                value = e._widen(stage, self._value(stage.value, head, first, j, inner))
                slot = _at(b, target, j)
                b.store(e._combine(stage, b.load(slot), value, ordered=True), slot)

            self._columns(count, column, lanes)
            if rows.block is not None:
                seen = b.add(b.load(pending), _i64(1))
                b.store(seen, pending)
                full = b.icmp_signed("==", seen, _i64(COLUMN_SUM_BLOCK))
                with b.if_then(full):
                    self._flush(stage, rows, count)
                    b.store(_i64(0), pending)

        e.nest([(_i64(0), _i64(n)) for n in self.kernel.inner], accumulate)
        if rows.block is not None:
            self._flush(stage, rows, count)

    def _fill(self, row: ir.Value, initial: ir.Constant, count: ir.Value) -> None:
        """Set the tile's columns of ``row`` to ``initial``."""
        b = self.e.b

        def column(j: ir.Value) -> None:
            b.store(initial, _at(b, row, j))

        self._columns(count, column)

    def _flush(self, stage: Reduce, rows: _Rows, count: ir.Value) -> None:
        """Add the block row into the total row and clear it."""
        e, b = self.e, self.e.b
        assert rows.block is not None
        initial = e._acc_init(stage)

        def column(j: ir.Value) -> None:
            total, block = _at(b, rows.total, j), _at(b, rows.block, j)
            b.store(
                e._combine(stage, b.load(total), b.load(block), ordered=True), total
            )
            b.store(initial, block)

        self._columns(count, column)

    # Expressions -------------------------------------------------------------------

    def _value(
        self,
        expr: Expr,
        head: list[ir.Value],
        first: ir.Value,
        j: ir.Value,
        inner: list[ir.Value],
    ) -> ir.Value:
        """``expr`` at column ``first + j`` of outer point ``head``, inner point
        ``inner``; the finished reductions it reads come from their total rows."""
        e, b = self.e, self.e.b
        memo: ChainMap = ChainMap()
        for node in expr.walk():
            if isinstance(node, AccRef) and node not in memo:
                stage = self.reduces[node.name]
                total = b.load(_at(b, self.rows[node.name].total, j))
                memo[node] = e._finalize(stage, total)
        column = b.add(first, j, flags=["nsw"])
        return e.value(expr, [*head, column, *inner], memo)


def emit_columns(
    emitter: _FunctionEmitter, plan: ColumnPlan, ranges: list[tuple[ir.Value, ir.Value]]
) -> None:
    """Emit ``emitter``'s kernel over the outer ``ranges`` as ``plan`` says."""
    _ColumnEmitter(emitter, plan).run(ranges)


def _at(b: ir.IRBuilder, row: ir.Value, j: ir.Value) -> ir.Value:
    return b.gep(row, [j], inbounds=True, source_etype=row.allocated_type)


def _i64(value: int) -> ir.Constant:
    return ir.Constant(I64, value)
