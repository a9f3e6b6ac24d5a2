"""Compiled training steps: ``ember.compile`` of a function that runs the model,
the loss, ``backward()`` and an optimizer's ``step()`` follows the eager step, step
after step.

Tolerances: the interpreter runs the eager kernels on the traced graph, so its
trajectories agree to float32 rounding of reordered sums (rtol 1e-6); the LLVM
backend vectorizes sums in another order, and after 100 steps parameters agree to
rtol 1e-4, atol 1e-5, as compiled training does in test_compiled_training.py.
"""

from __future__ import annotations

import weakref

import numpy as np
import pytest

import ember
from ember import nn, optim
from ember.compiler.program import STAGED_BYTES
from ember.compiler.step import CompiledStep
from ember.errors import TraceError, UnsupportedError

BACKENDS = ["interpret", "llvm"]
TOLERANCE = {"interpret": (1e-6, 1e-7), "llvm": (1e-4, 1e-5)}

OPTIMIZERS = {
    "sgd": lambda p: optim.SGD(p, lr=0.1),
    "sgd-momentum": lambda p: optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: optim.Adam(p, lr=0.01),
}


def _linear() -> nn.Module:
    return nn.Linear(5, 1)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))


def _setup(build, make_optimizer):
    """A model, its optimizer and a training step closing over both."""
    ember.manual_seed(0)
    model = build()
    optimizer = make_optimizer(model.parameters())

    def step(x, y):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    return model, optimizer, step


def _data(features: int, steps: int = 1):
    rng = np.random.default_rng(1)
    return [
        (
            ember.from_numpy(rng.standard_normal((32, features)).astype(np.float32)),
            ember.from_numpy(rng.standard_normal((32, 1)).astype(np.float32)),
        )
        for _ in range(steps)
    ]


def _follow(build, features, optimizer, backend, steps=100):
    """Run ``steps`` eager and compiled steps on changing batches; compare."""
    eager_model, _, eager_step = _setup(build, OPTIMIZERS[optimizer])
    model, _, step = _setup(build, OPTIMIZERS[optimizer])
    compiled = ember.compile(step, backend=backend)
    assert isinstance(compiled, CompiledStep)
    rtol, atol = TOLERANCE[backend]
    want, got = [], []
    for x, y in _data(features, 4) * (steps // 4):
        want.append(eager_step(x, y).item())
        got.append(compiled(x, y).item())
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    assert got[-1] < 0.8 * got[0]  # it did learn
    for (name, a), (_, b) in zip(
        model.named_parameters(), eager_model.named_parameters()
    ):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol, atol, err_msg=name)
        np.testing.assert_allclose(
            a.grad.numpy(), b.grad.numpy(), rtol, atol, err_msg=f"{name}.grad"
        )
    return compiled


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_sgd_on_a_linear_model_follows_eager_for_100_steps(backend):
    compiled = _follow(_linear, 5, "sgd", backend)
    # The first step runs eagerly (it creates the gradients); the others run
    # one program.
    assert compiled.eager_calls == 1
    assert len(compiled.cache) == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", ["sgd-momentum", "adam"])
def test_stateful_optimizers_follow_eager_for_100_steps(backend, optimizer):
    compiled = _follow(_mlp, 8, optimizer, backend)
    # The first step creates the state eagerly; every later step runs one program.
    assert compiled.eager_calls == 1
    assert len(compiled.cache) == 1


def test_adam_step_count_stays_a_python_int():
    model, optimizer, step = _setup(_linear, OPTIMIZERS["adam"])
    compiled = ember.compile(step)
    for x, y in _data(5, 3):
        compiled(x, y)
    counts = [state["step"] for state in optimizer.state.values()]
    assert counts == [3, 3] and all(type(c) is int for c in counts)


def test_the_step_is_one_graph_reading_parameters_and_state_by_name():
    model, _, step = _setup(_linear, OPTIMIZERS["sgd-momentum"])
    compiled = ember.compile(step)
    for x, y in _data(5, 2):
        compiled(x, y)
    graph = compiled.graph
    params = {n.target: n.kind for n in graph.params}
    assert params == {
        "weight": "param",
        "bias": "param",
        "weight.momentum_buffer": "buffer",
        "bias.momentum_buffer": "buffer",
    }
    assert not any(n.kind == "const" and n.meta.numel > 1 for n in graph.nodes)


def test_updates_are_in_place_and_grads_hold_the_last_gradients():
    model, _, step = _setup(_linear, OPTIMIZERS["sgd"])
    weight, row = model.weight, model.weight[0]
    compiled = ember.compile(step)
    ((x, y),) = _data(5)
    compiled(x, y)
    assert model.weight is weight
    np.testing.assert_array_equal(row.numpy(), weight.numpy()[0])
    assert weight.grad.shape == weight.shape and not weight.grad.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", ["sgd", "sgd-momentum", "adam"])
def test_a_learning_rate_schedule_reuses_the_program(backend, optimizer):
    eager_model, eager_opt, eager_step = _setup(_mlp, OPTIMIZERS[optimizer])
    model, opt, step = _setup(_mlp, OPTIMIZERS[optimizer])
    compiled = ember.compile(step, backend=backend)
    rtol, atol = TOLERANCE[backend]
    for k, (x, y) in enumerate(_data(8, 12)):
        lr = 0.05 * 0.8**k  # a new float every step
        eager_opt.param_groups[0]["lr"] = opt.param_groups[0]["lr"] = lr
        np.testing.assert_allclose(
            compiled(x, y).item(), eager_step(x, y).item(), rtol=rtol, atol=atol
        )
        assert opt.param_groups[0]["lr"] == lr  # tracing put the number back
    assert len(compiled.cache) == 1 and compiled.eager_calls == 1
    for p, q in zip(model.parameters(), eager_model.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=rtol, atol=atol)


def test_gradients_accumulate_when_the_step_does_not_zero_them():
    def build(model, optimizer):
        def step(x, y):
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()

        return step

    ((x, y),) = _data(5)
    results = []
    for compile_it in (False, True):
        ember.manual_seed(0)
        model = _linear()
        optimizer = optim.SGD(model.parameters(), lr=0.1)
        step = build(model, optimizer)
        step = ember.compile(step) if compile_it else step
        for _ in range(3):
            step(x, y)
        results.append((model.weight.numpy().copy(), model.weight.grad.numpy()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-6)


def test_writing_into_a_view_of_a_parameter_is_a_trace_error():
    model, optimizer, _ = _setup(_linear, OPTIMIZERS["sgd"])

    def step(x):
        model(x).sum().backward()
        optimizer.step()
        with ember.no_grad():
            model.weight[0].zero_()

    compiled = ember.compile(step)
    x = _data(5)[0][0]
    compiled(x)  # the first step runs eagerly
    with pytest.raises(TraceError, match="uses Tensor.zero_ on %select"):
        compiled(x)


VARIANTS = {
    "sgd-nesterov-decay": lambda p: optim.SGD(
        p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3
    ),
    "adamw-amsgrad": lambda p: optim.AdamW(p, lr=0.01, amsgrad=True),
    "adam-decay-maximize": lambda p: optim.Adam(
        p, lr=0.01, weight_decay=0.01, maximize=True
    ),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_optimizer_options_follow_eager(backend, variant):
    eager_model, _, eager_step = _setup(_mlp, VARIANTS[variant])
    model, _, step = _setup(_mlp, VARIANTS[variant])
    compiled = ember.compile(step, backend=backend)
    rtol, atol = TOLERANCE[backend]
    for x, y in _data(8, 3) * 10:
        np.testing.assert_allclose(
            compiled(x, y).item(), eager_step(x, y).item(), rtol, atol
        )
    for a, b in zip(model.parameters(), eager_model.parameters()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol, atol)
    assert len(compiled.cache) == 1


def test_a_step_writing_into_a_captured_tensor_runs_eagerly(caplog):
    model, optimizer, _ = _setup(_linear, OPTIMIZERS["sgd"])
    last = ember.zeros(1)

    def step(x, y):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with ember.no_grad():
            last.copy_(loss.view(1))

    compiled = ember.compile(step)
    ((x, y),) = _data(5)
    with caplog.at_level("INFO", logger="ember.compiler.step"):
        for _ in range(3):
            compiled(x, y)
    assert "step runs eagerly from now on" in caplog.text
    assert compiled.eager_calls == 3
    want = nn.functional.mse_loss(model(x), y).item()
    optimizer.zero_grad()
    step(x, y)
    assert last.item() == pytest.approx(want)


def test_backward_with_an_explicit_gradient_is_refused():
    model, optimizer, _ = _setup(_linear, OPTIMIZERS["sgd"])

    def step(x):
        out = model(x)
        out.backward(ember.ones_like(out))
        optimizer.step()

    compiled = ember.compile(step)
    x = _data(5)[0][0]
    compiled(x)
    with pytest.raises(UnsupportedError, match=r"backward\(gradient\) in a compiled"):
        compiled(x)


def test_parameters_and_state_are_updated_in_place_by_the_program():
    model, optimizer, step = _setup(_mlp, OPTIMIZERS["sgd-momentum"])
    compiled = ember.compile(step, backend="llvm")
    batches = _data(8, 4)
    for x, y in batches[:3]:
        compiled(x, y)
    (entry,) = compiled.cache.values()
    program, direct = entry.program, entry.direct
    # Every new parameter and momentum buffer is written over the old one.
    assert direct and direct.writes == [] and direct.in_place == entry.writes
    assert sorted(program.donated) == list(
        range(entry.num_results, entry.num_results + len(entry.writes))
    )
    tensors = [p for p in model.parameters()] + [
        optimizer.state[p]["momentum_buffer"] for p in model.parameters()
    ]
    memory = [(t._storage, t._storage.data, t._storage.version) for t in tensors]
    before = [t.numpy().copy() for t in tensors]

    compiled(*batches[3])

    for t, (storage, data, version), old in zip(tensors, memory, before):
        assert t._storage is storage and t._storage.data is data
        assert storage.version == version + 1  # in-place writes bump the version
        assert not np.array_equal(t.numpy(), old)


def _wide_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
    )


def test_dropped_gradients_are_written_again_two_steps_later():
    model, _, step = _setup(_wide_mlp, OPTIMIZERS["sgd-momentum"])
    compiled = ember.compile(step, backend="llvm")
    batches = _data(8, 4)
    for x, y in batches[:2]:
        compiled(x, y)
    compiled(*batches[2])
    # Gradients above STAGED_BYTES are recycled; smaller ones are copies.
    large = [p for p in model.parameters() if p.numel() * 4 > STAGED_BYTES]
    assert [tuple(p.shape) for p in large] == [(32, 64)]
    # Weak references: the test must not itself keep the arrays in use.
    first = [weakref.ref(p.grad._storage.data) for p in large]
    compiled(*batches[3])
    second = [weakref.ref(p.grad._storage.data) for p in large]
    assert all(a() is not b() for a, b in zip(first, second))

    compiled(*batches[0])

    # The gradients of two steps ago were dropped, so their arrays came back.
    assert all(p.grad._storage.data is ref() for p, ref in zip(large, first))


def test_a_gradient_kept_from_an_earlier_step_is_not_overwritten():
    model, _, step = _setup(_mlp, OPTIMIZERS["sgd-momentum"])
    compiled = ember.compile(step, backend="llvm")
    (x, y), (x2, y2) = _data(8, 2)
    for _ in range(3):
        compiled(x, y)
    kept = model[0].weight.grad
    values = kept.numpy().copy()

    compiled(x2, y2)

    assert model[0].weight.grad is not kept
    np.testing.assert_array_equal(kept.numpy(), values)
    assert not np.array_equal(model[0].weight.grad.numpy(), values)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_parameter_viewing_part_of_a_storage_is_updated_in_place(backend):
    def run(compile_step: bool) -> tuple[list[float], list[float]]:
        base = ember.arange(10.0)
        weight = base[2:7].detach().requires_grad_()
        optimizer = optim.SGD([weight], lr=0.1, momentum=0.9)

        def step(x):
            loss = ((weight * x).sum() - 1.0) ** 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss

        run_step = ember.compile(step, backend=backend) if compile_step else step
        for _ in range(5):
            run_step(ember.ones(5))
        assert weight._storage is base._storage
        return base.tolist(), weight.grad.tolist()

    eager, compiled = run(False), run(True)
    np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-6)
    np.testing.assert_allclose(compiled[1], eager[1], rtol=1e-6)
    assert compiled[0][:2] == [0.0, 1.0] and compiled[0][7:] == [7.0, 8.0, 9.0]


def test_alternating_batch_sizes_each_run_their_own_program():
    eager_model, _, eager_step = _setup(_linear, OPTIMIZERS["sgd-momentum"])
    model, _, step = _setup(_linear, OPTIMIZERS["sgd-momentum"])
    compiled = ember.compile(step, backend="llvm")
    full, (x, y) = _data(5, 2)
    half = (x[:16], y[:16])
    rtol, atol = TOLERANCE["llvm"]
    for x, y in [full, half] * 6:
        want = eager_step(x, y).item()
        np.testing.assert_allclose(compiled(x, y).item(), want, rtol, atol)
    assert len(compiled.cache) == 2 and compiled.eager_calls == 1
    np.testing.assert_allclose(
        model.weight.numpy(), eager_model.weight.numpy(), rtol, atol
    )
