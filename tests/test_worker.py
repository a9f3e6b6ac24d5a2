"""The native helper thread: every part of a record runs exactly once per call,
whoever claims it; a caller that cannot own the slot runs the parts itself; the
helper goes to sleep when idle; a forked child still gets right results."""

from __future__ import annotations

import ctypes
import os
import threading
import time

import numpy as np
import pytest

import ember
from ember.compiler.codegen import target, worker
from ember.compiler.codegen.launch import default_threads as launch_threads
from tests.test_steady_calls import linear_regression

_MARK_IR = """
define void @ember_mark(ptr %args, i64 %part) {
entry:
  %at = getelementptr i64, ptr %args, i64 %part
  %old = atomicrmw add ptr %at, i64 1 seq_cst
  ret void
}
"""
_PARALLEL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


def _loaded(ir: str, name: str):
    """The address of native function ``name`` compiled from ``ir``, kept
    loaded while the generator is open."""
    module = target.optimize(ir, name)
    engine, addresses = target.load_object(target.emit_object(module), [name])
    yield addresses[name]
    del engine


@pytest.fixture(scope="module")
def mark():
    yield from _loaded(_MARK_IR, "ember_mark")


def _record(fn: int, counts, parts: int):
    record = (ctypes.c_int64 * worker.RECORD_WORDS)()
    record[worker.FN] = fn
    record[worker.ARGS] = ctypes.addressof(counts)
    record[worker.PARTS] = parts
    return record


@pytest.mark.parametrize("parts", [1, 2, 3, 8])
def test_every_part_runs_once_per_call(mark, parts):
    helper = worker.worker()
    parallel = _PARALLEL(worker.parallel_address())
    counts = (ctypes.c_int64 * parts)()
    record = _record(mark, counts, parts)
    for call in range(1, 501):
        helper.wake()
        parallel(helper.address, ctypes.addressof(record))
        assert list(counts) == [call] * parts
    assert helper.slot[worker.OWNER] == 0 and helper.slot[worker.JOB] == 0


def test_without_a_slot_or_with_a_slot_in_use_the_caller_runs_every_part(mark):
    helper = worker.worker()
    parallel = _PARALLEL(worker.parallel_address())
    counts = (ctypes.c_int64 * 4)()
    record = _record(mark, counts, 4)
    parallel(None, ctypes.addressof(record))
    assert list(counts) == [1] * 4
    helper.slot[worker.OWNER] = 1  # another caller's
    try:
        parallel(helper.address, ctypes.addressof(record))
    finally:
        helper.slot[worker.OWNER] = 0
    assert list(counts) == [2] * 4


def test_callers_on_two_threads_each_get_all_their_parts(mark):
    helper = worker.worker()
    parallel = _PARALLEL(worker.parallel_address())
    failures = []

    def caller():
        counts = (ctypes.c_int64 * 3)()
        record = _record(mark, counts, 3)
        for call in range(1, 2001):
            helper.wake()
            parallel(helper.address, ctypes.addressof(record))
            if list(counts) != [call] * 3:
                failures.append(list(counts))
                return

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_the_helper_sleeps_when_idle():
    helper = worker.worker()
    helper.wake()
    deadline = time.monotonic() + 10
    while helper.slot[worker.AWAKE] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not helper.slot[worker.AWAKE]
    helper.wake()  # and wakes again
    deadline = time.monotonic() + 10
    while not helper.slot[worker.AWAKE] and time.monotonic() < deadline:
        time.sleep(0.001)
    assert helper.slot[worker.AWAKE]


def _train(x, y) -> float:
    _, step = linear_regression()
    compiled = ember.compile(step, backend="llvm")
    loss = None
    for _ in range(3):
        for start in range(0, 1024, 256):
            loss = compiled(x[start : start + 256], y[start : start + 256])
    assert loss is not None
    return loss.item()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_trains_to_the_same_loss():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((1024, 100)).astype(np.float32)
    target_ = (data @ rng.standard_normal((100, 1)) / 10).astype(np.float32)
    x, y = ember.from_numpy(data), ember.from_numpy(target_)
    parent = _train(x, y)  # the helper is running now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, repr(_train(x, y)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = float(pipe.read())
    os.waitpid(pid, 0)
    assert child == parent


#: Part ``k`` stores the id of the thread that ran it (``pthread_self``, whose
#: address is ``args[0]``) at ``args[1 + k]``; part 1 then spins ``args[3]``
#: counter ticks.
_WHO_IR = """
define void @ember_who(ptr %args, i64 %part) {
entry:
  %self.fn = load ptr, ptr %args
  %id = call i64 %self.fn()
  %slot = add i64 %part, 1
  %at = getelementptr i64, ptr %args, i64 %slot
  store atomic i64 %id, ptr %at seq_cst, align 8
  %slow = icmp eq i64 %part, 1
  br i1 %slow, label %start, label %done
start:
  %ticks.at = getelementptr i64, ptr %args, i64 3
  %ticks = load i64, ptr %ticks.at
  %t0 = call i64 @llvm.readcyclecounter()
  br label %spin
spin:
  %t = call i64 @llvm.readcyclecounter()
  %spent = sub i64 %t, %t0
  %more = icmp ult i64 %spent, %ticks
  br i1 %more, label %spin, label %done
done:
  ret void
}
declare i64 @llvm.readcyclecounter()
"""


@pytest.fixture(scope="module")
def who():
    yield from _loaded(_WHO_IR, "ember_who")


def _rest_cleared(helper):
    helper.slot[worker.REST_UNTIL] = 0


def test_callers_rest_from_a_late_helper_then_use_it_again(who):
    if launch_threads() < 2:
        pytest.skip("the helper needs a second CPU to take a part")
    helper = worker.worker()
    parallel = _PARALLEL(worker.parallel_address())
    pthread_self = ctypes.cast(ctypes.CDLL(None).pthread_self, ctypes.c_void_p).value
    args = (ctypes.c_int64 * 4)()
    args[0] = pthread_self
    args[3] = helper.slot[worker.LATE_TICKS] * 20  # 2 ms: late by any measure
    record = _record(who, args, 2)
    caller = threading.get_ident()
    try:
        # Until the helper takes the slow part while this thread runs the fast one.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            _rest_cleared(helper)
            helper.wake()
            time.sleep(0.001)  # the helper spins now
            parallel(helper.address, ctypes.addressof(record))
            if args[1] == caller and args[2] != caller:
                break
        else:
            pytest.fail("the helper never took a part in 20 s")
        assert helper.slot[worker.REST_UNTIL] != 0
        # Resting: a call publishes nothing, runs every part here, and wake()
        # leaves the helper asleep.
        generation = helper.slot[worker.GENERATION]
        args[3] = 0
        parallel(helper.address, ctypes.addressof(record))
        assert helper.slot[worker.GENERATION] == generation
        assert args[1] == args[2] == caller
        deadline = time.monotonic() + 10
        while helper.slot[worker.AWAKE] and time.monotonic() < deadline:
            time.sleep(0.01)
        helper.wake()
        awake = []
        for _ in range(20):  # a woken helper spins for SPIN_SECONDS
            time.sleep(0.0005)
            awake.append(helper.slot[worker.AWAKE])
        assert not any(awake)
        # The rest over, the next call publishes again and clears it.
        helper.slot[worker.REST_UNTIL] = 1
        parallel(helper.address, ctypes.addressof(record))
        assert helper.slot[worker.REST_UNTIL] == 0
        assert helper.slot[worker.GENERATION] == generation + 1
    finally:
        _rest_cleared(helper)
