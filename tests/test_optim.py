"""ember.optim: each update against its published formula, written here in numpy.

The gradients are set by hand from a fixed numpy stream, so these tests pin the
optimizers alone, step by step, independent of autograd.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import ember
from ember import nn, optim
from ember.errors import ConfigError, DTypeError, GradientMismatchError

STEPS = 6


def _gradients(shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(STEPS)]


def _run(
    make_optimizer, start: np.ndarray, grads: list[np.ndarray]
) -> list[np.ndarray]:
    """The parameter after each step of an ember optimizer fed ``grads``."""
    param = nn.Parameter(ember.tensor(start, dtype=ember.float64))
    opt = make_optimizer([param])
    trajectory = []
    for g in grads:
        param.grad = ember.tensor(g, dtype=ember.float64)
        opt.step()
        trajectory.append(param.numpy().copy())
    return trajectory


# Reference formulas ---------------------------------------------------------------


def sgd_reference(
    p,
    grads,
    lr,
    momentum=0.0,
    dampening=0.0,
    weight_decay=0.0,
    nesterov=False,
    maximize=False,
):
    """SGD as PyTorch documents it (momentum after Sutskever et al., 2013)."""
    p, buf, out = p.copy(), None, []
    for g in grads:
        g = -g if maximize else g
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
        out.append(p)
    return out


def adam_reference(
    p,
    grads,
    lr,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    amsgrad=False,
    decoupled=False,
    maximize=False,
):
    """Adam (Kingma & Ba, 2015, Algorithm 1 with PyTorch's eps placement), AMSGrad
    (Reddi et al., 2018) and AdamW's decoupled decay (Loshchilov & Hutter, 2019)."""
    b1, b2 = betas
    p, out = p.copy(), []
    m, v, v_max = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = -g if maximize else g
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_max = np.maximum(v_max, v)
        second = v_max if amsgrad else v
        m_hat = m / (1 - b1**t)
        p = p - lr * m_hat / (np.sqrt(second) / math.sqrt(1 - b2**t) + eps)
        out.append(p)
    return out


# SGD ------------------------------------------------------------------------------


SGD_CASES = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.05, momentum=0.9),
    "dampening": dict(lr=0.05, momentum=0.8, dampening=0.3),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "weight-decay": dict(lr=0.1, momentum=0.5, weight_decay=0.01),
    "maximize": dict(lr=0.1, momentum=0.9, weight_decay=0.1, maximize=True),
}


@pytest.mark.parametrize("options", SGD_CASES.values(), ids=SGD_CASES.keys())
def test_sgd_follows_its_formula_step_by_step(options: dict) -> None:
    start = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.25]])
    grads = _gradients(start.shape)
    got = _run(lambda ps: optim.SGD(ps, **options), start, grads)
    for step, (mine, reference) in enumerate(
        zip(got, sgd_reference(start, grads, **options))
    ):
        np.testing.assert_allclose(
            mine, reference, rtol=1e-12, atol=1e-14, err_msg=f"step {step + 1}"
        )


# Adam and AdamW -------------------------------------------------------------------


ADAM_CASES = {
    "adam": (optim.Adam, dict(lr=0.01), {}),
    "betas-eps": (optim.Adam, dict(lr=0.1, betas=(0.8, 0.9), eps=1e-3), {}),
    "l2-decay": (optim.Adam, dict(lr=0.01, weight_decay=0.1), {}),
    "amsgrad": (optim.Adam, dict(lr=0.05, amsgrad=True), {}),
    "maximize": (optim.Adam, dict(lr=0.01, maximize=True), {}),
    "adamw": (optim.AdamW, dict(lr=0.01), dict(weight_decay=0.01, decoupled=True)),
    "adamw-amsgrad": (
        optim.AdamW,
        dict(lr=0.05, weight_decay=0.2, amsgrad=True),
        dict(decoupled=True),
    ),
}


@pytest.mark.parametrize(
    ("cls", "options", "extra"), ADAM_CASES.values(), ids=ADAM_CASES.keys()
)
def test_adam_family_follows_its_formula_step_by_step(cls, options, extra) -> None:
    start = np.array([0.5, -1.0, 2.0, 0.0])
    grads = _gradients(start.shape, seed=1)
    # Repeat a tiny gradient so AMSGrad's running maximum actually matters.
    grads[3] = grads[3] * 1e-3
    got = _run(lambda ps: cls(ps, **options), start, grads)
    reference = adam_reference(start, grads, **options, **extra)
    for step, (mine, ref) in enumerate(zip(got, reference)):
        np.testing.assert_allclose(
            mine, ref, rtol=1e-12, atol=1e-14, err_msg=f"step {step + 1}"
        )


def test_adamw_and_adam_differ_only_through_weight_decay() -> None:
    start = np.array([1.0, -2.0])
    grads = _gradients(start.shape, seed=2)
    plain = _run(lambda ps: optim.Adam(ps, lr=0.01), start, grads)
    decoupled = _run(
        lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.0), start, grads
    )
    np.testing.assert_array_equal(plain[-1], decoupled[-1])
    assert optim.AdamW([nn.Parameter(ember.ones(1))]).defaults["weight_decay"] == 0.01


def test_float32_parameters_stay_float32_and_close_to_the_formula() -> None:
    start = np.array([0.5, -1.0, 2.0], np.float32)
    param = nn.Parameter(ember.tensor(start))
    opt = optim.Adam([param], lr=0.01)
    grads = [g.astype(np.float32) for g in _gradients(start.shape, seed=3)]
    for g in grads:
        param.grad = ember.tensor(g)
        opt.step()
    assert param.dtype == ember.float32
    assert opt.state[param]["exp_avg"].dtype == ember.float32
    reference = adam_reference(start.astype(np.float64), grads, lr=0.01)[-1]
    np.testing.assert_allclose(param.numpy(), reference, rtol=1e-5)


# Behaviour ------------------------------------------------------------------------


def test_updates_are_in_place_and_not_recorded() -> None:
    param = nn.Parameter(ember.ones(2, 2))
    row = param[0]
    opt = optim.SGD([param], lr=0.5)
    (param * param).sum().backward()
    opt.step()
    assert param.grad_fn is None and param.requires_grad
    assert row.tolist() == [0.0, 0.0]


def test_plain_sgd_keeps_no_state() -> None:
    p = nn.Parameter(ember.ones(2))
    opt = optim.SGD([("p", p)], lr=0.1)
    p.grad = ember.ones(2)
    opt.step()
    assert opt.state == {} and opt.state_dict()["state"] == {}


def test_parameters_without_gradients_are_skipped() -> None:
    used, unused = nn.Parameter(ember.ones(2)), nn.Parameter(ember.ones(2))
    opt = optim.Adam([used, unused], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (used * 2).sum().backward()
        opt.step()
    assert unused.tolist() == [1.0, 1.0]
    assert unused not in opt.state
    assert opt.state[used]["step"] == 3
    unused.grad = ember.ones(2)
    opt.step()
    assert opt.state[unused]["step"] == 1


def test_param_groups_override_the_defaults() -> None:
    a, b = nn.Parameter(ember.ones(1)), nn.Parameter(ember.ones(1))
    opt = optim.SGD(
        [{"params": [a]}, {"params": b, "lr": 0.5, "momentum": 0.9}], lr=0.1
    )
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["momentum"] == 0
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["momentum"] == 0.9
    a.grad, b.grad = ember.ones(1), ember.ones(1)
    opt.step()
    assert a.item() == pytest.approx(0.9) and b.item() == pytest.approx(0.5)


def test_changing_a_group_learning_rate_takes_effect() -> None:
    p = nn.Parameter(ember.zeros(1))
    opt = optim.SGD([p], lr=1.0)
    opt.param_groups[0]["lr"] = 0.25
    p.grad = ember.ones(1)
    opt.step()
    assert p.item() == -0.25


def test_add_param_group_adds_a_group_with_defaults() -> None:
    a, b = nn.Parameter(ember.ones(1)), nn.Parameter(ember.ones(1))
    opt = optim.Adam([a], lr=0.1)
    opt.add_param_group({"params": [b], "betas": (0.5, 0.6)})
    assert opt.param_groups[1]["lr"] == 0.1 and opt.param_groups[1]["betas"] == (
        0.5,
        0.6,
    )


def test_zero_grad_drops_or_zeroes() -> None:
    p = nn.Parameter(ember.ones(2))
    opt = optim.SGD([p], lr=0.1)
    p.grad = ember.ones(2)
    opt.zero_grad(set_to_none=False)
    assert p.grad.tolist() == [0.0, 0.0]
    opt.zero_grad()
    assert p.grad is None


def test_step_evaluates_the_closure_with_gradients_on() -> None:
    p = nn.Parameter(ember.tensor([2.0]))
    opt = optim.SGD([p], lr=0.25)

    def closure() -> ember.Tensor:
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    with ember.no_grad():
        loss = opt.step(closure)
    assert loss.item() == 4.0 and p.item() == 1.0


def test_named_and_unnamed_parameters_are_both_accepted() -> None:
    model = nn.Linear(2, 1)
    named = optim.SGD(model.named_parameters(), lr=0.1)
    plain = optim.SGD(model.parameters(), lr=0.1)
    assert named.param_groups[0]["param_names"] == ["weight", "bias"]
    assert "param_names" not in plain.param_groups[0]
    assert named.param_groups[0]["params"] == plain.param_groups[0]["params"]


def test_repr_lists_each_group() -> None:
    opt = optim.SGD(nn.Linear(1, 1).named_parameters(), lr=0.1)
    assert (
        repr(opt)
        == """\
SGD (
Parameter Group 0
    params: 2 (named)
    dampening: 0.0
    lr: 0.1
    maximize: False
    momentum: 0.0
    nesterov: False
    weight_decay: 0.0
)"""
    )


# Errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: optim.SGD(p, lr=-0.1), "lr must be a number >= 0"),
        (lambda p: optim.SGD(p, momentum=-1), "momentum must be a number >= 0"),
        (lambda p: optim.SGD(p, nesterov=True), "nesterov momentum needs momentum > 0"),
        (
            lambda p: optim.SGD(p, momentum=0.9, dampening=0.1, nesterov=True),
            "dampening = 0",
        ),
        (lambda p: optim.Adam(p, betas=(0.9, 1.0)), r"betas must be two numbers"),
        (lambda p: optim.Adam(p, eps=-1e-8), "eps must be a number >= 0"),
        (lambda p: optim.AdamW(p, weight_decay=-0.1), "weight_decay must be"),
    ],
)
def test_invalid_options_are_rejected(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make([nn.Parameter(ember.ones(1))])


def test_invalid_parameter_lists_are_rejected() -> None:
    p = nn.Parameter(ember.ones(1))
    with pytest.raises(ConfigError, match="empty parameter list"):
        optim.SGD([])
    with pytest.raises(ConfigError, match="got a single Parameter"):
        optim.SGD(p)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="got a single dict"):
        optim.SGD({"w": p})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="appears more than once"):
        optim.SGD([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ConfigError, match="two parameters are named 'w'"):
        optim.SGD([("w", p), ("w", nn.Parameter(ember.ones(1)))])
    with pytest.raises(ConfigError, match="mixes .name, tensor. pairs with bare"):
        optim.SGD([("w", p), nn.Parameter(ember.ones(1))])
    with pytest.raises(ConfigError, match="some parameter groups are named"):
        optim.SGD([{"params": [("w", p)]}, {"params": [nn.Parameter(ember.ones(1))]}])
    with pytest.raises(ConfigError, match="must be an ordered iterable"):
        optim.SGD([{"params": {p}}])


def test_non_leaf_and_integer_tensors_cannot_be_optimized() -> None:
    leaf = ember.ones(2, requires_grad=True)
    with pytest.raises(ConfigError, match="computed by mul; only leaf tensors"):
        optim.SGD([leaf * 2])
    with pytest.raises(DTypeError, match="has dtype int64"):
        optim.SGD([ember.ones(2, dtype=ember.int64)])


def test_a_gradient_of_the_wrong_shape_is_an_error_not_a_broadcast() -> None:
    p = nn.Parameter(ember.ones(3))
    opt = optim.SGD([p], lr=0.1)
    p.grad = ember.ones(1)
    with pytest.raises(GradientMismatchError, match="the gradient of a parameter f32"):
        opt.step()
    assert p.tolist() == [1.0, 1.0, 1.0]
