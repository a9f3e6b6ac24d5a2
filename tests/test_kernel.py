"""LoopKernel: construction, dtype rules, verification errors and the printed form."""

from __future__ import annotations

import pytest

from ember.compiler.kernel import (
    Buffer,
    LoopKernel,
    Reduce,
    Store,
    coalesce,
    const,
    load,
    op,
    reduction_domain,
)
from ember.errors import LoweringError
from ember.ir.dtypes import bool_, float32, float64, int32, int64


def softmax_kernel() -> LoopKernel:
    x = Buffer("x", float32, (8, 16), (1, 8), offset=3)
    y = Buffer.dense("y", float32, (16, 8))
    m = Reduce("m", "max", load(x, (8, 1)))
    e = op("exp", op("sub", load(x, (8, 1)), m.ref()))
    s = Reduce("s", "sum", e)
    return LoopKernel(
        "softmax",
        (x, y),
        (16,),
        (8,),
        (m, s, Store("y", op("div", e, s.ref()), inner=True)),
    )


def test_printed_kernel_is_readable_and_stable() -> None:
    assert softmax_kernel().format() == "\n".join(
        [
            "kernel softmax",
            "  in  x: f32[8, 16] strides=(1, 8) offset=3",
            "  out y: f32[16, 8]",
            "  parallel for i0 in 0..16:",
            "    m = max for i1 in 0..8: x[8*i0 + i1]",
            "    s = sum for i1 in 0..8: exp(sub(x[8*i0 + i1], m))",
            "    for i1 in 0..8: y[8*i0 + i1] = div(exp(sub(x[8*i0 + i1], m)), s)",
        ]
    )


def test_mse_prints_without_outer_loops() -> None:
    a, b = Buffer("a", float32, (6,), (1,)), Buffer("b", float32, (6,), (1,))
    d = op("sub", load(a), load(b))
    total = Reduce("t", "sum", op("mul", d, d))
    k = LoopKernel(
        "mse",
        (a, b, Buffer.dense("loss", float32, ())),
        (),
        (6,),
        (total, Store("loss", op("div", total.ref(), 6.0))),
    )
    assert k.format().splitlines()[-2:] == [
        "  t = sum for i0 in 0..6: mul(sub(a[i0], b[i0]), sub(a[i0], b[i0]))",
        "  loss[0] = div(t, 6.0:f32)",
    ]


def test_op_promotes_like_the_registry() -> None:
    i = load(Buffer("i", int32, (2,), (1,)))
    f = load(Buffer("f", float64, (2,), (1,)))
    assert op("add", i, f).dtype is float64
    assert op("add", i, 1).dtype is int32
    assert op("add", i, 1.5).dtype is float32
    assert op("sqrt", i).dtype is float32
    assert op("lt", i, f).dtype is bool_
    assert op("where", op("gt", i, 0), i, 2.0).dtype is float32
    assert Reduce("s", "sum", op("gt", i, 0)).dtype is int64


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda x, y: (Store("y", op("neg", load(x, (3,)))),), "outside its layout"),
        (
            lambda x, y: (Store("y", op("neg", load(x, (1, 1)))),),
            "do not fit the domain",
        ),
        (lambda x, y: (), "never stored"),
        (lambda x, y: (Store("y", load(x)), Store("y", load(x))), "stored twice"),
        (lambda x, y: (Store("y", Reduce("r", "sum", load(x)).ref()),), "before it is"),
        (lambda x, y: (Store("y", op("exp", const(1, float64))),), "value is float64"),
    ],
)
def test_verification_rejects_broken_kernels(build, message) -> None:
    x = Buffer("x", float32, (4,), (1,))
    y = Buffer.dense("y", float32, (4,))
    with pytest.raises(LoweringError, match=message):
        LoopKernel("bad", (x, y), (4,), (), build(x, y))


def test_outputs_must_be_dense_and_ops_known() -> None:
    x = Buffer("x", float32, (4,), (1,))
    with pytest.raises(LoweringError, match="not dense"):
        LoopKernel(
            "bad",
            (x, Buffer("y", float32, (4,), (2,), role="out")),
            (4,),
            (),
            (Store("y", load(x)),),
        )
    with pytest.raises(LoweringError, match="no native lowering"):
        op("matmul", load(x), load(x))
    with pytest.raises(LoweringError, match="does not accept bool"):
        op("neg", load(Buffer("b", bool_, (4,), (1,))))


def test_coalesce_merges_dense_axes_and_keeps_strided_ones() -> None:
    x = Buffer("x", float32, (4, 5, 6), (30, 6, 1))
    y = Buffer.dense("y", float32, (4, 5, 6))
    k = LoopKernel("copy3", (x, y), (4, 5, 6), (), (Store("y", op("copy", load(x))),))
    assert coalesce(k).outer == (120,)
    t = Buffer("t", float32, (4, 5), (1, 4))
    k2 = LoopKernel(
        "t",
        (t, Buffer.dense("u", float32, (4, 5))),
        (4, 5),
        (),
        (Store("u", op("copy", load(t))),),
    )
    assert coalesce(k2).outer == (4, 5)


def test_reduction_domain_orders_kept_axes_first() -> None:
    assert reduction_domain((2, 3, 4), (1,)) == ((2, 4), (3,), (0, 2, 1))
    assert reduction_domain((5,), (-1,)) == ((), (5,), (0,))
