"""The boundary of a :class:`~ember.compiler.program.Program`: where a call's
arguments are checked once, so that the kernels behind it need not check them.

:class:`Boundary` prepares each kernel step when the program is built
(:meth:`~ember.compiler.codegen.launch.CompiledKernel.prepare`) and, on each call,
checks what the launcher would otherwise check per kernel and hands the prepared
launches bare addresses; :func:`sequenced` groups consecutive prepared launches of
small kernels into one native call
(:class:`~ember.compiler.codegen.launch.LaunchSequence`).
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ember.errors import AliasError, SignatureError
from ember.ir.meta import TensorMeta

if TYPE_CHECKING:
    from ember.compiler.program import ArgSpec, BufferPlan, Step, Storage

logger = logging.getLogger(__name__)


class Boundary:
    """The checks at the program boundary that let kernels skip their own.

    A kernel whose buffers all live in planned buffers, constants, fresh results or
    arguments it only reads is *prepared* once (:meth:`CompiledKernel.prepare`
    checks the planned storages and proves every buffer fits in its slot), and on
    each call gets only addresses. What the launcher would check per call is then
    checked here, once per argument instead of once per kernel and argument:
    :meth:`ArgSpec.check` vouches for dtype, shape, strides and the bounds of the
    layout in its storage; :meth:`addresses` adds that the storage is a flat
    contiguous array of the right dtype lying inside the memory it views, and that
    it overlaps no planned buffer (kernels write those). Fresh results are new
    arrays, so they overlap nothing. Arguments in ``updated`` are written in place
    (a parameter a training step updates): their kernels get them as private
    memory, so :meth:`addresses` also checks that each is writable and overlaps no
    other argument. A kernel that writes another argument, or whose buffer reaches
    past its slot's layout, keeps the launcher's checks on every call.
    """

    def __init__(
        self,
        args: Sequence[ArgSpec],
        arg_slots: Sequence[int],
        fresh: dict[int, TensorMeta],
        plan: BufferPlan,
        updated: set[int] | None = None,
    ) -> None:
        from ember.compiler.codegen.launch import Region

        self.updated = frozenset(updated or ())
        self.regions: dict[int, Any] = {
            slot: Region(spec.meta.dtype, spec._extent, private=slot in self.updated)
            for spec, slot in zip(args, arg_slots)
        }

        self.regions.update(
            (slot, Region(meta.dtype, meta.numel, private=True))
            for slot, meta in fresh.items()
        )
        self.specs = dict(zip(arg_slots, args))
        self.planned = [
            (buffer.ctypes.data, buffer.ctypes.data + buffer.nbytes)
            for buffer in plan.buffers
        ]
        self.hull = (
            min((low for low, _ in self.planned), default=0),
            max((high for _, high in self.planned), default=0),
        )
        self.needed: list[int] = []
        # The needed slots of fresh results, and those of arguments with their
        # specs; split at the first call, after every step was prepared.
        self._split: tuple[list[int], list[tuple[int, ArgSpec]]] | None = None
        # Per argument slot: the last storage checked, by weak reference, with its
        # strides and the address of its first element. A storage that does not
        # own its memory (a view: what ember tensors hold) can never move it, and
        # while its strides stay the same it stays inside its owner and
        # contiguous, so those checks need not run again for it.
        self._known: dict[int, tuple[Any, tuple[int, ...], int]] = {}

    def prepare(self, step: Step, env: Sequence[Storage | None]) -> tuple[Any, ...]:
        """(step, prepared launch or None, slots whose addresses the launch takes)."""
        prepare = getattr(getattr(step, "compiled", None), "prepare", None)
        if prepare is None:
            return step, None, ()
        memory: list[Any] = []
        slots: list[int] = []
        for operand in step.reads + step.writes:
            planned = env[operand.slot]
            if planned is not None:
                flat, base = planned
                memory.append(flat[base:] if base else flat)
            else:
                memory.append(self.regions[operand.slot])
                slots.append(operand.slot)
        try:
            launch = prepare(memory)
        except SignatureError as error:
            logger.debug("%s keeps per-call checks: %s", step.name, error)
            return step, None, ()
        self.needed.extend(s for s in slots if s not in self.needed)
        self._split = None
        return step, launch, tuple(slots)

    def addresses(
        self,
        env: Sequence[Storage],
        fresh: dict[int, int] | None = None,
        checked: dict[int, int] | None = None,
    ) -> dict[int, int]:
        """The address of the first element of every slot prepared launches take.

        ``fresh`` maps the slots of fresh results to the addresses of the arrays
        ``env`` holds for them, when the caller already knows them; ``checked``
        maps argument slots to addresses this method returned for the very same
        storage and layout on an earlier call.
        """
        split = self._split
        if split is None:
            split = self._split = (
                [slot for slot in self.needed if slot not in self.specs],
                [
                    (slot, self.specs[slot])
                    for slot in self.needed
                    if slot in self.specs
                ],
            )
        # Slots the launches do not take may come along: they are never looked up.
        found = dict(fresh) if fresh else {}
        if checked:
            found.update(checked)
        for slot in split[0]:
            if slot not in found:
                found[slot] = first_address(env[slot][0])
        for slot, spec in split[1]:
            if slot not in found:
                flat, base = env[slot]
                found[slot] = self._argument(slot, spec, flat, base)
        if self.updated:
            self.check_updated(env)
        return found

    def check_updated(self, env: Sequence[Storage]) -> bool:
        """AliasError unless every argument written in place is writable and
        shares no byte with another argument (it would read the new values).

        Returns whether the arguments' whole storages are disjoint: then the
        check holds for any views of the same storages, and the caller need not
        run it again until a storage changes. Otherwise the views themselves
        were compared, and the next call must be checked again.
        """
        self.check_writable(env)
        flats = []
        for slot in self.specs:
            flat = env[slot][0]
            start = flat.__array_interface__["data"][0]
            flats.append((start, start + flat.nbytes, slot))
        if not _overlapping(flats, self.updated):
            return True
        views = []
        for slot, spec in self.specs.items():
            flat, base = env[slot]
            start = flat.__array_interface__["data"][0] + base * flat.itemsize
            views.append((start, start + spec._extent * flat.itemsize, slot))
        found = _overlapping(views, self.updated)
        if found is not None:
            name, other = (self.specs[s].name for s in found)
            raise AliasError(
                f"argument %{name} is updated in place but shares memory with "
                f"argument %{other}",
                op=name,
                hint="pass a copy (.clone()) of the tensor that views the other",
            )
        return False

    def check_writable(self, env: Sequence[Storage]) -> None:
        """AliasError unless every argument written in place is writable. Unlike
        the overlap, this holds for no longer than one call: a storage's array can
        be made read-only between calls without changing anything else."""
        for slot in self.updated:
            if not env[slot][0].flags.writeable:
                name = self.specs[slot].name
                raise AliasError(
                    f"argument %{name} is updated in place but is read-only",
                    op=name,
                    hint="pass a writable tensor",
                )

    def _argument(self, slot: int, spec: ArgSpec, flat: np.ndarray, base: int) -> int:
        np_dtype = spec.np_dtype
        if flat.ndim != 1 or (flat.dtype is not np_dtype and flat.dtype != np_dtype):
            raise SignatureError(
                f"argument %{spec.name}: its storage is a {flat.ndim}-D "
                f"{flat.dtype} array, not a flat {np_dtype} one",
                op=spec.name,
                expected=f"a 1-D {np_dtype} storage",
                actual=f"{flat.ndim}-D {flat.dtype}",
            )
        known = self._known.get(slot)
        strides = flat.strides
        if known is not None and known[0]() is flat and known[1] == strides:
            address = known[2]
        else:
            _check_inside_owner(spec, flat)
            address = first_address(flat)
            if flat.base is not None:
                self._known[slot] = (weakref.ref(flat), strides, address)
        item = flat.itemsize
        start = address + base * item
        stop = start + spec._extent * item
        low, high = self.hull
        if start < high and low < stop:
            self._check_private(spec, start, stop)
        return start

    def clear_of_planned(self, start: int, stop: int) -> bool:
        """Whether the bytes ``[start, stop)`` overlap no planned buffer (not
        merely their hull: a large argument may lie between two of them)."""
        low, high = self.hull
        if not (start < high and low < stop):
            return True
        return not any(
            start < b_high and b_low < stop for b_low, b_high in self.planned
        )

    def _check_private(self, spec: ArgSpec, start: int, stop: int) -> None:
        for low, high in self.planned:
            if start < high and low < stop:
                raise SignatureError(
                    f"argument %{spec.name} lies in memory the program uses for its "
                    "intermediate values",
                    op=spec.name,
                    hint="pass a tensor of your own, not a view of program.plan",
                )


def _overlapping(
    spans: list[tuple[int, int, int]], updated: frozenset[int]
) -> tuple[int, int] | None:
    """The first (updated slot, other slot) whose byte ranges share a byte."""
    for low, high, slot in spans:
        if slot not in updated or low == high:
            continue
        for other_low, other_high, other in spans:
            if other != slot and low < other_high and other_low < high:
                return slot, other
    return None


def first_address(flat: np.ndarray) -> int:
    """The address of a flat array's first element; SignatureError unless it is
    contiguous (native code steps through it element by element)."""
    try:
        # Three times faster than ``flat.ctypes.data``; needs a writable,
        # contiguous, non-empty buffer.
        first = ctypes.c_char.from_buffer(flat)  # type: ignore[arg-type]
        return ctypes.addressof(first)
    except (TypeError, ValueError):
        pass
    if not flat.flags.c_contiguous:
        raise SignatureError(
            f"a storage must be a contiguous array, got strides {flat.strides}",
            expected="a contiguous 1-D array",
            actual=f"strides {flat.strides}",
        )
    return flat.ctypes.data


def _check_inside_owner(spec: ArgSpec, flat: np.ndarray) -> None:
    """SignatureError if ``flat`` (a view made with as_strided, say) reaches outside
    the memory of the array that owns its data."""
    from ember.compiler.codegen.launch import outside_owner

    outside = outside_owner(flat)
    if outside is not None:
        (low, high), (owner_low, owner_high) = outside
        raise SignatureError(
            f"argument %{spec.name}: its storage reaches outside the memory it views",
            op=spec.name,
            expected=f"bytes within [{owner_low}, {owner_high})",
            actual=f"[{low}, {high})",
            hint="build views with numpy slicing, not as_strided",
        )


def sequenced(
    schedule: list[tuple[Any, ...]], pairs: set[int] | None = None
) -> list[tuple[Any, ...]]:
    """The schedule with each run of two or more consecutive prepared launches that
    can share one native call replaced by a (steps, LaunchSequence, slots) entry,
    and each pair of products at ``pairs`` (the index of its first step, see
    :mod:`ember.compiler.concurrency`) by a (steps, ConcurrentLaunches, slots)
    entry when both were prepared."""
    from ember.compiler.codegen.blas import GemmLaunch, blas_multithreaded
    from ember.compiler.codegen.launch import ConcurrentLaunches, LaunchSequence

    grouped: list[tuple[Any, ...]] = []
    run: list[tuple[Any, ...]] = []

    def close_run() -> None:
        if len(run) > 1:
            steps = tuple(step for step, _, _ in run)
            slots = tuple(slot for _, _, entry_slots in run for slot in entry_slots)
            sequence = LaunchSequence([launch for _, launch, _ in run])
            grouped.append((steps, sequence, slots))
        else:
            grouped.extend(run)
        run.clear()

    pairs = pairs or set()
    taken = -1  # the index of the partner of the last pair formed
    for index, entry in enumerate(schedule):
        if index == taken:
            continue
        partner = schedule[index + 1] if index in pairs else None
        if partner is not None and all(
            isinstance(e[1], GemmLaunch) for e in (entry, partner)
        ):
            close_run()
            launches = ConcurrentLaunches(
                [entry[1], partner[1]], busy=blas_multithreaded
            )
            grouped.append(((entry[0], partner[0]), launches, entry[2] + partner[2]))
            taken = index + 1
            continue
        if getattr(entry[1], "sequenceable", False):
            run.append(entry)
        else:
            close_run()
            grouped.append(entry)
    close_run()
    return grouped
