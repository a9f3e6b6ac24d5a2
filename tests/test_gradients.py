"""Every differentiable op's gradient rule, checked by central finite differences.

Each case draws shapes, broadcasting and input layouts (dense, permuted, sliced with
a step, expanded with stride 0) with hypothesis, builds float64 leaves, and runs
``ember.testing.gradcheck`` on a function that lays the leaves out as drawn and then
calls the op. Values stay away from the points where an op is not differentiable
(relu and abs at 0, ties of maximum and amax, clamp bounds, the huber delta); what
happens exactly there is pinned by ``test_gradients_ties.py``. A case also checks
that its op really is in the recorded graph, and ``test_every_differentiable_op_
has_a_case`` fails when the registry gains a differentiable op without a case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import ember
from ember.ir import functions as F
from ember.ir.registry import all_ops
from ember.testing import gradcheck

Array = np.ndarray
Layout = Callable[[Any], Any]

# Value domains: each maps a generator and a shape to float64 values.


def normal(rng: np.random.Generator, shape: tuple[int, ...]) -> Array:
    return rng.standard_normal(shape)


def positive(rng: np.random.Generator, shape: tuple[int, ...]) -> Array:
    return rng.uniform(0.5, 2.0, shape)


def away_from(*points: float, margin: float = 0.2):
    """Uniform in [-2, 2], pushed at least ``margin`` away from each of ``points``."""

    def values(rng: np.random.Generator, shape: tuple[int, ...]) -> Array:
        v = rng.uniform(-2.0, 2.0, shape)
        for p in points:
            close = np.abs(v - p) < margin
            v[close] = p + np.where(v[close] >= p, margin, -margin)
        return v

    return values


def grid(offset: float):
    """Integers in [-2, 2] plus ``offset`` plus noise below 0.2: two grids with
    offsets 0 and 0.5 never come closer than 0.1."""

    def values(rng: np.random.Generator, shape: tuple[int, ...]) -> Array:
        return rng.integers(-2, 3, shape) + offset + rng.uniform(-0.2, 0.2, shape)

    return values


def distinct(rng: np.random.Generator, shape: tuple[int, ...]) -> Array:
    """Pairwise distinct values, at least 0.3 apart: no reduction has a tie."""
    n = int(np.prod(shape))
    steps = rng.permutation(n) * 0.5 + rng.uniform(-0.1, 0.1, n)
    return (steps - n / 4).reshape(shape)


# Input layouts -----------------------------------------------------------------------


@dataclass
class Input:
    """A float64 leaf and the view of it the op receives."""

    leaf: Array
    layout: Layout
    name: str


def strided(
    data: st.DataObject, rng: np.random.Generator, shape: tuple[int, ...], values=normal
) -> Input:
    """A leaf whose drawn layout (a view chain) yields a tensor of ``shape``."""
    kind = data.draw(st.sampled_from(["dense", "permuted", "sliced", "expanded"]))
    if kind == "permuted" and len(shape) >= 2:
        perm = data.draw(st.permutations(range(len(shape))))
        inverse = [int(i) for i in np.argsort(perm)]
        leaf_shape = tuple(shape[p] for p in perm)
        return Input(values(rng, leaf_shape), lambda t: t.permute(*inverse), kind)
    if kind == "sliced" and shape:
        dim = data.draw(st.integers(0, len(shape) - 1))
        start, step = data.draw(st.integers(0, 2)), data.draw(st.integers(1, 3))
        stop = start + step * (shape[dim] - 1) + 1
        leaf_shape = (
            shape[:dim] + (stop + data.draw(st.integers(0, 1)),) + shape[dim + 1 :]
        )
        return Input(
            values(rng, leaf_shape), lambda t: F.slice(t, dim, start, stop, step), kind
        )
    if kind == "expanded" and shape:
        lead = data.draw(st.integers(0, len(shape)))
        kept = range(lead, len(shape))
        ones = data.draw(st.sets(st.sampled_from(kept))) if kept else set()
        leaf_shape = tuple(1 if i in ones else s for i, s in enumerate(shape))[lead:]
        return Input(values(rng, leaf_shape), lambda t: t.expand(*shape), kind)
    return Input(values(rng, shape), lambda t: t, "dense")


def seeded(data: st.DataObject) -> np.random.Generator:
    return np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))


shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)
nonscalar_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3)


def broadcast_pair(data: st.DataObject) -> tuple[tuple[int, ...], ...]:
    drawn = data.draw(
        hnp.mutually_broadcastable_shapes(
            num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=3
        )
    )
    return drawn.input_shapes


# Cases ------------------------------------------------------------------------------


@dataclass
class Check:
    """What a case hands to the runner: the op's function, its drawn inputs, the
    non-differentiable arguments, and the finite-difference settings."""

    fn: Callable[..., Any]
    inputs: list[Input]
    extra: tuple[Any, ...] = ()
    eps: float = 1e-6
    atol: float = 1e-5
    rtol: float = 1e-4


CASES: dict[str, Callable[[st.DataObject], Check]] = {}


def case(name: str):
    def install(build: Callable[[st.DataObject], Check]):
        CASES[name] = build
        return build

    return install


def unary(name: str, values=normal) -> None:
    fn = getattr(F, name)

    def build(data: st.DataObject) -> Check:
        return Check(fn, [strided(data, seeded(data), data.draw(shapes), values)])

    CASES[name] = build


for _name in ["neg", "exp", "sigmoid", "tanh", "erf", "gelu"]:
    unary(_name)
for _name in ["log", "sqrt", "rsqrt"]:
    unary(_name, positive)
unary("abs", away_from(0.0))
unary("relu", away_from(0.0))


@case("copy")
def _copy(data: st.DataObject) -> Check:
    return Check(F.clone, [strided(data, seeded(data), data.draw(shapes))])


@case("cast")
def _cast(data: st.DataObject) -> Check:
    # float64 -> float32 -> float64 is linear, so a wide step is exact and keeps
    # float32 rounding out of the quotient.
    def fn(x):
        return F.cast(F.cast(x, ember.float32), ember.float64) * 3.0

    return Check(
        fn,
        [strided(data, seeded(data), data.draw(shapes))],
        eps=1e-2,
        atol=1e-4,
        rtol=1e-4,
    )


def binary(name: str, left=normal, right=normal) -> None:
    fn = getattr(F, name)

    def build(data: st.DataObject) -> Check:
        rng = seeded(data)
        a, b = broadcast_pair(data)
        return Check(fn, [strided(data, rng, a, left), strided(data, rng, b, right)])

    CASES[name] = build


binary("add")
binary("sub")
binary("mul")
binary("div", normal, away_from(0.0, margin=0.5))
binary("pow", positive, normal)
binary("maximum", grid(0.0), grid(0.5))
binary("minimum", grid(0.5), grid(0.0))


@case("where")
def _where(data: st.DataObject) -> Check:
    rng = seeded(data)
    drawn = data.draw(
        hnp.mutually_broadcastable_shapes(
            num_shapes=3, min_dims=0, max_dims=3, min_side=1, max_side=3
        )
    )
    c, a, b = drawn.input_shapes
    cond = ember.from_numpy(np.asarray(rng.random(c) < 0.5))
    return Check(
        lambda x, y, k: F.where(k, x, y),
        [strided(data, rng, a), strided(data, rng, b)],
        (cond,),
    )


@case("clamp")
def _clamp(data: st.DataObject) -> Check:
    low, high = data.draw(st.sampled_from([(-0.5, 0.5), (-0.5, None), (None, 0.5)]))
    x = strided(data, seeded(data), data.draw(shapes), away_from(-0.5, 0.5, margin=0.1))
    return Check(lambda t: F.clamp(t, low, high), [x])


def reduction_dims(data: st.DataObject, ndim: int) -> Any:
    """None, one dim (negative too; a 0-d tensor takes 0 and -1) or a set of dims."""
    bound = max(ndim, 1)
    return data.draw(
        st.one_of(
            st.none(),
            st.integers(-bound, bound - 1),
            st.sets(st.integers(0, bound - 1), max_size=ndim).map(tuple),
        )
    )


def reduction(name: str, values=normal) -> None:
    fn = getattr(F, name)

    def build(data: st.DataObject) -> Check:
        shape = data.draw(shapes)
        dims, keepdim = reduction_dims(data, len(shape)), data.draw(st.booleans())
        x = strided(data, seeded(data), shape, values)
        return Check(lambda t: fn(t, dims, keepdim), [x])

    CASES[name] = build


reduction("sum")
reduction("mean")
reduction("amax", distinct)
reduction("amin", distinct)


@case("var")
def _var(data: st.DataObject) -> Check:
    shape = data.draw(nonscalar_shapes.filter(lambda s: max(s) > 1))
    big = [i for i, s in enumerate(shape) if s > 1]
    dims = tuple(sorted(data.draw(st.sets(st.sampled_from(big), min_size=1))))
    correction = data.draw(st.integers(0, 1))
    keepdim = data.draw(st.booleans())
    x = strided(data, seeded(data), shape)
    return Check(lambda t: F.var(t, dims, correction=correction, keepdim=keepdim), [x])


def along_dim(name: str) -> None:
    fn = getattr(F, name)

    def build(data: st.DataObject) -> Check:
        shape = data.draw(nonscalar_shapes)
        dim = data.draw(st.integers(-len(shape), len(shape) - 1))
        return Check(lambda t: fn(t, dim), [strided(data, seeded(data), shape)])

    CASES[name] = build


along_dim("softmax")
along_dim("log_softmax")


@case("matmul")
def _matmul(data: st.DataObject) -> Check:
    rng = seeded(data)
    m, k, n = (data.draw(st.integers(1, 3)) for _ in range(3))
    batch_a, batch_b = broadcast_pair(data)
    # Keep at most two trailing batch dims: trailing dims of a broadcastable pair
    # stay broadcastable, leading ones need not.
    kind_a = data.draw(st.sampled_from(["vector", "matrix"]))
    kind_b = data.draw(st.sampled_from(["vector", "matrix"]))
    a = (k,) if kind_a == "vector" else batch_a[-2:] + (m, k)
    b = (k,) if kind_b == "vector" else batch_b[-2:] + (k, n)
    return Check(F.matmul, [strided(data, rng, a), strided(data, rng, b)])


@case("linear")
def _linear(data: st.DataObject) -> Check:
    rng = seeded(data)
    lead = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    fan_in, fan_out = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    inputs = [
        strided(data, rng, lead + (fan_in,)),
        strided(data, rng, (fan_out, fan_in)),
    ]
    if data.draw(st.booleans()):
        inputs.append(strided(data, rng, (fan_out,)))
    return Check(F.linear, inputs)


def loss(name: str, pred=normal, target=normal, **extra: Any) -> None:
    fn = getattr(F, name)

    def build(data: st.DataObject) -> Check:
        rng = seeded(data)
        shape = data.draw(shapes)
        reduction = data.draw(st.sampled_from(["mean", "sum", "none"]))
        inputs = [strided(data, rng, shape, pred), strided(data, rng, shape, target)]
        return Check(lambda p, t: fn(p, t, reduction, **extra), inputs)

    CASES[name] = build


loss("mse_loss")
# l1 has a kink where prediction and target meet: draw them from apart grids.
loss("l1_loss", grid(0.5), grid(0.0))
# huber's derivative is continuous at |d| = delta, so differences across it agree.
loss("huber_loss", delta=0.7)


@case("cat")
def _cat(data: st.DataObject) -> Check:
    rng = seeded(data)
    shape = data.draw(nonscalar_shapes)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    parts = [
        shape[: dim % len(shape)] + (s,) + shape[dim % len(shape) + 1 :] for s in sizes
    ]
    return Check(lambda *ts: F.cat(ts, dim), [strided(data, rng, p) for p in parts])


@case("stack")
def _stack(data: st.DataObject) -> Check:
    rng = seeded(data)
    shape = data.draw(shapes)
    dim = data.draw(st.integers(-len(shape) - 1, len(shape)))
    count = data.draw(st.integers(1, 3))
    return Check(
        lambda *ts: F.stack(ts, dim), [strided(data, rng, shape) for _ in range(count)]
    )


@case("scatter_slice")
def _scatter_slice(data: st.DataObject) -> Check:
    src_shape = data.draw(nonscalar_shapes)
    dim = data.draw(st.integers(0, len(src_shape) - 1))
    start, step = data.draw(st.integers(0, 2)), data.draw(st.integers(1, 3))
    size = start + step * (src_shape[dim] - 1) + 1 + data.draw(st.integers(0, 2))
    shape = src_shape[:dim] + (size,) + src_shape[dim + 1 :]
    return Check(
        lambda t: F.scatter_slice(t, shape, dim, start, step),
        [strided(data, seeded(data), src_shape)],
    )


@case("view")
def _view(data: st.DataObject) -> Check:
    shape = data.draw(shapes)
    size = int(np.prod(shape))
    new = data.draw(st.sampled_from([(size,), (1, size), (size, 1), (-1,)]))
    # A dense leaf always views; strided layouts go through reshape (copy, then view).
    x = strided(data, seeded(data), shape)
    return Check(lambda t: F.reshape(t, new), [x])


@case("permute")
def _permute(data: st.DataObject) -> Check:
    shape = data.draw(shapes)
    dims = data.draw(st.permutations(range(len(shape))))
    return Check(lambda t: F.permute(t, *dims), [strided(data, seeded(data), shape)])


@case("expand")
def _expand(data: st.DataObject) -> Check:
    out = data.draw(shapes)
    target = data.draw(hnp.broadcastable_shapes(out, min_dims=len(out), max_dims=3))
    full = np.broadcast_shapes(out, target)
    return Check(lambda t: F.expand(t, *full), [strided(data, seeded(data), out)])


@case("slice")
def _slice(data: st.DataObject) -> Check:
    shape = data.draw(nonscalar_shapes)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    start = data.draw(st.integers(0, shape[dim]))
    stop = data.draw(st.integers(start, shape[dim]))
    step = data.draw(st.integers(1, 3))
    return Check(
        lambda t: F.slice(t, dim, start, stop, step),
        [strided(data, seeded(data), shape)],
    )


@case("select")
def _select(data: st.DataObject) -> Check:
    shape = data.draw(nonscalar_shapes)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    index = data.draw(st.integers(-shape[dim], shape[dim] - 1))
    return Check(
        lambda t: F.select(t, dim, index), [strided(data, seeded(data), shape)]
    )


@case("unsqueeze")
def _unsqueeze(data: st.DataObject) -> Check:
    shape = data.draw(shapes)
    dim = data.draw(st.integers(-len(shape) - 1, len(shape)))
    return Check(lambda t: F.unsqueeze(t, dim), [strided(data, seeded(data), shape)])


@case("squeeze")
def _squeeze(data: st.DataObject) -> Check:
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=2))
    dims = data.draw(st.one_of(st.none(), st.integers(0, len(shape) - 1)))
    return Check(lambda t: F.squeeze(t, dims), [strided(data, seeded(data), shape)])


# The runner -------------------------------------------------------------------------


def recorded_ops(outputs: Any) -> set[str]:
    """Names of every op in the graph behind ``outputs``."""
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(e for e in node.edges if e is not None and hasattr(e, "edges"))
    return {node.name for node in seen}


def run_case(name: str, check: Check) -> None:
    """Check that the case records its op, then gradcheck it."""
    note(f"input layouts: {[i.name for i in check.inputs]}")
    leaves = [ember.from_numpy(np.array(i.leaf, order="C")) for i in check.inputs]
    layouts = [i.layout for i in check.inputs]

    def fn(*args):
        return check.fn(
            *(lay(x) for lay, x in zip(layouts, args)), *args[len(layouts) :]
        )

    probe = [x.detach().requires_grad_() for x in leaves]
    out = fn(*probe, *check.extra)
    assert name in recorded_ops([out]), f"the case for {name} does not record {name}"
    gradcheck(
        fn, [*leaves, *check.extra], eps=check.eps, atol=check.atol, rtol=check.rtol
    )


def test_every_differentiable_op_has_a_case():
    differentiable = {op.name for op in all_ops() if op.differentiable}
    missing = sorted(differentiable - set(CASES))
    assert not missing, f"differentiable ops without a gradient check: {missing}"
    assert not set(CASES) - differentiable


@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data())
def test_gradient_matches_finite_differences(name: str, data: st.DataObject):
    run_case(name, CASES[name](data))


def test_gradcheck_reports_a_wrong_rule(monkeypatch):
    from ember.ir.registry import get_op

    monkeypatch.setattr(get_op("exp"), "grad", lambda ctx, g: (F.mul(g, 2.0),))
    x = ember.tensor([0.5, 1.0], dtype=ember.float64)
    with pytest.raises(
        AssertionError, match=r"input 0, element \(0,\): autograd gives"
    ):
        gradcheck(F.exp, [x])
