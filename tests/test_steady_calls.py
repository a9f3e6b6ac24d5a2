"""The calls of a training loop over batch views run through the program's steady
runner (:class:`ember.compiler.program._Steady`): results equal eager ones, a
call it cannot vouch for goes the checked way, and what a caller keeps is never
written again."""

from __future__ import annotations

import numpy as np
import pytest
from threads import held_elsewhere

import ember
from ember import nn, optim
from ember.compiler import program as program_module
from ember.errors import EmberError


def linear_regression(seed: int = 0, momentum: float = 0.0):
    """A linear model of 100 features and its SGD training step (used by other
    test modules too)."""
    ember.manual_seed(seed)
    model = nn.Linear(100, 1)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=momentum)

    def step(xb, yb):
        loss = nn.functional.mse_loss(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return model, step


def _data(rows: int = 256, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 100)).astype(np.float32)
    y = (x @ rng.standard_normal((100, 1)) / 10).astype(np.float32)
    return ember.from_numpy(x), ember.from_numpy(y)


def _in_step(x, y):
    """A compiled step and an eager one after three batches each: (model,
    compiled step, eager model, eager step)."""
    model, step = linear_regression()
    eager_model, eager_step = linear_regression()
    compiled = ember.compile(step, backend="llvm")
    for start in (0, 64, 128):
        compiled(x[start : start + 64], y[start : start + 64])
        eager_step(x[start : start + 64], y[start : start + 64])
    return model, compiled, eager_model, eager_step


@pytest.fixture
def steady_calls(monkeypatch):
    """Counts the calls the steady runner served and those it handed back."""
    counts = {"served": 0, "handed back": 0}
    original = program_module._Steady.run

    def run(self, values, laid_out=0):
        arrays = original(self, values, laid_out)
        counts["served" if arrays is not None else "handed back"] += 1
        return arrays

    monkeypatch.setattr(program_module._Steady, "run", run)
    return counts


def test_a_loop_over_batch_views_is_served_by_the_steady_runner(steady_calls):
    x, y = _data()
    batches = [(x[s : s + 64], y[s : s + 64]) for s in range(0, 256, 64)]
    model, step = linear_regression()
    eager_model, eager_step = linear_regression()
    compiled = ember.compile(step, backend="llvm")
    for _ in range(3):
        for xb, yb in batches:
            got, want = compiled(xb, yb).item(), eager_step(xb, yb).item()
            np.testing.assert_allclose(got, want, rtol=1e-5)
    assert steady_calls["served"] >= 6
    np.testing.assert_allclose(
        model.weight.numpy(), eager_model.weight.numpy(), rtol=1e-5, atol=1e-7
    )
    assert model.weight.grad is not None
    np.testing.assert_allclose(
        model.weight.grad.numpy(), eager_model.weight.grad.numpy(), rtol=1e-4
    )


def test_a_batch_of_another_storage_takes_the_checked_path(steady_calls):
    x, y = _data()
    other_x, other_y = _data(seed=2)
    model, compiled, eager_model, eager_step = _in_step(x, y)
    handed_back = steady_calls["handed back"]
    got = compiled(other_x[64:128], other_y[64:128]).item()
    want = eager_step(other_x[64:128], other_y[64:128]).item()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert steady_calls["handed back"] == handed_back + 1
    # Back to the first storage: checked again, then served again.
    for start in (0, 64):
        got = compiled(x[start : start + 64], y[start : start + 64]).item()
        want = eager_step(x[start : start + 64], y[start : start + 64]).item()
        np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(
        model.weight.numpy(), eager_model.weight.numpy(), rtol=1e-5, atol=1e-7
    )


def test_results_the_caller_keeps_are_not_written_again():
    x, y = _data()
    _, step = linear_regression()
    compiled = ember.compile(step, backend="llvm")
    kept = [compiled(x[s : s + 64], y[s : s + 64]) for s in (0, 64, 128, 192, 0, 64)]
    values = [loss.item() for loss in kept]
    compiled(x[128:192], y[128:192])
    assert [loss.item() for loss in kept] == values
    assert len({id(loss.numpy().base) for loss in kept}) == len(kept)


def test_a_parameter_made_read_only_is_never_written(steady_calls):
    x, y = _data()
    model, step = linear_regression()
    compiled = ember.compile(step, backend="llvm")
    for start in (0, 64, 128, 192):
        compiled(x[start : start + 64], y[start : start + 64])
    assert steady_calls["served"] >= 1
    handed_back = steady_calls["handed back"]
    storage = model.weight._storage.data
    before = storage.copy()
    storage.flags.writeable = False
    try:
        with pytest.raises(EmberError, match="read-only"):
            compiled(x[64:128], y[64:128])
    finally:
        storage.flags.writeable = True
    np.testing.assert_array_equal(storage, before)
    assert steady_calls["handed back"] == handed_back + 1


def test_a_call_while_another_thread_holds_the_program_is_checked(steady_calls):
    x, y = _data()
    _, compiled, _, eager_step = _in_step(x, y)
    (lean,) = [lean for lean in compiled._leans if lean.layouts[0][0] == (64, 100)]
    handed_back = steady_calls["handed back"]
    # The general path waits for the lock, let go once the runner refused.
    with held_elsewhere(lean.entry.program._lock):
        got = compiled(x[192:256], y[192:256]).item()
    want = eager_step(x[192:256], y[192:256]).item()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert steady_calls["handed back"] == handed_back + 1
