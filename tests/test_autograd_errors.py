"""Every way backward fails fast, with the text the user sees.

Each message names the tensor (its type and the op and line that produced it) and
the op involved; the error class and its code are part of the contract too.
"""

from __future__ import annotations

import re

import pytest

import ember
from ember.errors import (
    AutogradError,
    GradientMismatchError,
    GraphFreedError,
    InplaceModificationError,
    MissingGradError,
    NoGradError,
    NonScalarLossError,
)
from ember.ir.registry import get_op

HERE = "test_autograd_errors.py"


def f64(values, requires_grad: bool = True) -> ember.Tensor:
    return ember.tensor(values, dtype=ember.float64, requires_grad=requires_grad)


def produced_at(op: str) -> str:
    """The ``(output of OP at test_autograd_errors.py:LINE)`` part, as a regex."""
    return rf"\(output of {op} at {re.escape(HERE)}:\d+\)"


def test_backward_on_a_non_scalar_output_without_gradient():
    y = f64([[1.0, 2.0], [3.0, 4.0]]) * 2.0
    with pytest.raises(
        NonScalarLossError,
        match=r"\[E-AUTOGRAD-NONSCALAR\] backward "
        rf"on f64\[2, 2\] {produced_at('mul')} needs an explicit "
        "gradient",
    ) as info:
        y.backward()
    assert info.value.op == "mul"
    assert "loss.mean()" in info.value.hint


def test_backward_on_a_tensor_that_does_not_require_grad():
    with pytest.raises(
        NoGradError,
        match=r"\[E-AUTOGRAD-NOGRAD\] backward\(\) from "
        r"f32\[3\] \(not in any graph\), which does not require grad",
    ):
        ember.ones(3).backward()


def test_backward_on_a_result_computed_under_no_grad():
    x = f64([1.0])
    with ember.no_grad():
        y = x * 2.0
    with pytest.raises(NoGradError, match="no_grad"):
        y.backward()


def test_grad_with_respect_to_a_tensor_outside_the_graph():
    x = f64([1.0])
    with pytest.raises(
        NoGradError,
        match=r"grad\(\) with respect to f64\[1\] "
        r"\(not in any graph\)",
    ):
        ember.autograd.grad((x * 2.0).sum(), f64([1.0], requires_grad=False))


def test_a_second_backward_through_a_freed_graph():
    x = f64([1.0, 2.0])
    y = (x * x).sum()
    y.backward()
    with pytest.raises(
        GraphFreedError,
        match=r"\[E-AUTOGRAD-FREED\] a second "
        rf"backward from f64\[\] {produced_at('sum')} reached sum at "
        rf"{HERE}:\d+, whose saved values the first backward freed",
    ) as e:
        y.backward()
    assert "retain_graph=True" in e.value.hint
    assert e.value.location.file.endswith(HERE)


def test_a_freed_graph_is_detected_from_another_root_too():
    x = f64([1.0, 2.0])
    h = x.exp()
    h.sum().backward()
    with pytest.raises(GraphFreedError, match="reached exp"):
        (h * 2.0).sum().backward()


@pytest.mark.parametrize(
    "gradient, found",
    [
        (ember.ones(2, dtype=ember.float64), r"f64\[2\]"),
        (ember.ones(2, 2), r"f32\[2, 2\]"),
    ],
)
def test_a_gradient_of_the_wrong_shape_or_dtype(gradient, found):
    y = f64([[1.0, 2.0], [3.0, 4.0]]) * 2.0
    with pytest.raises(
        GradientMismatchError,
        match=r"\[E-AUTOGRAD-GRADMISMATCH\] the "
        rf"gradient for f64\[2, 2\] {produced_at('mul')} is {found}"
        r"\n  expected: f64\[2, 2\]",
    ):
        y.backward(gradient)


def test_a_gradient_that_is_not_a_tensor():
    with pytest.raises(GradientMismatchError, match="must be a tensor, got list"):
        (f64([1.0]) * 2.0).backward([1.0])


def test_grad_outputs_must_match_the_outputs_one_to_one():
    x = f64([1.0])
    with pytest.raises(GradientMismatchError, match=r"2 grad_outputs for 1 outputs"):
        ember.autograd.grad(x * 2.0, x, [f64([1.0], False), f64([1.0], False)])


def test_a_dot_grad_of_the_wrong_shape_is_not_silently_broadcast():
    x = f64([1.0, 2.0])
    x.grad = f64([0.0], requires_grad=False)
    with pytest.raises(
        GradientMismatchError,
        match=r"the \.grad of f64\[2\] \(a leaf\) "
        r"is f64\[1\]",
    ):
        x.sum().backward()


def test_an_output_saved_for_backward_and_then_modified_in_place():
    x = f64([1.0, 2.0])
    y = x.exp()
    loss = y.sum()
    with ember.no_grad():
        y.mul_(2.0)
    with pytest.raises(
        InplaceModificationError,
        match=r"\[E-AUTOGRAD-VERSION\] "
        rf"f64\[2\], the output of exp at {HERE}:\d+ saved for backward, "
        "was modified in place afterwards",
    ) as info:
        loss.backward()
    assert (info.value.op, info.value.expected, info.value.actual) == (
        "exp",
        "version 0",
        "version 1",
    )


def test_an_input_modified_through_a_view_of_it():
    x = f64([1.0, 2.0])
    w = f64([3.0, 4.0], requires_grad=False)
    loss = (x * w).sum()
    w[1:].fill_(0.0)
    with pytest.raises(InplaceModificationError, match=r"f64\[2\], the input 1 of mul"):
        loss.backward()
    assert x.grad is None  # nothing was accumulated by the failed backward


def test_a_rule_that_returns_no_gradient_for_an_input_that_needs_one(monkeypatch):
    monkeypatch.setattr(get_op("neg"), "grad", lambda ctx, g: (None,))
    with pytest.raises(
        MissingGradError,
        match=r"\[E-AUTOGRAD-MISSING\] the gradient "
        r"rule of neg returned no gradient for input 0 \(f64\[2\]\)",
    ):
        (-f64([1.0, 2.0])).sum().backward()


def test_a_rule_that_returns_a_gradient_of_the_wrong_shape(monkeypatch):
    monkeypatch.setattr(get_op("neg"), "grad", lambda ctx, g: (ember.ones(3),))
    with pytest.raises(
        GradientMismatchError,
        match=r"the gradient rule of neg "
        r"produced shape \(3,\) for an input of shape \(2,\)",
    ):
        (-f64([1.0, 2.0])).sum().backward()


def test_a_rule_that_returns_too_many_gradients(monkeypatch):
    monkeypatch.setattr(get_op("neg"), "grad", lambda ctx, g: (g, g))
    with pytest.raises(GradientMismatchError, match="neg returned 2 gradients for 1"):
        (-f64([1.0, 2.0])).sum().backward()


def test_grad_of_an_input_the_outputs_do_not_depend_on():
    x, other = f64([1.0]), f64([2.0])
    with pytest.raises(
        MissingGradError,
        match=r"the input f64\[1\] \(a leaf\) is not "
        "reachable from the outputs",
    ) as info:
        ember.autograd.grad((x * 2.0).sum(), other)
    assert "allow_unused=True" in info.value.hint


def test_only_floating_point_tensors_can_require_grad():
    with pytest.raises(AutogradError, match=r"requires_grad_\(\) on a i64\[2\] tensor"):
        ember.tensor([1, 2]).requires_grad_()


def test_requires_grad_cannot_be_switched_off_on_a_non_leaf():
    y = f64([1.0]) * 2.0
    with pytest.raises(
        AutogradError,
        match=rf"f64\[1\] {produced_at('mul')}, which is "
        "not a leaf",
    ):
        y.requires_grad_(False)
