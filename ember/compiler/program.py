"""``Program``: the runnable result of the native backend.

A program owns its steps (compiled kernels and BLAS calls), a buffer plan and a
schedule. Every value of the graph lives in a *slot*: an argument (a graph input or
parameter, supplied per call), a constant, an intermediate buffer, or a graph result.
A view has no slot of its own; it reads its root's slot through its strides.

Buffer plan: intermediate buffers are allocated once, when the program is built, and
shared by values whose lifetimes do not overlap (first fit over the schedule, a
buffer is released after the last step that reads it). Results get fresh arrays on
every call, so that a result the caller holds is never overwritten by a later call.
Calls from several threads run one at a time, since they share the planned buffers.

Before any native code runs, every argument is checked against the signature the
program was compiled for: shape, dtype, strides, and that the layout lies inside its
storage. A mismatch raises :class:`~ember.errors.SignatureError` naming the argument.
Kernels are prepared when the program is built (their planned buffers checked
once), so a call checks each argument once at this boundary instead of once per
kernel that reads it (:mod:`ember.compiler.boundary`), and consecutive small kernels run as one
native call.
"""

from __future__ import annotations

import abc
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember import settings
from ember.compiler.boundary import Boundary, first_address, sequenced
from ember.compiler.codegen.launch import CallLoop, LaunchSequence
from ember.compiler.concurrency import pair_products, split_unpaired, step_times
from ember.compiler.streaming import stream_passes
from ember.errors import SignatureError
from ember.ir.ieee import quiet
from ember.ir.layout import span, within_bounds
from ember.ir.meta import TensorMeta
from ember.runtime.tensor import Storage as _TensorStorage
from ember.runtime.tensor import Tensor as _Tensor

logger = logging.getLogger(__name__)


#: How many earlier results per result slot a call may write again.
RECYCLED = 2
#: Results of at most this many bytes are written to one array of the program and
#: copied out after the call: copying a small array costs less than writing a new
#: address into the launches that write it, which recycling two arrays in turn
#: needs on every call (a loss, a bias's gradient).
STAGED_BYTES = 4096

#: Byte alignment of every planned buffer (a cache line, and a full AVX-512 vector).
ALIGNMENT = 64


@dataclass(frozen=True)
class Operand:
    """How a step reads or writes one value: its slot and its layout in that slot.

    ``meta`` holds the value's shape, dtype and strides; ``offset`` is the element
    offset from the slot's first element (the view's offset minus its root's).
    """

    slot: int
    meta: TensorMeta
    offset: int = 0

    def array(self, env: Sequence[Storage]) -> np.ndarray:
        """A numpy view of this operand in the storage ``env`` holds for its slot."""
        flat, base = env[self.slot]
        item = self.meta.dtype.itemsize
        return np.ndarray(
            self.meta.shape,
            self.meta.dtype.np_dtype,
            buffer=flat,
            offset=(base + self.offset) * item,
            strides=tuple(s * item for s in self.meta.strides),
        )


#: What a slot holds during a call: a flat array and the element offset of the
#: slot's first element in it.
Storage = tuple[np.ndarray, int]


class Step(abc.ABC):
    """One entry of the schedule: reads and writes operands of the environment."""

    name: str = "step"
    reads: tuple[Operand, ...] = ()
    writes: tuple[Operand, ...] = ()

    @abc.abstractmethod
    def run(self, env: Sequence[Storage]) -> None:
        """Execute the step against the storages of ``env``."""

    def bind_planned(self, env: Sequence[Storage | None]) -> None:
        """Called once with the slots that never change between calls (constants and
        planned buffers) filled in and the others None; a step may prepare views.
        The default prepares nothing."""
        return None

    def describe(self) -> str:
        """One line for the program dump."""
        return self.name


class ArgSpec:
    """What the program was compiled for, for one argument: its node's name, meta,
    kind (``input``, ``param`` or ``buffer``) and qualified name (``target``)."""

    def __init__(
        self, name: str, meta: TensorMeta, kind: str = "input", target: str = ""
    ) -> None:
        self.name = name
        self.meta = meta
        self.kind = kind
        self.target = target
        self._strides = _effective_strides(meta)
        self._extent = span(meta.shape, meta.strides, 0)[1]
        self.np_dtype = meta.dtype.np_dtype
        #: The strides of a flat storage of this dtype (numpy's, in bytes).
        self._flat_strides = (self.np_dtype.itemsize,)

    def check(self, position: int, value: Any) -> Storage:
        """The storage of ``value`` after checking it matches; SignatureError if not."""
        meta = getattr(value, "_meta", None)
        if meta is self.meta or (
            type(meta) is TensorMeta
            and meta.shape == self.meta.shape
            and meta.dtype is self.meta.dtype
            and meta.strides == self.meta.strides
        ):
            # The common case, an ember tensor laid out exactly as compiled for.
            flat = value._storage.data
            offset = meta.offset
            if offset >= 0 and (
                self._extent == 0 or offset + self._extent <= flat.shape[0]
            ):
                return flat, offset
        flat, offset, meta = _storage_of(value, self.name)
        self._check_layout(position, meta)
        start, stop = span(meta.shape, meta.strides, offset)
        if offset < 0 or (stop > start and stop > flat.shape[0]):
            raise SignatureError(
                f"argument {position} (%{self.name}) addresses elements [{start}, "
                f"{stop}) of a storage of {flat.shape[0]} elements",
                op=self.name,
                expected=f"a layout inside {flat.shape[0]} elements",
                actual=f"elements [{start}, {stop})",
                hint="the tensor's storage is smaller than its layout claims",
            )
        return flat, offset

    def _check_layout(self, position: int, meta: TensorMeta) -> None:
        expected = self.meta
        problem: tuple[str, Any, Any] | None = None
        if meta.dtype is not expected.dtype:
            problem = ("dtype", expected.dtype.name, meta.dtype.name)
        elif meta.shape != expected.shape:
            problem = ("shape", expected.shape, meta.shape)
        elif _effective_strides(meta) != self._strides:
            problem = ("strides", expected.strides, meta.strides)
        if problem is None:
            return
        what, want, got = problem
        raise SignatureError(
            f"argument {position} (%{self.name}) has {what} {got}, but the program "
            f"was compiled for {what} {want}",
            op=self.name,
            expected=f"{expected!r}",
            actual=f"{meta!r}",
            hint="call the compiled model through ember.compile, which recompiles "
            "for new signatures, or pass .contiguous() inputs",
        )


def _effective_strides(meta: TensorMeta) -> tuple[int, ...]:
    """Strides with those of size-1 dims ignored: they never move the address."""
    return tuple(0 if size == 1 else st for size, st in zip(meta.shape, meta.strides))


def _storage_of(value: Any, name: str) -> tuple[np.ndarray, int, TensorMeta]:
    """(flat storage, element offset, meta) of an ember Tensor or a numpy array."""
    meta = getattr(value, "meta", None)
    storage = getattr(value, "_storage", None)
    if isinstance(meta, TensorMeta) and storage is not None:
        return storage.data, meta.offset, meta
    if isinstance(value, np.ndarray):
        return _numpy_storage(value, name)
    raise SignatureError(
        f"argument %{name} is a {type(value).__name__}, not a tensor",
        op=name,
        expected="an ember Tensor or a numpy array",
        actual=type(value).__name__,
    )


def _numpy_storage(array: np.ndarray, name: str) -> tuple[np.ndarray, int, TensorMeta]:
    from ember.ir.dtypes import from_numpy_dtype

    dtype = from_numpy_dtype(array.dtype)
    item = array.itemsize
    if any(s < 0 or s % item for s in array.strides):
        raise SignatureError(
            f"argument %{name}: numpy strides {array.strides} are negative or not a "
            "multiple of the item size",
            op=name,
            expected="non-negative strides in whole elements",
            actual=array.strides,
            hint="pass np.ascontiguousarray(array)",
        )
    strides = tuple(s // item for s in array.strides)
    meta = TensorMeta(tuple(array.shape), dtype, strides, 0)
    if array.flags.c_contiguous:
        return array.reshape(-1), 0, meta
    extent = span(meta.shape, strides, 0)[1]
    flat = np.lib.stride_tricks.as_strided(array, shape=(extent,), strides=(item,))
    return flat, 0, meta


@dataclass(frozen=True)
class ResultSpec:
    """How a graph result is read from the environment after the steps ran.

    A result computed by a step lives in a fresh array of that call; a result that
    is an argument (or a view of one) is a view of the caller's storage, like an
    eager view; a constant is copied, so the caller cannot edit the program's copy.
    """

    operand: Operand
    copy: bool = False

    def read(self, env: Sequence[Storage]) -> np.ndarray:
        array = self.operand.array(env)
        return array.copy() if self.copy else array


class BufferPlan:
    """Intermediate buffers shared by liveness; built once, reused by every call.

    ``assign`` maps a slot to the index of its buffer; ``buffers`` hold raw bytes
    aligned to :data:`ALIGNMENT`.
    """

    def __init__(self, sizes: dict[int, int], lifetimes: dict[int, tuple[int, int]]):
        self.assign: dict[int, int] = {}
        self.capacity: list[int] = []
        free: list[int] = []
        events = sorted(lifetimes.items(), key=lambda item: (item[1][0], item[0]))
        active: list[tuple[int, int]] = []
        for slot, (start, end) in events:
            for buffer_end, buffer in list(active):
                if buffer_end < start:
                    active.remove((buffer_end, buffer))
                    free.append(buffer)
            buffer = self._take(free, sizes[slot])
            self.assign[slot] = buffer
            active.append((end, buffer))
        self.buffers = [_aligned_bytes(size) for size in self.capacity]

    def _take(self, free: list[int], size: int) -> int:
        fitting = [b for b in free if self.capacity[b] >= size]
        if fitting:
            best = min(fitting, key=lambda b: self.capacity[b])
            free.remove(best)
            return best
        if free:
            # Grow the largest free buffer rather than add one more.
            largest = max(free, key=lambda b: self.capacity[b])
            free.remove(largest)
            self.capacity[largest] = size
            return largest
        self.capacity.append(size)
        return len(self.capacity) - 1

    @property
    def total_bytes(self) -> int:
        return sum(self.capacity)


def _aligned_bytes(size: int) -> np.ndarray:
    raw = np.zeros(max(size, 1) + ALIGNMENT, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start : start + max(size, 1)]


class Program:
    """A compiled graph: call it like the graph interpreter, get its results.

    ``program(inputs, params)`` binds the graph's inputs in order and its parameters
    and buffers by qualified name, and returns ember Tensors;
    ``program.run_arrays(*values)`` takes every argument positionally (inputs, then
    parameters and buffers, in graph order; Tensors or numpy arrays) and returns
    numpy arrays.
    """

    def __init__(
        self,
        args: Sequence[ArgSpec],
        constants: dict[int, np.ndarray],
        intermediates: dict[int, TensorMeta],
        fresh: dict[int, TensorMeta],
        results: Sequence[ResultSpec],
        steps: Sequence[Step],
        slot_count: int,
        arg_slots: Sequence[int],
        donated: Mapping[int, int] | None = None,
    ) -> None:
        self.args = tuple(args)
        #: Results written over an argument in place, by index: their argument's
        #: slot. :meth:`run_fresh_arrays` hands back None for them.
        self.donated = dict(donated or {})
        # Independent large products stand in pairs that run side by side.
        pairs: set[int] = set()
        if settings.get("streamed_passes"):
            steps = stream_passes(steps)
        if settings.get("concurrent_products"):
            steps, pairs = split_unpaired(*pair_products(steps))
        self.steps = tuple(steps)
        self.results = tuple(results)
        self._arg_slots = tuple(arg_slots)
        sizes = {slot: meta.nbytes for slot, meta in intermediates.items()}
        times = step_times(len(self.steps), pairs)
        self.plan = BufferPlan(sizes, _lifetimes(self.steps, set(intermediates), times))
        env: list[Storage | None] = [None] * slot_count
        for slot, value in constants.items():
            env[slot] = (value.reshape(-1), 0)
        for slot, meta in intermediates.items():
            raw = self.plan.buffers[self.plan.assign[slot]]
            env[slot] = (raw[: meta.nbytes].view(meta.dtype.np_dtype), 0)
        # A small result is written to an array of the program, bound once like a
        # planned buffer, and copied out after each call (STAGED_BYTES).
        self._staged = [
            (slot, np.empty(meta.numel, meta.dtype.np_dtype))
            for slot, meta in fresh.items()
            if meta.nbytes <= STAGED_BYTES
        ]
        for slot, array in self._staged:
            env[slot] = (array, 0)
        self._env = env
        for step in self.steps:
            step.bind_planned(env)
        self._fresh = [
            (slot, meta.numel, meta.dtype.np_dtype)
            for slot, meta in fresh.items()
            if meta.nbytes > STAGED_BYTES
        ]
        self._result_layouts = [_fixed_layout(r, fresh) for r in self.results]
        # The common case: every result in a fresh array of its own at a layout
        # fixed per program (or written over an argument), so a call only wraps
        # each array in a tensor.
        kept = [k for k in range(len(self.results)) if k not in self.donated]
        slots = [self.results[k].operand.slot for k in kept]
        fixed = [self._result_layouts[k] for k in kept]
        self._simple_results: list[tuple[int, TensorMeta] | None] | None = None
        if None not in fixed and len(set(slots)) == len(slots):
            simple: dict[int, tuple[int, TensorMeta]] = {
                k: (slot, layout)
                for k, slot, layout in zip(kept, slots, fixed)
                if layout is not None
            }
            self._simple_results = [simple.get(k) for k in range(len(self.results))]
        self._arg_positions = {slot: i for i, slot in enumerate(self._arg_slots)}
        self._updated_positions = [
            i for i, slot in enumerate(self._arg_slots) if slot in self.donated.values()
        ]
        self._input_count = sum(a.kind == "input" for a in self.args)
        self._targets = [None if a.kind == "input" else a.target for a in self.args]
        self._boundary = Boundary(
            self.args, self._arg_slots, fresh, self.plan, set(self.donated.values())
        )
        self._schedule = sequenced(
            [self._boundary.prepare(step, env) for step in self.steps], pairs
        )
        self._resident = _Resident.of(self._schedule)
        # Per argument: what _execute_resident keeps of the last tensor passed,
        # and whether the storages at the last check were disjoint.
        self._resident_seen: list[tuple[Any, ...] | None] = [None] * len(self.args)
        self._disjoint = False
        # The planned buffers are shared by every call: calls from several threads
        # take turns rather than overwrite each other's intermediates.
        self._lock = threading.Lock()
        # Per fresh slot: up to RECYCLED arrays a later call may write again, each
        # with the address of its first element.
        self._recycled: dict[int, list[tuple[np.ndarray, int]]] = {
            slot: [] for slot, _, _ in self._fresh
        }
        self._fresh_addresses: dict[int, int] = {}
        # Per argument: the last ember tensor's storage, meta, checked storage and
        # address, when a later call may reuse them (see _remember).
        self._seen: list[tuple[TensorMeta, Any, int, int | None] | None] = [None] * len(
            self.args
        )

    def __call__(
        self, inputs: Sequence[Any], params: Mapping[str, Any] | None = None
    ) -> list[Any]:
        values = self._bind(inputs, params or {})
        env = self._execute(values)
        simple = self._simple_results
        if simple is not None and not self.donated:
            return [
                _Tensor._new(_TensorStorage(env[entry[0]][0]), entry[1], None)
                for entry in simple
                if entry is not None
            ]
        storages: dict[int, Any] = {}
        results = []
        for result, fixed in zip(self.results, self._result_layouts):
            operand = result.operand
            meta = operand.meta
            if result.copy:
                array = result.read(env)
                results.append(
                    _Tensor._make(
                        _TensorStorage(array.reshape(-1)),
                        TensorMeta.contiguous(meta.shape, meta.dtype),
                    )
                )
                continue
            slot = operand.slot
            storage = storages.get(slot)
            if storage is None:
                position = self._arg_positions.get(slot)
                value = None if position is None else values[position]
                if isinstance(value, _Tensor):
                    # A view of an argument shares the argument's storage.
                    storage = value._storage
                else:
                    storage = _TensorStorage(env[slot][0])
                storages[slot] = storage
            if fixed is not None:
                results.append(_Tensor._new(storage, fixed, None))
                continue
            layout = TensorMeta(
                meta.shape, meta.dtype, meta.strides, env[slot][1] + operand.offset
            )
            results.append(_Tensor._make(storage, layout))
        return results

    @property
    def result_layouts(self) -> list[TensorMeta | None] | None:
        """The layout of each result in its own fresh flat array, fixed for every
        call (None for a result written over its argument); None when some result
        is of neither kind (see :meth:`run_fresh_arrays`)."""
        simple = self._simple_results
        if simple is None:
            return None
        return [None if entry is None else entry[1] for entry in simple]

    def run_fresh_arrays(
        self, values: Sequence[Any], changed: bool = False
    ) -> list[np.ndarray | None]:
        """Run on positional arguments (as :meth:`run_arrays`) and return the flat
        array each result lives in, at the layout :attr:`result_layouts` gives;
        only for programs that have those layouts.

        Wrapping no result in a tensor saves a caller that copies a result
        elsewhere (a compiled training step's new parameter values) creating
        one; an array it drops is written again by a later call. ``changed``
        says the caller knows some argument differs from the last call's (a new
        batch): the check for repeated arguments is skipped.
        """
        assert self._simple_results is not None
        resident = self._resident
        env: list[Any] | None = None
        if resident is not None and not changed and self._lock.acquire(blocking=False):
            # The repeat is checked holding the lock: another thread's call in
            # between would leave its own addresses in the launch tables.
            try:
                if self._repeated(values):
                    # The very arguments of the last call: nothing to check.
                    env = list(self._env)
                    self._fresh_arrays(env, resident)
                    for run in resident.runs:
                        run()
                    self._copy_staged(env)
            finally:
                self._lock.release()
        if env is None:
            env = self._execute(values)
        return [
            None if entry is None else env[entry[0]][0]
            for entry in self._simple_results
        ]

    def steady(self) -> _Steady | None:
        """A runner for the calls of a training loop (see :class:`_Steady`), or
        None when this program's calls need more than it does: a launch that is
        not prepared, or a result too large to stage."""
        if self._resident is None or self._fresh or self._simple_results is None:
            return None
        return _Steady(self)

    def run_arrays(self, *values: Any) -> list[np.ndarray]:
        """Run on positional arguments; return numpy arrays (see the class doc)."""
        env = self._execute(values)
        return [r.read(env) for r in self.results]

    def _bind(self, inputs: Sequence[Any], params: Mapping[str, Any]) -> list[Any]:
        if len(inputs) != self._input_count:
            positional = [a for a in self.args if a.kind == "input"]
            raise SignatureError(
                f"the program takes {len(positional)} inputs "
                f"({', '.join('%' + a.name for a in positional)}), got {len(inputs)}",
                expected=len(positional),
                actual=len(inputs),
            )
        feed = iter(inputs)
        values = [
            next(feed) if target is None else params.get(target)
            for target in self._targets
        ]
        missing = [i for i, value in enumerate(values) if value is None]
        if missing:
            spec = self.args[missing[0]]
            raise SignatureError(
                f"the program reads {spec.kind} {spec.target!r}, which was not given",
                expected=spec.target,
                actual=sorted(params)[:8],
                hint="pass the parameters of the model the program was built from",
            )
        return values

    def _execute(self, values: Sequence[Any]) -> list[Storage]:
        if len(values) != len(self.args):
            raise SignatureError(
                f"the program takes {len(self.args)} arguments "
                f"({', '.join('%' + a.name for a in self.args)}), got {len(values)}",
                expected=len(self.args),
                actual=len(values),
            )
        if self._resident is not None:
            return self._execute_resident(values, self._resident)
        env = list(self._env)
        seen = self._seen
        known: dict[int, int] = {}
        missed = []
        for position, (spec, value, slot) in enumerate(
            zip(self.args, values, self._arg_slots)
        ):
            last = seen[position]
            if last is not None and isinstance(value, _Tensor):
                flat = value._storage.data
                if value._meta is last[0] and last[1]() is flat:
                    env[slot] = (flat, last[2])
                    if last[3] is not None:
                        known[slot] = last[3]
                    continue
            env[slot] = spec.check(position, value)
            missed.append(position)
        with self._lock:
            self._fresh_arrays(env)
            addresses = self._boundary.addresses(
                env,  # type: ignore[arg-type]
                self._fresh_addresses,
                known,
            )
            self._remember(values, missed, env, addresses)  # type: ignore[arg-type]
            for step, launch, slots in self._schedule:
                if launch is None:
                    step.run(env)  # type: ignore[arg-type]
                else:
                    launch([addresses[slot] for slot in slots])
            self._copy_staged(env)
        return env  # type: ignore[return-value]

    def _execute_resident(self, values: Sequence[Any], resident: _Resident) -> Any:
        """:meth:`_execute` for a schedule of prepared launches only: each address
        is written into the launches' pointer arrays when it differs from the
        last call's, and the launches run without taking addresses.

        Per argument position, the last tensor's meta, flat storage (by weak
        reference), element offset, address and storage address are kept. The
        same meta over the same storage needs no check; a new meta over the same
        storage (the next batch sliced from a dataset) needs only its layout
        compared and its bounds checked, when that storage lies clear of the
        planned buffers; anything else is checked in full.
        """
        env = list(self._env)
        seen = self._resident_seen
        last = resident.last
        boundary = self._boundary
        targets = resident.targets
        with self._lock:
            for position, (spec, value, slot) in enumerate(
                zip(self.args, values, self._arg_slots)
            ):
                hit = seen[position]
                if hit is not None and isinstance(value, _Tensor):
                    flat = value._storage.data
                    if hit[1]() is flat:
                        meta = value._meta
                        if meta is hit[0]:
                            # The address found then is still in the launch tables.
                            env[slot] = (flat, hit[2])
                            continue
                        if self._rebind(position, flat, meta, hit, False):
                            env[slot] = (flat, meta.offset)
                            continue
                # Forget that the storages were disjoint before a check here can
                # fail: a later call passing what this one bound must check again.
                self._disjoint = False
                flat, base = env[slot] = spec.check(position, value)
                address = None
                if slot in targets:
                    address = boundary._argument(slot, spec, flat, base)
                    if last.get(slot) != address:
                        resident.write(slot, address)
                seen[position] = self._resident_entry(value, flat, base, address)
            if boundary.updated and not self._disjoint:
                self._disjoint = boundary.check_updated(env)  # type: ignore[arg-type]
            elif boundary.updated:
                boundary.check_writable(env)  # type: ignore[arg-type]
            self._fresh_arrays(env, resident)
            for run in resident.runs:
                run()
            self._copy_staged(env)
        return env

    def _rebind(
        self, position: int, flat: np.ndarray, meta: Any, hit: Any, laid_out: bool
    ) -> bool:
        """Bind a new view (``meta``) of the flat storage the last call's argument
        at ``position`` had (``hit`` is what was kept of it), by its bounds alone,
        when that storage lies clear of the planned buffers; ``laid_out`` says the
        caller found the view of the argument's layout. False when the argument
        must be checked in full."""
        spec = self.args[position]
        offset = meta.offset
        # The flat array's dtype can be set in place (numpy allows it for views):
        # then its element count no longer bounds the elements the kernels read.
        if hit[4] is None or flat.strides != spec._flat_strides:
            return False
        if not laid_out:
            layout = spec.meta
            if (
                meta.strides != layout.strides
                or meta.shape != layout.shape
                or meta.dtype is not layout.dtype
            ):
                return False
        if offset < 0 or offset + spec._extent > flat.shape[0]:
            return False
        address = hit[4] + offset * flat.itemsize
        resident = self._resident
        assert resident is not None
        slot = self._arg_slots[position]
        if slot in resident.targets:
            resident.write(slot, address)
        self._resident_seen[position] = (meta, hit[1], offset, address, hit[4])
        return True

    def _repeated(self, values: Sequence[Any]) -> bool:
        """Whether ``values`` are tensors with the metas and flat storages of the
        last call's arguments, all seen by :meth:`_execute_resident` then (so
        their checks, addresses and alias check still hold)."""
        seen: list[Any] = self._resident_seen
        if len(values) != len(seen) or not self._disjoint and self._boundary.updated:
            return False
        try:
            for value, entry in zip(values, seen):
                if value._meta is not entry[0] or value._storage.data is not entry[1]():
                    return False
            # Made read-only since: the general path refuses it.
            for position in self._updated_positions:
                if not values[position]._storage.data.flags.writeable:
                    return False
        except (AttributeError, TypeError):  # not a tensor, or never seen
            return False
        return True

    def _resident_entry(
        self, value: Any, flat: np.ndarray, base: int, address: int | None
    ) -> tuple[Any, ...] | None:
        """What :meth:`_execute_resident` keeps of an argument checked in full:
        the storage's address too when every view of it lies clear of the
        planned buffers (so a new view needs only its bounds checked)."""
        if not isinstance(value, _Tensor) or value._storage.data is not flat:
            return None
        whole = None
        if address is not None:
            start = address - base * flat.itemsize
            if self._boundary.clear_of_planned(start, start + flat.nbytes):
                whole = start
        return (value._meta, weakref.ref(flat), base, address, whole)

    def _remember(
        self,
        values: Sequence[Any],
        positions: list[int],
        env: list[Storage],
        addresses: dict[int, int],
    ) -> None:
        """Remember the checked layout and address of each ember tensor argument
        at ``positions``.

        A later call passing a tensor with the same meta object over the same flat
        array gets the same storage and address without checking again: the meta
        is immutable, the flat array can never move, and the checks it passed
        depend on nothing else. The table holds the flat array by weak reference
        only: keeping it alive would keep a result of another program (fed back
        as an argument) from being recycled.
        """
        for position in positions:
            value = values[position]
            slot = self._arg_slots[position]
            if (
                not isinstance(value, _Tensor)
                or value._storage.data is not env[slot][0]
            ):
                self._seen[position] = None
                continue
            flat, base = env[slot]
            self._seen[position] = (
                value._meta,
                weakref.ref(flat),
                base,
                addresses.get(slot),
            )

    def _copy_staged(self, env: list[Any]) -> None:
        """Replace each small result in ``env`` by a copy of the program's array
        (see :data:`STAGED_BYTES`), under the lock that the call holds."""
        for slot, array in self._staged:
            env[slot] = (array.copy(), 0)

    def _fresh_arrays(self, env: list[Any], resident: _Resident | None = None) -> None:
        """Put in ``env`` the array each result is written to: one of an earlier
        call's when nobody holds it any more, else a new one.

        A result is returned in a new array on every call, so a tensor the caller
        keeps is never overwritten. Allocating that array costs page faults (about
        1.7 µs per 4 KiB here), so an array whose tensors, views and numpy views are
        all gone is written again instead: the pool's reference, the loop's name and
        the argument of ``getrefcount`` are then the only three left. Each slot
        keeps the arrays of its last ``RECYCLED`` calls, so a result the caller drops
        only after the next call (a parameter's ``.grad``, replaced once the step
        has run) is recycled too. A small result is written to the program's own
        array and copied out after the call (:data:`STAGED_BYTES`).
        """
        recycled = self._recycled
        addresses = self._fresh_addresses
        refcount = sys.getrefcount
        last = {} if resident is None else resident.last
        for slot, numel, np_dtype in self._fresh:
            pool = recycled[slot]
            for entry in reversed(pool):  # the newest first: it is likely cached
                array = entry[0]
                if refcount(array) == 3:
                    break
            else:
                array = np.empty(numel, np_dtype)
                # The pool keeps the array alive, so its address stays valid.
                entry = (array, first_address(array))
                if len(pool) >= RECYCLED:
                    pool.pop(0)
                pool.append(entry)
            address = addresses[slot] = entry[1]
            env[slot] = (array, 0)
            # A resident program's launches take the address when it changed.
            if resident is not None and last.get(slot) != address:
                if slot in resident.targets:
                    resident.write(slot, address)

    @property
    def checked_per_call(self) -> list[str]:
        """The kernels whose launcher checks their buffers on every call: those
        that write an argument or read past its layout (see
        :class:`~ember.compiler.boundary.Boundary`);
        the others were checked once when the program was built."""
        return [
            step.name
            for step, launch, _ in self._schedule
            if launch is None and isinstance(step, KernelStep)
        ]

    @property
    def sequences(self) -> list[list[str]]:
        """The kernels run together by one native call, run by run (see
        :class:`~ember.compiler.codegen.launch.LaunchSequence`)."""
        return [
            [step.name for step in steps]
            for steps, launch, _ in self._schedule
            if isinstance(steps, tuple) and not getattr(launch, "concurrent", False)
        ]

    @property
    def concurrent(self) -> list[list[str]]:
        """The products run side by side, pair by pair (see
        :mod:`ember.compiler.concurrency`)."""
        return [
            [step.name for step in steps]
            for steps, launch, _ in self._schedule
            if getattr(launch, "concurrent", False)
        ]

    def describe(self) -> str:
        """The schedule and the buffer plan as text."""
        lines = [
            f"program: {len(self.steps)} steps, {len(self.plan.capacity)} planned "
            f"buffers, {self.plan.total_bytes} bytes"
        ]
        lines.extend(f"  {step.describe()}" for step in self.steps)
        return "\n".join(lines)


class _Steady:
    """The calls of a training loop, run with the least work that keeps them as
    safe as :meth:`Program._execute_resident`: every argument a tensor over the
    flat storage the last call's had at the same position, either the same view
    or a new one of the same layout that lies within the storage (the next batch
    sliced from a dataset), the arguments' storages disjoint as checked last, and
    every result small enough to be staged. :meth:`run` returns None for any
    other call, having changed nothing the general path does not expect; the
    caller then takes :meth:`Program.run_fresh_arrays`.
    """

    def __init__(self, program: Program) -> None:
        resident = program._resident
        assert resident is not None and program._simple_results is not None
        self.program = program
        self.resident = resident
        self.seen = program._resident_seen
        self.updated = program._updated_positions
        staged = dict(program._staged)
        self.results = [
            None if entry is None else staged[entry[0]]
            for entry in program._simple_results
        ]

    def run(self, args: Sequence[Any], others: Sequence[Any]) -> list[Any] | None:
        """Run on ``args`` followed by ``others`` (tensors, in argument order):
        ``args`` the program's inputs, of its layouts (the caller compared them),
        ``others`` the very tensors of the last call. Returns each result's array
        (None for one written over its argument), or None when the general path
        must run the call."""
        program = self.program
        lock = program._lock
        if not program._disjoint or not lock.acquire(blocking=False):
            return None
        try:
            seen, resident = self.seen, self.resident
            for position, value in enumerate(args):
                hit = seen[position]
                if hit is None:
                    return None
                flat = value._storage.data
                if hit[1]() is not flat:
                    return None
                meta = value._meta
                if meta is not hit[0] and not program._rebind(
                    position, flat, meta, hit, True
                ):
                    return None
            if not self._same_others(others, len(args)):
                return None
            count = len(args)
            for position in self.updated:
                value = args[position] if position < count else others[position - count]
                if not value._storage.data.flags.writeable:
                    return None
            for run in resident.runs:
                run()
            return [None if array is None else array.copy() for array in self.results]
        finally:
            lock.release()

    def _same_others(self, others: Sequence[Any], start: int) -> bool:
        """Whether ``others``, the inputs from position ``start`` on, are the
        very layouts over the very storages the last call had."""
        seen = self.seen
        for position, value in enumerate(others, start):
            hit = seen[position]
            if (
                hit is None
                or value._meta is not hit[0]
                or value._storage.data is not hit[1]()
            ):
                return False
        return True

    def run_many(
        self,
        batches: Sequence[Sequence[Any]],
        others: Sequence[Any],
        stacked: Sequence[int],
        feedback: Sequence[tuple[int, int, np.ndarray]] = (),
    ) -> tuple[int, list[np.ndarray | None]] | None:
        """Run one call per batch by one native loop (:class:`CallLoop`), as
        :meth:`run` would call by call: each batch the program's inputs;
        ``others`` the very tensors of the last call.

        Runs the longest prefix of ``batches`` that are views of the program's
        layouts over the flat storages the last call's inputs had, lying within
        them, and returns its length and, per result, the results of every
        call stacked (``(calls, size)``) for the indices in ``stacked`` and the
        last call's for the others (None for a result written over its argument).
        ``feedback`` names float64 elements of results ``(index, element,
        array)`` that each call copies into ``array`` (the 0-d storage of an
        input among ``others``), the next call's input. Returns None, having
        run nothing, when not even the first batch qualifies or the launches
        cannot run from native code.
        """
        program = self.program
        launches = self.resident.loop_launches()
        if launches is None or not program._disjoint:
            return None
        sources = {k: self.results[k] for k in stacked}
        if any(array is None for array in sources.values()):
            return None
        fed: list[tuple[int, int, int]] = []
        for k, element, into in feedback:
            source = self.results[k]
            if (
                source is None
                or source.dtype != np.float64
                or into.dtype != np.float64
                or not 0 <= element < source.size
                or into.size != 1
                or not into.flags.writeable
            ):
                return None
            fed.append((source.ctypes.data + 8 * element, into.ctypes.data, 8))
        lock = program._lock
        if not lock.acquire(blocking=False):
            return None
        try:
            seen, specs = self.seen, program.args
            width = len(batches[0])
            flats: list[np.ndarray] = []
            bases: list[tuple[int, int, int]] = []
            for position in range(width):
                hit = seen[position]
                if hit is None or hit[4] is None:
                    return None
                flat, spec = hit[1](), specs[position]
                if flat is None or flat.strides != spec._flat_strides:
                    return None
                flats.append(flat)
                bases.append((hit[4], flat.itemsize, flat.shape[0] - spec._extent))
            if not self._same_others(others, width):
                return None
            for position in self.updated:
                held = flats[position] if position < width else None
                if held is None:
                    held = others[position - width]._storage.data
                if not held.flags.writeable:
                    return None
            rows: list[int] = []
            count = 0
            append = rows.append
            expected = [
                (flat, spec.meta.strides, spec.meta.shape, spec.meta.dtype, *bound)
                for flat, spec, bound in zip(flats, specs, bases)
            ]
            for batch in batches:
                if len(batch) != width:
                    break
                for value, (flat, strides, shape, dtype, base, size, last) in zip(
                    batch, expected
                ):
                    if type(value) is not _Tensor or value._storage.data is not flat:
                        break
                    meta = value._meta
                    offset = meta.offset
                    if (
                        meta.strides != strides
                        or meta.shape != shape
                        or meta.dtype is not dtype
                        or not 0 <= offset <= last
                    ):
                        break
                    append(base + offset * size)
                else:
                    count += 1
                    continue
                del rows[count * width :]
                break
            if count == 0:
                return None
            addresses = np.array(rows, np.int64).reshape(count, width)
            patches = [
                (target, position)
                for position, slot in enumerate(program._arg_slots[:width])
                for target in self.resident.targets.get(slot, ())
            ]
            copies = [
                (array, np.empty((count, array.size), array.dtype))
                for array in sources.values()
                if array is not None
            ]
            stacks = dict(zip(sources, (stack for _, stack in copies), strict=True))
            CallLoop(launches, patches, width, copies, fed).run(addresses)
            # The last batch stays bound, as after a call on it.
            for position, value in enumerate(batches[count - 1]):
                rebound = program._rebind(
                    position, flats[position], value._meta, seen[position], True
                )
                assert rebound
            out: list[np.ndarray | None] = [
                stacks[k] if k in stacks else None if array is None else array.copy()
                for k, array in enumerate(self.results)
            ]
            return count, out
        finally:
            lock.release()


class _Resident:
    """How a program whose schedule is prepared launches only runs: ``targets``
    maps each slot the launches take by address to the pointer-array entries
    that hold it, ``last`` the address written there last, ``runs`` the launches
    in order."""

    def __init__(
        self, targets: dict[int, list[tuple[Any, int, int]]], launches: list[Any]
    ) -> None:
        self.targets = targets
        self.launches = launches
        self.runs = [launch.run for launch in launches]
        self.last: dict[int, int] = {}
        self._looped: list[Any] | None | bool = False

    @staticmethod
    def of(schedule: Sequence[tuple[Any, ...]]) -> _Resident | None:
        targets: dict[int, list[tuple[Any, int, int]]] = {}
        launches = []
        for _, launch, slots in schedule:
            if launch is None:
                return None
            for slot, target in zip(slots, launch.targets, strict=True):
                targets.setdefault(slot, []).append(target)
            launches.append(launch)
        return _Resident(targets, launches)

    def loop_launches(self) -> list[Any] | None:
        """The launches as :class:`CallLoop` takes them (a launch that runs by one
        native call becomes a sequence of one), or None when one cannot run from
        native code (a kernel split over the Python pool)."""
        if self._looped is False:
            looped: list[Any] | None = []
            for launch in self.launches:
                if hasattr(launch, "loop_call"):
                    looped.append(launch)  # type: ignore[union-attr]
                elif getattr(launch, "sequenceable", False):
                    looped.append(LaunchSequence([launch]))  # type: ignore[union-attr]
                else:
                    looped = None
                    break
            self._looped = looped
        return self._looped  # type: ignore[return-value]

    def write(self, slot: int, address: int) -> None:
        for args, position, delta in self.targets[slot]:
            args[position] = address + delta
        self.last[slot] = address


def _fixed_layout(
    result: ResultSpec, fresh: dict[int, TensorMeta]
) -> TensorMeta | None:
    """The layout of a result read from a fresh array: the same on every call, since
    the array is new and its offset 0. None for other results."""
    operand = result.operand
    root = fresh.get(operand.slot)
    if root is None or result.copy:
        return None
    meta = operand.meta
    if not within_bounds(meta.shape, meta.strides, operand.offset, root.numel):
        return None
    return TensorMeta(meta.shape, meta.dtype, meta.strides, operand.offset)


def _lifetimes(
    steps: Sequence[Step], planned: set[int], times: Sequence[int]
) -> dict[int, tuple[int, int]]:
    """First write and last read (as step ``times``) of every planned slot."""
    lifetimes: dict[int, tuple[int, int]] = {}
    for index, step in zip(times, steps):
        for operand in step.writes:
            if operand.slot in planned and operand.slot not in lifetimes:
                lifetimes[operand.slot] = (index, index)
        for operand in step.reads + step.writes:
            if operand.slot in lifetimes:
                start, _ = lifetimes[operand.slot]
                lifetimes[operand.slot] = (start, index)
    return lifetimes


class CallStep(Step):
    """A step that calls a Python function on numpy views of its operands (BLAS)."""

    def __init__(
        self,
        name: str,
        fn: Callable[..., None],
        reads: Sequence[Operand],
        writes: Sequence[Operand],
    ) -> None:
        self.name = name
        self.fn = fn
        self.reads = tuple(reads)
        self.writes = tuple(writes)
        self._fixed: list[np.ndarray | None] = [None] * len(self.reads + self.writes)

    def bind_planned(self, env: Sequence[Storage | None]) -> None:
        # Views of planned buffers and constants are built once, not on every call.
        self._fixed = [
            None if env[op.slot] is None else op.array(env)  # type: ignore[arg-type]
            for op in self.reads + self.writes
        ]

    def run(self, env: Sequence[Storage]) -> None:
        arrays = [
            op.array(env) if fixed is None else fixed
            for op, fixed in zip(self.reads + self.writes, self._fixed)
        ]
        self.fn(*arrays)


class GemmStep(CallStep):
    """A 2-D matmul that BLAS can read in place: ``compiled`` prepares a native
    launch of BLAS gemm (:class:`~ember.compiler.codegen.blas.Gemm`) that runs
    between kernels in one native call; when preparing fails, it calls
    ``np.matmul`` from Python like any :class:`CallStep`."""

    def __init__(
        self, name: str, compiled: Any, reads: Sequence[Operand], product: Operand
    ) -> None:
        super().__init__(name, _blas_matmul, reads, [product])
        self.compiled = compiled

    def describe(self) -> str:
        return f"{self.name} ({self.compiled.describe()})"


class KernelStep(Step):
    """A compiled native kernel, called on the flat storages of its operands' slots.

    The kernel applies each buffer's offset and strides itself, and its launcher
    checks every storage against the buffer before native code runs.
    """

    def __init__(
        self, compiled: Any, reads: Sequence[Operand], writes: Sequence[Operand]
    ) -> None:
        self.compiled = compiled
        self.name = compiled.kernel.name
        self.reads = tuple(reads)
        self.writes = tuple(writes)
        self._slots = [op.slot for op in self.reads + self.writes]

    def run(self, env: Sequence[Storage]) -> None:
        storages = []
        for slot in self._slots:
            flat, base = env[slot]
            storages.append(flat[base:] if base else flat)
        self.compiled.call_storage(*storages)

    def describe(self) -> str:
        reads = ", ".join(f"${op.slot}" for op in self.reads)
        writes = ", ".join(f"${op.slot}" for op in self.writes)
        return f"{writes} = {self.name}({reads})"


# Building a program from lowered groups -------------------------------------------

#: Compiles a LoopKernel; the result has ``call_storage(*flat_storages)`` and
#: ``kernel`` (see :mod:`ember.compiler.codegen.launch`).
KernelCompiler = Callable[[Any], Any]


@quiet
def _blas_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    # IEEE results without numpy's warning, as the native kernels give them.
    np.matmul(a, b, out=out)


class _SlotTable:
    """Slots of a graph's storages: arguments, constants, intermediates, results."""

    def __init__(self, graph: Any, result_roots: set[int]) -> None:
        self.slots: dict[int, int] = {}
        self.args: list[Any] = []
        self.constants: dict[int, np.ndarray] = {}
        self.intermediates: dict[int, TensorMeta] = {}
        self.fresh: dict[int, TensorMeta] = {}
        self.result_roots = result_roots
        for node in graph.nodes:
            if node.kind in ("input", "param", "buffer"):
                self.args.append(node)
                self.new(node)

    def new(self, node: Any) -> int:
        slot = len(self.slots)
        self.slots[id(node)] = slot
        return slot

    def computed(self, node: Any) -> int:
        """The slot of a value a step writes (fresh if it is a graph result)."""
        if id(node) in self.slots:
            return self.slots[id(node)]
        slot = self.new(node)
        if id(node) in self.result_roots:
            self.fresh[slot] = node.meta
        else:
            self.intermediates[slot] = node.meta
        return slot

    def operand(self, value: Any) -> Operand:
        """How a step reads ``value``: its root's slot, its layout, its offset."""
        from ember.compiler.fusion import view_root
        from ember.compiler.passes.base import meta_of

        root = view_root(value)
        if id(root) not in self.slots:
            assert root.kind == "const", root
            slot = self.new(root)
            self.constants[slot] = np.ascontiguousarray(root.value)
        offset = (
            meta_of(value).offset - meta_of(root).offset if meta_of(value).numel else 0
        )
        return Operand(self.slots[id(root)], value.meta, offset)


def build_program(
    fused: Any,
    lowered: Sequence[Any],
    compile_kernel: KernelCompiler,
    donate: Mapping[int, str] | None = None,
) -> Program:
    """Assemble a :class:`Program` from a fused graph and its lowered groups.

    ``compile_kernel`` turns each LoopKernel into a launcher (the codegen layer).
    ``donate`` maps graph outputs (by index) to the parameter or buffer (by
    qualified name) whose new value they are: where the kernel computing such an
    output can write it over the argument in place (:func:`plan_donations`), the
    program does so and hands back None for that output instead of a fresh array
    (see :attr:`Program.donated`).
    """
    from ember.compiler.fusion import view_root

    graph = fused.graph
    outputs = graph.outputs
    lowered, donations = plan_donations(graph, list(lowered), donate or {})
    table = _SlotTable(graph, {id(view_root(v)) for v in outputs})
    for donation in donations:
        table.slots[id(donation.value)] = table.slots[id(donation.arg)]
    by_group: dict[int, list[Donation]] = {}
    for donation in donations:
        by_group.setdefault(id(donation.group), []).append(donation)
    steps: list[Step] = []
    for group in lowered:
        if group.matmul is not None:
            steps.extend(_matmul_steps(group, table, compile_kernel))
        else:
            donated = by_group.get(id(group), [])
            steps.append(_kernel_step(group.kernel, table, compile_kernel, donated))
    results = [
        ResultSpec(table.operand(v), view_root(v).kind == "const") for v in outputs
    ]
    return Program(
        [
            ArgSpec(node.name, node.meta, node.kind, node.target or "")
            for node in table.args
        ],
        table.constants,
        table.intermediates,
        table.fresh,
        results,
        steps,
        len(table.slots),
        [table.slots[id(node)] for node in table.args],
        donated={d.output: table.slots[id(d.arg)] for d in donations},
    )


@dataclass(frozen=True)
class Donation:
    """Output ``output`` (graph value ``value``) written over the argument node
    ``arg`` by the kernel of ``group``, whose buffers ``out`` and ``source`` hold
    them before the kernel is made to update ``source`` in place."""

    output: int
    value: Any
    arg: Any
    group: Any
    out: str
    source: str


def plan_donations(
    graph: Any, lowered: list[Any], donate: Mapping[int, str]
) -> tuple[list[Any], list[Donation]]:
    """Which outputs of ``donate`` a kernel can write over their argument, and the
    schedule (``lowered`` with some groups moved later) that allows it.

    Output ``k`` is written over argument ``A`` in place when it is computed by a
    pointwise kernel (not a view, a constant or a matmul product) that reads ``A``
    itself at the element it writes (:func:`~ember.compiler.kernel.in_place`),
    has ``A``'s layout, dense from offset 0, is no other output, and every other
    group reading ``A`` runs before that kernel. When a reader runs after it, the
    kernel moves to just after the last reader, provided no group in between
    reads what the kernel writes. The other outputs stay fresh arrays.
    """
    from ember.compiler import kernel as K
    from ember.compiler.fusion import view_root
    from ember.errors import LoweringError

    if not donate:
        return lowered, []
    outputs = graph.outputs
    args = {
        node.target: node
        for node in graph.nodes
        if node.kind in ("param", "buffer") and node.target
    }
    reads: dict[int, set[int]] = {}  # per group: the roots of the values it reads
    writes: dict[int, set[int]] = {}  # per group: the values it writes
    producer: dict[int, tuple[Any, Any]] = {}  # value: (kernel group, out binding)
    for group in lowered:
        read, written = reads.setdefault(id(group), set()), set()
        parts = [group.kernel] if group.kernel is not None else []
        if group.matmul is not None:
            read.update(id(view_root(v)) for v in group.matmul.operands)
            written.add(id(group.matmul.product))
            if group.matmul.epilogue is not None:
                parts.append(group.matmul.epilogue)
        for lowered_kernel in parts:
            for binding in lowered_kernel.bindings:
                if binding.buffer.role == "in":
                    read.add(id(view_root(binding.value)))
                    continue
                written.add(id(binding.value))
                if lowered_kernel is group.kernel:
                    producer[id(binding.value)] = (group, binding)
        writes[id(group)] = written
    candidates = []
    kernels: dict[int, Any] = {}
    for index, target in sorted(donate.items()):
        value, arg = outputs[index], args.get(target)
        found = producer.get(id(value))
        if arg is None or found is None or sum(v is value for v in outputs) != 1:
            continue
        meta, want = value.meta, arg.meta
        if meta != want or want.offset != 0 or not want.is_contiguous():
            continue
        group, out = found
        sources = [
            b
            for b in group.kernel.bindings
            if b.buffer.role == "in" and view_root(b.value) is arg
        ]
        if len(sources) != 1 or sources[0].value is not arg:
            continue
        source = sources[0].buffer.name
        try:
            kernel = kernels.get(id(group), group.kernel.kernel)
            kernels[id(group)] = K.in_place(kernel, out.buffer.name, source)
        except LoweringError as error:
            logger.debug("output %d stays a fresh array: %s", index, error.message)
            continue
        candidates.append(Donation(index, value, arg, group, out.buffer.name, source))

    def readers_from(donation: Donation, order: list[Any], at: int) -> list[int]:
        return [
            k
            for k in range(at, len(order))
            if order[k] is not donation.group
            and id(donation.arg) in reads[id(order[k])]
        ]

    order = list(lowered)
    for _ in range(len(order)):
        moved = False
        for donation in candidates:
            at = order.index(donation.group)
            late = readers_from(donation, order, at)
            if not late:
                continue
            last = late[-1]
            made = writes[id(donation.group)]
            if any(made & reads[id(g)] for g in order[at + 1 : last + 1]):
                continue
            order.insert(last, order.pop(at))
            moved = True
        if not moved:
            break
    donations = []
    for donation in candidates:
        if readers_from(donation, order, order.index(donation.group)):
            logger.debug(
                "output %d stays a fresh array: %s is read after its kernel",
                donation.output,
                donation.arg.target,
            )
        else:
            donations.append(donation)
    return order, donations


def _kernel_step(
    lowered: Any,
    table: _SlotTable,
    compile_kernel: KernelCompiler,
    donations: Sequence[Donation] = (),
) -> Step:
    from ember.compiler import kernel as K

    kernel = lowered.kernel
    for donation in donations:
        kernel = K.in_place(kernel, donation.out, donation.source)
    reads, writes = [], []
    for binding in lowered.bindings:
        name = binding.buffer.name
        if name in kernel._by_name and kernel.buffer(name).role != "out":
            reads.append(table.operand(binding.value))
        elif name in kernel._by_name:
            table.computed(binding.value)
            writes.append(table.operand(binding.value))
    return KernelStep(compile_kernel(kernel), reads, writes)


def _matmul_steps(
    group: Any, table: _SlotTable, compile_kernel: KernelCompiler
) -> list[Step]:
    mm = group.matmul
    a, b = (table.operand(v) for v in mm.operands)
    table.computed(mm.product)
    product = table.operand(mm.product)
    name = f"blas_matmul %{mm.node.name}"
    gemm = _plan_gemm(a, b, product)
    steps: list[Step] = [
        CallStep(name, _blas_matmul, [a, b], [product])
        if gemm is None
        else GemmStep(name, gemm, [a, b], product)
    ]
    if mm.epilogue is not None:
        steps.append(_kernel_step(mm.epilogue, table, compile_kernel))
    return steps


def _plan_gemm(a: Operand, b: Operand, product: Operand) -> Any:
    """A native BLAS gemm for a 2-D product of these operands, or None."""
    from ember.compiler.codegen.blas import Gemm

    operands = (a, b, product)
    if any(len(op.meta.shape) != 2 for op in operands):
        return None
    if len({op.meta.dtype for op in operands}) != 1:
        return None
    matrices = [(op.meta.shape, op.meta.strides, op.offset) for op in operands]
    return Gemm.plan(a.meta.dtype, *matrices)  # type: ignore[arg-type]
