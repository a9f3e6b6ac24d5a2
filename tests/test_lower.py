"""Lowering: the loop kernels fusion groups become, and the ops it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from ember.compiler import kernel as K
from ember.compiler.fusion import fuse
from ember.compiler.lower import BLAS_MIN_FLOPS, format_lowered, lower
from ember.errors import LoweringError, SourceLocation
from ember.ir.dtypes import float32, int64
from ember.ir.graph import Graph
from ember.ir.meta import TensorMeta


def f32(*shape: int) -> TensorMeta:
    return TensorMeta.contiguous(shape, float32)


def test_a_transposed_slice_is_read_in_place_through_its_strides():
    g = Graph()
    x = g.input("x", f32(8, 4))
    t = g.call("permute", [x], {"dims": (1, 0)})
    part = g.call("slice", [t], {"dim": 1, "start": 2, "stop": 8, "step": 2})
    g.output([g.call("exp", [part])])

    (group,) = lower(fuse(g))

    kernel = group.kernel.kernel
    (source,) = kernel.inputs
    assert (source.shape, source.strides, source.offset) == ((4, 3), (1, 8), 8)
    assert kernel.outer == (4, 3) and kernel.inner == ()
    (store,) = kernel.stages
    assert store.value == K.Op("exp", (K.Load("in0", (1, 8), float32),), float32)


def test_an_expanded_operand_loads_with_stride_zero():
    g = Graph()
    x, b = g.input("x", f32(3, 5)), g.input("b", f32(3, 1))
    g.output([g.call("add", [x, b])])

    (group,) = lower(fuse(g))

    loads = [e for e in group.kernel.kernel.expressions() if isinstance(e, K.Load)]
    assert [(ld.buffer, ld.strides) for ld in loads] == [
        ("in0", (5, 1)),
        ("in1", (1, 0)),
    ]


def test_row_softmax_lowers_to_three_sweeps_of_one_row_loop():
    g = Graph()
    x = g.input("x", f32(6, 10))
    m = g.call("amax", [x], {"dims": (1,), "keepdim": True})
    e = g.call("exp", [g.call("sub", [x, m])])
    s = g.call("sum", [e], {"dims": (1,), "keepdim": True})
    g.output([g.call("div", [e, s])])

    (group,) = lower(fuse(g))

    kernel = group.kernel.kernel
    assert (kernel.outer, kernel.inner) == ((6,), (10,))
    kinds = [
        (type(st).__name__, getattr(st, "kind", getattr(st, "inner", None)))
        for st in kernel.stages
    ]
    assert kinds == [("Reduce", "max"), ("Reduce", "sum"), ("Store", True)]


def test_a_reduction_over_leading_dims_puts_the_kept_dims_outside():
    g = Graph()
    x = g.input("x", f32(4, 5, 6))
    g.output([g.call("sum", [x], {"dims": (0, 2), "keepdim": False})])

    (group,) = lower(fuse(g))

    kernel = group.kernel.kernel
    assert (kernel.outer, kernel.inner) == ((5,), (4, 6))
    (reduce, store) = kernel.stages
    assert reduce.value == K.Load("in0", (6, 30, 1), float32)
    assert store == K.Store("out0", reduce.ref(), False)


def test_small_matmuls_are_generated_with_their_epilogue():
    g = Graph()
    x, w, b = g.input("x", f32(4, 8)), g.input("w", f32(3, 8)), g.input("b", f32(3))
    mm = g.call("matmul", [x, g.call("permute", [w], {"dims": (1, 0)})])
    g.output([g.call("relu", [g.call("add", [mm, b])])])

    (group,) = lower(fuse(g))

    assert group.matmul is None
    kernel = group.kernel.kernel
    assert (kernel.outer, kernel.inner) == ((4, 3), (8,))
    reduce, store = kernel.stages
    a_load, w_load = reduce.value.args
    assert (a_load.strides, w_load.strides) == ((8, 0, 1), (0, 8, 1))
    assert "relu(add(acc0, in2[i1]))" in format_lowered([group])


def test_large_matmuls_go_to_blas_and_the_epilogue_reads_the_product():
    g = Graph()
    x, w = g.input("x", f32(64, 64)), g.input("w", f32(64, 64))
    mm = g.call("matmul", [x, w])
    g.output([g.call("tanh", [mm])])
    assert 64**3 >= BLAS_MIN_FLOPS

    (group,) = lower(fuse(g))

    assert group.kernel is None and group.matmul.product is mm
    epilogue = group.matmul.epilogue
    assert [b.value.name for b in epilogue.bindings] == [mm.name, "tanh"]
    assert format_lowered([group]).splitlines()[1] == (
        "blas matmul %matmul = %x @ %w into f32[64, 64]"
    )


def test_an_unsupported_op_names_the_node_its_line_and_the_reason():
    g = Graph()
    x = g.input("x", f32(4, 5))
    loc = SourceLocation("model.py", 12, "i = x.argmax(1)")
    g.call("argmax", [x], {"dim": 1, "keepdim": False}, loc=loc)
    g.output([g.nodes[-1]])

    with pytest.raises(LoweringError) as caught:
        lower(fuse(g))

    text = str(caught.value)
    assert text.startswith(
        "[E-LOWER] cannot lower argmax (%argmax): arg-reductions have no native kernel"
    )
    assert text.endswith("at model.py:12: i = x.argmax(1)")
    assert caught.value.location == loc


def test_integer_matmul_is_refused():
    g = Graph()
    meta = TensorMeta.contiguous((2, 2), int64)
    x = g.input("x", meta)
    g.output([g.call("matmul", [x, x])])

    with pytest.raises(LoweringError, match="integer matmul has no native kernel"):
        lower(fuse(g))


def test_scalar_constants_are_inlined_and_larger_ones_are_buffers():
    g = Graph()
    x = g.input("x", f32(4))
    half = g.const(np.array(0.5, np.float32), f32())
    table = g.const(np.arange(4, dtype=np.float32), f32(4))
    g.output([g.call("add", [g.call("mul", [x, half]), table])])

    (group,) = lower(fuse(g))

    assert [b.value.name for b in group.kernel.bindings] == ["x", table.name, "add"]
    assert "0.5:f32" in group.kernel.kernel.format()


def test_a_small_matmul_without_epilogue_goes_to_blas():
    g = Graph()
    x = g.input("x", f32(4, 8))
    g.output([g.call("matmul", [x, g.call("permute", [x], {"dims": (1, 0)})])])

    (group,) = lower(fuse(g))

    assert group.kernel is None and group.matmul.epilogue is None


def test_groups_with_the_same_loops_lower_to_the_same_kernel_text():
    g = Graph()
    x, y, b = (
        g.input("x", f32(16, 32)),
        g.input("y", f32(16, 32)),
        g.input("b", f32(32)),
    )
    outs = [g.call("relu", [g.call("add", [v, b])]) for v in (x, y)]
    outs.append(g.call("exp", [x]))
    g.output(outs)

    lowered = lower(fuse(g))

    texts = [grp.kernel.kernel.format() for grp in lowered]
    assert len(texts) == 3 and texts[0] == texts[1] != texts[2]
