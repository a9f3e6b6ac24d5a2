"""Independent large products of a program run side by side on two threads.

:func:`~ember.compiler.concurrency.pair_products` moves a product up beside an
independent one only past steps it has no tie to; the buffer plan gives the two
products of a pair no shared memory; and the results are the bytes of running
the products in turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import ember
from ember import nn, optim, settings
from ember.compiler.backends import compile_llvm
from ember.compiler.codegen.launch import ConcurrentLaunches
from ember.compiler.concurrency import CONCURRENT_MACS, pair_products
from ember.compiler.trace import trace


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    with settings.override(cache_dir=str(tmp_path_factory.mktemp("kernels"))):
        yield


# Pairing on stand-in steps ---------------------------------------------------------


@dataclass(frozen=True)
class _Operand:
    slot: int


@dataclass(frozen=True)
class _Gemm:
    matrices: tuple


class _Step:
    def __init__(self, name: str, reads: list[int], writes: list[int], macs: int = 0):
        self.name = name
        self.reads = tuple(_Operand(s) for s in reads)
        self.writes = tuple(_Operand(s) for s in writes)
        if macs:
            self.compiled = _Gemm((((macs, 1), None, 0), ((1, 1), None, 0)))

    def __repr__(self) -> str:
        return self.name


BIG = CONCURRENT_MACS


def names(steps) -> list[str]:
    return [s.name for s in steps]


def test_an_independent_product_moves_up_beside_the_first():
    steps = [
        _Step("dx", [1, 2], [3], BIG),  # dx = dy @ w
        _Step("mask", [3, 4], [5]),  # reads dx
        _Step("dw", [1, 6], [7], BIG),  # dw = dy.T @ x: independent
    ]
    order, pairs = pair_products(steps)
    assert names(order) == ["dx", "dw", "mask"]
    assert pairs == {0}


def test_a_product_that_reads_a_result_in_between_stays():
    steps = [
        _Step("a", [1, 2], [3], BIG),
        _Step("relu", [3], [4]),
        _Step("b", [4, 2], [5], BIG),  # reads relu's result
    ]
    order, pairs = pair_products(steps)
    assert names(order) == ["a", "relu", "b"] and pairs == set()


def test_a_product_never_moves_above_a_step_that_overwrites_what_it_reads():
    # An update kernel writes parameter 2 in place after the first product read it.
    steps = [
        _Step("a", [1, 2], [3], BIG),
        _Step("update", [2, 8], [2]),
        _Step("b", [2, 6], [7], BIG),  # reads the updated parameter
    ]
    assert pair_products(steps)[1] == set()


def test_a_product_never_moves_above_a_step_that_reads_what_it_overwrites():
    steps = [
        _Step("a", [1, 2], [3], BIG),
        _Step("read", [9], [4]),
        _Step("b", [1, 6], [9], BIG),  # writes what "read" reads first
    ]
    assert pair_products(steps)[1] == set()


def test_small_products_stay_in_turn():
    steps = [_Step("a", [1], [2], BIG // 2), _Step("b", [1], [3], BIG // 2)]
    assert pair_products(steps)[1] == set()


def test_products_pair_up_two_by_two():
    steps = [_Step(n, [1], [slot], BIG) for n, slot in zip("abcde", range(2, 7))]
    order, pairs = pair_products(steps)
    assert names(order) == list("abcde") and pairs == {0, 2}


# Programs ---------------------------------------------------------------------------


def rand(*shape: int) -> np.ndarray:
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)


def always_side_by_side(program) -> list[ConcurrentLaunches]:
    """The program's pairs, made to run on two threads whatever the load and the
    BLAS's own thread count."""
    launches = [e[1] for e in program._schedule if isinstance(e[1], ConcurrentLaunches)]
    for launch in launches:
        launch._busy = None
    return launches


def backward_of_a_layer(dy, w, x):
    """The two products of a linear layer's backward, and a use of one."""
    dx = dy @ w
    return dx.relu(), dy.T @ x


def test_the_two_products_of_a_layer_backward_run_side_by_side_and_agree():
    dy, w, x = rand(256, 192), rand(192, 160), rand(256, 160)
    args = [ember.tensor(a) for a in (dy, w, x)]
    program = compile_llvm(trace(backward_of_a_layer, *args))
    assert len(always_side_by_side(program)) == 1
    assert len(program.concurrent) == 1
    with settings.override(concurrent_products=False):
        in_turn = compile_llvm(trace(backward_of_a_layer, *args))
    assert in_turn.concurrent == []

    for _ in range(20):
        got = program.run_arrays(dy, w, x)
        want = in_turn.run_arrays(dy, w, x)
        for g, e in zip(got, want):
            np.testing.assert_array_equal(g, e)
    np.testing.assert_allclose(got[1], dy.T @ x, rtol=1e-4, atol=1e-3)


def test_the_buffers_of_a_pair_share_no_memory():
    dy, w, x = rand(256, 192), rand(192, 160), rand(256, 160)

    def chain(dy, w, x):
        h = (dy * 2.0).relu()  # an intermediate the first product reads last
        return (h @ w).sum(), (dy.T @ x).sum()

    program = compile_llvm(trace(chain, *[ember.tensor(a) for a in (dy, w, x)]))
    assert len(program.concurrent) == 1
    assign = program.plan.assign
    for steps, launch, _ in program._schedule:
        if not isinstance(launch, ConcurrentLaunches):
            continue
        first, second = steps
        touched = {assign.get(op.slot) for op in first.reads + first.writes}
        written = {assign.get(op.slot) for op in second.writes}
        assert not (touched & written) - {None}
        touched = {assign.get(op.slot) for op in second.reads + second.writes}
        written = {assign.get(op.slot) for op in first.writes}
        assert not (touched & written) - {None}


def _mlp_step(width: int):
    ember.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 1),
    )
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, ember.compile(step, backend="llvm")


def test_a_compiled_training_step_with_pairs_equals_one_without_step_after_step():
    x, y = ember.tensor(rand(256, 64)), ember.tensor(rand(256, 1))
    model, step = _mlp_step(256)
    with settings.override(concurrent_products=False):
        plain_model, plain_step = _mlp_step(256)
        for _ in range(2):  # eager, then trace and compile
            plain_step(x, y)
    for _ in range(2):
        step(x, y)
    (entry,) = step.cache.values()
    # The backward's two products of the middle layer, and the halves of its
    # forward product (which the next layer waits for).
    assert len(always_side_by_side(entry.program)) == 2
    assert any("rows 0:128" in name for name in entry.program.concurrent[0])

    for _ in range(8):
        loss, plain_loss = step(x, y).item(), plain_step(x, y).item()
        assert loss == plain_loss
    for p, q in zip(model.parameters(), plain_model.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_a_pair_whose_product_was_not_prepared_runs_in_turn():
    from ember.compiler.boundary import sequenced

    class Prepared:
        sequenceable = True

    first = (object(), Prepared(), ())
    second = (object(), None, ())
    third = (object(), None, ())
    grouped = sequenced([first, second, third], {0})

    assert grouped == [first, second, third]


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "split"),
    [((256, 256), (256, 256), True), ((4096, 64), (64, 32), False)],
    ids=["wide", "thin"],
)
def test_a_large_product_without_a_partner_splits_into_halves_unless_thin(
    a_shape, b_shape, split
):
    a, b = rand(*a_shape), rand(*b_shape)
    program = compile_llvm(trace(lambda a, b: a @ b, ember.tensor(a), ember.tensor(b)))
    always_side_by_side(program)

    (product,) = program.run_arrays(a, b)

    if split:
        (pair,) = program.concurrent
        assert [name.split(" rows ")[1] for name in pair] == ["0:128", "128:256"]
    else:
        assert program.concurrent == []
    np.testing.assert_allclose(product, a @ b, rtol=1e-4, atol=1e-3)


# Random programs ---------------------------------------------------------------------

SIZE = 128  # 128**3 multiply-adds: the smallest products that pair


@st.composite
def product_programs(draw):
    """A list of ops over three 128x128 inputs: products of earlier values (either
    side transposed), relus and sums, each reading values drawn among the earlier
    ones, so that products sometimes depend on each other and sometimes not."""
    ops = []
    for k in range(draw(st.integers(3, 7))):
        count = 3 + k
        kind = draw(st.sampled_from(["mm", "mm", "mm", "relu", "add"]))
        # Reading an input half the time makes independent products common.
        first = draw(st.one_of(st.integers(0, 2), st.integers(0, count - 1)))
        second = draw(st.one_of(st.integers(0, 2), st.integers(0, count - 1)))
        ops.append((kind, first, second, draw(st.booleans()), draw(st.booleans())))
    # The last value, and each other one with even odds (the rest is dead code).
    kept = [draw(st.booleans()) for _ in ops[:-1]]
    return ops, [2 + len(ops), *[3 + k for k, keep in enumerate(kept) if keep]]


def _run_ops(ops, outputs):
    def fn(a, b, c):
        values = [a, b, c]
        for kind, i, j, flip_i, flip_j in ops:
            x, y = values[i], values[j]
            if kind == "mm":
                values.append((x.T if flip_i else x) @ (y.T if flip_j else y) * 0.05)
            elif kind == "relu":
                values.append(x.relu())
            else:
                values.append(x + y)
        return tuple(values[o] for o in outputs)

    return fn


@given(program=product_programs())
@hypothesis_settings(max_examples=max(10, hypothesis_settings().max_examples // 4))
def test_random_programs_with_pairs_equal_programs_without(program):
    ops, outputs = program
    fn = _run_ops(ops, outputs)
    rng = np.random.default_rng(len(ops))
    inputs = [rng.standard_normal((SIZE, SIZE)).astype(np.float32) for _ in range(3)]
    args = [ember.tensor(a) for a in inputs]
    paired = compile_llvm(trace(fn, *args))
    always_side_by_side(paired)
    with settings.override(concurrent_products=False):
        in_turn = compile_llvm(trace(fn, *args))
    event(f"{len(paired.concurrent)} pairs")

    for _ in range(3):
        got = paired.run_arrays(*inputs)
        want = in_turn.run_arrays(*inputs)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    reference = [t.numpy() for t in fn(*args)]
    for g, r in zip(got, reference):
        np.testing.assert_allclose(g, r, rtol=2e-3, atol=2e-3)
