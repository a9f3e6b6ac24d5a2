"""``LoopKernel``: one native kernel, described as loops over a dense output.

A kernel names its buffers (inputs it reads through their own strides and offset,
outputs it writes densely), a loop domain split into *outer* axes (one point per
output element of a reduction, or every output element of a pointwise kernel; the
first outer axis is the one threads split) and *inner* axes (reduced axes, or the row
a fused row kernel sweeps), and a list of stages run at every outer point:

* :class:`Reduce` accumulates a scalar expression over the inner axes with ``sum``,
  ``max`` or ``min``; later expressions read the result through :class:`AccRef`.
* :class:`Store` writes an expression to an output: once per outer point, or, with
  ``inner=True``, at every point of the inner axes.

Expressions are trees of :class:`Load` (an element of an input at an affine index),
:class:`Const`, :class:`AccRef` and :class:`Op` (a pointwise op of the registry by
name). Strided, transposed, sliced and expanded (stride 0) inputs are read in place.

    >>> x = Buffer("x", float32, (2, 3), (1, 2))
    >>> y = Buffer("y", float32, (3, 2), (2, 1), role="out")
    >>> v = load(x, (2, 1))
    >>> k = LoopKernel("relu_t", (x, y), (3, 2), (), (Store("y", op("relu", v)),))
    >>> print(k)
    kernel relu_t
      in  x: f32[2, 3] strides=(1, 2)
      out y: f32[3, 2]
      parallel for i0 in 0..3, i1 in 0..2:
        y[2*i0 + i1] = relu(x[2*i0 + i1])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from ember.errors import LoweringError
from ember.ir import dtypes, layout
from ember.ir.dtypes import DType, bool_, float32, float64, int64
from ember.ir.layout import Shape, Strides

__all__ = [
    "AccRef",
    "Buffer",
    "Const",
    "Expr",
    "Load",
    "LoopKernel",
    "Op",
    "Reduce",
    "Store",
    "broadcast_strides",
    "cast",
    "coalesce",
    "const",
    "load",
    "op",
    "reduction_domain",
    "float32",
    "float64",
    "in_place",
]

#: Unary and binary ops of the registry the backend lowers, by their dtype rule.
SAME_OPS = frozenset(
    ["neg", "abs", "relu", "copy", "add", "sub", "mul", "pow", "maximum", "minimum"]
)
FLOAT_OPS = frozenset(["exp", "log", "sqrt", "rsqrt", "sigmoid", "tanh", "erf", "div"])
COMPARE_OPS = frozenset(["eq", "ne", "lt", "le", "gt", "ge"])
LOGICAL_OPS = frozenset(["logical_and", "logical_or", "logical_not"])
ARITY = {
    **{n: 1 for n in ("neg", "abs", "relu", "copy", "exp", "log", "sqrt", "rsqrt")},
    **{n: 1 for n in ("sigmoid", "tanh", "erf", "logical_not", "cast")},
    **{n: 2 for n in ("add", "sub", "mul", "pow", "maximum", "minimum", "div")},
    **{n: 2 for n in COMPARE_OPS | {"logical_and", "logical_or"}},
    "where": 3,
}
#: Ops that reject bool operands, as the registry does.
NO_BOOL_OPS = frozenset(["neg", "sub", "pow", "relu"])
REDUCE_KINDS = ("sum", "max", "min")
#: Buffer roles, and those a kernel may load from and store to.
ROLES = ("in", "out", "inout")
READ_ROLES = frozenset(["in", "inout"])
WRITE_ROLES = frozenset(["out", "inout"])


# Expressions ---------------------------------------------------------------------------


class Expr:
    """A scalar expression evaluated at one point of the loop domain."""

    dtype: DType

    def children(self) -> tuple[Expr, ...]:
        """The operand expressions (empty for leaves)."""
        return ()

    def walk(self) -> Iterator[Expr]:
        """This expression and every sub-expression, operands first."""
        for child in self.children():
            yield from child.walk()
        yield self


@dataclass(frozen=True)
class Load(Expr):
    """The element of input ``buffer`` at ``sum(i_k * strides[k])`` from its offset.

    ``strides`` has one entry (in elements) per domain axis, outer axes first; a
    stride of 0 repeats the element along that axis (broadcasting).
    """

    buffer: str
    strides: Strides
    dtype: DType


@dataclass(frozen=True)
class Const(Expr):
    """A literal of a given dtype."""

    value: float | int | bool
    dtype: DType


@dataclass(frozen=True)
class AccRef(Expr):
    """The finished result of the :class:`Reduce` stage called ``name``."""

    name: str
    dtype: DType


@dataclass(frozen=True)
class Op(Expr):
    """A pointwise op of the registry applied to operands of matching dtypes.

    Operands already have the op's compute dtype (:func:`op` inserts the casts);
    ``dtype`` is the result dtype, and for ``cast`` the target dtype.
    """

    name: str
    args: tuple[Expr, ...]
    dtype: DType

    def children(self) -> tuple[Expr, ...]:
        return self.args


# Stages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reduce:
    """Accumulate ``value`` over the inner axes with ``kind`` (sum, max or min).

    Float sums accumulate in float64 and round once to the value's dtype; integer
    and bool sums accumulate in int64. ``max`` and ``min`` propagate NaN as numpy does.
    """

    name: str
    kind: str
    value: Expr

    @property
    def dtype(self) -> DType:
        """The dtype of the finished result (what :class:`AccRef` reads)."""
        if self.kind == "sum" and not self.value.dtype.is_floating_point:
            return int64
        return self.value.dtype

    def ref(self) -> AccRef:
        """An expression reading this stage's result."""
        return AccRef(self.name, self.dtype)


@dataclass(frozen=True)
class Store:
    """Write ``value`` to output ``buffer``: densely, once per outer point, or at
    every inner point too when ``inner`` is true.

    An inner store writes element ``sum(i_k * strides[k])`` of the output at domain
    point ``i``, with ``strides`` one per domain axis, a permutation of the output's
    dense strides: a reduction over leading dims stores full-shape values in the
    output's own order, not in the domain's (kept dims first). None means dense in
    domain order.
    """

    buffer: str
    value: Expr
    inner: bool = False
    strides: Strides | None = None


Stage = Reduce | Store


# Buffers and the kernel ---------------------------------------------------------------


@dataclass(frozen=True)
class Buffer:
    """A kernel argument: its name, element type and layout in its storage.

    ``strides`` and ``offset`` are in elements. Inputs may have any non-negative
    strides (0 for an expanded dim); outputs (``role="out"``) are dense row-major.
    An ``inout`` buffer (see :func:`in_place`) is dense, read and then written at the
    same element by every point: a kernel that updates its argument in place.
    """

    name: str
    dtype: DType
    shape: Shape
    strides: Strides
    offset: int = 0
    role: str = "in"

    @staticmethod
    def dense(
        name: str, dtype: DType, shape: Sequence[int], role: str = "out"
    ) -> Buffer:
        """A dense row-major buffer (outputs usually are)."""
        shape = tuple(shape)
        return Buffer(name, dtype, shape, layout.contiguous_strides(shape), 0, role)

    @property
    def numel(self) -> int:
        return layout.numel(self.shape)

    def extent(self) -> int:
        """How many storage elements past its offset the layout reaches (0 if empty)."""
        start, stop = layout.span(self.shape, self.strides, 0)
        return stop - start

    def describe(self) -> str:
        """``x: f32[2, 3] strides=(1, 2) offset=4`` as the kernel printout shows it."""
        text = f"{self.name}: {self.dtype.short}[{', '.join(map(str, self.shape))}]"
        if not layout.is_contiguous(self.shape, self.strides):
            text += f" strides={self.strides}"
        if self.offset:
            text += f" offset={self.offset}"
        return text


@dataclass(frozen=True)
class LoopKernel:
    """One native kernel; see the module docstring. Built kernels are verified."""

    name: str
    buffers: tuple[Buffer, ...]
    outer: Shape
    inner: Shape
    stages: tuple[Stage, ...]
    _by_name: dict[str, Buffer] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "buffers", tuple(self.buffers))
        object.__setattr__(self, "outer", tuple(self.outer))
        object.__setattr__(self, "inner", tuple(self.inner))
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "_by_name", {b.name: b for b in self.buffers})
        verify(self)

    @property
    def domain(self) -> Shape:
        """Extents of every loop axis, outer axes first."""
        return self.outer + self.inner

    @property
    def inputs(self) -> tuple[Buffer, ...]:
        """The buffers the kernel reads (``inout`` ones too)."""
        return tuple(b for b in self.buffers if b.role in READ_ROLES)

    @property
    def outputs(self) -> tuple[Buffer, ...]:
        """The buffers the kernel writes (``inout`` ones too)."""
        return tuple(b for b in self.buffers if b.role in WRITE_ROLES)

    def buffer(self, name: str) -> Buffer:
        """The buffer called ``name``."""
        return self._by_name[name]

    def expressions(self) -> Iterator[Expr]:
        """Every expression node of every stage."""
        for stage in self.stages:
            yield from stage.value.walk()

    def format(self) -> str:
        """The readable text of the kernel (``ember dump --stage lowered``)."""
        return format_kernel(self)

    def __str__(self) -> str:
        return self.format()


# Building expressions ----------------------------------------------------------------


def load(buffer: Buffer, strides: Sequence[int] | None = None) -> Load:
    """Read ``buffer`` at every domain point; ``strides`` default to its own."""
    if buffer.role != "in":
        raise LoweringError(
            f"load of {buffer.name}: kernels read inputs only",
            expected="an input buffer",
            actual=f"role {buffer.role}",
        )
    return Load(
        buffer.name, tuple(buffer.strides if strides is None else strides), buffer.dtype
    )


def reduction_domain(
    shape: Sequence[int], axes: Sequence[int]
) -> tuple[Shape, Shape, tuple[int, ...]]:
    """Loop domain that reduces ``axes`` of ``shape``: kept axes outer, reduced inner.

    Returns ``(outer, inner, order)``; ``order`` lists the original axes in domain
    order, so a buffer of ``shape`` is read with ``[strides[a] for a in order]``.

        >>> reduction_domain((2, 3, 4), (0, 2))
        ((3,), (2, 4), (1, 0, 2))
    """
    rank = len(shape)
    reduced = sorted({a % rank for a in axes}) if rank else []
    kept = [a for a in range(rank) if a not in reduced]
    order = tuple(kept + reduced)
    return (tuple(shape[a] for a in kept), tuple(shape[a] for a in reduced), order)


def broadcast_strides(buffer: Buffer, shape: Sequence[int]) -> Strides:
    """Strides that read ``buffer`` broadcast (numpy rules) to ``shape``.

    >>> broadcast_strides(Buffer("b", float32, (3,), (1,)), (2, 3))
    (0, 1)
    """
    lead = len(shape) - len(buffer.shape)
    if lead < 0:
        raise LoweringError(f"{buffer.describe()} cannot broadcast to {tuple(shape)}")
    strides = [0] * lead
    for size, stride, target in zip(buffer.shape, buffer.strides, shape[lead:]):
        if size not in (1, target):
            raise LoweringError(
                f"{buffer.describe()} cannot broadcast to {tuple(shape)}"
            )
        strides.append(stride if size == target and size != 1 else 0)
    return tuple(strides)


def const(value: float | int | bool, dtype: DType) -> Const:
    """A literal of ``dtype``."""
    if dtype is bool_:
        return Const(bool(value), dtype)
    return Const(float(value) if dtype.is_floating_point else int(value), dtype)


def cast(value: Expr, dtype: DType) -> Expr:
    """``value`` converted to ``dtype`` (itself when it already has it)."""
    return value if value.dtype is dtype else Op("cast", (value,), dtype)


def op(name: str, *args: Expr | float | int | bool) -> Expr:
    """Apply registry op ``name``, promoting operands as the registry's rules say.

    Python numbers are weak operands (they only raise the category), like scalars
    in eager mode. ``cast`` is spelled :func:`cast`.

        >>> op("exp", const(1, int64)).dtype
        ember.float32
        >>> op("lt", const(1.0, float64), 2).dtype
        ember.bool
    """
    if name not in ARITY or name == "cast":
        raise LoweringError(
            f"op {name!r} has no native lowering",
            op=name,
            expected=sorted(ARITY),
            hint="decompose it into pointwise primitives first",
        )
    exprs = [a for a in args if isinstance(a, Expr)]
    scalars = [a for a in args if not isinstance(a, Expr)]
    tensors = exprs[1:] if name == "where" else exprs
    common = dtypes.result_type([(e.dtype, 1) for e in tensors], [], scalars)
    compute, _ = _plan(name, common)
    operands = []
    for position, arg in enumerate(args):
        if name == "where" and position == 0:
            operands.append(arg if isinstance(arg, Expr) else const(arg, bool_))
        elif isinstance(arg, Expr):
            operands.append(cast(arg, compute))
        else:
            operands.append(const(arg, compute))
    return Op(name, tuple(operands), result_dtype(name, [o.dtype for o in operands]))


def _plan(name: str, common: DType) -> tuple[DType, DType]:
    """Compute and result dtypes of op ``name`` for promoted operand dtype ``common``."""
    if name in FLOAT_OPS:
        compute = common if common.is_floating_point else dtypes.default_float
        return compute, compute
    if name in COMPARE_OPS:
        return common, bool_
    if name in LOGICAL_OPS:
        return bool_, bool_
    return common, common


def result_dtype(name: str, operands: Sequence[DType]) -> DType:
    """The result dtype of ``name`` on operands that already share a compute dtype.

    Raises LoweringError for arity or dtype mismatches (the lowering must cast first).
    """
    if len(operands) != ARITY.get(name, -1):
        raise LoweringError(
            f"{name}: expected {ARITY.get(name)} operands, got {len(operands)}", op=name
        )
    values = operands[1:] if name == "where" else operands
    if name == "where" and operands[0] is not bool_:
        raise LoweringError(
            "where: the condition must be bool", op=name, actual=operands[0].name
        )
    if any(d is not values[0] for d in values):
        raise LoweringError(
            f"{name}: operands have different dtypes",
            op=name,
            expected="one compute dtype",
            actual=[d.name for d in operands],
            hint="build expressions with ember.compiler.kernel.op(), which casts",
        )
    common = values[0]
    compute, out = _plan(name, common)
    if compute is not common or (name in NO_BOOL_OPS and common is bool_):
        raise LoweringError(
            f"{name} does not accept {common.name} operands",
            op=name,
            expected=compute.name,
            actual=common.name,
        )
    return out


# Verification ------------------------------------------------------------------------


def verify(kernel: LoopKernel) -> None:
    """Check the kernel's invariants; raise LoweringError naming the broken one.

    Every load stays inside its buffer's layout, outputs are dense and written once
    with the right number of elements, ops have consistent dtypes, and accumulators
    are defined before they are read.
    """
    _verify_buffers(kernel)
    defined: dict[str, DType] = {}
    stored: set[str] = set()
    for stage in kernel.stages:
        inner = isinstance(stage, Reduce) or stage.inner
        for node in stage.value.walk():
            _verify_node(kernel, node, defined, inner)
        if isinstance(stage, Reduce):
            if stage.kind not in REDUCE_KINDS:
                raise LoweringError(
                    f"unknown reduction {stage.kind!r}",
                    expected=REDUCE_KINDS,
                    actual=stage.kind,
                )
            if stage.name in defined:
                raise LoweringError(f"accumulator {stage.name} defined twice")
            defined[stage.name] = stage.dtype
        else:
            _verify_store(kernel, stage, stored)
    missing = {b.name for b in kernel.outputs} - stored
    if missing:
        raise LoweringError(
            f"kernel {kernel.name}: outputs never stored: {sorted(missing)}"
        )
    if any(b.role == "inout" for b in kernel.buffers):
        _verify_in_place(kernel)


def _verify_in_place(kernel: LoopKernel) -> None:
    """An ``inout`` buffer is read only at the element the same point writes, and
    never after that point's store of it: each point then reads the old value of
    its own element, whatever order the points run in."""
    if kernel.inner:
        raise LoweringError(
            f"kernel {kernel.name}: an inout buffer needs a kernel without inner axes"
        )
    varying = [k for k, n in enumerate(kernel.outer) if n > 1]
    dense = layout.contiguous_strides(kernel.outer)
    dense = tuple(dense[k] for k in varying)
    written: set[str] = set()
    for stage in kernel.stages:
        for node in stage.value.walk():
            if not isinstance(node, Load):
                continue
            if node.buffer in written:
                raise LoweringError(
                    f"kernel {kernel.name}: inout buffer {node.buffer} is read after "
                    "it is stored"
                )
            role = kernel._by_name[node.buffer].role
            strides = tuple(node.strides[k] for k in varying)
            if role == "inout" and strides != dense:
                raise LoweringError(
                    f"kernel {kernel.name}: inout buffer {node.buffer} is read at "
                    "another element than the one written",
                    expected=dense,
                    actual=strides,
                )
        if isinstance(stage, Store) and kernel._by_name[stage.buffer].role == "inout":
            written.add(stage.buffer)


def in_place(kernel: LoopKernel, output: str, source: str) -> LoopKernel:
    """``kernel`` storing ``output`` into input ``source`` instead: ``source``
    becomes an ``inout`` buffer and ``output`` goes.

    The stores are reordered so that every inout buffer is stored after the last
    load of it, when such an order exists. LoweringError when the kernel cannot
    update ``source`` in place (see :func:`_verify_in_place`): the caller then
    keeps the separate output.
    """
    out, src = kernel.buffer(output), kernel.buffer(source)
    if out.role != "out" or src.role != "in":
        raise LoweringError(
            f"kernel {kernel.name}: {output} must be an output and {source} an input"
        )
    if (out.dtype, out.numel) != (src.dtype, src.numel) or src.offset:
        raise LoweringError(
            f"kernel {kernel.name}: {source} cannot hold {output}",
            expected=out.describe(),
            actual=src.describe(),
        )
    buffers = tuple(
        replace(src, shape=out.shape, strides=out.strides, role="inout")
        if b is src
        else b
        for b in kernel.buffers
        if b is not out
    )
    stages = [
        Store(source, s.value, s.inner)
        if isinstance(s, Store) and s.buffer == output
        else s
        for s in kernel.stages
    ]
    if not layout.is_contiguous(src.shape, src.strides):
        raise LoweringError(f"kernel {kernel.name}: {source} is not dense")
    return LoopKernel(
        kernel.name,
        buffers,
        kernel.outer,
        kernel.inner,
        _stores_last(stages, {b.name for b in buffers if b.role == "inout"}),
    )


def _stores_last(stages: list[Stage], inout: set[str]) -> tuple[Stage, ...]:
    """``stages`` with each store of an inout buffer after every load of it, keeping
    the order otherwise (a store reads nothing another store writes, except
    through inout buffers)."""
    early = [s for s in stages if not (isinstance(s, Store) and s.buffer in inout)]
    pending = [s for s in stages if isinstance(s, Store) and s.buffer in inout]
    late: list[Stage] = []
    while pending:
        for stage in pending:
            others = [s for s in pending if s is not stage]
            read = {
                n.buffer for o in others for n in o.value.walk() if isinstance(n, Load)
            }
            if stage.buffer not in read:
                late.append(stage)
                pending.remove(stage)
                break
        else:  # a cycle: the verifier names it
            late.extend(pending)
            break
    return tuple(early + late)


def _verify_buffers(kernel: LoopKernel) -> None:
    if len(kernel._by_name) != len(kernel.buffers):
        raise LoweringError(f"kernel {kernel.name}: buffer names are not unique")
    if any(n < 0 for n in kernel.domain):
        raise LoweringError(
            f"kernel {kernel.name}: negative loop extent {kernel.domain}"
        )
    for buf in kernel.buffers:
        if buf.role not in ROLES:
            raise LoweringError(
                f"buffer {buf.name}: role must be one of {ROLES}", actual=buf.role
            )
        if len(buf.strides) != len(buf.shape) or min(buf.strides, default=0) < 0:
            raise LoweringError(
                f"buffer {buf.name}: strides {buf.strides} do not fit "
                f"shape {buf.shape} or are negative"
            )
        if buf.offset < 0:
            raise LoweringError(f"buffer {buf.name}: negative offset {buf.offset}")
        if buf.role != "in" and not layout.is_contiguous(buf.shape, buf.strides):
            raise LoweringError(
                f"output {buf.name} is not dense: strides {buf.strides}",
                expected=layout.contiguous_strides(buf.shape),
                actual=buf.strides,
                hint="kernels write dense outputs; copy into a strided view afterwards",
            )


def _verify_node(
    kernel: LoopKernel, node: Expr, defined: dict[str, DType], inner: bool
) -> None:
    """Check one expression node; ``inner`` says whether it runs at inner points."""
    if isinstance(node, Load):
        buf = kernel._by_name.get(node.buffer)
        if buf is None or buf.role not in READ_ROLES or buf.dtype is not node.dtype:
            raise LoweringError(
                f"load of {node.buffer}: no input buffer of dtype "
                f"{node.dtype.name} has that name"
            )
        if len(node.strides) != len(kernel.domain) or min(node.strides, default=0) < 0:
            raise LoweringError(
                f"load of {node.buffer}: strides {node.strides} do not fit the domain "
                f"{kernel.domain} (one non-negative stride per loop axis)"
            )
        if not inner and any(node.strides[len(kernel.outer) :]):
            raise LoweringError(
                f"load of {node.buffer} varies along an inner axis in "
                "a per-outer-point store"
            )
        extents = kernel.domain if inner else kernel.outer
        reach = sum((n - 1) * s for n, s in zip(extents, node.strides) if n)
        runs = layout.numel(extents) > 0
        if runs and (buf.numel == 0 or reach >= buf.extent()):
            raise LoweringError(
                f"load of {node.buffer} reaches element {reach} past its offset, "
                f"outside its layout {buf.describe()}",
                expected=f"< {buf.extent()}",
                actual=reach,
            )
    elif isinstance(node, AccRef):
        if defined.get(node.name) is not node.dtype:
            raise LoweringError(
                f"accumulator {node.name} is read before it is defined "
                "or with the wrong dtype"
            )
    elif isinstance(node, Op) and node.name != "cast":
        expected = result_dtype(node.name, [a.dtype for a in node.args])
        if expected is not node.dtype:
            raise LoweringError(
                f"{node.name}: result dtype {node.dtype.name} should "
                f"be {expected.name}",
                op=node.name,
            )
    elif isinstance(node, Op) and len(node.args) != 1:
        raise LoweringError("cast takes one operand", op="cast")


def _verify_store(kernel: LoopKernel, stage: Store, stored: set[str]) -> None:
    buf = kernel._by_name.get(stage.buffer)
    if buf is None or buf.role not in WRITE_ROLES:
        raise LoweringError(f"store to {stage.buffer}: no output buffer has that name")
    if stage.buffer in stored:
        raise LoweringError(f"output {stage.buffer} is stored twice")
    stored.add(stage.buffer)
    points = layout.numel(kernel.domain if stage.inner else kernel.outer)
    if buf.numel != points:
        raise LoweringError(
            f"store to {buf.name}: the output has {buf.numel} elements but the store "
            f"writes {points}",
            expected=points,
            actual=buf.numel,
        )
    if stage.value.dtype is not buf.dtype:
        raise LoweringError(
            f"store to {buf.name}: value is {stage.value.dtype.name}, "
            f"the output {buf.dtype.name}",
            hint="cast the value",
        )
    if stage.strides is not None:
        _verify_store_strides(kernel, stage)


def _verify_store_strides(kernel: LoopKernel, stage: Store) -> None:
    """Explicit store strides write every element of the output exactly once: an
    inner store whose strides, ordered, are the dense strides of the domain's
    extents (size-1 axes aside)."""
    strides = stage.strides or ()
    walked = sorted((s, n) for n, s in zip(kernel.domain, strides) if n != 1)
    fits = stage.inner and len(strides) == len(kernel.domain)
    empty = layout.numel(kernel.domain) == 0  # writes nothing
    dense = 1
    for stride, extent in walked:
        fits = fits and (stride == dense or empty)
        dense *= extent
    if fits and min(strides, default=0) >= 0:
        return
    raise LoweringError(
        f"store to {stage.buffer}: strides {strides} do not write each element of "
        f"the output once over the domain {kernel.domain}",
        expected="an inner store, one stride per domain axis, a permutation of the "
        "dense strides",
        actual=strides,
    )


# Rewriting ---------------------------------------------------------------------------


def map_loads(expr: Expr, fn: Callable[[Load], Expr]) -> Expr:
    """``expr`` with every :class:`Load` replaced by ``fn(load)``."""
    if isinstance(expr, Load):
        return fn(expr)
    if isinstance(expr, Op):
        return Op(expr.name, tuple(map_loads(a, fn) for a in expr.args), expr.dtype)
    return expr


def restride(
    kernel: LoopKernel, outer: Shape, inner: Shape, fn: Callable[[Strides], Strides]
) -> LoopKernel:
    """The same kernel over a new domain, each load's strides mapped by ``fn``."""

    def relaid(load_: Load) -> Expr:
        return Load(load_.buffer, fn(load_.strides), load_.dtype)

    stages: list[Stage] = []
    for stage in kernel.stages:
        value = map_loads(stage.value, relaid)
        if isinstance(stage, Reduce):
            stages.append(Reduce(stage.name, stage.kind, value))
        else:
            strides = None if stage.strides is None else fn(stage.strides)
            stages.append(Store(stage.buffer, value, stage.inner, strides))
    return LoopKernel(kernel.name, kernel.buffers, outer, inner, tuple(stages))


def coalesce(kernel: LoopKernel) -> LoopKernel:
    """Merge neighbouring loop axes that every load walks as one (and drop size-1 axes).

    Axes ``k`` and ``k+1`` of the same group (outer or inner) merge when each load, and
    each store with explicit strides, has ``stride[k] == stride[k+1] * extent[k+1]``;
    other stores write densely, so their index is unchanged. Fewer, longer loops
    vectorize better and split evenly across threads.
    """
    walks = [n.strides for n in kernel.expressions() if isinstance(n, Load)]
    walks += [s.strides for s in kernel.stages if isinstance(s, Store) and s.strides]
    n_outer = len(kernel.outer)
    groups = [list(range(n_outer)), list(range(n_outer, len(kernel.domain)))]
    merged: list[list[list[int]]] = []  # per group: runs of original axes
    for axes in groups:
        runs: list[list[int]] = []
        for axis in axes:
            if kernel.domain[axis] == 1:
                continue
            if runs and all(
                walk[runs[-1][-1]] == walk[axis] * kernel.domain[axis] for walk in walks
            ):
                runs[-1].append(axis)
            else:
                runs.append([axis])
        merged.append(runs)

    def extent(run: list[int]) -> int:
        return layout.numel([kernel.domain[a] for a in run])

    outer = tuple(extent(r) for r in merged[0])
    inner = tuple(extent(r) for r in merged[1])
    if (outer, inner) == (kernel.outer, kernel.inner):
        return kernel
    runs = merged[0] + merged[1]
    return restride(kernel, outer, inner, lambda s: tuple(s[r[-1]] for r in runs))


# Printing ----------------------------------------------------------------------------


def format_kernel(kernel: LoopKernel) -> str:
    """The readable text of ``kernel``; see the module docstring for an example."""
    lines = [f"kernel {kernel.name}"]
    lines += [f"  {b.role:<3} {b.describe()}" for b in kernel.buffers]
    axes = [f"i{k}" for k in range(len(kernel.domain))]
    n_outer = len(kernel.outer)
    outer_loops = ", ".join(f"{a} in 0..{n}" for a, n in zip(axes, kernel.outer))
    inner_loops = ", ".join(
        f"{a} in 0..{n}" for a, n in zip(axes[n_outer:], kernel.inner)
    )
    indent = "  "
    if outer_loops:
        lines.append(f"  parallel for {outer_loops}:")
        indent = "    "
    outer_index = _dense_index(axes[:n_outer], kernel.outer)
    full_index = _dense_index(axes, kernel.domain)
    for stage in kernel.stages:
        value = _format_expr(stage.value, axes)
        if isinstance(stage, Reduce):
            over = f" for {inner_loops}" if inner_loops else ""
            lines.append(f"{indent}{stage.name} = {stage.kind}{over}: {value}")
        elif stage.inner and inner_loops:
            index = full_index
            if stage.strides is not None:
                index = _affine(axes, stage.strides, 0)
            lines.append(
                f"{indent}for {inner_loops}: {stage.buffer}[{index}] = {value}"
            )
        else:
            index = full_index if stage.inner else outer_index
            lines.append(f"{indent}{stage.buffer}[{index}] = {value}")
    return "\n".join(lines)


def _dense_index(axes: Sequence[str], extents: Shape) -> str:
    return _affine(axes, layout.contiguous_strides(extents), 0)


def _affine(axes: Sequence[str], strides: Strides, offset: int) -> str:
    terms = [f"{offset}"] if offset else []
    for axis, stride in zip(axes, strides):
        if stride:
            terms.append(axis if stride == 1 else f"{stride}*{axis}")
    return " + ".join(terms) or "0"


def _format_expr(expr: Expr, axes: Sequence[str]) -> str:
    if isinstance(expr, Load):
        return f"{expr.buffer}[{_affine(axes, expr.strides, 0)}]"
    if isinstance(expr, Const):
        if expr.dtype is bool_:
            return "true" if expr.value else "false"
        return f"{expr.value!r}:{expr.dtype.short}"
    if isinstance(expr, AccRef):
        return expr.name
    assert isinstance(expr, Op)
    args = ", ".join(_format_expr(a, axes) for a in expr.args)
    if expr.name == "cast":
        return f"cast<{expr.dtype.short}>({args})"
    return f"{expr.name}({args})"
