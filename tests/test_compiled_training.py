"""Compiled models in training: ``loss.backward()`` through a compiled model runs
its compiled backward program and gives the eager gradients.

Tolerances: the interpreter backend runs the same eager kernels on the optimized
graph, whose decompositions may round differently, so gradients agree to a few
float32 ulps (rtol 1e-5); the LLVM backend vectorizes sums in another order, and
after 100 optimizer steps parameters agree to rtol 1e-4, atol 1e-5.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import ember
from ember import nn
from ember.errors import (
    AutogradError,
    GraphFreedError,
    InplaceModificationError,
    NonScalarLossError,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BACKENDS = ["interpret", "llvm"]


def _example(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        return __import__(name).build
    finally:
        sys.path.remove(str(EXAMPLES))


def _gradients(model) -> dict[str, np.ndarray]:
    return {name: p.grad.numpy().copy() for name, p in model.named_parameters()}


def _clear(model) -> None:
    for p in model.parameters():
        p.grad = None


def _assert_close(got: dict, want: dict, rtol: float, atol: float) -> None:
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(
            got[name], want[name], rtol=rtol, atol=atol, err_msg=name
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_residual_mlp_gradients_match_eager(backend):
    ember.manual_seed(0)
    model = _example("mlp_residual")()
    x, y = ember.randn(32, 16), ember.randn(32, 4)
    ((model(x) - y) ** 2).mean().backward()
    eager = _gradients(model)
    _clear(model)

    compiled = ember.compile(model, backend=backend)
    out = compiled(x)
    assert out.grad_fn.name == "compiled ResidualMLP"
    ((out - y) ** 2).mean().backward()
    _assert_close(_gradients(model), eager, rtol=1e-5, atol=1e-6)


def test_a_backward_the_backend_cannot_lower_runs_on_the_interpreter(caplog):
    # The gradient of a slice is a scatter_slice, which has no native kernel.
    ember.manual_seed(0)
    model = _example("attention_scores")()
    x = ember.randn(4, 6, 8)
    (model(x) * model(x)).sum().backward()
    eager = _gradients(model)
    _clear(model)

    compiled = ember.compile(model, backend="llvm")
    with caplog.at_level("INFO", logger="ember.compiler.training"):
        out = compiled(x)
    assert "backward of AttentionScores runs on the interpreter" in caplog.text
    (out * out).sum().backward()
    _assert_close(_gradients(model), eager, rtol=1e-5, atol=1e-6)


def test_only_the_outputs_backward_reaches_run_the_backward_program():
    ember.manual_seed(0)
    model = _example("classifier")()
    x = ember.randn(16, 10)
    labels = ember.tensor([i % 3 for i in range(16)]).view(16, 1)
    target = (labels == ember.arange(3).view(1, 3)).float()
    _, loss = model(x, target)
    loss.backward()
    eager = _gradients(model)
    _clear(model)

    probabilities, loss = ember.compile(model)(x, target)
    assert probabilities.requires_grad
    loss.backward()
    _assert_close(_gradients(model), eager, rtol=1e-5, atol=1e-6)


def test_gradients_flow_on_into_eager_code_before_the_compiled_model():
    w = ember.randn(4, 3, requires_grad=True)
    x = ember.randn(5, 4)
    compiled = ember.compile(lambda h: (h.tanh() * h).sum())
    compiled(x @ w).backward()
    got = w.grad.numpy().copy()
    w.grad = None
    h = x @ w
    (h.tanh() * h).sum().backward()
    np.testing.assert_allclose(got, w.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_no_grad_calls_run_the_plain_forward():
    model = nn.Linear(3, 2)
    compiled = ember.compile(model)
    with ember.no_grad():
        out = compiled(ember.randn(4, 3))
    assert not out.requires_grad and out.grad_fn is None


# Training loops ---------------------------------------------------------------------


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))


def _train(model, forward, make_optimizer, steps: int = 100) -> list[float]:
    rng = np.random.default_rng(1)
    x = ember.from_numpy(rng.standard_normal((32, 8)).astype(np.float32))
    y = ember.from_numpy(rng.standard_normal((32, 1)).astype(np.float32))
    optimizer = make_optimizer(model.parameters())
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(forward(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


OPTIMIZERS = {
    "sgd-momentum": lambda p: ember.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: ember.optim.Adam(p, lr=0.01),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_compiled_training_follows_eager_training_step_by_step(backend, optimizer):
    ember.manual_seed(0)
    eager = _mlp()
    ember.manual_seed(0)
    model = _mlp()
    compiled = ember.compile(model, backend=backend)
    make = OPTIMIZERS[optimizer]
    want = _train(eager, eager, make)
    got = _train(model, compiled, make)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert got[-1] < 0.7 * got[0]  # it did learn
    for (name, a), (_, b) in zip(model.named_parameters(), eager.named_parameters()):
        np.testing.assert_allclose(
            a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=name
        )


# Errors keep their meaning ----------------------------------------------------------


def test_a_non_scalar_compiled_output_needs_an_explicit_gradient():
    model = nn.Linear(3, 2)
    out = ember.compile(model)(ember.randn(4, 3))
    with pytest.raises(NonScalarLossError, match="compiled Linear"):
        out.backward()
    out.backward(ember.ones(4, 2))
    assert model.weight.grad is not None


def test_a_second_backward_needs_retain_graph():
    model = nn.Linear(3, 1)
    loss = ember.compile(model)(ember.randn(4, 3)).sum()
    loss.backward()
    with pytest.raises(GraphFreedError):
        loss.backward()


def test_modifying_a_saved_parameter_before_backward_is_detected():
    model = nn.Linear(3, 1)
    x = ember.randn(4, 3, requires_grad=True)  # its gradient reads the weight
    loss = ember.compile(model)(x).sum()
    with ember.no_grad():
        model.weight.mul_(2.0)
    with pytest.raises(
        InplaceModificationError, match=r"parameter weight \(f32\[1, 3\]\), saved"
    ) as caught:
        loss.backward()
    assert caught.value.location.code == "loss = ember.compile(model)(x).sum()"


def test_an_in_place_write_into_a_saved_value_is_detected_at_trace_time():
    def model(x, w):
        c = x * 2.0
        y = c * w  # mul saves c to compute the gradient of w
        c.add_(1.0)
        return y.sum()

    x, w = ember.randn(3), ember.randn(3, requires_grad=True)
    with pytest.raises(InplaceModificationError) as eager:
        model(x, w).backward()
    with pytest.raises(
        InplaceModificationError,
        match=r"f32\[3\] %mul, the input 0 of mul saved for backward, is modified in "
        r"place afterwards at .*test_compiled_training.py:\d+",
    ) as compiled:
        ember.compile(model)(x, w)
    assert (
        compiled.value.location.code
        == eager.value.location.code
        == ("y = c * w  # mul saves c to compute the gradient of w")
    )


def test_an_in_place_write_into_a_value_that_requires_grad_is_refused():
    def model(x):
        h = x.exp()
        h.add_(1.0)
        return h.sum()

    x = ember.randn(3, requires_grad=True)
    with pytest.raises(AutogradError, match="in-place operation on a tensor that"):
        model(x)
    with pytest.raises(AutogradError, match="in-place operation on a tensor that"):
        ember.compile(model)(x)


def test_the_backward_stage_is_written_to_the_dump_folder(tmp_path):
    from ember import settings

    model = nn.Linear(3, 1)
    with settings.override(dump_dir=str(tmp_path)):
        ember.compile(model)(ember.randn(4, 3)).sum().backward()
    text = (tmp_path / "backward.txt").read_text()
    assert text.startswith("graph Linear.backward {")
    assert "saved activations: 1 value" in text


def test_turning_requires_grad_off_recompiles_and_says_why(caplog):
    model = nn.Linear(3, 1)
    compiled = ember.compile(model)
    x = ember.randn(4, 3)
    assert compiled(x).requires_grad
    model.bias.requires_grad_(False)
    with caplog.at_level("INFO", logger="ember.compiler.compile"):
        out = compiled(x)
    assert (
        "gradients for inputs [] and parameters ['bias', 'weight'] -> inputs [] "
        in (caplog.text)
    )
    out.sum().backward()
    assert model.bias.grad is None and model.weight.grad is not None
