"""One native helper thread that takes a share of a launch within a microsecond.

A pool thread of Python wakes in tens of microseconds, longer than a whole
training step of a small model. :class:`Worker` keeps one thread spinning in
native code (a Python thread inside a ctypes call, so without the GIL) on a slot
in memory; ``ember_parallel(slot, record)``, called from native code, publishes a
record there and claims the record's parts with the helper, one at a time, by an
atomic counter. The caller claims parts too and never waits for a helper that
did not start: it waits only for parts the helper claimed, and then until the
helper holds the record no more, so the record may be freed once the call
returns. A caller that finds the slot in use by another thread runs every part
itself. Results never depend on who ran a part.

The helper spins for :data:`SPIN_SECONDS` after its last part, then sleeps on an
event until a caller wakes it (:meth:`Worker.wake`, a memory read when it is
awake); the calls in the meantime run their parts alone.

A caller that waits for the helper's parts longer than twice what its own share
took plus :data:`LATE_SECONDS` has met a helper without a core (another process took it,
or the helper shares the caller's): calls then run alone, and the helper is not
woken, for :data:`REST_SECONDS`, so that such a machine costs one late wait per
rest rather than one per call.

Slot fields (64-bit, each on a cache line of its own): the generation of the
last record published, the record (0 when none), whether the helper holds one,
whether a caller owns the slot, whether the helper is spinning, whether it must
stop, the counter value until which callers run alone (0: they do not), and on
one line, read only, the late wait and the rest in counter ticks and the address
of ``sched_yield`` (0: none). Record fields: the part function ``fn(args, part)``, its ``args``, the
number of parts, then (each on a line of its own) the next part to claim and
the parts finished.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import os
import threading
import time
from typing import Any

from ember.compiler.codegen import target

#: How long the helper spins for a new record before it sleeps.
SPIN_SECONDS = 0.005
#: A caller that waits for the parts the helper claimed longer than twice its own
#: share of the call took plus this (a helper whose core was taken by another
#: process) runs its calls alone for REST_SECONDS; the helper sleeps meanwhile.
LATE_SECONDS = 100e-6
REST_SECONDS = 0.1
#: Integers per slot and per record; the fields' positions.
SLOT_WORDS = 64
GENERATION, JOB, BUSY, OWNER, AWAKE, STOP, REST_UNTIL = 0, 8, 16, 24, 32, 40, 48
LATE_TICKS, REST_TICKS, YIELD = 56, 57, 58
#: The spinning helper offers its core to other threads (``sched_yield``) every
#: this many turns (a power of two), so that it takes no time from a caller
#: that shares its core.
YIELD_TURNS = 32
RECORD_WORDS = 24
FN, ARGS, PARTS, NEXT, FINISHED = 0, 1, 2, 8, 16


def _pause() -> tuple[str, str]:
    """A call that tells the core this is a spin loop, where one exists, and
    its declaration."""
    triple = target.llvm.get_process_triple()
    if triple.startswith(("x86_64", "i686", "i386")):
        name = "@llvm.x86.sse2.pause"
        return f"  call void {name}()\n", f"declare void {name}()"
    if triple.startswith(("aarch64", "arm64")):
        name = "@llvm.aarch64.hint"
        return f"  call void {name}(i32 1)\n", f"declare void {name}(i32)"
    return "", ""


def _worker_ir() -> str:
    pause, declaration = _pause()
    field = "getelementptr i64, ptr"
    return f"""
define internal void @claim(ptr %rec) {{
entry:
  %fn = load ptr, ptr %rec
  %args.at = {field} %rec, i64 {ARGS}
  %args = load ptr, ptr %args.at
  %parts.at = {field} %rec, i64 {PARTS}
  %parts = load i64, ptr %parts.at
  %next.at = {field} %rec, i64 {NEXT}
  %finished.at = {field} %rec, i64 {FINISHED}
  br label %loop
loop:
  %i = atomicrmw add ptr %next.at, i64 1 acq_rel
  %ok = icmp slt i64 %i, %parts
  br i1 %ok, label %body, label %done
body:
  call void %fn(ptr %args, i64 %i)
  %f = atomicrmw add ptr %finished.at, i64 1 release
  br label %loop
done:
  ret void
}}

define void @ember_serve(ptr %slot, i64 %budget) {{
entry:
  %gen.at = {field} %slot, i64 {GENERATION}
  %job.at = {field} %slot, i64 {JOB}
  %busy.at = {field} %slot, i64 {BUSY}
  %awake.at = {field} %slot, i64 {AWAKE}
  %stop.at = {field} %slot, i64 {STOP}
  %yield.at = {field} %slot, i64 {YIELD}
  %yield.fn = load ptr, ptr %yield.at
  %can.yield = icmp ne ptr %yield.fn, null
  store atomic i64 1, ptr %awake.at seq_cst, align 8
  %seen0 = load atomic i64, ptr %gen.at acquire, align 8
  %t0 = call i64 @llvm.readcyclecounter()
  br label %spin
spin:
  %seen = phi i64 [%seen0, %entry], [%seen, %timing], [%g, %after]
  %since = phi i64 [%t0, %entry], [%since, %timing], [%t.after, %after]
  %count = phi i64 [0, %entry], [%count.next, %timing], [0, %after]
  %stop = load atomic i64, ptr %stop.at monotonic, align 8
  %stopping = icmp ne i64 %stop, 0
  br i1 %stopping, label %exit, label %check
check:
  %g = load atomic i64, ptr %gen.at acquire, align 8
  %new = icmp ne i64 %g, %seen
  br i1 %new, label %take, label %idle
idle:
{pause}  %count.next = add i64 %count, 1
  %turn = and i64 %count.next, {YIELD_TURNS - 1}
  %turned = icmp eq i64 %turn, 0
  %yielding = and i1 %turned, %can.yield
  br i1 %yielding, label %yield, label %timing
yield:
  %yielded = call i32 %yield.fn()
  br label %timing
timing:
  %t = call i64 @llvm.readcyclecounter()
  %waited = sub i64 %t, %since
  %tired.cycles = icmp uge i64 %waited, %budget
  %tired.count = icmp uge i64 %count.next, %budget
  %tired = or i1 %tired.cycles, %tired.count
  br i1 %tired, label %exit, label %spin
take:
  store atomic i64 1, ptr %busy.at seq_cst, align 8
  %job = load atomic i64, ptr %job.at seq_cst, align 8
  %has = icmp ne i64 %job, 0
  br i1 %has, label %work, label %after
work:
  %rec = inttoptr i64 %job to ptr
  call void @claim(ptr %rec)
  br label %after
after:
  store atomic i64 0, ptr %busy.at release, align 8
  %t.after = call i64 @llvm.readcyclecounter()
  br label %spin
exit:
  store atomic i64 0, ptr %awake.at seq_cst, align 8
  ret void
}}

define void @ember_parallel(ptr %slot, ptr %rec) {{
entry:
  %next.at = {field} %rec, i64 {NEXT}
  %finished.at = {field} %rec, i64 {FINISHED}
  %parts.at = {field} %rec, i64 {PARTS}
  %parts = load i64, ptr %parts.at
  store atomic i64 0, ptr %next.at seq_cst, align 8
  store atomic i64 0, ptr %finished.at seq_cst, align 8
  %none = icmp eq ptr %slot, null
  br i1 %none, label %alone, label %try
try:
  %rest.at = {field} %slot, i64 {REST_UNTIL}
  %until = load atomic i64, ptr %rest.at monotonic, align 8
  %resting = icmp ne i64 %until, 0
  br i1 %resting, label %rested, label %own
rested:
  %now.rested = call i64 @llvm.readcyclecounter()
  %still = icmp ult i64 %now.rested, %until
  br i1 %still, label %alone, label %refresh
refresh:
  store atomic i64 0, ptr %rest.at monotonic, align 8
  br label %own
own:
  %owner.at = {field} %slot, i64 {OWNER}
  %owned = cmpxchg ptr %owner.at, i64 0, i64 1 acquire monotonic
  %got = extractvalue {{ i64, i1 }} %owned, 1
  br i1 %got, label %publish, label %alone
publish:
  %gen.at = {field} %slot, i64 {GENERATION}
  %job.at = {field} %slot, i64 {JOB}
  %busy.at = {field} %slot, i64 {BUSY}
  %late.at = {field} %slot, i64 {LATE_TICKS}
  %late.ticks = load i64, ptr %late.at
  %address = ptrtoint ptr %rec to i64
  %t0 = call i64 @llvm.readcyclecounter()
  store atomic i64 %address, ptr %job.at seq_cst, align 8
  %old = atomicrmw add ptr %gen.at, i64 1 seq_cst
  call void @claim(ptr %rec)
  %t1 = call i64 @llvm.readcyclecounter()
  %mine = sub i64 %t1, %t0
  %twice = shl i64 %mine, 1
  %patience = add i64 %twice, %late.ticks
  br label %wait
wait:
  %late = phi i1 [false, %publish], [true, %wait.more], [false, %watch], [true, %rest]
  %finished = load atomic i64, ptr %finished.at acquire, align 8
  %all = icmp sge i64 %finished, %parts
  br i1 %all, label %retract, label %wait.more
wait.more:
{pause}  br i1 %late, label %wait, label %watch
watch:
  %now = call i64 @llvm.readcyclecounter()
  %waited = sub i64 %now, %t1
  %over = icmp ugt i64 %waited, %patience
  br i1 %over, label %rest, label %wait
rest:
  %rest.ticks.at = {field} %slot, i64 {REST_TICKS}
  %rest.ticks = load i64, ptr %rest.ticks.at
  %rest.end = add i64 %now, %rest.ticks
  store atomic i64 %rest.end, ptr %rest.at monotonic, align 8
  br label %wait
retract:
  store atomic i64 0, ptr %job.at seq_cst, align 8
  br label %held
held:
  %busy = load atomic i64, ptr %busy.at seq_cst, align 8
  %free = icmp eq i64 %busy, 0
  br i1 %free, label %release, label %held.more
held.more:
{pause}  br label %held
release:
  store atomic i64 0, ptr %owner.at release, align 8
  ret void
alone:
  call void @claim(ptr %rec)
  ret void
}}

declare i64 @llvm.readcyclecounter()
{declaration}
"""


_SERVE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)


@functools.cache
def _entries() -> tuple[Any, int, int]:
    """(JIT engine, address of ember_serve, address of ember_parallel)."""
    module = target.optimize(_worker_ir(), "ember_worker")
    symbols = ["ember_serve", "ember_parallel"]
    engine, addresses = target.load_object(target.emit_object(module), symbols)
    return engine, addresses["ember_serve"], addresses["ember_parallel"]


def parallel_address() -> int:
    """The address of ``ember_parallel(slot, record)``."""
    return _entries()[2]


def _cycles_per_second() -> float:
    """The rate of ``llvm.readcyclecounter`` here (0 where it does not count)."""
    counter = _counter()
    start, begin = counter(), time.perf_counter()
    time.sleep(0.002)
    ticks, seconds = counter() - start, time.perf_counter() - begin
    return ticks / seconds if ticks > 0 else 0.0


@functools.cache
def _counter() -> Any:
    code = """
define i64 @ember_cycles() {
  %t = call i64 @llvm.readcyclecounter()
  ret i64 %t
}
declare i64 @llvm.readcyclecounter()
"""
    module = target.optimize(code, "ember_cycles")
    engine, addresses = target.load_object(target.emit_object(module), ["ember_cycles"])
    function = ctypes.CFUNCTYPE(ctypes.c_int64)(addresses["ember_cycles"])
    _keep.append(engine)
    return function


_keep: list[Any] = []


def _sched_yield() -> int:
    """The address of the C library's ``sched_yield``, or 0 where there is none."""
    try:
        function = ctypes.CDLL(None).sched_yield
    except (AttributeError, OSError, TypeError):  # pragma: no cover - not POSIX
        return 0
    return ctypes.cast(function, ctypes.c_void_p).value or 0


class Worker:
    """The helper thread and its slot (see the module docstring)."""

    def __init__(self) -> None:
        self.slot = (ctypes.c_int64 * SLOT_WORDS)()
        self.address = ctypes.addressof(self.slot)
        engine, serve, _ = _entries()
        self._engine = engine
        self._serve = _SERVE(serve)
        rate = _cycles_per_second()
        # The spin budget, in counter ticks and in loop turns (a turn with a
        # pause takes at least a nanosecond): whichever ends first.
        self._budget = int(rate * SPIN_SECONDS) if rate else int(SPIN_SECONDS * 1e9)
        # Without a counter, waits are never found late.
        self.slot[LATE_TICKS] = int(rate * LATE_SECONDS) if rate else 1 << 62
        self.slot[REST_TICKS] = max(1, int(rate * REST_SECONDS))
        self.slot[YIELD] = _sched_yield()
        self._event = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _run(self) -> None:
        slot = self.slot
        while not slot[STOP]:
            self._serve(self.slot, self._budget)
            if slot[STOP]:
                break
            self._event.wait()
            self._event.clear()

    def wake(self) -> None:
        """Make sure the helper is spinning or about to (cheap when it is), unless
        callers are running alone for a while (a late helper, above)."""
        slot = self.slot
        if slot[AWAKE] or slot[REST_UNTIL]:
            return
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, name="ember-worker", daemon=True
                    )
                    self._thread.start()
        self._event.set()

    def stop(self) -> None:
        """Stop the helper (at exit); callers then run every part themselves."""
        self.slot[STOP] = 1
        self._event.set()

    def _after_fork(self) -> None:
        # The helper does not exist in a child: a new one starts when woken.
        for field in (GENERATION, JOB, BUSY, OWNER, AWAKE, REST_UNTIL):
            self.slot[field] = 0
        self._thread = None
        self._event = threading.Event()
        self._lock = threading.Lock()


_worker: Worker | None = None
_worker_lock = threading.Lock()


def worker() -> Worker:
    """The process's helper (made on first use)."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = Worker()
            atexit.register(_worker.stop)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_worker._after_fork)
        return _worker
