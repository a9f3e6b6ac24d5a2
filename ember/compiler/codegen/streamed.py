"""One pass over a matrix for a product with a vector, the pointwise work on its
result, and the product of that result's gradient with the same matrix.

A linear model's training step reads its batch ``x`` (``m x k``) twice: the
forward product ``s = x @ v`` (one value per row), then, after pointwise kernels
turn ``s`` into ``d`` (the loss gradient of each row), the weight gradient
``g = d.T @ x``. As two BLAS calls the second pass finds the batch in cache at
best; the first streams it from memory. :class:`StreamedLaunch` runs the three as
one loop over blocks of :data:`BLOCK_ROWS` rows: the dot products of a block's
rows, the pointwise kernels on those rows (each is a prepared launch of an
ordinary kernel, called on the row range, as a thread would call it), then the
rows' contributions to ``g`` while they are still in the first-level cache. A
pass of at least :data:`PARALLEL_ELEMENTS` elements splits its rows in up to
:data:`MAX_PARTS` parts of whole blocks that the calling thread and the native
helper (:mod:`ember.compiler.codegen.worker`) claim one at a time, each part
summing its own ``g``; the parts' sums are added in part order.

What stays true:

- the launch reads and writes exactly what the three launches it replaces read
  and write: it takes every operand's address from their pointer arrays, which
  their own ``prepare`` checked; a pointwise kernel on rows ``[a, b)`` touches only
  those rows of what the pass produces (:mod:`ember.compiler.streaming` checks
  that before it fuses);
- the results depend on the shapes only, not on blocks or threads: each row's
  dot product accumulates its full vectors alternately in two vectors of
  partial sums, adds the remaining elements one by one, then sums the lanes
  in halves; each element of ``g`` adds the rows' contributions of each part
  in row order, then the parts in order (the split depends on the shape).
  They are not the bytes BLAS gives (its order is its own), and they differ
  from it in the last bits (``tests/test_streaming.py`` bounds the difference).

    >>> plan = StreamPlan("f32", rows=4, columns=3, x_row=3, v_step=1, s_step=1,
    ...                   d_step=1, g_step=1, d_position=0, epilogues=1)
    >>> plan.lanes
    8
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember import settings
from ember.compiler.codegen import target, worker
from ember.compiler.codegen.launch import default_threads

#: Rows per block: the rows' data (``BLOCK_ROWS * k`` elements) stays in the
#: first-level cache between the dot products and the gradient update.
BLOCK_ROWS = 16
#: The most columns the pass takes: it keeps ``v`` and ``g`` on the stack.
MAX_COLUMNS = 4096
#: The fewest elements of ``x`` for which the pass runs in parts (about
#: 1.5 µs of work from cache here, against a few hundred nanoseconds to hand a
#: part to the helper; docs/codegen.md has the figures).
PARALLEL_ELEMENTS = 1 << 14
#: The most parts a pass is split into: parts are claimed one at a time, so a
#: thread that runs slower takes fewer of them. (2, 4 and 8 parts measured
#: 0.75-0.77, 0.72-0.74 and 0.77-0.80x numpy on the linear-regression loop.)
MAX_PARTS = 4
#: Where the pointer array of a launch keeps the helper's slot, ember_parallel,
#: the partial sums of g, and the record of its parts (see worker.py).
_SLOT, _PARALLEL, _PARTIAL, _RECORD, _EPILOGUES = 2, 3, 4, 8, 32
#: Vector lanes per dtype: fixed, so that results do not depend on the machine.
_LANES = {"f32": 8, "f64": 4}
_TYPES = {"f32": "float", "f64": "double"}
_ENTRY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)


@dataclass(frozen=True)
class StreamPlan:
    """The shape of one streamed pass, all strides in elements.

    ``x`` is ``rows x columns`` with unit column stride and row stride ``x_row``;
    ``v`` has ``columns`` elements ``v_step`` apart, ``s`` and ``d`` ``rows``
    elements ``s_step`` and ``d_step`` apart, ``g`` ``columns`` elements
    ``g_step`` apart. ``d_position`` is where ``d`` stands in the gradient
    product's pointer array (0 for ``d.T @ x``, 1 for ``x.T @ d``).
    """

    dtype: str
    rows: int
    columns: int
    x_row: int
    v_step: int
    s_step: int
    d_step: int
    g_step: int
    d_position: int
    epilogues: int

    @property
    def lanes(self) -> int:
        return _LANES[self.dtype]

    @property
    def padded(self) -> int:
        """``columns`` rounded up to whole vectors."""
        return -(-self.columns // self.lanes) * self.lanes

    @property
    def chunk(self) -> int:
        """Rows per part: a whole number of blocks, at most :data:`MAX_PARTS`
        parts; ``rows`` for a pass in one part."""
        if self.rows * self.columns < PARALLEL_ELEMENTS or self.rows < 2 * BLOCK_ROWS:
            return self.rows
        blocks = -(-self.rows // BLOCK_ROWS)
        return -(-blocks // min(MAX_PARTS, blocks)) * BLOCK_ROWS

    @property
    def parts(self) -> int:
        return -(-self.rows // self.chunk)

    def describe(self) -> str:
        return (
            f"streamed pass {self.rows}x{self.columns} ({self.epilogues} pointwise "
            f"kernel{'s' if self.epilogues != 1 else ''} between)"
        )


def stream_ir(plan: StreamPlan) -> str:
    """The native entry ``ember_stream(args, start, stop)`` for ``plan``.

    ``args`` holds the forward product's pointer array (``x``, ``v``, ``s`` first,
    as :class:`~ember.compiler.codegen.blas.GemmLaunch` lays it out), the gradient
    product's (``d`` at ``d_position``, ``g`` third), the helper's slot (0 for
    none), the address of ``ember_parallel``, the partial sums of ``g``, the
    record of the parts, then a function and a pointer array per pointwise
    kernel. ``start`` and ``stop`` are unused.
    """
    t = _TYPES[plan.dtype]
    k = plan.columns
    out: list[str] = []
    emit = out.append
    _part_ir(emit, plan)
    emit("define void @ember_stream(ptr %args, i64 %start, i64 %stop) {")
    emit("entry:")
    if plan.parts == 1:
        emit("  call void @ember_stream_part(ptr %args, i64 0)")
        emit("  ret void")
        emit("}")
        return "\n".join(out)
    emit(f"  %rec = getelementptr i64, ptr %args, i64 {_RECORD}")
    emit("  store ptr @ember_stream_part, ptr %rec")
    emit("  %rec.args = getelementptr i64, ptr %rec, i64 1")
    emit("  store ptr %args, ptr %rec.args")
    emit("  %rec.parts = getelementptr i64, ptr %rec, i64 2")
    emit(f"  store i64 {plan.parts}, ptr %rec.parts")
    for name, index in (
        ("slot", _SLOT),
        ("parallel", _PARALLEL),
        ("partial", _PARTIAL),
    ):
        emit(f"  %{name}.at = getelementptr i64, ptr %args, i64 {index}")
        emit(f"  %{name} = load ptr, ptr %{name}.at")
    emit("  call void %parallel(ptr %slot, ptr %rec)")
    emit("  %ga.at = getelementptr i64, ptr %args, i64 1")
    emit("  %ga = load ptr, ptr %ga.at")
    emit("  %g.at = getelementptr i64, ptr %ga, i64 2")
    emit("  %g = load ptr, ptr %g.at")
    emit("  br label %add")
    emit("add:")
    emit("  %j = phi i64 [0, %entry], [%j.next, %add]")
    total = ""
    for part in range(plan.parts):
        emit(f"  %j{part} = add i64 %j, {part * plan.padded}")
        emit(f"  %p{part}.at = getelementptr {t}, ptr %partial, i64 %j{part}")
        emit(f"  %p{part} = load {t}, ptr %p{part}.at")
        if total:
            emit(f"  %sum{part} = fadd {t} {total}, %p{part}")
            total = f"%sum{part}"
        else:
            total = f"%p{part}"
    emit(f"  %jg = mul i64 %j, {plan.g_step}")
    emit(f"  %out.at = getelementptr {t}, ptr %g, i64 %jg")
    emit(f"  store {t} {total}, ptr %out.at")
    emit("  %j.next = add i64 %j, 1")
    emit(f"  %j.more = icmp ult i64 %j.next, {k}")
    emit("  br i1 %j.more, label %add, label %done")
    emit("done:")
    emit("  ret void")
    emit("}")
    return "\n".join(out)


def _part_ir(emit: Any, plan: StreamPlan) -> None:
    """``ember_stream_part(args, part)``: the pass over the part's rows (all of
    them for a pass in one part), storing ``g`` (one part) or the part's partial
    sums."""
    t = _TYPES[plan.dtype]
    w = plan.lanes
    vt = f"<{w} x {t}>"
    k = plan.columns
    full = k // w  # full vectors per row
    align = _size(t)

    def field(base: str, index: int, name: str) -> None:
        emit(f"  %{name}.at = getelementptr i64, ptr %{base}, i64 {index}")
        emit(f"  %{name} = load ptr, ptr %{name}.at")

    emit("define void @ember_stream_part(ptr %args, i64 %part) {")
    emit("entry:")
    field("args", 0, "pa")
    field("args", 1, "ga")
    field("pa", 0, "x")
    field("pa", 1, "v")
    field("pa", 2, "s")
    field("ga", plan.d_position, "d")
    if plan.parts > 1:
        field("args", _PARTIAL, "partial")
        emit(f"  %out.first = mul i64 %part, {plan.padded}")
        emit(f"  %out = getelementptr {t}, ptr %partial, i64 %out.first")
        out_step = 1
        emit(f"  %lo = mul i64 %part, {plan.chunk}")
        emit(f"  %hi.try = add i64 %lo, {plan.chunk}")
        emit(f"  %hi.fits = icmp slt i64 %hi.try, {plan.rows}")
        emit(f"  %hi = select i1 %hi.fits, i64 %hi.try, i64 {plan.rows}")
    else:
        field("ga", 2, "out")
        out_step = plan.g_step
        emit("  %lo = add i64 0, 0")
        emit(f"  %hi = add i64 0, {plan.rows}")
    for e in range(plan.epilogues):
        field("args", _EPILOGUES + 2 * e, f"efn{e}")
        field("args", _EPILOGUES + 1 + 2 * e, f"eargs{e}")
    emit(f"  %vbuf = alloca {t}, i64 {k}, align 64")
    emit(f"  %gbuf = alloca {t}, i64 {k}, align 64")
    emit("  br label %copy")
    # v into a contiguous buffer, g's accumulators to zero.
    emit("copy:")
    emit("  %cj = phi i64 [0, %entry], [%cj.next, %copy]")
    emit(f"  %cj.v = mul i64 %cj, {plan.v_step}")
    emit(f"  %cv.at = getelementptr {t}, ptr %v, i64 %cj.v")
    emit(f"  %cv = load {t}, ptr %cv.at")
    emit(f"  %cb.at = getelementptr {t}, ptr %vbuf, i64 %cj")
    emit(f"  store {t} %cv, ptr %cb.at")
    emit(f"  %cg.at = getelementptr {t}, ptr %gbuf, i64 %cj")
    emit(f"  store {t} 0.0, ptr %cg.at")
    emit("  %cj.next = add i64 %cj, 1")
    emit(f"  %cj.more = icmp ult i64 %cj.next, {k}")
    emit("  br i1 %cj.more, label %copy, label %block")
    # The loop over blocks of rows.
    emit("block:")
    emit("  %b0 = phi i64 [%lo, %copy], [%b1, %block.end]")
    emit(f"  %b1.try = add i64 %b0, {BLOCK_ROWS}")
    emit("  %b1.fits = icmp slt i64 %b1.try, %hi")
    emit("  %b1 = select i1 %b1.fits, i64 %b1.try, i64 %hi")
    emit("  br label %dot.head")
    _dot_rows(emit, plan)
    emit("epilogue:")
    for e in range(plan.epilogues):
        emit(f"  call void %efn{e}(ptr %eargs{e}, i64 %b0, i64 %b1)")
    emit("  br label %rank.head")
    # Each row's contribution to g, rows in order.
    emit("rank.head:")
    emit("  %r = phi i64 [%b0, %epilogue], [%r.next, %rank.tail]")
    emit("  %r.more = icmp slt i64 %r, %b1")
    emit("  br i1 %r.more, label %rank.row, label %block.end")
    emit("rank.row:")
    emit(f"  %r.d = mul i64 %r, {plan.d_step}")
    emit(f"  %dr.at = getelementptr {t}, ptr %d, i64 %r.d")
    emit(f"  %dr = load {t}, ptr %dr.at")
    emit(f"  %r.x = mul i64 %r, {plan.x_row}")
    emit(f"  %xr = getelementptr {t}, ptr %x, i64 %r.x")
    fma = f"@llvm.fmuladd.v{w}{_suffix(t)}"
    if full:
        emit(f"  %dr.one = insertelement {vt} poison, {t} %dr, i64 0")
        emit(
            f"  %dr.all = shufflevector {vt} %dr.one, {vt} poison, "
            f"<{w} x i32> zeroinitializer"
        )
        emit("  br label %rank.loop")
        emit("rank.loop:")
        emit("  %rj = phi i64 [0, %rank.row], [%rj.next, %rank.loop]")
        emit(f"  %rj.e = mul i64 %rj, {w}")
        emit(f"  %rx.at = getelementptr {t}, ptr %xr, i64 %rj.e")
        emit(f"  %rx = load {vt}, ptr %rx.at, align {align}")
        emit(f"  %rg.at = getelementptr {t}, ptr %gbuf, i64 %rj.e")
        emit(f"  %rg = load {vt}, ptr %rg.at, align {align}")
        emit(f"  %rg.new = call {vt} {fma}({vt} %dr.all, {vt} %rx, {vt} %rg)")
        emit(f"  store {vt} %rg.new, ptr %rg.at, align {align}")
        emit("  %rj.next = add i64 %rj, 1")
        emit(f"  %rj.more = icmp ult i64 %rj.next, {full}")
        emit("  br i1 %rj.more, label %rank.loop, label %rank.tail")
    else:
        emit("  br label %rank.tail")
    emit("rank.tail:")
    for j in range(full * w, k):
        emit(f"  %rt{j}.x.at = getelementptr {t}, ptr %xr, i64 {j}")
        emit(f"  %rt{j}.x = load {t}, ptr %rt{j}.x.at")
        emit(f"  %rt{j}.g.at = getelementptr {t}, ptr %gbuf, i64 {j}")
        emit(f"  %rt{j}.g = load {t}, ptr %rt{j}.g.at")
        emit(
            f"  %rt{j}.new = call {t} @llvm.fmuladd.{_suffix(t)}"
            f"({t} %dr, {t} %rt{j}.x, {t} %rt{j}.g)"
        )
        emit(f"  store {t} %rt{j}.new, ptr %rt{j}.g.at")
    emit("  %r.next = add i64 %r, 1")
    emit("  br label %rank.head")
    emit("block.end:")
    emit("  %more.blocks = icmp slt i64 %b1, %hi")
    emit("  br i1 %more.blocks, label %block, label %store")
    # g (or the part's partial sums) from its accumulators.
    emit("store:")
    emit("  %sj = phi i64 [0, %block.end], [%sj.next, %store]")
    emit(f"  %sg.at = getelementptr {t}, ptr %gbuf, i64 %sj")
    emit(f"  %sg = load {t}, ptr %sg.at")
    emit(f"  %sj.g = mul i64 %sj, {out_step}")
    emit(f"  %so.at = getelementptr {t}, ptr %out, i64 %sj.g")
    emit(f"  store {t} %sg, ptr %so.at")
    emit("  %sj.next = add i64 %sj, 1")
    emit(f"  %sj.more = icmp ult i64 %sj.next, {k}")
    emit("  br i1 %sj.more, label %store, label %done")
    emit("done:")
    emit("  ret void")
    emit("}")
    suffix = _suffix(t)
    emit(f"declare {t} @llvm.fmuladd.{suffix}({t}, {t}, {t})")
    emit(f"declare {vt} @llvm.fmuladd.v{w}{suffix}({vt}, {vt}, {vt})")


def _dot_rows(emit: Any, plan: StreamPlan) -> None:
    """Blocks ``dot.head`` (entered from ``block``) that compute the dot products
    of the block's rows one after the other, then go to ``epilogue``.

    A row's full vectors go alternately to two vectors of partial sums (two
    chains of multiply-adds), which are then added; the remaining elements are
    added one by one into lane 0 of that sum, and the lanes summed in halves
    (lane ``i`` with lane ``i + lanes/2``, and so on). (Rows taken four at a
    time, interleaved, ran as fast from cache and twice as slow from memory.)
    """
    t = _TYPES[plan.dtype]
    w = plan.lanes
    vt = f"<{w} x {t}>"
    full = plan.columns // w
    fma = f"@llvm.fmuladd.v{w}{_suffix(t)}"
    align = _size(t)
    emit("dot.head:")
    emit("  %i = phi i64 [%b0, %block], [%i.next, %dot.tail]")
    emit("  %i.more = icmp slt i64 %i, %b1")
    emit("  br i1 %i.more, label %dot.row, label %epilogue")
    emit("dot.row:")
    emit(f"  %i.x = mul i64 %i, {plan.x_row}")
    emit(f"  %xi = getelementptr {t}, ptr %x, i64 %i.x")
    acc0 = acc1 = "zeroinitializer"
    if full >= 2:
        emit("  br label %dot.loop")
        emit("dot.loop:")
        emit("  %j = phi i64 [0, %dot.row], [%j.next, %dot.loop]")
        for a in (0, 1):
            emit(
                f"  %acc{a} = phi {vt} [zeroinitializer, %dot.row], "
                f"[%acc{a}.next, %dot.loop]"
            )
        emit(f"  %j0 = mul i64 %j, {2 * w}")
        emit(f"  %j1 = add i64 %j0, {w}")
        for a in (0, 1):
            emit(f"  %xv{a}.at = getelementptr {t}, ptr %xi, i64 %j{a}")
            emit(f"  %xv{a} = load {vt}, ptr %xv{a}.at, align {align}")
            emit(f"  %vv{a}.at = getelementptr {t}, ptr %vbuf, i64 %j{a}")
            emit(f"  %vv{a} = load {vt}, ptr %vv{a}.at, align {align}")
            emit(
                f"  %acc{a}.next = call {vt} {fma}({vt} %xv{a}, {vt} %vv{a}, "
                f"{vt} %acc{a})"
            )
        emit("  %j.next = add i64 %j, 1")
        emit(f"  %j.more = icmp ult i64 %j.next, {full // 2}")
        emit("  br i1 %j.more, label %dot.loop, label %dot.rest")
        emit("dot.rest:")
        acc0, acc1 = "%acc0.next", "%acc1.next"
    if full % 2:
        j = (full - 1) * w
        emit(f"  %xo.at = getelementptr {t}, ptr %xi, i64 {j}")
        emit(f"  %xo = load {vt}, ptr %xo.at, align {align}")
        emit(f"  %vo.at = getelementptr {t}, ptr %vbuf, i64 {j}")
        emit(f"  %vo = load {vt}, ptr %vo.at, align {align}")
        emit(f"  %acc0.odd = call {vt} {fma}({vt} %xo, {vt} %vo, {vt} {acc0})")
        acc0 = "%acc0.odd"
    emit(f"  %acc = fadd {vt} {acc0}, {acc1}")
    lane0 = f"%acc.lane0.{full * w}"
    emit(f"  {lane0} = extractelement {vt} %acc, i64 0")
    for j in range(full * w, plan.columns):
        emit(f"  %tx{j}.at = getelementptr {t}, ptr %xi, i64 {j}")
        emit(f"  %tx{j} = load {t}, ptr %tx{j}.at")
        emit(f"  %tv{j}.at = getelementptr {t}, ptr %vbuf, i64 {j}")
        emit(f"  %tv{j} = load {t}, ptr %tv{j}.at")
        emit(
            f"  %acc.lane0.{j + 1} = call {t} @llvm.fmuladd.{_suffix(t)}"
            f"({t} %tx{j}, {t} %tv{j}, {t} {lane0})"
        )
        lane0 = f"%acc.lane0.{j + 1}"
    emit(f"  %acc.all = insertelement {vt} %acc, {t} {lane0}, i64 0")
    total, width = "%acc.all", w
    while width > 1:
        half = width // 2
        part = f"<{width} x {t}>"
        shuffle = f"shufflevector {part} {total}, {part} poison"
        low = ", ".join(f"i32 {n}" for n in range(half))
        high = ", ".join(f"i32 {n}" for n in range(half, width))
        emit(f"  %lo{half} = {shuffle}, <{half} x i32> <{low}>")
        emit(f"  %hi{half} = {shuffle}, <{half} x i32> <{high}>")
        emit(f"  %sum{half} = fadd <{half} x {t}> %lo{half}, %hi{half}")
        total, width = f"%sum{half}", half
    emit("  br label %dot.tail")
    emit("dot.tail:")
    emit(f"  %dot = extractelement <1 x {t}> {total}, i64 0")
    emit(f"  %i.s = mul i64 %i, {plan.s_step}")
    emit(f"  %si.at = getelementptr {t}, ptr %s, i64 %i.s")
    emit(f"  store {t} %dot, ptr %si.at")
    emit("  %i.next = add i64 %i, 1")
    emit("  br label %dot.head")


def _suffix(t: str) -> str:
    return "f32" if t == "float" else "f64"


def _size(t: str) -> int:
    return 4 if t == "float" else 8


@functools.cache
def stream_entry(plan: StreamPlan) -> tuple[Any, int]:
    """(JIT engine, address of ``ember_stream``) for ``plan``, compiled once."""
    module = target.optimize(stream_ir(plan), "ember_stream")
    engine, addresses = target.load_object(target.emit_object(module), ["ember_stream"])
    return engine, addresses["ember_stream"]


class StreamedLaunch:
    """The forward product, pointwise kernels and gradient product of a streamed
    pass (see the module docstring) as one launch with the interface of a
    :class:`~ember.compiler.codegen.launch.PreparedLaunch`.

    ``forward`` and ``gradient`` are prepared BLAS launches
    (:class:`~ember.compiler.codegen.blas.GemmLaunch`), ``epilogues`` prepared
    kernel launches that run on one thread each (called on row ranges by
    whichever thread runs the part), and ``targets`` the pointer
    array entries of every address the launch takes, in the order its caller
    passes them.
    """

    sequenceable = True

    def __init__(
        self,
        plan: StreamPlan,
        forward: Any,
        epilogues: Sequence[Any],
        gradient: Any,
        targets: list[tuple[Any, int, int]],
    ) -> None:
        self.plan = plan
        self.launches = (forward, *epilogues, gradient)
        self._engine, self._entry = stream_entry(plan)
        self._call = _ENTRY(self._entry)
        args = (ctypes.c_int64 * (_EPILOGUES + 2 * len(epilogues)))()
        args[0] = ctypes.addressof(forward._args)
        args[1] = ctypes.addressof(gradient._args)
        #: The helper to wake before a call, for a pass in parts when this
        #: process may run two threads; None runs both parts on the caller.
        self.wakes: worker.Worker | None = None
        if plan.parts > 1:
            np_dtype = np.float32 if plan.dtype == "f32" else np.float64
            self._partial = np.zeros(plan.parts * plan.padded, np_dtype)
            args[_PARTIAL] = self._partial.ctypes.data
            args[_PARALLEL] = worker.parallel_address()
            if default_threads() > 1 and settings.get("concurrent_products"):
                self.wakes = worker.worker()
                args[_SLOT] = self.wakes.address
        for k, launch in enumerate(epilogues):
            record = launch.record()
            assert record is not None and record[4] == 0
            args[_EPILOGUES + 2 * k] = record[0]
            args[_EPILOGUES + 2 * k + 1] = record[1]
        self._args = args
        self._targets = targets

    @property
    def regions(self) -> int:
        return len(self._targets)

    @property
    def targets(self) -> list[tuple[Any, int, int]]:
        return list(self._targets)

    def fill(self, addresses: Sequence[int]) -> None:
        for (args, position, delta), address in zip(self._targets, addresses):
            args[position] = address + delta

    def record(self) -> tuple[int, ...]:
        """This launch's record of a LaunchSequence table: call the entry once."""
        return self._entry, ctypes.addressof(self._args), 0, 1, 0, 0, 0

    def __call__(self, addresses: Sequence[int]) -> None:
        self.fill(addresses)
        self.run()

    def run(self) -> None:
        if self.wakes is not None:
            self.wakes.wake()
        self._call(self._args, 0, 1)
