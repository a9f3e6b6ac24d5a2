"""Gradients exactly at the points where an op is not differentiable, and ops whose
outputs carry no gradient at all.

The finite-difference checks keep away from kinks and ties; these tests pin the
subgradient ember picks there (PyTorch's choice in every case).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ember
from ember.ir import functions as F
from ember.ir.gradients import save_plan
from ember.ir.registry import all_ops


def grads_of(fn: Callable[..., Any], *values: list) -> list[list]:
    leaves = [ember.tensor(v, dtype=ember.float64, requires_grad=True) for v in values]
    out = fn(*leaves)
    out.backward(ember.ones_like(out))
    return [leaf.grad.tolist() for leaf in leaves]


def test_relu_at_zero_passes_no_gradient():
    assert grads_of(F.relu, [-1.0, 0.0, 2.0]) == [[0.0, 0.0, 1.0]]


def test_abs_at_zero_has_gradient_zero():
    assert grads_of(F.abs, [-1.0, 0.0, 2.0]) == [[-1.0, 0.0, 1.0]]


@pytest.mark.parametrize(
    "fn, expected",
    [
        (F.maximum, ([0.5, 0.0, 1.0], [0.5, 1.0, 0.0])),
        (F.minimum, ([0.5, 1.0, 0.0], [0.5, 0.0, 1.0])),
    ],
)
def test_elementwise_ties_split_the_gradient_in_half(fn, expected):
    assert grads_of(fn, [1.0, 2.0, 5.0], [1.0, 3.0, 4.0]) == list(expected)


def test_broadcast_ties_sum_their_halves():
    gx, gy = grads_of(F.maximum, [1.0, 1.0, 0.0], [1.0])
    assert gx == [0.5, 0.5, 0.0]
    assert gy == [2.0]


@pytest.mark.parametrize("fn", [F.amax, F.amin])
def test_reduction_ties_share_the_gradient_evenly(fn):
    values = (
        [[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]
        if fn is F.amax
        else [[3.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    )
    (g,) = grads_of(lambda t: fn(t, 1), values)
    third = 1.0 / 3.0
    assert np.allclose(g, [[0.0, 0.5, 0.5], [third, third, third]], rtol=0, atol=1e-15)


def test_amax_over_every_dim_splits_among_all_maxima():
    (g,) = grads_of(lambda t: F.amax(t), [[4.0, 1.0], [4.0, 4.0]])
    assert np.allclose(g, [[1 / 3, 0.0], [1 / 3, 1 / 3]])


def test_clamp_passes_the_gradient_at_its_bounds():
    (g,) = grads_of(lambda t: F.clamp(t, -0.5, 0.5), [-1.0, -0.5, 0.0, 0.5, 1.0])
    assert g == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_l1_loss_where_prediction_equals_target_has_gradient_zero():
    gp, gt = grads_of(
        lambda p, t: F.l1_loss(p, t, "sum"), [1.0, 2.0, 3.0], [1.0, 0.0, 4.0]
    )
    assert gp == [0.0, 1.0, -1.0]
    assert gt == [0.0, -1.0, 1.0]


def test_huber_loss_gradient_is_continuous_at_delta():
    (gp, _) = grads_of(
        lambda p, t: F.huber_loss(p, t, "sum", delta=0.5),
        [0.5, -0.5, 0.25],
        [0.0, 0.0, 0.0],
    )
    assert gp == [0.5, -0.5, 0.25]


def test_pow_at_zero_base_is_finite():
    gx, gy = grads_of(F.pow, [0.0, 0.0, 2.0], [2.0, 0.0, 3.0])
    assert gx == [0.0, 0.0, 12.0]
    assert gy[:2] == [0.0, 0.0]
    assert gy[2] == pytest.approx(8.0 * np.log(2.0))


# Outputs that carry no gradient --------------------------------------------------

x = ember.tensor([1.5, -2.0, 0.5], requires_grad=True)
y = ember.tensor([1.0, -2.0, 3.0], requires_grad=True)

NON_DIFFERENTIABLE: dict[str, Callable[[], Any]] = {
    "eq": lambda: F.eq(x, y),
    "ne": lambda: F.ne(x, y),
    "lt": lambda: F.lt(x, y),
    "le": lambda: F.le(x, y),
    "gt": lambda: F.gt(x, y),
    "ge": lambda: F.ge(x, y),
    "logical_and": lambda: F.logical_and(x, y),
    "logical_or": lambda: F.logical_or(x, y),
    "logical_not": lambda: F.logical_not(x),
    "argmax": lambda: F.argmax(x),
    "argmin": lambda: F.argmin(x),
}


def test_every_non_differentiable_op_is_listed_and_has_no_rule():
    names = {op.name for op in all_ops() if not op.differentiable}
    assert names == set(NON_DIFFERENTIABLE)
    assert all(op.grad is None for op in all_ops() if not op.differentiable)


@pytest.mark.parametrize("name", sorted(NON_DIFFERENTIABLE))
def test_non_differentiable_ops_record_nothing(name: str):
    out = NON_DIFFERENTIABLE[name]()
    assert out.grad_fn is None and not out.requires_grad


def test_every_differentiable_op_has_a_rule_and_declares_what_it_saves():
    for op in all_ops():
        if op.differentiable:
            assert op.grad is not None, op.name
            arity = op.num_inputs or 2
            positions, _ = save_plan(op.name, (True,) * arity)
            assert all(0 <= p < arity for p in positions), op.name


@pytest.mark.parametrize("dtype", [ember.int32, ember.int64, ember.bool])
def test_casts_to_integer_or_bool_are_not_differentiable(dtype):
    out = x.to(dtype)
    assert out.grad_fn is None and not out.requires_grad


def test_a_mask_made_from_a_comparison_only_passes_gradient_through_the_product():
    (g,) = grads_of(
        lambda t: F.mul(F.cast(F.gt(t, 0), ember.float64), t), [1.5, -2.0, 0.5]
    )
    assert g == [1.0, 0.0, 1.0]


def test_integer_operands_get_no_gradient_and_float_ones_keep_their_dtype():
    counts = ember.tensor([1, 2, 3])
    w = ember.tensor([0.5, 0.5, 0.5], requires_grad=True)
    (w * counts).sum().backward()
    assert w.grad.tolist() == [1.0, 2.0, 3.0]
    assert w.grad.dtype is ember.float32
    assert counts.grad is None
