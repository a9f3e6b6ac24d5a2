"""Layers, activations, losses, functional forms and initializers against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember import nn
from ember.errors import ConfigError, DTypeError, ShapeError
from ember.ir import functions as ops
from ember.nn import init


def _erf(values: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(values)


# Linear ---------------------------------------------------------------------------


def test_linear_computes_x_weight_transposed_plus_bias() -> None:
    layer = nn.Linear(3, 2)
    x = ember.randn(5, 3)
    expected = x.numpy() @ layer.weight.numpy().T + layer.bias.numpy()
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-6)
    bare = nn.Linear(3, 2, bias=False)
    assert bare.bias is None
    np.testing.assert_allclose(
        bare(x).numpy(), x.numpy() @ bare.weight.numpy().T, rtol=1e-6
    )


def test_linear_default_init_matches_pytorch_bounds_and_spread() -> None:
    ember.manual_seed(0)
    layer = nn.Linear(400, 500)
    bound = 1.0 / math.sqrt(400)
    weight, bias = layer.weight.numpy(), layer.bias.numpy()
    assert np.abs(weight).max() <= bound and np.abs(bias).max() <= bound
    # U(-b, b) has standard deviation b / sqrt(3); 200k samples pin it within 1%.
    assert weight.std() == pytest.approx(bound / math.sqrt(3), rel=0.01)
    assert abs(weight.mean()) < 0.01 * bound
    assert np.abs(bias).max() > 0.9 * bound


def test_linear_init_is_reproducible_from_the_global_seed() -> None:
    ember.manual_seed(7)
    first = nn.Linear(4, 3).weight.numpy().copy()
    ember.manual_seed(7)
    again = nn.Linear(4, 3).weight.numpy().copy()
    ember.manual_seed(8)
    other = nn.Linear(4, 3).weight.numpy().copy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_linear_dtype_and_bad_sizes() -> None:
    assert nn.Linear(2, 2, dtype=ember.float64).weight.dtype == ember.float64
    with pytest.raises(ShapeError, match="in_features must be a non-negative int"):
        nn.Linear(-1, 2)
    with pytest.raises(ShapeError, match="out_features"):
        nn.Linear(2, 2.5)  # type: ignore[arg-type]


def test_linear_and_mse_gradients_match_the_analytic_formula() -> None:
    layer = nn.Linear(3, 1)
    x, y = ember.randn(6, 3), ember.randn(6, 1)
    nn.MSELoss()(layer(x), y).backward()
    residual = x.numpy() @ layer.weight.numpy().T + layer.bias.numpy() - y.numpy()
    np.testing.assert_allclose(
        layer.weight.grad.numpy(), 2 * residual.T @ x.numpy() / 6, rtol=1e-5
    )
    np.testing.assert_allclose(
        layer.bias.grad.numpy(), 2 * residual.sum(0) / 6, rtol=1e-5
    )


# Activations and functional -------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "reference"),
    [
        (nn.ReLU(), lambda v: np.maximum(v, 0)),
        (nn.Tanh(), np.tanh),
        (nn.Sigmoid(), lambda v: 1 / (1 + np.exp(-v))),
        (nn.GELU(), lambda v: 0.5 * v * (1 + _erf(v / math.sqrt(2)))),
        (
            nn.GELU(approximate="tanh"),
            lambda v: (
                0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
            ),
        ),
        (nn.Identity(), lambda v: v),
    ],
    ids=["relu", "tanh", "sigmoid", "gelu", "gelu-tanh", "identity"],
)
def test_activations_match_numpy(module: nn.Module, reference) -> None:
    x = ember.tensor(np.linspace(-4, 4, 33), dtype=ember.float64)
    np.testing.assert_allclose(
        module(x).numpy(), reference(x.numpy()), rtol=1e-12, atol=1e-15
    )


def test_gelu_tanh_form_has_a_gradient() -> None:
    x = ember.tensor([0.5, -1.0], requires_grad=True)
    F.gelu(x, approximate="tanh").sum().backward()
    assert x.grad is not None and x.grad.shape == (2,)


def test_gelu_rejects_unknown_approximations() -> None:
    with pytest.raises(ConfigError, match="approximate must be 'none' or 'tanh'"):
        nn.GELU(approximate="fast")
    with pytest.raises(ConfigError):
        F.gelu(ember.ones(1), approximate="erf")


def test_functional_reexports_the_registry_functions() -> None:
    for name in (
        "linear",
        "relu",
        "tanh",
        "sigmoid",
        "softmax",
        "log_softmax",
        "mse_loss",
        "l1_loss",
        "huber_loss",
    ):
        assert getattr(F, name) is getattr(ops, name)


# Losses ---------------------------------------------------------------------------


def _huber(d: np.ndarray, delta: float) -> np.ndarray:
    return np.where(np.abs(d) < delta, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses_match_numpy(reduction: str) -> None:
    pred = ember.tensor([[0.0, 1.5], [-2.0, 0.25]], dtype=ember.float64)
    target = ember.tensor([[1.0, 1.0], [1.0, -0.5]], dtype=ember.float64)
    d = pred.numpy() - target.numpy()
    reduce = {"mean": np.mean, "sum": np.sum, "none": lambda v: v}[reduction]
    cases = [
        (nn.MSELoss(reduction), d * d),
        (nn.L1Loss(reduction), np.abs(d)),
        (nn.HuberLoss(reduction), _huber(d, 1.0)),
        (nn.HuberLoss(reduction, delta=0.5), _huber(d, 0.5)),
    ]
    for module, elementwise in cases:
        np.testing.assert_allclose(
            module(pred, target).numpy(), reduce(elementwise), rtol=1e-12
        )


def test_losses_refuse_shapes_that_would_broadcast() -> None:
    with pytest.raises(ShapeError, match="differs from target shape"):
        nn.MSELoss()(ember.zeros(4, 1), ember.zeros(4))


def test_loss_options_are_checked_at_construction() -> None:
    with pytest.raises(ConfigError, match="reduction must be one of"):
        nn.L1Loss(reduction="avg")
    with pytest.raises(ConfigError, match="delta must be positive"):
        nn.HuberLoss(delta=0.0)


# Initializers ---------------------------------------------------------------------


def test_constant_initializers() -> None:
    t = ember.empty(2, 3)
    assert init.ones_(t) is t and t.numpy().min() == 1.0
    assert init.zeros_(t).numpy().max() == 0.0
    assert init.constant_(t, 2.5).numpy().mean() == 2.5


def test_uniform_and_normal_have_the_requested_distribution() -> None:
    ember.manual_seed(3)
    u = init.uniform_(ember.empty(300, 300), -2.0, 3.0).numpy()
    assert u.min() >= -2.0 and u.max() < 3.0
    assert u.mean() == pytest.approx(0.5, abs=0.02)
    n = init.normal_(ember.empty(300, 300), mean=1.0, std=0.5).numpy()
    assert n.mean() == pytest.approx(1.0, abs=0.005)
    assert n.std() == pytest.approx(0.5, rel=0.01)


def test_xavier_initializers_follow_glorot() -> None:
    ember.manual_seed(4)
    fan_in, fan_out = 300, 500
    w = init.xavier_uniform_(ember.empty(fan_out, fan_in), gain=2.0).numpy()
    bound = 2.0 * math.sqrt(6 / (fan_in + fan_out))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    w = init.xavier_normal_(ember.empty(fan_out, fan_in)).numpy()
    assert w.std() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.01)


def test_kaiming_initializers_follow_he() -> None:
    ember.manual_seed(5)
    w = init.kaiming_normal_(ember.empty(500, 300), nonlinearity="relu").numpy()
    assert w.std() == pytest.approx(math.sqrt(2 / 300), rel=0.01)
    w = init.kaiming_normal_(
        ember.empty(500, 300), mode="fan_out", nonlinearity="relu"
    ).numpy()
    assert w.std() == pytest.approx(math.sqrt(2 / 500), rel=0.01)
    w = init.kaiming_uniform_(ember.empty(500, 300), a=0.0).numpy()
    bound = math.sqrt(2.0) * math.sqrt(3 / 300)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound


def test_fans_count_the_receptive_field() -> None:
    assert init.calculate_fan_in_and_fan_out(ember.empty(8, 4, 3, 3)) == (36, 72)
    with pytest.raises(ShapeError, match="at least 2 dims"):
        init.xavier_uniform_(ember.empty(5))


def test_gains_match_the_published_values() -> None:
    assert init.calculate_gain("linear") == 1.0
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / 1.0001))
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(
        math.sqrt(1 / 3)
    )
    with pytest.raises(ConfigError, match="unknown nonlinearity 'swish'"):
        init.calculate_gain("swish")
    with pytest.raises(ConfigError, match="mode must be 'fan_in' or 'fan_out'"):
        init.kaiming_uniform_(ember.empty(2, 2), mode="fan_avg")


def test_initializers_write_parameters_in_place_without_recording() -> None:
    p = nn.Parameter(ember.zeros(3, 2))
    storage = p.untyped_storage_id()
    init.normal_(p)
    assert p.untyped_storage_id() == storage and p.grad_fn is None
    assert p.numpy().std() > 0


def test_initializers_draw_from_a_given_generator() -> None:
    a = init.uniform_(ember.empty(5), generator=np.random.default_rng(9)).numpy().copy()
    b = init.uniform_(ember.empty(5), generator=np.random.default_rng(9)).numpy()
    np.testing.assert_array_equal(a, b)


def test_initializers_refuse_integer_tensors_and_bad_ranges() -> None:
    with pytest.raises(DTypeError, match="fills floating tensors only"):
        init.zeros_(ember.zeros(2, dtype=ember.int64))
    with pytest.raises(ConfigError, match="must not exceed"):
        init.uniform_(ember.empty(2), 1.0, 0.0)
    with pytest.raises(ConfigError, match="std must be non-negative"):
        init.normal_(ember.empty(2), std=-1.0)
