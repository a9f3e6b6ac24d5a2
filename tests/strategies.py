"""Hypothesis strategies for IR tests: strided layouts, arrays and random graphs.

Shapes and element values come from ``tensor_strategies`` (re-exported here), so a
test needs one import for both.

The graph strategy grows a random chain of registry ops over a pool of values
(inputs, parameters, constants and earlier results), with broadcasting operands,
views that leave strided metas behind, reductions, matmuls and several outputs.
Every graph it draws verifies; every meta comes from the op's own meta rule. A
drawn op whose meta rule rejects its operands (``relu`` of a bool tensor, ``amax``
over an empty dim) is skipped rather than filtered, so drawing stays cheap.

    >>> from hypothesis import given
    >>> @given(graphs(families=("pointwise",)))
    ... def test_something(graph): ...

Families (``FAMILIES``): ``pointwise`` (unary, binary with broadcasting, where,
cast, clamp), ``reduction``, ``view``, ``matmul`` and ``composite`` (softmax, cat,
gelu; not in the default set).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# FLOAT_DTYPES and shapes are re-exported for tests that import only this module.
from tensor_strategies import FLOAT_DTYPES, elements, shapes  # noqa: F401

from ember.errors import EmberError, SourceLocation
from ember.ir import dtypes, layout
from ember.ir.dtypes import DType
from ember.ir.graph import Graph, Node
from ember.ir.meta import TensorMeta

ALL_DTYPES: tuple[DType, ...] = dtypes.ALL_DTYPES

UNARY = tuple(
    "neg abs exp log sqrt rsqrt relu sigmoid tanh erf copy logical_not".split()
)
BINARY = tuple(
    "add sub mul div pow maximum minimum eq ne lt le gt ge logical_and logical_or".split()
)
REDUCTIONS = tuple("sum amax amin mean var argmax argmin".split())
VIEWS = tuple("view permute expand slice select unsqueeze squeeze".split())
FAMILIES = ("pointwise", "reduction", "view", "matmul", "composite")
DEFAULT_FAMILIES = ("pointwise", "reduction", "view", "matmul")

_FILES = ("model.py", "/home/user/my project/train.py", 'odd "name".py', "ü/ß.py")


# Dtypes, shapes, layouts ------------------------------------------------------------


def dtype_strategy(choices: Sequence[DType] = ALL_DTYPES) -> st.SearchStrategy[DType]:
    """One of ``choices`` (every ember dtype by default)."""
    return st.sampled_from(tuple(choices))


def strided_metas(
    dtype_choices: Sequence[DType] = ALL_DTYPES,
    max_dims: int = 4,
    max_side: int = 4,
    max_views: int = 3,
) -> st.SearchStrategy[TensorMeta]:
    """A layout that view ops produce: a dense base, then permutes, stepped slices,
    expands, selects and unsqueezes (each computed by the op's meta rule)."""
    layouts = strided_layouts(dtype_choices, max_dims, max_side, max_views)
    return layouts.map(lambda pair: pair[0])


@st.composite
def strided_layouts(
    draw: st.DrawFn,
    dtype_choices: Sequence[DType] = ALL_DTYPES,
    max_dims: int = 4,
    max_side: int = 4,
    max_views: int = 3,
) -> tuple[TensorMeta, int]:
    """A strided meta and the size of the dense storage it views (in elements)."""
    dtype = draw(dtype_strategy(dtype_choices))
    base = TensorMeta.contiguous(draw(shapes(0, max_dims, 0, max_side)), dtype)
    meta = base
    for _ in range(draw(st.integers(0, max_views))):
        op = draw(
            st.sampled_from(("permute", "slice", "expand", "select", "unsqueeze"))
        )
        attrs = draw(view_attrs(op, meta))
        if attrs is None:
            continue
        from ember.ir.registry import get_op

        try:
            meta = get_op(op).meta([meta], attrs)
        except EmberError:
            continue
    return meta, base.numel


def arrays_for(
    meta: TensorMeta, special_values: bool = False
) -> st.SearchStrategy[np.ndarray]:
    """A dense array of ``meta``'s shape and dtype (values from
    ``tensor_strategies.elements``); with ``special_values`` floats may also be
    ``nan``, ``inf``, ``-inf`` and ``-0.0``."""
    values = elements(meta.dtype)
    if special_values and meta.dtype.is_floating_point:
        specials = [float("nan"), float("inf"), float("-inf"), -0.0]
        values = st.one_of(values, st.sampled_from(specials))
    return hnp.arrays(meta.dtype.np_dtype, meta.shape, elements=values)


@st.composite
def arrays_with_layout(
    draw: st.DrawFn, meta: TensorMeta, special_values: bool = False
) -> np.ndarray:
    """A numpy view whose element strides and offset are ``meta``'s, over a fresh
    storage just large enough for it."""
    stop = meta.storage_span()[1]
    storage_meta = TensorMeta.contiguous((max(stop, meta.offset),), meta.dtype)
    storage = draw(arrays_for(storage_meta, special_values))
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[meta.offset :],
        shape=meta.shape,
        strides=tuple(s * item for s in meta.strides),
        writeable=False,
    )


# Attributes of view ops -------------------------------------------------------------


@st.composite
def view_attrs(draw: st.DrawFn, op: str, meta: TensorMeta) -> dict[str, Any] | None:
    """Attributes for view op ``op`` on ``meta``, or None when it does not apply."""
    ndim, shape = meta.ndim, meta.shape
    if op == "permute":
        return {"dims": tuple(draw(st.permutations(range(ndim))))}
    if op == "unsqueeze":
        return {"dim": draw(st.integers(-ndim - 1, ndim))}
    if op == "squeeze":
        ones = [i for i, s in enumerate(shape) if s == 1]
        return {
            "dims": tuple(draw(st.lists(st.sampled_from(ones), unique=True)))
            if ones and draw(st.booleans())
            else tuple(range(ndim))
        }
    if op == "expand":
        lead = draw(st.integers(0, 2 if ndim < 4 else 0))
        sizes = [draw(st.integers(1, 3)) if s == 1 else s for s in shape]
        return {
            "shape": tuple(draw(st.integers(0, 3)) for _ in range(lead)) + tuple(sizes)
        }
    if ndim == 0:
        return None
    dim = draw(st.integers(0, ndim - 1))
    size = shape[dim]
    if op == "slice":
        start = draw(st.integers(0, size))
        stop = draw(st.integers(start, size))
        return {
            "dim": dim,
            "start": start,
            "stop": stop,
            "step": draw(st.integers(1, 3)),
        }
    if op == "select":
        return (
            {"dim": dim, "index": draw(st.integers(-size, size - 1))} if size else None
        )
    if op == "view":
        return {"shape": draw(_view_shape(shape))}
    raise AssertionError(f"no attr strategy for view op {op}")


@st.composite
def _view_shape(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape with the same element count: flattened, merged, split or padded."""
    choice = draw(st.sampled_from(("flatten", "merge", "split", "pad")))
    if choice == "flatten" or len(shape) < 2 and choice == "merge":
        return (layout.numel(shape),)
    if choice == "merge":
        i = draw(st.integers(0, len(shape) - 2))
        return shape[:i] + (shape[i] * shape[i + 1],) + shape[i + 2 :]
    if choice == "split" and shape:
        i = draw(st.integers(0, len(shape) - 1))
        divisors = [d for d in range(1, shape[i] + 1) if shape[i] % d == 0]
        if divisors:
            d = draw(st.sampled_from(divisors))
            return shape[:i] + (d, shape[i] // d) + shape[i + 1 :]
    i = draw(st.integers(0, len(shape)))
    return shape[:i] + (1,) + shape[i:]


# Random graphs ----------------------------------------------------------------------


@st.composite
def source_locations(draw: st.DrawFn) -> SourceLocation | None:
    """None, or a location whose file and code text need escaping now and then."""
    if draw(st.booleans()):
        return None
    code = draw(
        st.one_of(st.just(""), st.just('y = f(x, "a\\tb")  # ü'), st.text(max_size=12))
    )
    return SourceLocation(
        draw(st.sampled_from(_FILES)), draw(st.integers(1, 9999)), code
    )


@st.composite
def graphs(
    draw: st.DrawFn,
    families: Sequence[str] = DEFAULT_FAMILIES,
    max_inputs: int = 3,
    max_ops: int = 10,
    max_outputs: int = 3,
    dtype_choices: Sequence[DType] = ALL_DTYPES,
    strided_inputs: bool = True,
    params: bool = True,
    consts: bool = True,
    special_values: bool = True,
    locations: bool = True,
) -> Graph:
    """A random graph that verifies: leaves first, then up to ``max_ops`` calls.

    ``strided_inputs`` lets inputs carry strided metas (runtime arguments that are
    views); ``special_values`` lets constants hold ``nan``, ``inf`` and ``-0.0``;
    ``locations`` attaches random source locations.
    """
    builder = _GraphBuilder(draw, dtype_choices, locations)
    builder.add_leaves(max_inputs, strided_inputs, params, consts, special_values)
    for _ in range(draw(st.integers(1, max_ops))):
        family = draw(st.sampled_from(tuple(families)))
        builder.add_call(family)
    outputs = draw(
        st.lists(st.sampled_from(builder.pool), min_size=1, max_size=max_outputs)
    )
    builder.graph.output(outputs, loc=builder.loc())
    return builder.graph


class _GraphBuilder:
    """The state of one graph draw: the graph and its pool of values."""

    def __init__(
        self, draw: st.DrawFn, dtype_choices: Sequence[DType], locations: bool
    ) -> None:
        self.draw = draw
        name = draw(st.sampled_from(("main", "forward", "backward", "my graph")))
        self.graph = Graph(name)
        self.dtypes = tuple(dtype_choices)
        self.locations = locations
        self.pool: list[Node] = []

    def loc(self) -> SourceLocation | None:
        return self.draw(source_locations()) if self.locations else None

    def add_leaves(
        self,
        max_inputs: int,
        strided: bool,
        params: bool,
        consts: bool,
        special_values: bool,
    ) -> None:
        draw, g = self.draw, self.graph
        for i in range(draw(st.integers(1, max_inputs))):
            meta = draw(
                strided_metas(self.dtypes)
                if strided and draw(st.booleans())
                else self.dense_metas()
            )
            self.pool.append(g.input(f"x{i}", meta, loc=self.loc()))
        for i in range(draw(st.integers(0, 2)) if params else 0):
            kind = draw(st.sampled_from(("param", "buffer")))
            target = f"layers.{i}.{'weight' if kind == 'param' else 'running_mean'}"
            self.pool.append(
                g.param(target, self.draw(self.dense_metas()), kind, loc=self.loc())
            )
        for _ in range(draw(st.integers(0, 2)) if consts else 0):
            meta = draw(self.dense_metas(max_side=6))
            value = draw(arrays_for(meta, special_values))
            self.pool.append(g.const(value, meta, loc=self.loc()))

    def dense_metas(self, max_side: int = 4) -> st.SearchStrategy[TensorMeta]:
        return st.builds(
            TensorMeta.contiguous,
            shapes(0, 3, 0, max_side),
            dtype_strategy(self.dtypes),
        )

    def pick(self, accept: Any = None) -> Node | None:
        candidates = [v for v in self.pool if accept is None or accept(v.meta)]
        return self.draw(st.sampled_from(candidates)) if candidates else None

    def call(
        self, op: str, inputs: Sequence[Node], attrs: dict[str, Any] | None = None
    ) -> Node | None:
        try:
            node = self.graph.call(op, inputs, attrs, loc=self.loc())
        except EmberError:
            return None  # the op's meta rule rejects these operands: skip the step
        self.pool.append(node)
        return node

    def add_call(self, family: str) -> None:
        getattr(self, f"_add_{family}")()

    def _add_pointwise(self) -> None:
        draw = self.draw
        x = self.pick()
        assert x is not None
        kind = draw(
            st.sampled_from(("unary", "binary", "binary", "where", "cast", "clamp"))
        )
        if kind == "unary":
            self.call(draw(st.sampled_from(UNARY)), [x])
        elif kind == "binary":
            self.call(draw(st.sampled_from(BINARY)), [x, self._broadcast_partner(x)])
        elif kind == "where":
            cond = self.call("gt", [x, self._broadcast_partner(x)])
            if cond is not None:
                self.call("where", [cond, x, self._broadcast_partner(x)])
        elif kind == "cast":
            self.call("cast", [x], {"dtype": draw(dtype_strategy())})
        else:
            bound = st.one_of(
                st.none(),
                st.integers(-3, 3),
                st.sampled_from([-1.5, 0.25, float("inf"), -float("inf")]),
            )
            self.call("clamp", [x], {"min": draw(bound), "max": draw(bound)})

    def _broadcast_partner(self, x: Node) -> Node:
        def fits(meta: TensorMeta) -> bool:
            try:
                layout.broadcast_shapes(x.meta.shape, meta.shape)  # type: ignore[union-attr]
            except EmberError:
                return False
            return True

        return self.pick(fits) or x

    def _add_reduction(self) -> None:
        draw = self.draw
        x = self.pick()
        assert x is not None and x.meta is not None
        op = draw(st.sampled_from(REDUCTIONS))
        keepdim = draw(st.booleans())
        if op in ("argmax", "argmin"):
            dim = draw(st.one_of(st.none(), st.integers(0, max(x.meta.ndim - 1, 0))))
            self.call(op, [x], {"dim": dim, "keepdim": keepdim})
            return
        dims = tuple(sorted(draw(st.sets(st.integers(0, max(x.meta.ndim - 1, 0))))))
        attrs: dict[str, Any] = {
            "dims": dims if x.meta.ndim else (),
            "keepdim": keepdim,
        }
        if op == "var":
            attrs["correction"] = draw(st.integers(0, 2))
        self.call(op, [x], attrs)

    def _add_view(self) -> None:
        x = self.pick()
        assert x is not None and x.meta is not None
        op = self.draw(st.sampled_from(VIEWS))
        attrs = self.draw(view_attrs(op, x.meta))
        if attrs is not None:
            self.call(op, [x], attrs)

    def _add_matmul(self) -> None:
        x = self.pick(lambda m: m.ndim >= 1 and m.dtype is not dtypes.bool_)
        if x is None or x.meta is None:
            return
        partners = [
            v
            for v in self.pool
            if v.meta is not None
            and v.meta.dtype is x.meta.dtype
            and v.meta.ndim >= 1
            and v.meta.shape[-2 if v.meta.ndim >= 2 else 0] == x.meta.shape[-1]
        ]
        if partners and self.draw(st.booleans()):
            self.call("matmul", [x, self.draw(st.sampled_from(partners))])
            return
        if x.meta.ndim >= 2:
            order = tuple(range(x.meta.ndim - 2)) + (x.meta.ndim - 1, x.meta.ndim - 2)
            other = self.call("permute", [x], {"dims": order})
        else:
            other = x
        if other is not None:
            self.call("matmul", [x, other])

    def _add_composite(self) -> None:
        draw = self.draw
        x = self.pick(lambda m: m.ndim >= 1)
        if x is None or x.meta is None:
            return
        op = draw(st.sampled_from(("softmax", "log_softmax", "gelu", "cat", "stack")))
        dim = draw(st.integers(0, x.meta.ndim - 1))
        if op == "gelu":
            self.call(op, [x])
        elif op in ("cat", "stack"):
            self.call(op, [x] * draw(st.integers(1, 3)), {"dim": dim})
        else:
            self.call(op, [x], {"dim": dim})
