"""Lowering: each fusion group becomes a :class:`~ember.compiler.kernel.LoopKernel`.

A pointwise group loops over its output shape. A reduction group puts the kept dims
outside and the reduced dims inside; each reduction becomes one :class:`Reduce`
stage (one sweep of the inner loops), values of the reduced shape are computed once
per outer point from the finished accumulators, and full-shape results are stored by
an inner sweep placed right after the last reduction they read, in the result's own
row-major order (store strides, when the reduced dims are not the last ones). A matmul group
becomes either a generated kernel (outer = the product's dims, inner = the shared
dim) with its epilogue applied before the store, when it is small and has an
epilogue (:data:`BLAS_MIN_FLOPS`), or a BLAS call into a scratch product followed by
a pointwise epilogue kernel.

Kernels are named for their kind only (``pointwise``, ``reduction``, ``matmul``) and
their buffers ``in0``, ``out0``...: two groups that lower to the same loops get the
same kernel text, hence one compilation and one cache entry.

Every value read from outside a group is a kernel input buffer with the strides and
offset of the value as the group sees it: a transposed, sliced or expanded input is
read in place, never copied. Offsets are relative to the first element of the
storage the value lives in (its *root*: an argument, a constant or a group output).

What lowering keeps true: each kernel computes exactly the values of its group's
nodes, in the dtypes the IR says; anything it cannot express raises
:class:`~ember.errors.LoweringError` naming the op, the node, the user's source line
and the reason, and nothing falls back silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ember.compiler import kernel as K
from ember.compiler.fusion import (
    FusedGraph,
    FusionGroup,
    GroupKind,
    group_outputs,
    view_root,
)
from ember.compiler.passes.base import meta_of
from ember.errors import LoweringError
from ember.ir import dtypes, layout
from ember.ir.dtypes import DType
from ember.ir.graph import Node
from ember.ir.layout import Shape, Strides
from ember.ir.ops.pointwise import promoted

logger = logging.getLogger(__name__)

#: A matmul with a fused epilogue and fewer multiply-adds than this is generated as
#: one kernel; anything else goes to BLAS. ``benchmarks/bench_compile.py
#: --matmul-crossover`` measured the generated kernel ahead up to 32x32x32 and BLAS
#: plus an epilogue kernel ahead from 48x48x48 (docs/codegen.md). Without an
#: epilogue BLAS won at every size: one numpy call costs less than a kernel launch.
BLAS_MIN_FLOPS = 40 * 40 * 40
#: A matrix-vector product (one row or one column) with an inner dimension at least
#: this long goes to BLAS whatever its size: the generated kernel's horizontal sum
#: at the end of each dot product outweighs the work. ``benchmarks/bench_compile.py
#: --matmul-crossover`` times ``relu(x @ w + 0.5 - y)`` both ways (docs/codegen.md):
#: with x of 512 rows, generated against BLAS and an epilogue kernel, 8.1/8.6 µs at
#: 8 columns, 13.7/8.4 at 32, 11.2/8.6 at 64, 13.3/9.7 at 100. 64 keeps the small
#: products of small models (32 wide) in one generated kernel.
THIN_BLAS_MIN_K = 64

_REDUCE_KIND = {"sum": "sum", "amax": "max", "amin": "min"}


@dataclass(frozen=True)
class Binding:
    """A kernel buffer and the graph value it holds (a view reads its root's storage
    with the view's layout)."""

    buffer: K.Buffer
    value: Node


@dataclass
class LoweredKernel:
    """A kernel and the graph values bound to its buffers."""

    kernel: K.LoopKernel
    bindings: list[Binding]


@dataclass
class LoweredMatmul:
    """A matmul through BLAS (``np.matmul`` into a preallocated product) and the
    epilogue kernel that reads the product, when the group has one."""

    node: Node
    operands: tuple[Node, Node]
    epilogue: LoweredKernel | None
    product: Node


@dataclass
class LoweredGroup:
    """One group after lowering: a kernel, or a BLAS matmul with its epilogue."""

    group: FusionGroup
    outputs: list[Node]
    kernel: LoweredKernel | None = None
    matmul: LoweredMatmul | None = None

    def format(self) -> str:
        """The text of this group for the ``lowered`` stage."""
        lines = [f"# {self.group.name} ({self.group.kind.value})"]
        if self.matmul is not None:
            mm = self.matmul
            a, b = mm.operands
            lines.append(
                f"blas matmul %{mm.node.name} = %{a.name} @ %{b.name} into "
                f"{meta_of(mm.product).type_str()}"
            )
            if mm.epilogue is not None:
                lines.append(mm.epilogue.kernel.format())
        if self.kernel is not None:
            lines.append(self.kernel.kernel.format())
        return "\n".join(lines)


def lower(fused: FusedGraph) -> list[LoweredGroup]:
    """Lower every group of ``fused``, in schedule order."""
    return [lower_group(fused, group) for group in fused.groups]


def format_lowered(groups: Sequence[LoweredGroup]) -> str:
    """The text of the ``lowered`` stage."""
    return "\n\n".join(g.format() for g in groups)


def lower_group(fused: FusedGraph, group: FusionGroup) -> LoweredGroup:
    """Lower one group; see the module docstring."""
    outputs = group_outputs(group, fused.graph)
    if group.kind is GroupKind.MATMUL:
        return _lower_matmul(group, outputs)
    return LoweredGroup(group, outputs, kernel=_lower_loops(group, outputs))


# Offsets --------------------------------------------------------------------------


def _root_offset(value: Node) -> int:
    """Element offset of ``value`` from the first element of its root's storage.

    An empty value reads nothing; it gets offset 0 so that its (unused) layout never
    claims storage past the end of its root.
    """
    if meta_of(value).numel == 0:
        return 0
    return meta_of(value).offset - meta_of(view_root(value)).offset


# The scalar computation tree ------------------------------------------------------


class _Builder:
    """Builds the expressions of one kernel: loads, constants and ops per node.

    ``domain`` is the shape node shapes broadcast against; ``order`` lists its dims
    in kernel-axis order (kept dims first, then reduced ones); ``tail`` counts the
    kernel's trailing axes outside it (the shared dim of a generated matmul).
    """

    def __init__(
        self, group: FusionGroup, domain: Shape, order: Sequence[int], tail: int = 0
    ) -> None:
        self.group = group
        self.domain = domain
        self.order = tuple(order)
        self.tail = tail
        self.members = {id(n) for n in group.nodes}
        self.buffers: dict[int, K.Buffer] = {}
        self.bindings: list[Binding] = []
        self.exprs: dict[int, K.Expr] = {}

    def input_buffer(self, value: Node) -> K.Buffer:
        """The kernel input that holds ``value`` (one per value read)."""
        buffer = self.buffers.get(id(value))
        if buffer is None:
            meta = meta_of(value)
            buffer = K.Buffer(
                f"in{len(self.buffers)}",
                meta.dtype,
                meta.shape,
                meta.strides,
                _root_offset(value),
                "in",
            )
            self.buffers[id(value)] = buffer
            self.bindings.append(Binding(buffer, value))
        return buffer

    def read(self, value: Node, shape: Shape) -> K.Expr:
        """The expression for operand ``value`` of a node of ``shape``."""
        if id(value) in self.members:
            return self.exprs[id(value)]
        if _is_scalar_const(value):
            assert value.value is not None
            return K.const(value.value.reshape(-1)[0].item(), meta_of(value).dtype)
        buffer = self.input_buffer(value)
        strides = self.domain_strides(buffer, shape)
        axes = tuple(strides[axis] for axis in self.order) + (0,) * self.tail
        return K.load(buffer, axes)

    def domain_strides(self, buffer: K.Buffer, shape: Shape) -> Strides:
        """Strides over the domain that read ``buffer`` as a node of ``shape`` sees it.

        A node of the reduced shape without keepdim lacks the reduced dims: they get
        stride 0. Any other smaller shape aligns to the right, as broadcasting does.
        """
        strides = K.broadcast_strides(buffer, shape)
        if tuple(shape) == self.domain:
            return strides
        dims = self.group.reduce_dims
        dropped = tuple(s for i, s in enumerate(self.domain) if i not in dims)
        if dims and len(shape) < len(self.domain) and tuple(shape) == dropped:
            full = list(strides)
            for dim in sorted(dims):
                full.insert(dim, 0)
            return tuple(full)
        return (0,) * (len(self.domain) - len(shape)) + strides


def _is_scalar_const(value: Node) -> bool:
    return (
        value.kind == "const" and meta_of(value).numel == 1 and value.value is not None
    )


def _compute_dtype(node: Node) -> DType:
    """The dtype the op computes in (its operands are cast to it first)."""
    if node.op in K.COMPARE_OPS:
        return promoted([meta_of(v) for v in node.inputs])
    if node.op in K.LOGICAL_OPS:
        return dtypes.bool_
    return meta_of(node).dtype


def pointwise_expr(node: Node, operands: Sequence[K.Expr]) -> K.Expr:
    """The kernel expression of pointwise ``node`` applied to ``operands``."""
    name = node.op
    out = meta_of(node).dtype
    if name == "cast":
        return K.cast(operands[0], out)
    if name == "clamp":
        value = K.cast(operands[0], out)
        low, high = node.attrs.get("min"), node.attrs.get("max")
        if low is not None:
            value = K.op("maximum", value, K.const(low, out))
        if high is not None:
            value = K.op("minimum", value, K.const(high, out))
        return value
    if name not in K.ARITY:
        raise _unsupported(node, "the native backend has no lowering for this op")
    if name == "where":
        cond, x, y = operands
        result = K.op(
            "where", K.cast(cond, dtypes.bool_), K.cast(x, out), K.cast(y, out)
        )
    else:
        compute = _compute_dtype(node)
        result = K.op(name, *(K.cast(e, compute) for e in operands))
    if result.dtype is not out:
        result = K.cast(result, out)
    return result


def _unsupported(node: Node, reason: str) -> LoweringError:
    """The error for ``node``; its text ends with the user's line (``location``)."""
    return LoweringError(
        f"cannot lower {node.op} (%{node.name}): {reason}",
        op=node.op,
        actual=f"%{node.name}: {meta_of(node).type_str() if node.meta else '?'}",
        hint="run this graph with backend='interpret', or rewrite the op "
        "(docs/limitations.md lists what the native backend lowers)",
        location=node.loc,
    )


# Pointwise and reduction groups ---------------------------------------------------


def _lower_loops(group: FusionGroup, outputs: Sequence[Node]) -> LoweredKernel:
    domain = group.domain
    outer, inner, order = K.reduction_domain(domain, group.reduce_dims)
    builder = _Builder(group, domain, order)
    reduces: list[K.Reduce] = []
    level: dict[int, int] = {}
    stores: list[tuple[int, K.Store]] = []
    names = {id(node): f"out{i}" for i, node in enumerate(outputs)}
    for node in group.nodes:
        reduction = node.op in _REDUCE_KIND or node.op in ("argmax", "argmin")
        if reduction:
            value = _reduce_stage(builder, node, reduces)
            level[id(node)] = len(reduces)
        else:
            operands = [builder.read(v, meta_of(node).shape) for v in node.inputs]
            value = pointwise_expr(node, operands)
            level[id(node)] = max((level.get(id(v), 0) for v in node.inputs), default=0)
        builder.exprs[id(node)] = value
        if id(node) in names:
            sweep = bool(inner) and not reduction and meta_of(node).shape == domain
            strides = _own_order(domain, order) if sweep else None
            store = K.Store(names[id(node)], value, sweep, strides)
            stores.append((level[id(node)], store))
    out_buffers = [
        K.Buffer.dense(names[id(n)], meta_of(n).dtype, meta_of(n).shape)
        for n in outputs
    ]
    kernel = K.LoopKernel(
        group.kind.value,
        tuple([b.buffer for b in builder.bindings] + out_buffers),
        outer,
        inner,
        tuple(_place_stores(reduces, stores)),
    )
    bindings = builder.bindings + [Binding(b, n) for b, n in zip(out_buffers, outputs)]
    return LoweredKernel(kernel, bindings)


def _own_order(domain: Shape, order: Sequence[int]) -> Strides | None:
    """Store strides that write a full-shape value in its own dense order from a
    domain whose axes run in ``order`` (kept dims first), or None when that is the
    domain order already (the reduced dims are the last ones)."""
    moved = [axis for axis in order if domain[axis] != 1]
    if moved == sorted(moved):
        return None
    dense = layout.contiguous_strides(domain)
    return tuple(dense[axis] for axis in order)


def _reduce_stage(builder: _Builder, node: Node, reduces: list[K.Reduce]) -> K.Expr:
    if node.op not in _REDUCE_KIND:
        raise _unsupported(node, "arg-reductions have no native kernel yet")
    (source,) = node.inputs
    value = builder.read(source, builder.domain)
    reduce = K.Reduce(f"acc{len(reduces)}", _REDUCE_KIND[node.op], value)
    reduces.append(reduce)
    result: K.Expr = reduce.ref()
    if result.dtype is not meta_of(node).dtype:
        result = K.cast(result, meta_of(node).dtype)
    return result


def _place_stores(
    reduces: list[K.Reduce], stores: list[tuple[int, K.Store]]
) -> list[K.Reduce | K.Store]:
    """Interleave stores after the reductions they read (as early as possible)."""
    result: list[K.Reduce | K.Store] = []
    for count in range(len(reduces) + 1):
        if count:
            result.append(reduces[count - 1])
        result.extend(store for level, store in stores if level == count)
    return result


# Matmul groups --------------------------------------------------------------------


def matmul_flops(node: Node) -> int:
    """Multiply-adds of a matmul node."""
    a = meta_of(node.inputs[0]).shape
    return meta_of(node).numel * a[-1]


def _thin(mm: Node) -> bool:
    """Whether a matmul is a matrix-vector product with a long inner dimension
    (see :data:`THIN_BLAS_MIN_K`)."""
    a, out = meta_of(mm.inputs[0]).shape, meta_of(mm).shape
    return a[-1] >= THIN_BLAS_MIN_K and (len(out) < 2 or min(out[-2:]) == 1)


def _lower_matmul(group: FusionGroup, outputs: Sequence[Node]) -> LoweredGroup:
    mm = group.anchor
    assert mm is not None
    a, b = mm.inputs
    if not meta_of(mm).dtype.is_floating_point:
        raise _unsupported(mm, "integer matmul has no native kernel")
    small = matmul_flops(mm) < BLAS_MIN_FLOPS and len(group.nodes) > 1 and not _thin(mm)
    if small and meta_of(a).ndim >= 2 and meta_of(b).ndim >= 2:
        return LoweredGroup(
            group, list(outputs), kernel=_generated_matmul(group, mm, outputs)
        )
    epilogue = None
    if len(group.nodes) > 1:
        rest = FusionGroup(
            group.id,
            GroupKind.POINTWISE,
            [n for n in group.nodes if n is not mm],
            group.domain,
        )
        epilogue = _lower_loops(rest, outputs)
    return LoweredGroup(
        group, list(outputs), matmul=LoweredMatmul(mm, (a, b), epilogue, mm)
    )


def _batch_part(buffer: K.Buffer) -> K.Buffer:
    """The batch dims of a matmul operand (all but the last two)."""
    return K.Buffer(buffer.name, buffer.dtype, buffer.shape[:-2], buffer.strides[:-2])


def _generated_matmul(
    group: FusionGroup, mm: Node, outputs: Sequence[Node]
) -> LoweredKernel:
    """outer = (batch..., m, n), inner = (k,): one dot product per output element,
    with the epilogue applied to the accumulator before the store."""
    a, b = meta_of(mm.inputs[0]), meta_of(mm.inputs[1])
    outer = meta_of(mm).shape
    batch = outer[:-2]
    builder = _Builder(group, outer, range(len(outer)), tail=1)
    a_buf = builder.input_buffer(mm.inputs[0])
    b_buf = builder.input_buffer(mm.inputs[1])
    a_axes = K.broadcast_strides(_batch_part(a_buf), batch)
    b_axes = K.broadcast_strides(_batch_part(b_buf), batch)
    a_load = K.load(a_buf, a_axes + (a.strides[-2], 0, a.strides[-1]))
    b_load = K.load(b_buf, b_axes + (0, b.strides[-1], b.strides[-2]))
    reduce = K.Reduce("acc0", "sum", K.op("mul", a_load, b_load))
    builder.exprs[id(mm)] = K.cast(reduce.ref(), meta_of(mm).dtype)
    names = {id(node): f"out{i}" for i, node in enumerate(outputs)}
    stores = []
    for node in group.nodes:
        if node is not mm:
            operands = [builder.read(v, meta_of(node).shape) for v in node.inputs]
            builder.exprs[id(node)] = pointwise_expr(node, operands)
        if id(node) in names:
            stores.append(K.Store(names[id(node)], builder.exprs[id(node)]))
    out_buffers = [
        K.Buffer.dense(names[id(n)], meta_of(n).dtype, meta_of(n).shape)
        for n in outputs
    ]
    kernel = K.LoopKernel(
        "matmul",
        tuple([b.buffer for b in builder.bindings] + out_buffers),
        outer,
        (a.shape[-1],),
        (reduce, *stores),
    )
    bindings = builder.bindings + [Binding(b, n) for b, n in zip(out_buffers, outputs)]
    return LoweredKernel(kernel, bindings)


__all__ = [
    "BLAS_MIN_FLOPS",
    "Binding",
    "LoweredGroup",
    "LoweredKernel",
    "LoweredMatmul",
    "format_lowered",
    "lower",
    "lower_group",
    "pointwise_expr",
]
