"""``CompiledStep.loop(batches)`` does what ``[step(*b) for b in batches]`` does, to
the same bytes, whether its calls run in one native loop
(:class:`ember.compiler.codegen.launch.CallLoop`) or one by one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_steady_calls import linear_regression
from threads import held_elsewhere

import ember
from ember import nn, optim
from ember.compiler import program as program_module
from ember.compiler import step as step_module
from ember.compiler.codegen import launch as launch_module
from ember.errors import EmberError


@pytest.fixture
def looped(monkeypatch):
    """Counts the calls that native loops ran."""
    counts = {"calls": 0, "loops": 0}
    original = program_module._Steady.run_many

    def run_many(self, batches, others, stacked, feedback=()):
        served = original(self, batches, others, stacked, feedback)
        if served is not None:
            counts["calls"] += served[0]
            counts["loops"] += 1
        return served

    monkeypatch.setattr(program_module._Steady, "run_many", run_many)
    return counts


def _data(rows: int, features: int = 100, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features)).astype(np.float32)
    y = (x @ rng.standard_normal((features, 1)) / 10 + 0.3).astype(np.float32)
    return ember.from_numpy(x), ember.from_numpy(y)


def _batches(x, y, size):
    return [(x[s : s + size], y[s : s + size]) for s in range(0, x.shape[0], size)]


def _assert_same(model_a, model_b):
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            np.testing.assert_array_equal(a.grad.numpy(), b.grad.numpy(), err_msg=name)


def _pair(make):
    """Two compiled steps of identically initialised models: (model, step) twice."""
    model_a, step_a = make()
    model_b, step_b = make()
    return (
        (model_a, ember.compile(step_a, backend="llvm")),
        (model_b, ember.compile(step_b, backend="llvm")),
    )


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_loop_equals_calls_one_by_one(looped, momentum):
    x, y = _data(1000)  # 15 full batches of 64 and a short one of 40
    batches = _batches(x, y, 64)
    (model_a, step_a), (model_b, step_b) = _pair(
        lambda: linear_regression(momentum=momentum)
    )
    for _ in range(4):
        want = [step_a(*batch) for batch in batches]
        got = step_b.loop(batches)
        assert [t.item() for t in got] == [t.item() for t in want]
        assert [t.shape for t in got] == [t.shape for t in want]
        _assert_same(model_a, model_b)
    assert step_b.calls == step_a.calls == 4 * len(batches)
    # Every epoch after the first runs its full batches but the first natively.
    assert looped["calls"] >= 3 * (len(batches) - 2)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert a._storage.version == b._storage.version


def test_loop_of_an_mlp_with_adam_equals_calls_one_by_one(looped):
    def make():
        ember.manual_seed(3)
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
        opt = optim.Adam(model.parameters(), lr=0.01)

        def step(xb, yb):
            out = model(xb)
            loss = nn.functional.mse_loss(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss, out.sum()

        return model, step

    x, y = _data(256, features=8)
    batches = _batches(x, y, 32)
    (model_a, step_a), (model_b, step_b) = _pair(make)
    for _ in range(3):
        want = [step_a(*batch) for batch in batches]
        got = step_b.loop(batches)
        assert len(got) == len(want)
        for (loss_b, sum_b), (loss_a, sum_a) in zip(got, want):
            assert loss_b.item() == loss_a.item()
            assert sum_b.item() == sum_a.item()
        _assert_same(model_a, model_b)
        # The step counts each call fed to the next, and the moments.
        (opt_a,), (opt_b,) = step_a.optimizers, step_b.optimizers
        state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert state_a.keys() == state_b.keys()
        for key, entry in state_a.items():
            assert entry["step"] == state_b[key]["step"]
            assert type(entry["step"]) is type(state_b[key]["step"])
            for name in ("exp_avg", "exp_avg_sq"):
                np.testing.assert_array_equal(
                    entry[name].numpy(), state_b[key][name].numpy()
                )
    assert looped["calls"] >= 2 * (len(batches) - 1)


def test_batches_of_other_storages_and_layouts_run_one_by_one(looped):
    x, y = _data(640)
    other_x, other_y = _data(640, seed=2)
    batches = _batches(x, y, 64)
    mixed = (
        batches[:4]
        + [(other_x[64:128], other_y[64:128])]  # another storage
        + batches[4:7]
        + [(x[448:480], y[448:480])]  # another layout
        + batches[7:]
        + [(ember.from_numpy(x.numpy()[:64].copy()), y[:64])]  # a fresh copy
    )
    (model_a, step_a), (model_b, step_b) = _pair(linear_regression)
    for epoch in range(3):
        want = [step_a(*batch).item() for batch in mixed]
        got = [loss.item() for loss in step_b.loop(mixed)]
        assert got == want, epoch
        _assert_same(model_a, model_b)
    assert looped["loops"] >= 3


def test_loop_draws_batches_in_windows_and_chunks_native_calls(looped, monkeypatch):
    monkeypatch.setattr(step_module, "LOOP_WINDOW", 7)
    monkeypatch.setattr(launch_module, "CALLS_PER_ENTRY", 3)
    x, y = _data(1280)
    (model_a, step_a), (model_b, step_b) = _pair(linear_regression)
    for _ in range(2):
        want = [step_a(*batch).item() for batch in _batches(x, y, 64)]
        batches = iter(_batches(x, y, 64))  # any iterable, consumed once
        got = [loss.item() for loss in step_b.loop(batches)]
        assert got == want
        _assert_same(model_a, model_b)
    assert looped["calls"] > 0


def test_a_batch_may_be_one_tensor(looped):
    ember.manual_seed(0)
    x, y = _data(512)

    def make():
        ember.manual_seed(4)
        model = nn.Linear(100, 1)
        opt = optim.SGD(model.parameters(), lr=0.01)

        def step(xb):
            loss = ((model(xb) - 0.5) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        return model, step

    (model_a, step_a), (model_b, step_b) = _pair(make)
    views = [x[s : s + 64] for s in range(0, 512, 64)]
    for _ in range(3):
        want = [step_a(v).item() for v in views]
        assert [loss.item() for loss in step_b.loop(views)] == want
        _assert_same(model_a, model_b)
    assert looped["calls"] > 0


def test_a_learning_rate_set_between_loops_is_used(looped):
    x, y = _data(512)
    batches = _batches(x, y, 64)
    (model_a, step_a), (model_b, step_b) = _pair(linear_regression)
    opts = []
    for step in (step_a, step_b):
        (opt,) = step.optimizers
        opts.append(opt)
    for lr in (0.05, 0.01, 0.002):
        for opt in opts:
            opt.param_groups[0]["lr"] = lr
        want = [step_a(*batch).item() for batch in batches]
        assert [loss.item() for loss in step_b.loop(batches)] == want
        _assert_same(model_a, model_b)
    assert looped["calls"] > 0


def test_results_of_a_loop_are_not_written_by_later_calls():
    x, y = _data(512)
    batches = _batches(x, y, 64)
    _, step = linear_regression()
    compiled = ember.compile(step, backend="llvm")
    compiled.loop(batches)
    kept = compiled.loop(batches)
    values = [loss.item() for loss in kept]
    compiled.loop(batches)
    compiled(*batches[0])
    assert [loss.item() for loss in kept] == values


def test_a_parameter_made_read_only_is_never_written_by_a_loop(looped):
    x, y = _data(512)
    batches = _batches(x, y, 64)
    model, step = linear_regression()
    compiled = ember.compile(step, backend="llvm")
    compiled.loop(batches)
    storage = model.weight._storage.data
    before = storage.copy()
    storage.flags.writeable = False
    loops = looped["loops"]
    try:
        with pytest.raises(EmberError, match="read-only"):
            compiled.loop(batches)
    finally:
        storage.flags.writeable = True
    np.testing.assert_array_equal(storage, before)
    assert looped["loops"] == loops


def test_a_loop_while_another_thread_holds_the_program_runs_call_by_call(looped):
    x, y = _data(512)
    batches = _batches(x, y, 64)
    (model_a, step_a), (model_b, step_b) = _pair(linear_regression)
    want = [step_a(*batch).item() for batch in batches]
    assert [loss.item() for loss in step_b.loop(batches)] == want
    (lean,) = [lean for lean in step_b._leans if lean.layouts[0][0] == (64, 100)]
    calls = looped["calls"]
    # A call made one by one waits for the lock, let go once the loop refused;
    # the calls after it may run natively again.
    with held_elsewhere(lean.entry.program._lock):
        got = [loss.item() for loss in step_b.loop(batches)]
    assert looped["calls"] - calls < len(batches)
    assert got == [step_a(*batch).item() for batch in batches]
    _assert_same(model_a, model_b)


def test_loop_of_a_step_on_the_interpreter_matches(looped):
    x, y = _data(256)
    batches = _batches(x, y, 64)
    model_a, step_a = linear_regression()
    model_b, step_b = linear_regression()
    compiled = ember.compile(step_b, backend="interpret")
    for _ in range(2):
        want = [step_a(*batch).item() for batch in batches]
        got = [loss.item() for loss in compiled.loop(batches)]
        np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(
        model_a.weight.numpy(), model_b.weight.numpy(), rtol=1e-5, atol=1e-7
    )
    assert looped["loops"] == 0


def test_loop_of_a_step_that_reads_its_batch_from_an_offset(looped):
    """The kernels read the batch from past its first element: every address a
    loop writes keeps the launch's byte offset."""

    def make():
        ember.manual_seed(5)
        model = nn.Linear(90, 1)
        opt = optim.SGD(model.parameters(), lr=0.02, momentum=0.5)

        def step(xb, yb):
            loss = nn.functional.mse_loss(model(xb[:, 10:]) + xb[:, 3:4], yb[1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        return model, step

    x, y = _data(640)
    batches = [(x[s : s + 65], y[s : s + 66]) for s in range(0, 512, 64)]
    (model_a, step_a), (model_b, step_b) = _pair(make)
    for _ in range(3):
        want = [step_a(*batch).item() for batch in batches]
        assert [loss.item() for loss in step_b.loop(batches)] == want
        _assert_same(model_a, model_b)
    assert looped["calls"] > 0


_PROGRAMS: dict[tuple[int, float], tuple] = {}


@given(
    size=st.sampled_from([16, 40]),
    momentum=st.sampled_from([0.0, 0.9]),
    starts=st.lists(st.integers(0, 300), min_size=1, max_size=12),
)
def test_loop_over_batches_at_any_offsets_equals_calls_one_by_one(
    size, momentum, starts
):
    """Batches drawn anywhere in the data, overlapping and out of order."""
    key = (size, momentum)
    if key not in _PROGRAMS:  # compiled once per layout, reused across examples
        _PROGRAMS[key] = _pair(lambda: linear_regression(momentum=momentum))
    (model_a, step_a), (model_b, step_b) = _PROGRAMS[key]
    x, y = _DATA
    batches = [(x[s : s + size], y[s : s + size]) for s in starts]
    want = [step_a(*batch).item() for batch in batches]
    assert [loss.item() for loss in step_b.loop(batches)] == want
    _assert_same(model_a, model_b)


_DATA = _data(340)


def test_loop_over_something_not_iterable_is_a_signature_error():
    _, step = linear_regression()
    compiled = ember.compile(step, backend="llvm")
    with pytest.raises(EmberError, match="iterable of batches") as caught:
        compiled.loop(42)
    assert "test_step_loop.py" in str(caught.value)
    assert compiled.calls == 0


def test_a_failing_call_inside_a_loop_raises_after_the_calls_before_it():
    x, y = _data(256)
    (model_a, step_a), (model_b, step_b) = _pair(linear_regression)
    good = _batches(x, y, 64)
    bad = (x[:64], y[:32])  # targets of another length
    for batch in good:
        step_a(*batch)
    with pytest.raises(EmberError, match="shape"):
        step_b.loop([*good, bad, *good])
    _assert_same(model_a, model_b)  # the calls before the bad batch ran, no others
