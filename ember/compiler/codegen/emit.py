"""Turn a :class:`~ember.compiler.kernel.LoopKernel` into an LLVM module.

The module exports one function per kernel, ``void @sym(ptr args, i64 start, i64
stop)``: ``args`` is an array of buffer pointers (inputs and outputs in the kernel's
buffer order, each pointing at the buffer's element 0, i.e. storage + offset), and
``[start, stop)`` is the range of the first outer loop axis this call covers, so
threads can run disjoint chunks. ``@sym.chunks(ptr args, ptr next, i64 chunks, i64
extent)`` runs the same loops over chunk after chunk of ``[0, extent)`` (chunk ``c``
is ``[c*extent/chunks, (c+1)*extent/chunks)``), claiming each chunk by an atomic
increment of the shared counter ``next``, so every thread that calls it takes work
until none is left and a thread that starts late finds less to do.

Kernels without outer axes that only reduce also get ``@sym.partial(ptr args, i64
start, i64 stop, ptr accs)``, which accumulates a chunk of the first inner axis into
8-byte slots, its claiming twin ``@sym.partial.chunks(ptr args, ptr next, i64 chunks,
i64 extent, ptr accs)``, which writes chunk ``c``'s results to slots ``c *
accumulators``, and ``@sym.finish(ptr args, ptr accs, i64 nparts)``, which combines
the partial results in chunk order and runs the stores.

Reductions over an axis outer in memory (column sums) run their loops interchanged,
a row of accumulators per tile of columns: see :mod:`ember.compiler.codegen.columns`.

The loop body lives in an internal function (not inlined, so each exported wrapper
shares one copy) whose pointer parameters are ``noalias``: the caller guarantees that
outputs overlap no other buffer, which lets the loop vectorizer run without runtime
alias checks.

Row cache: a costly value (one that calls a math function, divides or takes a square
root) that one inner sweep computes at every inner point and a later sweep of the
same outer point needs again (softmax's ``exp(x - max)``, used by the sum and by the
normalizing store) is written to a row slot by the first sweep and read back by the
later ones. The slot is the row of the output that the last sweep reading the value
stores to, when that output has the value's dtype (the store reads each point
before overwriting it), or else a stack buffer of one row, when the row fits in
``ROW_CACHE_BYTES``. The values are the same bits either way; only the second
evaluation is saved.
"""

from __future__ import annotations

import hashlib
from collections import ChainMap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llvmlite import ir

from ember.compiler.codegen import columns, mathlib
from ember.compiler.codegen.mathlib import F32, F64, I64
from ember.compiler.kernel import (
    AccRef,
    Const,
    Expr,
    Load,
    LoopKernel,
    Op,
    Reduce,
    Store,
    coalesce,
    restride,
)
from ember.errors import LoweringError
from ember.ir import layout
from ember.ir.dtypes import DType, bool_, float32, float64, int32, int64

#: Bumped whenever the generated code changes meaning; part of every cache key.
CODEGEN_VERSION = 2

I1, I8, I32 = ir.IntType(1), ir.IntType(8), ir.IntType(32)
PTR = ir.PointerType()
_REGISTER = {float32: F32, float64: F64, int32: I32, int64: I64, bool_: I1}
_MEMORY = {**_REGISTER, bool_: I8}
#: Fast-math flags of accumulating adds: reassociation lets LLVM keep one partial sum
#: per vector lane (the documented summation order), nothing else is relaxed.
_REDUCE_FLAGS = ("reassoc",)
#: Fast-math flags of max and min reductions (see ``_combine``).
_MINMAX_FLAGS = ("nsz",)
_FCMP = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
#: Stack bytes a kernel may use to keep costly values of one row between sweeps
#: (within L1 next to the rows it reads).
ROW_CACHE_BYTES = 32 * 1024
#: Vector lanes of float32 sums on AVX-512 hosts (see ``_sum_lanes``).
SUM_F32_LANES = 16
#: Keep a row value in the output row that stores it last (``_row_slot``), at any
#: row length: row softmax measured 0.49-0.58 ns per element that way against
#: 0.69-0.77 recomputing exp, for rows of 4 KiB to 4 MiB.
ROW_CACHE_IN_OUTPUTS = True
#: Ops whose value is worth keeping rather than computing twice.
_COSTLY_OPS = frozenset(
    ["exp", "log", "tanh", "sigmoid", "erf", "pow", "div", "sqrt", "rsqrt"]
)


@dataclass(frozen=True)
class EmittedKernel:
    """An LLVM module for one kernel and what the launcher needs to call it."""

    kernel: LoopKernel  # as given
    loops: LoopKernel  # coalesced, with at least one outer axis: what the code runs
    symbol: str
    llvm_ir: str
    partial_extent: int  # > 0 when @symbol.partial/.finish exist
    accumulators: int

    @property
    def split_extent(self) -> int:
        """The extent of the outer axis ``[start, stop)`` ranges over."""
        return self.loops.outer[0]


@dataclass(frozen=True)
class _RowSlot:
    """Where a row-cached value lives: filled by stage ``writer``, read by later
    stages; either in the row of output ``output`` or in the stack buffer
    ``stack`` (``stack_bytes`` of the row cache budget)."""

    writer: int
    output: str | None = None
    stack: ir.Value | None = None
    stack_bytes: int = 0


def kernel_symbol(kernel: LoopKernel) -> str:
    """A symbol name that depends only on the kernel's text (stable across runs)."""
    digest = hashlib.sha256(
        f"{CODEGEN_VERSION}\n{kernel.format()}".encode()
    ).hexdigest()
    return f"ember_{digest[:20]}"


def emit_kernel(kernel: LoopKernel, triple: str = "") -> EmittedKernel:
    """Build the LLVM IR module text of ``kernel`` (not yet optimized)."""
    symbol = kernel_symbol(kernel)
    loops = coalesce(kernel)
    partial = _partial_eligible(loops)
    if not loops.outer:
        loops = restride(loops, (1,), loops.inner, lambda s: (0, *s))
    module = ir.Module(name=kernel.name)
    module.triple = triple
    emitter = _FunctionEmitter(module, loops)
    emitter.main(symbol)
    if partial:
        unlifted = coalesce(kernel)
        _FunctionEmitter(module, unlifted).partial(symbol)
        _FunctionEmitter(module, unlifted).finish(symbol)
    accs = sum(isinstance(s, Reduce) for s in loops.stages)
    extent = coalesce(kernel).inner[0] if partial else 0
    return EmittedKernel(kernel, loops, symbol, str(module), extent, accs)


def _partial_eligible(loops: LoopKernel) -> bool:
    """Reductions without outer axes whose accumulators are independent of each other."""
    if loops.outer or not loops.inner:
        return False
    seen_store = False
    for stage in loops.stages:
        if isinstance(stage, Store):
            seen_store = True
            if stage.inner:
                return False
        elif seen_store or any(isinstance(n, AccRef) for n in stage.value.walk()):
            return False
    return True


class _FunctionEmitter:
    """Emits one exported function (and its noalias body) for a kernel."""

    def __init__(self, module: ir.Module, kernel: LoopKernel) -> None:
        self.module = module
        self.kernel = kernel
        self.b: ir.IRBuilder
        self.fn: ir.Function
        self.pointers: dict[str, ir.Value] = {}
        self.row_cache: dict[Expr, _RowSlot] = {}
        self.stage_index = -1
        self.inner_index: ir.Value | None = None
        self.row_base: ir.Value | None = None  # dense index of the row's first point

    # Function scaffolding ------------------------------------------------------------

    def _body(self, name: str, extra: Sequence[ir.Type]) -> list[ir.Value]:
        """Start the loop body function; returns its extra arguments."""
        n = len(self.kernel.buffers)
        fnty = ir.FunctionType(ir.VoidType(), [PTR] * n + list(extra))
        self.fn = ir.Function(self.module, fnty, name=f"{name}.body")
        self.fn.linkage = "internal"
        # One copy of the loops serves both exported wrappers (compile time).
        self.fn.attributes.add("noinline")
        self.fn.attributes.add("nounwind")
        for arg, buf in zip(self.fn.args, self.kernel.buffers):
            arg.name = buf.name
            arg.add_attribute("noalias")
            self.pointers[buf.name] = arg
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        return list(self.fn.args[n:])

    def _export(self, name: str, extra: Sequence[ir.Type]) -> None:
        """The exported wrapper: unpack the pointer array and call the body."""
        body = self.fn
        self.b.ret_void()
        fn = ir.Function(
            self.module, ir.FunctionType(ir.VoidType(), [PTR, *extra]), name
        )
        fn.attributes.add("nounwind")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        b.call(body, self._unpack(b, fn.args[0]) + list(fn.args[1:]))
        b.ret_void()

    def _export_chunks(self, name: str, accumulators: int = 0) -> None:
        """The claiming wrapper of the finished body: ``void name(ptr args, ptr next,
        i64 chunks, i64 extent[, ptr accs])`` (see the module docstring)."""
        body = self.fn
        slots = [PTR] if accumulators else []
        fnty = ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I64, *slots])
        fn = ir.Function(self.module, fnty, name)
        fn.attributes.add("nounwind")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        pointers = self._unpack(b, fn.args[0])
        counter, chunks, extent = fn.args[1:4]
        claim, work, done = (
            fn.append_basic_block(n) for n in ("claim", "work", "done")
        )
        b.branch(claim)
        b.position_at_end(claim)
        chunk = b.atomic_rmw("add", counter, _i64(1), "monotonic")
        b.cbranch(b.icmp_signed("<", chunk, chunks), work, done)
        b.position_at_end(work)
        lo = b.sdiv(b.mul(chunk, extent), chunks)
        hi = b.sdiv(b.mul(b.add(chunk, _i64(1)), extent), chunks)
        extra = []
        if accumulators:
            first = b.mul(chunk, _i64(accumulators))
            extra = [b.gep(fn.args[4], [first], inbounds=True, source_etype=I64)]
        b.call(body, [*pointers, lo, hi, *extra])
        b.branch(claim)
        b.position_at_end(done)
        b.ret_void()

    def _unpack(self, b: ir.IRBuilder, array: ir.Value) -> list[ir.Value]:
        """Load each buffer's pointer from the argument array."""
        return [
            b.load(
                b.gep(array, [ir.Constant(I64, k)], inbounds=True, source_etype=PTR),
                typ=PTR,
                name=buf.name,
            )
            for k, buf in enumerate(self.kernel.buffers)
        ]

    def alloca(self, ty: ir.Type) -> ir.Value:
        with self.b.goto_entry_block():
            return self.b.alloca(ty)

    def loop(
        self,
        lo: ir.Value,
        hi: ir.Value,
        body: Callable[[ir.Value], None],
        lanes: int = 0,
    ) -> None:
        """``for i in range(lo, hi): body(i)`` as a counted loop; ``lanes`` > 0 asks
        the loop vectorizer for that many lanes."""
        counter = self.alloca(I64)
        self.b.store(lo, counter)
        head = self.fn.append_basic_block("loop")
        inside = self.fn.append_basic_block("body")
        done = self.fn.append_basic_block("done")
        self.b.branch(head)
        self.b.position_at_end(head)
        i = self.b.load(counter)
        self.b.cbranch(self.b.icmp_signed("<", i, hi), inside, done)
        self.b.position_at_end(inside)
        body(i)
        self.b.store(self.b.add(i, ir.Constant(I64, 1), flags=["nsw"]), counter)
        latch = self.b.branch(head)
        if lanes:
            latch.set_metadata("llvm.loop", self._vector_width(lanes))
        self.b.position_at_end(done)

    def _vector_width(self, lanes: int) -> ir.MDValue:
        """Loop metadata asking for ``lanes`` vector lanes. A loop's metadata node
        must list itself first, which llvmlite cannot build, so the node is created
        with a placeholder and then pointed at itself (each loop gets its own)."""
        module = self.module
        width = module.add_metadata(
            [
                ir.MetaDataString(module, "llvm.loop.vectorize.width"),
                ir.Constant(I32, lanes),
            ]
        )
        placeholder = ir.MetaDataString(module, f"ember.loop.{len(module.metadata)}")
        loop_id = module.add_metadata([placeholder, width])
        loop_id.operands = (loop_id, width)
        return loop_id

    def nest(
        self,
        ranges: Sequence[tuple[ir.Value, ir.Value]],
        body: Callable[[list[ir.Value]], None],
        lanes: int = 0,
    ) -> None:
        """Nested loops over ``ranges``, outermost first; ``body`` gets the indices;
        ``lanes`` is passed to the innermost loop (see :meth:`loop`)."""

        def level(k: int, indices: list[ir.Value]) -> None:
            if k == len(ranges):
                body(indices)
                return
            self.loop(
                *ranges[k],
                lambda i: level(k + 1, [*indices, i]),
                lanes if k == len(ranges) - 1 else 0,
            )

        level(0, [])

    # The three exported functions ---------------------------------------------------

    def main(self, symbol: str) -> None:
        start, stop = self._body(symbol, [I64, I64])
        outer = self.kernel.outer
        ranges = [(start, stop)] + [(_i64(0), _i64(n)) for n in outer[1:]]
        plan = columns.column_plan(self.kernel)
        if plan is not None:
            columns.emit_columns(self, plan, ranges)
        else:
            self._plan_row_cache()
            self.nest(ranges, lambda idx: self._outer_point(idx, ChainMap()))
        self._export(symbol, [I64, I64])
        self._export_chunks(f"{symbol}.chunks")

    def partial(self, symbol: str) -> None:
        start, stop, slots = self._body(f"{symbol}.partial", [I64, I64, PTR])
        reduces = [s for s in self.kernel.stages if isinstance(s, Reduce)]
        first = (start, stop)
        for k, stage in enumerate(reduces):
            value = self._reduce(stage, [], ChainMap(), first, finish=False)
            self._store_slot(slots, k, value)
        self._export(f"{symbol}.partial", [I64, I64, PTR])
        self._export_chunks(f"{symbol}.partial.chunks", len(reduces))

    def finish(self, symbol: str) -> None:
        slots, nparts = self._body(f"{symbol}.finish", [PTR, I64])
        env: ChainMap = ChainMap()
        reduces = [s for s in self.kernel.stages if isinstance(s, Reduce)]
        for k, stage in enumerate(reduces):
            acc = self.alloca(self._acc_type(stage))
            self.b.store(self._acc_init(stage), acc)

            def combine(
                part: ir.Value, k: int = k, stage: Reduce = stage, acc: ir.Value = acc
            ) -> None:
                index = self.b.add(self.b.mul(part, _i64(len(reduces))), _i64(k))
                value = self._load_slot(slots, index, self._acc_type(stage))
                self.b.store(self._combine(stage, self.b.load(acc), value), acc)

            self.loop(_i64(0), nparts, combine)
            env[AccRef(stage.name, stage.dtype)] = self._finalize(
                stage, self.b.load(acc)
            )
        for item in self.kernel.stages:
            if isinstance(item, Store):
                self._store(item.buffer, _i64(0), self.value(item.value, [], env))
        self._export(f"{symbol}.finish", [PTR, I64])

    # Stages --------------------------------------------------------------------------

    def _outer_point(self, idx: list[ir.Value], env: ChainMap) -> None:
        kernel = self.kernel
        dense = layout.contiguous_strides(kernel.outer)
        linear = _i64(0)
        for i, stride in zip(idx, dense):
            linear = self.b.add(linear, self.b.mul(i, _i64(stride), flags=["nsw"]))
        inner_ranges = [(_i64(0), _i64(n)) for n in kernel.inner]
        base = self.b.mul(linear, _i64(layout.numel(kernel.inner)), flags=["nsw"])
        self.row_base = base
        for index, stage in enumerate(kernel.stages):
            self.stage_index = index
            if isinstance(stage, Reduce):
                env[AccRef(stage.name, stage.dtype)] = self._reduce(
                    stage, idx, env, None, finish=True
                )
            elif not stage.inner:
                self._store(stage.buffer, linear, self.value(stage.value, idx, env))
            else:

                def store_row(inner: list[ir.Value], st: Store = stage) -> None:
                    self._inner_store(st, base, idx, inner, env)

                self.nest(inner_ranges, store_row)

    def _inner_store(
        self,
        stage: Store,
        base: ir.Value,
        outer: list[ir.Value],
        inner: list[ir.Value],
        env: ChainMap,
    ) -> None:
        self.inner_index = self._inner_linear(inner)
        if stage.strides is None:
            index = self.b.add(base, self.inner_index)
        else:
            index = self.affine(outer + inner, stage.strides)
        self._store(
            stage.buffer, index, self.value(stage.value, outer + inner, env.new_child())
        )
        self.inner_index = None

    def _inner_linear(self, inner: list[ir.Value]) -> ir.Value:
        """The dense row-major position of an inner point within its row."""
        index = _i64(0)
        for i, stride in zip(inner, layout.contiguous_strides(self.kernel.inner)):
            index = self.b.add(index, self.b.mul(i, _i64(stride), flags=["nsw"]))
        return index

    # Row cache -----------------------------------------------------------------------

    def _plan_row_cache(self) -> None:
        """Choose the values to keep per row (see the module docstring).

        Stages are scanned in order; a costly, row-varying expression met again in a
        later inner stage gets a row slot filled by the stage that met it first.
        Its operands are not scanned again: the later stage reads the slot instead.
        """
        budget = ROW_CACHE_BYTES
        first_seen: dict[Expr, int] = {}
        claimed: set[str] = set()
        for index, stage in enumerate(self.kernel.stages):
            if isinstance(stage, Store) and not stage.inner:
                continue
            stack, visited = [stage.value], set()
            while stack:
                node = stack.pop()
                if node in visited or node in self.row_cache:
                    continue
                visited.add(node)
                writer = first_seen.setdefault(node, index)
                slot = None
                if writer < index and self._worth_caching(node):
                    slot = self._row_slot(node, writer, claimed, budget)
                if slot is None:
                    stack.extend(node.children())
                    continue
                budget -= slot.stack_bytes
                self.row_cache[node] = slot

    def _row_slot(
        self, node: Expr, writer: int, claimed: set[str], budget: int
    ) -> _RowSlot | None:
        """Where to keep ``node`` for one row: the output row of the last stage that
        reads it, when that stage stores to an output of ``node``'s dtype, or else a
        stack buffer if the budget allows; None if neither."""
        stages = self.kernel.stages
        last = max(k for k, s in enumerate(stages) if node in set(s.value.walk()))
        store = stages[last]
        points = layout.numel(self.kernel.inner)
        size = points * node.dtype.itemsize
        if (
            ROW_CACHE_IN_OUTPUTS
            and isinstance(store, Store)
            and store.inner
            and store.strides is None  # the slot is the row in domain order
            and store.buffer not in claimed
            and self.kernel.buffer(store.buffer).dtype is node.dtype
        ):
            # The store overwrites each point after reading it; nothing reads the
            # value later, so the output row can hold it in the meantime.
            claimed.add(store.buffer)
            return _RowSlot(writer, output=store.buffer)
        if size > budget:
            return None
        with self.b.goto_entry_block():
            buffer = self.b.alloca(_REGISTER[node.dtype], size=_i64(points))
        buffer.align = 64
        return _RowSlot(writer, stack=buffer, stack_bytes=size)

    def _worth_caching(self, node: Expr) -> bool:
        """A float or integer op that calls something costly and varies along a row."""
        if not isinstance(node, Op) or node.dtype is bool_:
            return False
        n_outer = len(self.kernel.outer)
        costly = varies = False
        for part in node.walk():
            costly |= isinstance(part, Op) and part.name in _COSTLY_OPS
            varies |= isinstance(part, Load) and any(part.strides[n_outer:])
        return costly and varies

    def _reduce(
        self,
        stage: Reduce,
        outer: list[ir.Value],
        env: ChainMap,
        first: tuple[ir.Value, ir.Value] | None,
        finish: bool,
    ) -> ir.Value:
        """Accumulate ``stage`` over the inner axes (the first one over ``first``)."""
        acc = self.alloca(self._acc_type(stage))
        self.b.store(self._acc_init(stage), acc)
        ranges = [(_i64(0), _i64(n)) for n in self.kernel.inner]
        if first is not None:
            ranges[0] = first

        def step(inner: list[ir.Value]) -> None:
            if self.row_cache:
                self.inner_index = self._inner_linear(inner)
            value = self.value(stage.value, outer + inner, env.new_child())
            self.inner_index = None
            self.b.store(
                self._combine(stage, self.b.load(acc), self._widen(stage, value)), acc
            )

        self.nest(ranges, step, self._sum_lanes(stage))
        result = self.b.load(acc)
        return self._finalize(stage, result) if finish else result

    def _sum_lanes(self, stage: Reduce) -> int:
        """Vector lanes to ask for a reduction's innermost loop (0: LLVM's choice).

        LLVM gives float32 sums widened to float64 8 lanes (one 512-bit vector of
        doubles) on AVX-512; 16 lanes (two such vectors) measured 9-12% faster for
        row sums of exp (softmax) on Zen 4 and the same for sums bound by memory.
        """
        wide = stage.kind == "sum" and stage.value.dtype is float32
        return SUM_F32_LANES if wide and mathlib.has_avx512() else 0

    def _acc_type(self, stage: Reduce) -> ir.Type:
        if stage.kind == "sum":
            return F64 if stage.value.dtype.is_floating_point else I64
        return _REGISTER[stage.value.dtype]

    def _acc_init(self, stage: Reduce) -> ir.Constant:
        ty = self._acc_type(stage)
        dtype = stage.value.dtype
        if stage.kind == "sum":
            return ir.Constant(ty, 0.0 if dtype.is_floating_point else 0)
        low = stage.kind == "max"
        if dtype.is_floating_point:
            return ir.Constant(ty, float("-inf") if low else float("inf"))
        if dtype is bool_:
            return ir.Constant(ty, 0 if low else 1)
        bits = ty.width - 1
        return ir.Constant(ty, -(1 << bits) if low else (1 << bits) - 1)

    def _widen(self, stage: Reduce, value: ir.Value) -> ir.Value:
        """The value in the accumulator's type."""
        dtype = stage.value.dtype
        if stage.kind != "sum" or dtype in (float64, int64):
            return value
        if dtype is float32:
            return self.b.fpext(value, F64)
        return self.b.zext(value, I64) if dtype is bool_ else self.b.sext(value, I64)

    def _combine(
        self, stage: Reduce, acc: ir.Value, value: ir.Value, ordered: bool = False
    ) -> ir.Value:
        """``acc`` combined with ``value``; float sums may be reassociated (one
        partial sum per vector lane) unless ``ordered``."""
        dtype = stage.value.dtype
        if stage.kind == "sum":
            if dtype.is_floating_point:
                return self.b.fadd(acc, value, flags=() if ordered else _REDUCE_FLAGS)
            return self.b.add(acc, value)
        name = "maximum" if stage.kind == "max" else "minimum"
        if dtype.is_floating_point:
            # NaN propagates; the sign of a zero result is left open (nsz): numpy's
            # own max and min pick -0 or +0 by where the zeros sit. Not ordering
            # -0 below +0 halves the instructions per vector on x86.
            fn = mathlib.declare(self.module, f"llvm.{name}", acc.type, 2)
            return self.b.call(fn, [acc, value], fastmath=_MINMAX_FLAGS)
        return self._binary(name, dtype, acc, value)

    def _finalize(self, stage: Reduce, acc: ir.Value) -> ir.Value:
        if stage.kind == "sum" and stage.value.dtype is float32:
            return self.b.fptrunc(acc, F32)
        return acc

    def _store_slot(self, slots: ir.Value, k: int, value: ir.Value) -> None:
        ptr = self.b.gep(slots, [_i64(k)], inbounds=True, source_etype=I64)
        if value.type == I1:
            value = self.b.zext(value, I8)
        self.b.store(value, ptr)

    def _load_slot(self, slots: ir.Value, index: ir.Value, ty: ir.Type) -> ir.Value:
        ptr = self.b.gep(slots, [index], inbounds=True, source_etype=I64)
        if ty == I1:
            return self.b.icmp_unsigned(
                "!=", self.b.load(ptr, typ=I8), ir.Constant(I8, 0)
            )
        return self.b.load(ptr, typ=ty)

    def _store(self, buffer: str, index: ir.Value, value: ir.Value) -> None:
        dtype = self.kernel.buffer(buffer).dtype
        ptr = self.b.gep(
            self.pointers[buffer], [index], inbounds=True, source_etype=_MEMORY[dtype]
        )
        if dtype is bool_:
            value = self.b.zext(value, I8)
        self.b.store(value, ptr, align=dtype.itemsize)

    # Expressions ---------------------------------------------------------------------

    def value(self, expr: Expr, idx: list[ir.Value], memo: ChainMap) -> ir.Value:
        """The LLVM value of ``expr`` at loop indices ``idx`` (memoized per scope)."""
        found = memo.get(expr)
        if found is not None:
            return found
        row = self.row_cache.get(expr) if self.inner_index is not None else None
        slot = None
        if row is not None:
            slot = self._row_pointer(row, expr.dtype)
        if row is not None and self.stage_index > row.writer:
            result = self.b.load(slot, typ=_REGISTER[expr.dtype])
        elif isinstance(expr, Load):
            result = self._load(expr, idx)
        elif isinstance(expr, Const):
            result = _constant(expr)
        elif isinstance(expr, AccRef):
            raise LoweringError(f"accumulator {expr.name} read before it is computed")
        else:
            assert isinstance(expr, Op)
            args = [self.value(a, idx, memo) for a in expr.args]
            result = self._op(expr, args)
        if row is not None and self.stage_index == row.writer:
            self.b.store(result, slot)
        memo[expr] = result
        return result

    def _row_pointer(self, row: _RowSlot, dtype: DType) -> ir.Value:
        """The address of the current inner point's element of a row slot."""
        assert self.inner_index is not None and self.row_base is not None
        if row.output is not None:
            index = self.b.add(self.row_base, self.inner_index, flags=["nsw"])
            return self.b.gep(
                self.pointers[row.output],
                [index],
                inbounds=True,
                source_etype=_MEMORY[dtype],
            )
        return self.b.gep(
            row.stack, [self.inner_index], inbounds=True, source_etype=_REGISTER[dtype]
        )

    def affine(self, idx: Sequence[ir.Value], strides: Sequence[int]) -> ir.Value:
        """``sum(idx[k] * strides[k])``: an element index at loop indices ``idx``."""
        index = _i64(0)
        for i, stride in zip(idx, strides):
            if stride:
                index = self.b.add(
                    index, self.b.mul(i, _i64(stride), flags=["nsw"]), flags=["nsw"]
                )
        return index

    def _load(self, expr: Load, idx: list[ir.Value]) -> ir.Value:
        index = self.affine(idx, expr.strides)
        ptr = self.b.gep(
            self.pointers[expr.buffer],
            [index],
            inbounds=True,
            source_etype=_MEMORY[expr.dtype],
        )
        loaded = self.b.load(ptr, typ=_MEMORY[expr.dtype], align=expr.dtype.itemsize)
        if expr.dtype is bool_:
            return self.b.icmp_unsigned("!=", loaded, ir.Constant(I8, 0))
        return loaded

    def _op(self, expr: Op, args: list[ir.Value]) -> ir.Value:
        name = expr.name
        operand = expr.args[0].dtype if expr.args else expr.dtype
        if name == "cast":
            return self._cast(args[0], operand, expr.dtype)
        if name == "where":
            return self.b.select(*args)
        if name in ("copy",):
            return args[0]
        if len(args) == 2:
            return self._binary(name, operand, *args)
        if name == "exp" and self._minus_own_max(expr.args[0]):
            fn = mathlib.math_function(self.module, "exp_nonpositive", args[0].type)
            return self.b.call(fn, args)
        return self._unary(name, operand, args[0])

    def _minus_own_max(self, expr: Expr) -> bool:
        """Is ``expr`` ``v - max(v)`` for a max reduction of this kernel over the same
        ``v`` (softmax's shift)? Then it is at most 0, or NaN."""
        if not (isinstance(expr, Op) and expr.name == "sub"):
            return False
        value, shift = expr.args
        return isinstance(shift, AccRef) and any(
            isinstance(s, Reduce)
            and s.name == shift.name
            and s.kind == "max"
            and s.value == value
            for s in self.kernel.stages
        )

    def _unary(self, name: str, dtype: DType, x: ir.Value) -> ir.Value:
        b = self.b
        if name == "logical_not":
            return b.not_(x)
        if dtype.is_floating_point:
            math = mathlib.MathBuilder(b, x.type)
            if name in mathlib.UNARY:
                return b.call(mathlib.math_function(self.module, name, x.type), [x])
            if name == "neg":
                return b.fneg(x)
            if name == "abs":
                return math.intrinsic("llvm.fabs", x)
            if name == "sqrt":
                return math.intrinsic("llvm.sqrt", x)
            if name == "rsqrt":
                return b.fdiv(math.c(1.0), math.intrinsic("llvm.sqrt", x))
            if name == "relu":
                zero = math.c(0.0)
                return b.select(b.fcmp_ordered("<", x, zero), zero, x)
        elif dtype is bool_ and name == "abs":
            return x
        elif name == "neg":
            return b.neg(x)
        elif name == "abs":
            return b.call(
                _int_intrinsic(self.module, "llvm.abs", x.type, extra=I1),
                [x, ir.Constant(I1, 0)],
            )
        elif name == "relu":
            return self._binary("maximum", dtype, x, ir.Constant(x.type, 0))
        raise LoweringError(f"{name} has no native lowering for {dtype.name}", op=name)

    def _binary(self, name: str, dtype: DType, x: ir.Value, y: ir.Value) -> ir.Value:
        b = self.b
        if name in _FCMP:
            if dtype.is_floating_point:
                cmp = b.fcmp_unordered if name == "ne" else b.fcmp_ordered
                return cmp(_FCMP[name], x, y)
            signed = b.icmp_unsigned if dtype is bool_ else b.icmp_signed
            return signed(_FCMP[name], x, y)
        if dtype is bool_:
            table = {
                "add": b.or_,
                "maximum": b.or_,
                "logical_or": b.or_,
                "mul": b.and_,
                "minimum": b.and_,
                "logical_and": b.and_,
            }
            if name in table:
                return table[name](x, y)
        elif dtype.is_floating_point:
            table = {"add": b.fadd, "sub": b.fsub, "mul": b.fmul, "div": b.fdiv}
            if name in table:
                return table[name](x, y)
            if name in ("maximum", "minimum"):
                return mathlib.MathBuilder(b, x.type).intrinsic(f"llvm.{name}", x, y)
            if name == "pow":
                return b.call(mathlib.math_function(self.module, "pow", x.type), [x, y])
        else:
            table = {"add": b.add, "sub": b.sub, "mul": b.mul}
            if name in table:
                return table[name](x, y)
            if name in ("maximum", "minimum"):
                intrinsic = "llvm.smax" if name == "maximum" else "llvm.smin"
                return b.call(_int_intrinsic(self.module, intrinsic, x.type), [x, y])
            if name == "pow":
                return self._int_pow(x, y)
        raise LoweringError(f"{name} has no native lowering for {dtype.name}", op=name)

    def _int_pow(self, base: ir.Value, exponent: ir.Value) -> ir.Value:
        """Integer power by squaring over every exponent bit (wraps like numpy).

        A negative exponent gives 0 unless the base is 1 or -1 (numpy raises instead;
        the registry's reference rejects it before a kernel is ever built for it).
        """
        b = self.b
        ty = base.type
        one = ir.Constant(ty, 1)
        result, square, e = one, base, exponent
        for _ in range(ty.width - 1):
            bit = b.trunc(e, I1)
            result = b.select(bit, b.mul(result, square), result)
            square = b.mul(square, square)
            e = b.lshr(e, one)
        negative = b.icmp_signed("<", exponent, ir.Constant(ty, 0))
        minus_one = ir.Constant(ty, -1)
        odd = b.trunc(exponent, I1)
        unit = b.select(
            b.icmp_signed("==", base, minus_one),
            b.select(odd, minus_one, one),
            b.select(b.icmp_signed("==", base, one), one, ir.Constant(ty, 0)),
        )
        return b.select(negative, unit, result)

    def _cast(self, x: ir.Value, src: DType, dst: DType) -> ir.Value:
        b = self.b
        ty = _REGISTER[dst]
        if src is dst:
            return x
        if dst is bool_:
            if src.is_floating_point:
                return b.fcmp_unordered("!=", x, ir.Constant(x.type, 0.0))
            return b.icmp_unsigned("!=", x, ir.Constant(x.type, 0))
        if src is bool_:
            return b.uitofp(x, ty) if dst.is_floating_point else b.zext(x, ty)
        if src.is_floating_point and dst.is_floating_point:
            return b.fpext(x, ty) if dst.itemsize > src.itemsize else b.fptrunc(x, ty)
        if src.is_floating_point:
            # Saturating conversion: out-of-range values and NaN never become poison.
            fn = _conversion(self.module, "llvm.fptosi.sat", ty, x.type)
            return b.call(fn, [x])
        if dst.is_floating_point:
            return b.sitofp(x, ty)
        return b.sext(x, ty) if dst.itemsize > src.itemsize else b.trunc(x, ty)


def _i64(value: int) -> ir.Constant:
    return ir.Constant(I64, value)


def _constant(expr: Const) -> ir.Constant:
    return ir.Constant(
        _REGISTER[expr.dtype],
        expr.value if expr.dtype is not bool_ else int(expr.value),
    )


def _int_intrinsic(
    module: ir.Module, name: str, ty: ir.IntType, extra: ir.Type | None = None
) -> ir.Function:
    full = f"{name}.i{ty.width}"
    found = module.globals.get(full)
    if found is not None:
        return found
    params = [ty, extra] if extra is not None else [ty, ty]
    return ir.Function(module, ir.FunctionType(ty, params), name=full)


def _conversion(module: ir.Module, name: str, to: ir.Type, src: ir.Type) -> ir.Function:
    src_name = {"float": "f32", "double": "f64"}[str(src)]
    full = f"{name}.i{to.width}.{src_name}"
    found = module.globals.get(full)
    if found is not None:
        return found
    return ir.Function(module, ir.FunctionType(to, [src]), name=full)
