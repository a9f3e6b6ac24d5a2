"""Compile kernels (through the cache) and call them safely from Python.

:func:`compile_kernel` returns a :class:`CompiledKernel`. Calling it checks every
argument against what the kernel was compiled for (dtype, shape, strides, storage
bounds, writability, and that outputs overlap nothing else) and raises
:class:`~ember.errors.SignatureError` before any native code runs. Native code only
ever sees pointers to memory that check vouched for.

Two calling conventions:

* ``kernel(*arrays)`` takes numpy arrays laid out exactly like the buffers (same
  shape, same strides in elements; an expanded input is a stride-0 view such as
  ``np.broadcast_to``). The buffer's offset is implied by the view.
* ``kernel.call_storage(*storages)`` takes flat 1-D storages, the way ember tensors
  hold their data; the kernel applies each buffer's offset and strides.

A caller that calls a kernel many times on memory it can vouch for (a
:class:`~ember.compiler.program.Program` and its planned buffers) prepares it once
with :meth:`CompiledKernel.prepare`: fixed storages are checked then, and memory
passed per call by address is described by a :class:`Region` that the launcher
proves large enough; :class:`LaunchSequence` runs several prepared launches with
one native call.

Large kernels split the range of their first outer loop into chunks that the calling
thread and the persistent workers of a thread pool claim one at a time inside native
code (ctypes releases the GIL during the call). A worker that has not started by the
time the caller has claimed every chunk is cancelled, so a busy machine costs at most
one chunk of waiting, never a thread's whole share. Reductions without outer loops
split their first reduced axis instead, into a number of chunks that depends only on
its extent, and combine the partial results in chunk order: the result is the same
for every thread count. Launches without an explicit ``threads`` pick one thread or
all of them from their own timings (:class:`ThreadChooser`), since a second thread
only helps when a core is free.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import functools
import logging
import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember.compiler import cache
from ember.compiler.codegen import emit, target, worker
from ember.compiler.kernel import Buffer, LoopKernel
from ember.errors import SignatureError
from ember.ir import layout
from ember.ir.dtypes import DType

logger = logging.getLogger("ember.compiler.codegen")

#: Kernels that touch fewer domain points than this run on the calling thread only.
#: Measured with ``benchmarks/bench_kernels.py --threshold``: the pointwise chain
#: (tanh and friends, about 0.4 ns a point) gains from two threads from 2**19 points
#: on, loses below 2**18 (docs/codegen.md has the table).
PARALLEL_THRESHOLD = 1 << 19
#: Chunks per thread of a parallel kernel, and the fewest domain points a chunk gets.
#: Short chunks even out a thread that starts late and shorten the wait for a thread
#: preempted inside its last chunk; each costs one atomic increment and one call.
CHUNKS_PER_THREAD = 32
CHUNK_POINTS_MIN = 1 << 14
#: Outer-less reductions split their first reduced axis into one chunk per this many
#: domain points, at most PARTIAL_CHUNKS_MAX chunks (which keeps the summation bound
#: of docs/codegen.md), whatever the thread count.
PARTIAL_CHUNK_POINTS = 1 << 16
PARTIAL_CHUNKS_MAX = 32

_MAIN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
_PARTIAL = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p
)
_FINISH = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_CHUNKS = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64
)
_PARTIAL_CHUNKS = ctypes.CFUNCTYPE(
    None,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_int64,
    ctypes.c_int64,
    ctypes.c_void_p,
)

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


@functools.cache
def default_threads() -> int:
    """How many threads large kernels use: the CPUs this process may run on (read
    once: the affinity call costs microseconds on every launch otherwise)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return max(1, os.cpu_count() or 1)


def _worker_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, default_threads() - 1),
                thread_name_prefix="ember-kernel",
            )
        return _pool


def compile_kernel(kernel: LoopKernel) -> CompiledKernel:
    """Compile ``kernel`` for the host CPU, reusing the memory and disk caches.

    >>> from ember.compiler.kernel import Buffer, Store, load, op, float32
    >>> x = Buffer("x", float32, (4,), (1,))
    >>> y = Buffer.dense("y", float32, (4,))
    >>> k = compile_kernel(LoopKernel("double", (x, y), (4,), (),
    ...                               (Store("y", op("add", load(x), load(x))),)))
    >>> out = np.empty(4, np.float32)
    >>> k(np.arange(4, dtype=np.float32), out)
    >>> out.tolist()
    [0.0, 2.0, 4.0, 6.0]
    """
    emitted = emit.emit_kernel(kernel)
    key = cache.cache_key(
        emitted.llvm_ir, target.toolchain_description(), emit.CODEGEN_VERSION
    )
    found = cache.memory_get(key)
    if found is not None:
        return found if found.kernel == kernel else found.rebind(kernel)
    code = cache.disk_get(key)
    origin = "disk"
    module = None
    if code is None:
        origin = "compiled"
        module = target.optimize(emitted.llvm_ir, kernel.name)
        code = target.emit_object(module)
        cache.disk_put(key, code)
    logger.debug("kernel %s: %s (key %s)", kernel.name, origin, key[:16])
    compiled = CompiledKernel(emitted, key, code, origin, module)
    return cache.memory_put(key, compiled)


class CompiledKernel:
    """A kernel in native code, callable on numpy arrays; see the module docstring."""

    def __init__(
        self,
        emitted: emit.EmittedKernel,
        key: str,
        code: bytes,
        origin: str,
        module: Any = None,
    ) -> None:
        self.emitted = emitted
        self.kernel = emitted.kernel
        self.key = key
        self.origin = origin
        self._module = module
        sym = emitted.symbol
        symbols = [sym, f"{sym}.chunks"]
        if emitted.partial_extent:
            symbols += [f"{sym}.partial", f"{sym}.partial.chunks", f"{sym}.finish"]
        self._engine, addresses = target.load_object(code, symbols)
        self._main = _MAIN(addresses[sym])
        self._chunks = _CHUNKS(addresses[f"{sym}.chunks"])
        self._partial = self._partial_chunks = self._finish = None
        if emitted.partial_extent:
            self._partial = _PARTIAL(addresses[f"{sym}.partial"])
            self._partial_chunks = _PARTIAL_CHUNKS(addresses[f"{sym}.partial.chunks"])
            self._finish = _FINISH(addresses[f"{sym}.finish"])
        self._checks = [_BufferCheck(b) for b in self.kernel.buffers]
        self._runs = layout.numel(emitted.loops.outer) > 0
        self._points = layout.numel(emitted.loops.domain)
        self._chooser = ThreadChooser()

    def rebind(self, kernel: LoopKernel) -> CompiledKernel:
        """This machine code under another kernel with the same code (e.g. a new name)."""
        twin = object.__new__(CompiledKernel)
        twin.__dict__.update(self.__dict__)
        twin.kernel = kernel
        twin._checks = [_BufferCheck(b) for b in kernel.buffers]
        return twin

    # Calling --------------------------------------------------------------------------

    def __call__(self, *arrays: np.ndarray, threads: int | None = None) -> None:
        """Run on arrays laid out exactly like the kernel's buffers (outputs included)."""
        pointers = [c.check_view(a) for c, a in zip(self._checks, self._arity(arrays))]
        self._check_overlap(arrays)
        self._launch(pointers, threads)

    def call_storage(self, *storages: np.ndarray, threads: int | None = None) -> None:
        """Run on flat storages; each buffer's offset and strides address into its own."""
        pointers = [
            c.check_storage(s) for c, s in zip(self._checks, self._arity(storages))
        ]
        self._check_overlap(storages, storage=True)
        self._launch(pointers, threads)

    def _arity(self, arrays: Sequence[Any]) -> Sequence[Any]:
        if len(arrays) != len(self._checks):
            names = [c.buffer.name for c in self._checks]
            raise SignatureError(
                f"kernel {self.kernel.name} takes {len(names)} arrays {names}, "
                f"got {len(arrays)}",
                expected=len(names),
                actual=len(arrays),
            )
        return arrays

    def _check_overlap(
        self, arrays: Sequence[np.ndarray], storage: bool = False
    ) -> None:
        spans = [c.byte_span(a, storage) for c, a in zip(self._checks, arrays)]
        for k, check in enumerate(self._checks):
            if not check.is_output:
                continue
            lo, hi = spans[k]
            for j, (other_lo, other_hi) in enumerate(spans):
                if j != k and lo < other_hi and other_lo < hi:
                    raise SignatureError(
                        f"kernel {self.kernel.name}: output {check.buffer.name} overlaps "
                        f"{self._checks[j].buffer.name} in memory",
                        hint="give the output its own buffer",
                    )

    def prepare(self, memory: Sequence[np.ndarray | Region]) -> PreparedLaunch:
        """A launch whose checks run now, once, instead of on every call.

        ``memory`` gives, per buffer, either a flat storage that stays the same for
        every call (checked now like an argument of :meth:`call_storage`) or a
        :class:`Region` that the caller will pass by address on each call. A region
        must hold the buffer's dtype and at least its offset plus extent; an output
        region must be private. Fixed outputs must overlap no other fixed storage.
        Any failure raises SignatureError now, so no call of the result can fail.
        """
        self._arity(memory)
        args = (ctypes.c_void_p * len(memory))()
        fixed: list[tuple[int, np.ndarray]] = []
        variable: list[tuple[int, int]] = []
        for position, (check, given) in enumerate(zip(self._checks, memory)):
            if isinstance(given, Region):
                check.check_region(given)
                variable.append((position, check.buffer.offset * check.itemsize))
            else:
                args[position] = check.check_storage(given)
                fixed.append((position, given))
        self._check_fixed_overlap(fixed)
        return PreparedLaunch(self, args, variable)

    def _check_fixed_overlap(self, fixed: list[tuple[int, np.ndarray]]) -> None:
        spans = {k: self._checks[k].byte_span(a, True) for k, a in fixed}
        for k, (lo, hi) in spans.items():
            if not self._checks[k].is_output:
                continue
            for j, (other_lo, other_hi) in spans.items():
                if j != k and lo < other_hi and other_lo < hi:
                    raise SignatureError(
                        f"kernel {self.kernel.name}: output "
                        f"{self._checks[k].buffer.name} overlaps "
                        f"{self._checks[j].buffer.name} in memory",
                        hint="give the output its own buffer",
                    )

    def _launch(self, pointers: list[int], threads: int | None) -> None:
        if self._runs:
            self._launch_args((ctypes.c_void_p * len(pointers))(*pointers), threads)

    def _launch_args(self, args: Any, threads: int | None) -> None:
        chosen = default_threads() if threads is None else max(1, threads)
        if self._points < PARALLEL_THRESHOLD:
            chosen = 1
        if threads is not None or chosen == 1:
            self._run(args, chosen)
            return
        parallel = self._chooser.choose()
        start = time.perf_counter()
        self._run(args, chosen if parallel else 1)
        self._chooser.record(parallel, time.perf_counter() - start)

    def _run(self, args: Any, threads: int) -> None:
        """Run the whole domain on ``threads`` threads (the caller included)."""
        if self._partial is None:
            extent = self.emitted.split_extent
            if threads == 1:
                self._main(args, 0, extent)
                return
            chunks = min(
                extent,
                threads * CHUNKS_PER_THREAD,
                max(threads, self._points // CHUNK_POINTS_MIN),
            )
            _run_shared(self._chunks, threads, args, chunks, extent)
            return
        extent = self.emitted.partial_extent
        chunks = partial_chunks(extent, self._points)
        slots = (ctypes.c_int64 * (chunks * self.emitted.accumulators))()
        _run_shared(
            self._partial_chunks, min(threads, chunks), args, chunks, extent, slots
        )
        assert self._finish is not None, "a partial reduction has a finish step"
        self._finish(args, slots, chunks)

    # Inspection ---------------------------------------------------------------------

    def llvm_ir(self) -> str:
        """The optimized module's LLVM IR (``ember dump --stage llvm``)."""
        return str(self._optimized())

    def assembly(self) -> str:
        """The machine code as assembly text (``ember dump --stage asm``)."""
        return target.emit_assembly(self._optimized())

    def _optimized(self) -> Any:
        if self._module is None:
            # Loaded from disk: rebuild the optimized module (only for inspection).
            self._module = target.optimize(self.emitted.llvm_ir, self.kernel.name)
        return self._module

    def __repr__(self) -> str:
        return (
            f"<CompiledKernel {self.kernel.name} ({self.origin}) key={self.key[:12]}>"
        )


@dataclass(frozen=True)
class Region:
    """Memory that the caller of :meth:`CompiledKernel.prepare` supplies by address
    on every call of the prepared launch, and vouches for.

    The caller promises that each address it passes points to at least ``elements``
    elements of ``dtype``, that the memory overlaps none of the fixed storages given
    to ``prepare``, and, when ``private`` is set, that it is writable and overlaps
    nothing else the launch touches (a freshly allocated array).
    """

    dtype: DType
    elements: int
    private: bool = False


class PreparedLaunch:
    """A kernel launch checked once by :meth:`CompiledKernel.prepare`.

    ``launch(addresses)`` takes one address per :class:`Region`, in buffer order:
    the address of the region's first element (the buffer's offset is applied
    here). It reuses one pointer array, so one prepared launch must not run on two
    threads at once (a :class:`~ember.compiler.program.Program` holds its lock).
    """

    def __init__(
        self, compiled: CompiledKernel, args: Any, variable: list[tuple[int, int]]
    ) -> None:
        self.compiled = compiled
        self._args = args
        self._variable = variable
        #: The partial sums of a partial reduction run by a LaunchSequence.
        self._slots: Any = None

    @property
    def regions(self) -> int:
        """How many addresses a call takes."""
        return len(self._variable)

    @property
    def sequenceable(self) -> bool:
        """Whether a :class:`LaunchSequence` can run it: a launch that always runs
        on the calling thread (a partial reduction then runs its chunks in order
        and combines them, as :meth:`CompiledKernel._run` does on one thread)."""
        return self.compiled._points < PARALLEL_THRESHOLD

    def fill(self, addresses: Sequence[int]) -> None:
        """Write the regions' addresses into the pointer array, without running."""
        args = self._args
        for (position, delta), address in zip(self._variable, addresses):
            args[position] = address + delta

    def record(self) -> tuple[int, ...] | None:
        """This launch's record of a :class:`LaunchSequence` table, or None when
        the kernel has nothing to run."""
        compiled = self.compiled
        if not compiled._runs:
            return None
        args = ctypes.addressof(self._args)
        emitted = compiled.emitted
        if compiled._partial is None:
            return _address_of(compiled._main), args, 0, emitted.split_extent, 0, 0, 0
        extent = emitted.partial_extent
        chunks = partial_chunks(extent, compiled._points)
        if self._slots is None:
            self._slots = (ctypes.c_int64 * (chunks * emitted.accumulators))()
        return (
            _address_of(compiled._partial_chunks),
            args,
            chunks,
            extent,
            1,
            ctypes.addressof(self._slots),
            _address_of(compiled._finish),
        )

    @property
    def targets(self) -> list[tuple[Any, int, int]]:
        """Where each address a call takes goes: (pointer array, position, byte
        offset added), so that a caller may write them itself and :meth:`run`."""
        return [(self._args, position, delta) for position, delta in self._variable]

    def __call__(self, addresses: Sequence[int]) -> None:
        self.fill(addresses)
        self.run()

    def run(self) -> None:
        """Run on the addresses written last (by :meth:`fill` or through
        :attr:`targets`)."""
        compiled = self.compiled
        if not compiled._runs:
            return
        if self.sequenceable and compiled._partial is None:
            compiled._main(self._args, 0, compiled.emitted.split_extent)
            return
        compiled._launch_args(self._args, None)


#: The native loop of a LaunchSequence. Each record of the table holds eight
#: integers (function, pointer array, a, b, kind, partial sums, finish, counter):
#: kind 0 calls ``function(pointers, a, b)``; kind 1 runs a partial reduction's
#: ``a`` chunks of an axis of extent ``b`` in order, ``function(pointers,
#: &counter, a, b, sums)`` with the counter set to 0, then ``finish(pointers,
#: sums, a)``.
#: Reads record ``%i`` of a launch table: its function, pointer array, a and b.
_RECORD_IR = """\
  %record = getelementptr [8 x i64], ptr %table, i64 %i
  %fn = load ptr, ptr %record
  %args.at = getelementptr i64, ptr %record, i64 1
  %args = load ptr, ptr %args.at
  %a.at = getelementptr i64, ptr %record, i64 2
  %a = load i64, ptr %a.at
  %b.at = getelementptr i64, ptr %record, i64 3
  %b = load i64, ptr %b.at
"""
_SEQUENCE_IR = (
    """
define void @ember_sequence(ptr %table, i64 %count) {
entry:
  %empty = icmp eq i64 %count, 0
  br i1 %empty, label %done, label %loop
loop:
  %i = phi i64 [0, %entry], [%next, %join]
"""
    + _RECORD_IR
    + """\
  %kind.at = getelementptr i64, ptr %record, i64 4
  %kind = load i64, ptr %kind.at
  %plain = icmp eq i64 %kind, 0
  br i1 %plain, label %main, label %partial
main:
  call void %fn(ptr %args, i64 %a, i64 %b)
  br label %join
partial:
  %sums.at = getelementptr i64, ptr %record, i64 5
  %sums = load ptr, ptr %sums.at
  %finish.at = getelementptr i64, ptr %record, i64 6
  %finish = load ptr, ptr %finish.at
  %counter = getelementptr i64, ptr %record, i64 7
  store i64 0, ptr %counter
  call void %fn(ptr %args, ptr %counter, i64 %a, i64 %b, ptr %sums)
  call void %finish(ptr %args, ptr %sums, i64 %a)
  br label %join
join:
  %next = add i64 %i, 1
  %more = icmp ult i64 %next, %count
  br i1 %more, label %loop, label %done
done:
  ret void
}
"""
)
_SEQUENCE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
_PARALLEL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
#: Integers per record of a LaunchSequence table.
_RECORD = 8


def _address_of(function: Any) -> int:
    address = ctypes.cast(function, ctypes.c_void_p).value
    assert address is not None
    return address


@functools.cache
def _loop_entry(symbol: str) -> tuple[Any, Any]:
    """The JIT engine (kept alive here) and the entry of a launch loop:
    ``ember_sequence`` (:class:`LaunchSequence`), ``ember_table_part``
    (:class:`ConcurrentLaunches`) or ``ember_calls`` (:class:`CallLoop`)."""
    llvm_ir, prototype = {
        "ember_sequence": (_SEQUENCE_IR, _SEQUENCE),
        "ember_table_part": (_TABLE_PART_IR, _MAIN),
        "ember_calls": (_CALLS_IR, _CALLS),
    }[symbol]
    code = target.emit_object(target.optimize(llvm_ir, symbol))
    engine, addresses = target.load_object(code, [symbol])
    return engine, prototype(addresses[symbol])


class LaunchSequence:
    """Prepared launches run one after the other by one native call.

    Each launch (a :class:`PreparedLaunch`, or a
    :class:`~ember.compiler.codegen.blas.GemmLaunch`) must be sequenceable; its
    checks ran when it was prepared, and the sequence only hands its pointer
    array to its entry,
    so it is exactly as safe as calling the launches in turn, minus one trip
    through ctypes per kernel. ``sequence(addresses)`` takes the addresses of
    every launch's regions, launch after launch. Like a prepared launch, one
    sequence must not run on two threads at once.
    """

    def __init__(self, launches: Sequence[Any]) -> None:
        assert all(launch.sequenceable for launch in launches)
        records = [launch.record() for launch in launches]
        self.launches = [
            launch for launch, record in zip(launches, records) if record is not None
        ]
        # Where each address a call passes goes: a launch's pointer array, the
        # position in it and the byte offset of the buffer's first element.
        self._targets = [target for launch in launches for target in launch.targets]
        self._table = (ctypes.c_int64 * (_RECORD * len(self.launches)))()
        for k, record in enumerate(r for r in records if r is not None):
            self._table[_RECORD * k : _RECORD * k + len(record)] = record
        self._engine, self._run = _loop_entry("ember_sequence")
        # Helpers a launch hands parts to, woken before each call.
        self._wakes = list(
            {
                id(w): w for w in (getattr(x, "wakes", None) for x in launches) if w
            }.values()
        )

    def __call__(self, addresses: Sequence[int]) -> None:
        if len(addresses) != len(self._targets):
            raise SignatureError(
                f"a launch sequence takes {len(self._targets)} addresses",
                expected=len(self._targets),
                actual=len(addresses),
            )
        for (args, position, delta), address in zip(self._targets, addresses):
            args[position] = address + delta
        self.run()

    @property
    def targets(self) -> list[tuple[Any, int, int]]:
        """Where each address a call takes goes (see :attr:`PreparedLaunch.targets`)."""
        return list(self._targets)

    def run(self) -> None:
        """Run on the addresses written last."""
        for helper in self._wakes:
            helper.wake()
        self._run(self._table, len(self.launches))

    def loop_call(self) -> tuple[tuple[int, int, int, int], list[Any]]:
        """What :class:`CallLoop` calls for one :meth:`run`: the record (kind 0,
        ``ember_sequence``, this table, its length) and the helpers to wake."""
        record = (0, _address_of(self._run), ctypes.addressof(self._table))
        return (*record, len(self.launches)), list(self._wakes)


#: One record of a launch table as a part of :mod:`~ember.compiler.codegen.worker`:
#: ``ember_table_part(table, i)`` runs record ``i`` (kind 0).
_TABLE_PART_IR = (
    """
define void @ember_table_part(ptr %table, i64 %i) {
entry:
"""
    + _RECORD_IR
    + """\
  call void %fn(ptr %args, i64 %a, i64 %b)
  ret void
}
"""
)


class ConcurrentLaunches(LaunchSequence):
    """Independent launches (matrix products) run side by side: the calling thread
    and the native helper (:mod:`~ember.compiler.codegen.worker`) each claim the
    next launch not yet taken, so a helper that starts late finds nothing left
    and the caller never waits for a thread that did not start. Each launch runs
    whole on one thread, so the results are the very bytes of running them in
    turn.

    Unlike a kernel without an explicit thread count, a pair does not time itself
    to choose (:class:`ThreadChooser`): it runs side by side whenever the process
    may use more than one CPU and ``busy()`` does not say the launches would
    compete for threads of their own (a BLAS that runs on several). Claiming
    bounds the loss to a late worker, while a chooser timing only the pair flipped
    on the noise of a shared machine and ran the pairs in turn on many calls that
    side by side would have served better (docs/codegen.md has the figures).
    ``EMBER_CONCURRENT=0`` runs the products in turn.
    """

    concurrent = True

    def __init__(self, launches: Sequence[Any], busy: Any = None) -> None:
        super().__init__(launches)
        # The parts are plain launches only (kind 0 of the table).
        assert all(launch.record()[4] == 0 for launch in self.launches)
        self._part_engine, part = _loop_entry("ember_table_part")
        self._busy = busy
        self._record = (ctypes.c_int64 * worker.RECORD_WORDS)()
        self._record[worker.FN] = _address_of(part)
        self._record[worker.ARGS] = ctypes.addressof(self._table)
        self._record[worker.PARTS] = len(self.launches)
        self._parallel = _PARALLEL(worker.parallel_address())

    def run(self) -> None:
        """Run on the addresses written last."""
        count = len(self.launches)
        if default_threads() == 1 or (self._busy is not None and self._busy()):
            self._run(self._table, count)
            return
        helper = worker.worker()
        helper.wake()
        self._parallel(helper.address, ctypes.addressof(self._record))

    def loop_call(self) -> tuple[tuple[int, int, int, int], list[Any]]:
        """The record of :meth:`run` for :class:`CallLoop` (kind 1,
        ``ember_parallel``, the helper's slot, the record), or of running the
        launches in turn when :meth:`run` would now."""
        if default_threads() == 1 or (self._busy is not None and self._busy()):
            return super().loop_call()[0], []
        helper = worker.worker()
        record = (1, worker.parallel_address(), helper.address)
        return (*record, ctypes.addressof(self._record)), [helper]


#: The native loop of a :class:`CallLoop`. The plan holds eight integers: the
#: width of the address table (addresses per call), the table, the patches (three
#: integers each: where a pointer-array entry lies, the column of its address, a
#: byte offset) and their number, the calls (four integers each: kind, function,
#: two arguments; kind 0 is ``ember_sequence(table, count)``, kind 1
#: ``ember_parallel(slot, record)``) and their number, the copies (four integers
#: each: source, destination of call 0, bytes, stride; call ``i`` writes
#: ``i * stride`` bytes further on) and their number. ``ember_calls(plan, first, last)`` runs calls
#: ``first`` to ``last - 1``: patch, call, copy out.
_CALLS_IR = """
define void @ember_calls(ptr %plan, i64 %first, i64 %last) {
entry:
  %width = load i64, ptr %plan
  %addresses.at = getelementptr i64, ptr %plan, i64 1
  %addresses = load ptr, ptr %addresses.at
  %patches.at = getelementptr i64, ptr %plan, i64 2
  %patches = load ptr, ptr %patches.at
  %npatch.at = getelementptr i64, ptr %plan, i64 3
  %npatch = load i64, ptr %npatch.at
  %calls.at = getelementptr i64, ptr %plan, i64 4
  %calls = load ptr, ptr %calls.at
  %ncall.at = getelementptr i64, ptr %plan, i64 5
  %ncall = load i64, ptr %ncall.at
  %copies.at = getelementptr i64, ptr %plan, i64 6
  %copies = load ptr, ptr %copies.at
  %ncopy.at = getelementptr i64, ptr %plan, i64 7
  %ncopy = load i64, ptr %ncopy.at
  %none = icmp uge i64 %first, %last
  br i1 %none, label %done, label %step
step:
  %i = phi i64 [%first, %entry], [%i.next, %copy.end]
  %row = mul i64 %i, %width
  %has.patch = icmp ne i64 %npatch, 0
  br i1 %has.patch, label %patch, label %patch.end
patch:
  %p = phi i64 [0, %step], [%p.next, %patch]
  %p.rec = getelementptr [3 x i64], ptr %patches, i64 %p
  %p.at = load ptr, ptr %p.rec
  %p.column.at = getelementptr i64, ptr %p.rec, i64 1
  %p.column = load i64, ptr %p.column.at
  %p.delta.at = getelementptr i64, ptr %p.rec, i64 2
  %p.delta = load i64, ptr %p.delta.at
  %p.cell = add i64 %row, %p.column
  %p.address.at = getelementptr i64, ptr %addresses, i64 %p.cell
  %p.address = load i64, ptr %p.address.at
  %p.value = add i64 %p.address, %p.delta
  store i64 %p.value, ptr %p.at
  %p.next = add i64 %p, 1
  %p.more = icmp ult i64 %p.next, %npatch
  br i1 %p.more, label %patch, label %patch.end
patch.end:
  %has.call = icmp ne i64 %ncall, 0
  br i1 %has.call, label %call, label %call.end
call:
  %c = phi i64 [0, %patch.end], [%c.next, %call.join]
  %c.rec = getelementptr [4 x i64], ptr %calls, i64 %c
  %c.kind = load i64, ptr %c.rec
  %c.fn.at = getelementptr i64, ptr %c.rec, i64 1
  %c.fn = load ptr, ptr %c.fn.at
  %c.x.at = getelementptr i64, ptr %c.rec, i64 2
  %c.x = load ptr, ptr %c.x.at
  %c.y.at = getelementptr i64, ptr %c.rec, i64 3
  %c.y = load i64, ptr %c.y.at
  %c.sequence = icmp eq i64 %c.kind, 0
  br i1 %c.sequence, label %call.sequence, label %call.parallel
call.sequence:
  call void %c.fn(ptr %c.x, i64 %c.y)
  br label %call.join
call.parallel:
  %c.record = inttoptr i64 %c.y to ptr
  call void %c.fn(ptr %c.x, ptr %c.record)
  br label %call.join
call.join:
  %c.next = add i64 %c, 1
  %c.more = icmp ult i64 %c.next, %ncall
  br i1 %c.more, label %call, label %call.end
call.end:
  %has.copy = icmp ne i64 %ncopy, 0
  br i1 %has.copy, label %copy, label %copy.end
copy:
  %k = phi i64 [0, %call.end], [%k.next, %copy]
  %k.rec = getelementptr [4 x i64], ptr %copies, i64 %k
  %k.source = load ptr, ptr %k.rec
  %k.to.at = getelementptr i64, ptr %k.rec, i64 1
  %k.to = load i64, ptr %k.to.at
  %k.bytes.at = getelementptr i64, ptr %k.rec, i64 2
  %k.bytes = load i64, ptr %k.bytes.at
  %k.stride.at = getelementptr i64, ptr %k.rec, i64 3
  %k.stride = load i64, ptr %k.stride.at
  %k.skip = mul i64 %i, %k.stride
  %k.into = add i64 %k.to, %k.skip
  %k.target = inttoptr i64 %k.into to ptr
  call void @llvm.memcpy.p0.p0.i64(ptr %k.target, ptr %k.source, i64 %k.bytes, i1 false)
  %k.next = add i64 %k, 1
  %k.more = icmp ult i64 %k.next, %ncopy
  br i1 %k.more, label %copy, label %copy.end
copy.end:
  %i.next = add i64 %i, 1
  %i.more = icmp ult i64 %i.next, %last
  br i1 %i.more, label %step, label %done
done:
  ret void
}

declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)
"""
_CALLS = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)


class CallLoop:
    """The calls of a loop run by native code: for each row of an address table,
    write the row's addresses into the pointer arrays of prepared launches, run
    the launches, and copy small results out into one row of stacked arrays.

    ``launches`` are objects with ``loop_call()`` (:class:`LaunchSequence`,
    :class:`ConcurrentLaunches`), whose checks ran when they were prepared.
    ``patches`` name, per pointer-array entry (``(array, position, delta)`` as in
    :attr:`PreparedLaunch.targets`), the column of the table whose address it
    takes. ``copies`` pair a result's array with an array of its shape stacked
    over the calls (C-contiguous both); ``feedback`` copies ``(source,
    destination, bytes)`` after every call to the same place (a result that is
    the next call's input). The caller vouches for every address of
    the table as it would for one call's (bounds and aliasing) and must keep the
    launches from running elsewhere meanwhile. Runs :data:`CALLS_PER_ENTRY`
    calls per native call, so that Python sees signals between them.
    """

    def __init__(
        self,
        launches: Sequence[Any],
        patches: Sequence[tuple[tuple[Any, int, int], int]],
        width: int,
        copies: Sequence[tuple[np.ndarray, np.ndarray]],
        feedback: Sequence[tuple[int, int, int]] = (),
    ) -> None:
        calls: list[tuple[int, int, int, int]] = []
        wakes: dict[int, Any] = {}
        for launch in launches:
            record, helpers = launch.loop_call()
            calls.append(record)
            wakes.update((id(h), h) for h in helpers)
        self._wakes = list(wakes.values())
        self._engine, self._entry = _loop_entry("ember_calls")
        self._patches = np.array(
            [
                (
                    ctypes.addressof(args) + position * ctypes.sizeof(ctypes.c_void_p),
                    column,
                    delta,
                )
                for (args, position, delta), column in patches
            ],
            np.int64,
        ).reshape(-1, 3)
        self._calls = np.array(calls, np.int64).reshape(-1, 4)
        for source, stacked in copies:
            assert source.flags.c_contiguous and stacked.flags.c_contiguous
            assert stacked.shape[1:] == source.shape and stacked.dtype == source.dtype
        self._copies = [(source, stacked) for source, stacked in copies]
        self._feedback = [(source, into, size, 0) for source, into, size in feedback]
        self._width = width

    def run(self, addresses: np.ndarray) -> None:
        """Run one call per row of ``addresses`` (int64, ``width`` columns); row
        ``i``'s results land in row ``i`` of the stacked arrays."""
        count = addresses.shape[0]
        assert addresses.dtype == np.int64 and addresses.shape[1:] == (self._width,)
        assert addresses.flags.c_contiguous
        copies = np.array(
            [
                (s.ctypes.data, t.ctypes.data, s.nbytes, s.nbytes)
                for s, t in self._copies
            ]
            + self._feedback,
            np.int64,
        ).reshape(-1, 4)
        for _, stacked in self._copies:
            assert stacked.shape[0] >= count
        plan = np.array(
            [
                self._width,
                addresses.ctypes.data,
                self._patches.ctypes.data,
                len(self._patches),
                self._calls.ctypes.data,
                len(self._calls),
                copies.ctypes.data,
                len(copies),
            ],
            np.int64,
        )
        for first in range(0, count, CALLS_PER_ENTRY):
            for helper in self._wakes:
                helper.wake()
            self._entry(plan.ctypes.data, first, min(count, first + CALLS_PER_ENTRY))


#: Calls of a :class:`CallLoop` per native call.
CALLS_PER_ENTRY = 256


class ThreadChooser:
    """Chooses, per kernel, between one thread and all threads for default launches.

    A second thread only pays when a core is free: on a loaded machine it shares a
    core with the caller or waits behind other processes, and the launch then waits
    a scheduler time slice for it. So large launches without an explicit thread count
    time themselves: the first ``PROBE_CALLS`` calls of each kind alternate, later
    calls take the kind with the lower median of its last ``SAMPLES`` timings, and
    every ``PROBE_EVERY``-th call tries the other kind again, which follows a load
    that changes. Results do not depend on the choice (see the module docstring).

        >>> chooser = ThreadChooser()
        >>> for _ in range(2 * ThreadChooser.PROBE_CALLS):
        ...     parallel = chooser.choose()
        ...     chooser.record(parallel, 1.0 if parallel else 2.0)
        >>> chooser.choose()
        True
    """

    PROBE_CALLS = 3
    PROBE_EVERY = 16
    SAMPLES = 5

    def __init__(self) -> None:
        self._times: dict[bool, collections.deque[float]] = {
            kind: collections.deque(maxlen=self.SAMPLES) for kind in (False, True)
        }
        self._calls = 0

    def choose(self) -> bool:
        """True to run the next launch on all threads, False for one thread."""
        self._calls += 1
        one, many = self._times[False], self._times[True]
        if min(len(one), len(many)) < self.PROBE_CALLS:
            return len(many) <= len(one)
        best = statistics.median(many) < statistics.median(one)
        return best != (self._calls % self.PROBE_EVERY == 0)

    def record(self, parallel: bool, seconds: float) -> None:
        """Remember how long a launch of the given kind took."""
        self._times[parallel].append(seconds)


def partial_chunks(extent: int, points: int) -> int:
    """How many chunks an outer-less reduction splits its first reduced axis into.

    ``extent`` is that axis's length and ``points`` the size of the whole domain; the
    answer depends on nothing else, so neither does the summation order.
    """
    return max(1, min(PARTIAL_CHUNKS_MAX, extent, points // PARTIAL_CHUNK_POINTS))


def _run_shared(
    fn: Any, threads: int, args: Any, chunks: int, extent: int, *extra: Any
) -> None:
    """Run the claiming function ``fn`` on this thread and ``threads - 1`` workers.

    Workers still queued when this thread runs out of chunks are cancelled; ones
    already running are finishing their last chunk and are waited for.
    """
    counter = ctypes.c_int64(0)
    call = (args, ctypes.addressof(counter), chunks, extent, *extra)
    if threads == 1:
        fn(*call)
        return
    pool = _worker_pool()
    futures = [pool.submit(fn, *call) for _ in range(threads - 1)]
    fn(*call)
    for future in futures:
        if not future.cancel():
            future.result()


class _BufferCheck:
    """Validates arrays for one buffer; returns the pointer to the buffer's element 0."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self.np_dtype = buffer.dtype.np_dtype
        itemsize = buffer.dtype.itemsize
        self.itemsize = itemsize
        self.shape = buffer.shape
        self.byte_strides = tuple(s * itemsize for s in buffer.strides)
        self.varying = [k for k, n in enumerate(buffer.shape) if n > 1]
        self.extent = buffer.extent()
        self.is_output = buffer.role != "in"  # "out", or "inout" (read, then written)

    def _fail(
        self, what: str, expected: Any, actual: Any, hint: str | None = None
    ) -> None:
        raise SignatureError(
            f"buffer {self.buffer.name} ({self.buffer.describe()}): {what}",
            expected=expected,
            actual=actual,
            hint=hint,
        )

    def _common(self, array: Any) -> None:
        if not isinstance(array, np.ndarray):
            self._fail("not a numpy array", "numpy.ndarray", type(array).__name__)
        if array.dtype != self.np_dtype:
            self._fail(
                "wrong dtype",
                self.np_dtype.name,
                array.dtype.name,
                "convert with .astype() first",
            )
        if self.is_output and not array.flags.writeable:
            self._fail("output is read-only", "a writeable array", "read-only")
        _check_inside_owner(array, self)

    def check_view(self, array: np.ndarray) -> int:
        """Validate an array shaped and strided like the buffer; return its pointer."""
        self._common(array)
        if array.shape != self.shape:
            self._fail("wrong shape", self.shape, array.shape)
        strides = array.strides
        if any(strides[k] != self.byte_strides[k] for k in self.varying):
            self._fail(
                "wrong strides",
                tuple(s // self.itemsize for s in self.byte_strides),
                tuple(s / self.itemsize for s in strides),
                "the kernel was compiled for another layout; recompile for this one",
            )
        return array.ctypes.data

    def check_storage(self, storage: np.ndarray) -> int:
        """Validate a flat storage that must hold the buffer's layout; return the pointer
        to the buffer's first element."""
        self._common(storage)
        if storage.ndim != 1 or not storage.flags.c_contiguous:
            self._fail(
                "a storage must be a flat contiguous array",
                "1-D contiguous",
                f"{storage.ndim}-D, strides {storage.strides}",
            )
        needed = self.buffer.offset + self.extent
        if storage.shape[0] < needed:
            self._fail(
                "storage too small for the layout",
                f"at least {needed} elements (offset {self.buffer.offset} + extent "
                f"{self.extent})",
                storage.shape[0],
            )
        return storage.ctypes.data + self.buffer.offset * self.itemsize

    def check_region(self, region: Region) -> None:
        """Validate memory a prepared launch will be given by address."""
        if region.dtype != self.buffer.dtype:
            self._fail("wrong dtype", self.buffer.dtype.name, region.dtype.name)
        if self.is_output and not region.private:
            self._fail(
                "an output needs memory of its own",
                "a private region",
                "memory that may be shared",
            )
        needed = self.buffer.offset + self.extent
        if region.elements < needed:
            self._fail(
                "region too small for the layout",
                f"at least {needed} elements (offset {self.buffer.offset} + extent "
                f"{self.extent})",
                region.elements,
            )

    def byte_span(self, array: np.ndarray, storage: bool) -> tuple[int, int]:
        """The half-open byte range the kernel may touch in ``array``."""
        if storage:
            start = array.ctypes.data + self.buffer.offset * self.itemsize
            return start, start + self.extent * self.itemsize
        return _byte_bounds(array)


def _byte_bounds(array: np.ndarray) -> tuple[int, int]:
    """The half-open byte range an array's elements occupy (empty arrays: empty)."""
    start = array.__array_interface__["data"][0]
    if array.size == 0:
        return start, start
    low = high = start
    for size, stride in zip(array.shape, array.strides):
        reach = (size - 1) * stride
        if reach < 0:
            low += reach
        else:
            high += reach
    return low, high + array.itemsize


def outside_owner(array: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The byte ranges of ``array`` and of the array that owns its memory, when the
    first is not inside the second; None when it is.

    numpy guarantees containment for views it makes itself; ``as_strided`` can break
    it, so views (arrays with a base) are checked against the last array in their
    base chain.
    """
    if array.base is None:
        return None
    owner: Any = array
    link: Any = array.base
    while link is not None:
        if isinstance(link, np.ndarray):
            owner = link
        link = getattr(link, "base", None)
    if owner is array or not array.size:
        return None
    lo, hi = _byte_bounds(array)
    owner_lo, owner_hi = _byte_bounds(owner)
    if lo < owner_lo or hi > owner_hi:
        return (lo, hi), (owner_lo, owner_hi)
    return None


def _check_inside_owner(array: np.ndarray, check: _BufferCheck) -> None:
    """A view must lie inside the memory of the array that owns its data."""
    outside = outside_owner(array)
    if outside is not None:
        (lo, hi), (owner_lo, owner_hi) = outside
        check._fail(
            "array reaches outside the memory it views",
            f"bytes within [{owner_lo}, {owner_hi})",
            f"[{lo}, {hi})",
            "build views with numpy slicing, not as_strided",
        )
