"""Finds, in a program's schedule, a matrix read twice around pointwise work on
rows, and fuses the three into one streamed pass.

A linear layer with one output trained on its batch ``x`` runs ``s = x @ v``
(a BLAS product with one column), pointwise kernels that turn each row's ``s``
into that row's gradient ``d`` (and the loss terms), and ``g = d.T @ x`` (or
``x.T @ d``). :func:`stream_passes` replaces them by a :class:`StreamedStep`,
which runs as one
:class:`~ember.compiler.codegen.streamed.StreamedLaunch`: one pass over ``x``
instead of two (``docs/codegen.md`` has the figures).

A run of steps fuses when:

- the forward product is a BLAS product of an ``m x k`` matrix with unit column
  stride by a ``k x 1`` vector (``k`` at most
  :data:`~ember.compiler.codegen.streamed.MAX_COLUMNS`), of float32 or float64;
- each kernel between it and the gradient product is pointwise over the ``m``
  rows (no reduction, every loop but the rows of extent 1, run on the calling
  thread) and reads what the pass produces only at its own row: row ``i`` of its
  results depends on row ``i`` of ``s`` alone, so the kernel may run block by
  block as the rows come;
- the gradient product reads the same matrix (same slot, offset and strides) and
  a row vector one of those kernels wrote;
- any other step in between neither writes what the fused steps read or write
  nor reads what a fused step after it writes: it moves below the pass.

The fused step reads and writes what its members did, all at one time for the
buffer plan. When its launches cannot be prepared, it runs its members in turn.
The setting ``streamed_passes`` (``EMBER_STREAM=0``) turns the fusion off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ember.compiler.codegen.streamed import MAX_COLUMNS, StreamedLaunch, StreamPlan

#: How far past the forward product the gradient product is looked for.
LOOKAHEAD = 12

_DTYPES = {"float32": "f32", "float64": "f64"}


def stream_passes(steps: Sequence[Any]) -> list[Any]:
    """``steps`` with every run that fuses (see the module docstring) replaced by
    a :class:`StreamedStep` and the steps it moved past placed after it.

        >>> stream_passes([])
        []
    """
    order = list(steps)
    index = 0
    while index < len(order):
        fused = _fuse_at(order, index)
        if fused is not None:
            step, taken, deferred = fused
            rest = [s for k, s in enumerate(order[index:], index) if k not in taken]
            order = order[:index] + [step] + deferred + rest[len(deferred) :]
        index += 1
    return order


def _fuse_at(order: list[Any], index: int) -> tuple[Any, set[int], list[Any]] | None:
    """The streamed step starting at ``order[index]``, the positions it takes,
    and the steps it moves below itself; None when no run fuses there."""
    from ember.compiler.program import GemmStep, KernelStep

    forward = order[index]
    if not isinstance(forward, GemmStep):
        return None
    shape = _forward_shape(forward)
    if shape is None:
        return None
    rows, columns, x_operand = shape
    (product,) = forward.writes
    # Row vectors the pass produces: slot -> (element offset, row stride).
    produced = {product.slot: (product.offset, product.meta.strides[0])}
    members: list[tuple[int, Any]] = [(index, forward)]
    deferred: list[tuple[int, Any]] = []
    for position in range(index + 1, min(len(order), index + 1 + LOOKAHEAD)):
        step = order[position]
        # A fused step may not need a step that moves below the pass.
        moved_writes = {op.slot for _, s in deferred for op in s.writes}
        needs_moved = bool({op.slot for op in step.reads} & moved_writes)
        if isinstance(step, GemmStep):
            gradient = _gradient_form(step, x_operand, produced, rows, columns)
            if gradient is not None:
                if needs_moved:
                    return None
                members.append((position, step))
                return _finish(members, deferred, gradient, rows, columns, x_operand)
        if isinstance(step, KernelStep) and _row_kernel(step, rows, produced):
            touched = {op.slot for _, m in members for op in m.reads + m.writes}
            if needs_moved or {op.slot for op in step.writes} & touched:
                return None
            for operand in step.writes:
                produced[operand.slot] = (operand.offset, operand.meta.strides[0])
            members.append((position, step))
            continue
        deferred.append((position, step))
    return None


def _forward_shape(step: Any) -> tuple[int, int, Any] | None:
    """(rows, columns, matrix operand) of a product ``x @ v`` the pass can take."""
    gemm = step.compiled
    if _DTYPES.get(gemm.dtype.name) is None:
        return None
    (a_shape, a_strides, _), (b_shape, _, _), (c_shape, _, _) = gemm.matrices
    rows, columns = a_shape
    if b_shape[1] != 1 or c_shape != (rows, 1) or columns > MAX_COLUMNS:
        return None
    if a_strides[1] != 1 or a_strides[0] < columns:
        return None
    return rows, columns, step.reads[0]


def _same_matrix(operand: Any, x: Any) -> bool:
    return (
        operand.slot == x.slot
        and operand.offset == x.offset
        and operand.meta.shape == x.meta.shape
        and operand.meta.strides == x.meta.strides
    )


def _gradient_form(
    step: Any,
    x: Any,
    produced: dict[int, tuple[int, int]],
    rows: int,
    columns: int,
) -> tuple[int, int, int] | None:
    """(position of ``d`` in the product's pointer array, ``d``'s row stride,
    ``g``'s stride) when ``step`` is ``d.T @ x`` or ``x.T @ d`` with ``d`` a row
    vector the pass produced; else None."""
    a, b = step.reads
    (g,) = step.writes
    if step.compiled.dtype != x.meta.dtype:
        return None
    if a.meta.shape == (1, rows) and _same_matrix(b, x):
        d, axis, position, g_axis = a, 1, 0, 1
        if g.meta.shape != (1, columns):
            return None
    elif b.meta.shape == (rows, 1) and a.meta.shape == (columns, rows):
        transposed = x.meta.strides[::-1]
        if (a.slot, a.offset, a.meta.strides) != (x.slot, x.offset, transposed):
            return None
        d, axis, position, g_axis = b, 0, 1, 0
        if g.meta.shape != (columns, 1):
            return None
    else:
        return None
    found = produced.get(d.slot)
    if found is None or found != (d.offset, d.meta.strides[axis]):
        return None
    return position, d.meta.strides[axis], g.meta.strides[g_axis]


def _row_kernel(step: Any, rows: int, produced: dict[int, tuple[int, int]]) -> bool:
    """Whether ``step`` is a kernel the pass may run block by block (see the
    module docstring) that reads something the pass produced."""
    from ember.compiler.codegen.launch import PARALLEL_THRESHOLD
    from ember.compiler.kernel import Reduce, Store

    compiled = step.compiled
    kernel = getattr(compiled, "kernel", None)
    emitted = getattr(compiled, "emitted", None)
    if (
        kernel is None
        or emitted is None
        or getattr(compiled, "_partial", 1) is not None
    ):
        return False
    if getattr(compiled, "_points", PARALLEL_THRESHOLD) >= PARALLEL_THRESHOLD:
        return False
    outer, inner = kernel.outer, kernel.inner
    if not outer or outer[0] != rows or math.prod(outer[1:]) * math.prod(inner) != 1:
        return False
    if emitted.split_extent != rows:
        return False
    for stage in kernel.stages:
        if isinstance(stage, Reduce):
            return False
        if isinstance(stage, Store) and (stage.inner or stage.strides is not None):
            return False
    operands = list(step.reads) + list(step.writes)
    if len(operands) != len(kernel.buffers):
        return False
    reads_produced = False
    for k, (buffer, operand) in enumerate(zip(kernel.buffers, operands)):
        wanted = "in" if k < len(step.reads) else "out"
        if buffer.role != wanted or buffer.offset != operand.offset:
            return False
        vector = buffer.shape in ((rows, 1), (rows,))
        if buffer.role == "out":
            if not vector or buffer.strides[0] != 1:
                return False
            continue
        found = produced.get(operand.slot)
        if found is None:
            continue
        if not vector or found != (operand.offset, buffer.strides[0]):
            return False
        loads = [
            node
            for expr in kernel.expressions()
            for node in expr.walk()
            if getattr(node, "buffer", None) == buffer.name and hasattr(node, "strides")
        ]
        if any(load.strides[0] != buffer.strides[0] for load in loads):
            return False
        reads_produced = True
    return reads_produced


def _finish(
    members: list[tuple[int, Any]],
    deferred: list[tuple[int, Any]],
    gradient: tuple[int, int, int],
    rows: int,
    columns: int,
    x: Any,
) -> tuple[Any, set[int], list[Any]] | None:
    """The streamed step of ``members`` when every deferred step may move below
    it, with the positions it takes and those steps in order."""
    fused_reads = {op.slot for _, m in members for op in m.reads}
    fused_writes = {op.slot for _, m in members for op in m.writes}
    for position, step in deferred:
        later = {op.slot for p, m in members if p > position for op in m.writes}
        if {op.slot for op in step.writes} & (fused_reads | fused_writes):
            return None
        if {op.slot for op in step.reads} & later:
            return None
    forward, *epilogues, gradient_step = (m for _, m in members)
    if not epilogues:
        return None
    d_position, d_step, g_step = gradient
    (product,) = forward.writes
    v = forward.compiled.matrices[1]
    plan = StreamPlan(
        _DTYPES[forward.compiled.dtype.name],
        rows,
        columns,
        x.meta.strides[0],
        v[1][0],
        product.meta.strides[0],
        d_step,
        g_step,
        d_position,
        len(epilogues),
    )
    step = StreamedStep(plan, forward, epilogues, gradient_step)
    return step, {p for p, _ in members}, [s for _, s in deferred]


class StreamedStep:
    """A forward product, row-wise kernels and a gradient product run as one
    streamed pass (see the module docstring). It reads and writes what its
    members do, in their order; :attr:`compiled` prepares the launch."""

    def __init__(
        self, plan: StreamPlan, forward: Any, epilogues: Sequence[Any], gradient: Any
    ) -> None:
        self.plan = plan
        self.members = (forward, *epilogues, gradient)
        self.name = plan.describe()
        self.reads = tuple(op for m in self.members for op in m.reads)
        self.writes = tuple(op for m in self.members for op in m.writes)
        self.compiled = _Prepare(self)

    def run(self, env: Sequence[Any]) -> None:
        """Run the members in turn (when the pass could not be prepared)."""
        for member in self.members:
            member.run(env)

    def bind_planned(self, env: Sequence[Any]) -> None:
        for member in self.members:
            member.bind_planned(env)

    def describe(self) -> str:
        inside = "; ".join(member.describe() for member in self.members)
        return f"{self.name}: {inside}"


class _Prepare:
    """Prepares each member's launch on its share of the memory a
    :class:`~ember.compiler.boundary.Boundary` gives for the step's reads and
    writes, and joins them in one :class:`StreamedLaunch`."""

    def __init__(self, step: StreamedStep) -> None:
        self.step = step

    def prepare(self, memory: Sequence[Any]) -> StreamedLaunch:
        from ember.compiler.codegen.launch import Region

        members = self.step.members
        read_count = sum(len(m.reads) for m in members)
        reads, writes = list(memory[:read_count]), list(memory[read_count:])
        launches = []
        # Per member, the target of each of its operands passed by address.
        by_operand: list[dict[int, Any]] = []
        for member in members:
            given = reads[: len(member.reads)] + writes[: len(member.writes)]
            del reads[: len(member.reads)], writes[: len(member.writes)]
            launch = member.compiled.prepare(given)
            launches.append(launch)
            regions = [k for k, g in enumerate(given) if isinstance(g, Region)]
            by_operand.append(dict(zip(regions, launch.targets, strict=True)))
        targets = []
        for local in ("reads", "writes"):
            for member, found in zip(members, by_operand):
                first = 0 if local == "reads" else len(member.reads)
                for k in range(len(getattr(member, local))):
                    if first + k in found:
                        targets.append(found[first + k])
        forward, *epilogues, gradient = launches
        return StreamedLaunch(self.step.plan, forward, epilogues, gradient, targets)
