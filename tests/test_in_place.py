"""Programs that write new values over their arguments in place.

A compiled training step hands the backend the outputs that are new values of a
parameter or optimizer state tensor (``donate``); where the kernel computing one
reads the old value at the element it writes, the kernel updates the argument's
memory itself (an ``inout`` buffer, :func:`ember.compiler.kernel.in_place`) and no
copy follows. These tests pin the kernel rule, the schedule that makes it safe, the
checks at the program boundary, and the compiled step built on it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ember
from ember import nn, optim
from ember.compiler import kernel as K
from ember.compiler.backends import compile_llvm
from ember.compiler.codegen import compile_kernel
from ember.compiler.fusion import fuse
from ember.compiler.lower import lower
from ember.compiler.passes import optimize
from ember.compiler.program import plan_donations
from ember.compiler.trace import trace
from ember.errors import AliasError, LoweringError
from ember.ir.dtypes import float32

# Kernels -----------------------------------------------------------------------------


def _momentum_kernel(n: int) -> K.LoopKernel:
    """buf' = 0.9 buf + g; p' = p - 0.1 buf' (p' inlines buf', reading buf)."""
    buf, g, p = (K.Buffer.dense(name, float32, (n,), "in") for name in ("b", "g", "p"))
    new_buf = K.Buffer.dense("nb", float32, (n,))
    new_p = K.Buffer.dense("np", float32, (n,))
    velocity = K.op("add", K.op("mul", K.load(buf), 0.9), K.load(g))
    stages = (
        K.Store("nb", velocity),  # stored first: p' must still read the old buf
        K.Store("np", K.op("sub", K.load(p), K.op("mul", velocity, 0.1))),
    )
    return K.LoopKernel("momentum", (buf, g, p, new_buf, new_p), (n,), (), stages)


@given(st.integers(1, 300))
def test_two_buffers_updated_in_place_read_their_old_values(n):
    kernel = K.in_place(K.in_place(_momentum_kernel(n), "nb", "b"), "np", "p")
    assert [b.role for b in kernel.buffers] == ["inout", "in", "inout"]
    # p's store reads b, so it moved before b's store.
    assert [s.buffer for s in kernel.stages] == ["p", "b"]
    rng = np.random.default_rng(n)
    b, g, p = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    want_b = np.float32(0.9) * b + g
    want_p = p - np.float32(0.1) * want_b
    compile_kernel(kernel)(b, g, p)
    np.testing.assert_allclose(b, want_b, rtol=1e-6)
    np.testing.assert_allclose(p, want_p, rtol=1e-6, atol=1e-7)


def test_an_inout_buffer_read_at_another_element_is_refused():
    x = K.Buffer("x", float32, (3, 3), (3, 1))
    out = K.Buffer.dense("y", float32, (3, 3))
    transposed = K.load(x, (1, 3))
    kernel = K.LoopKernel("t", (x, out), (3, 3), (), (K.Store("y", transposed),))
    with pytest.raises(LoweringError, match="another element"):
        K.in_place(kernel, "y", "x")


def test_an_inout_buffer_needs_a_kernel_without_inner_axes():
    x = K.Buffer.dense("x", float32, (4, 5), "in")
    out = K.Buffer.dense("y", float32, (4,))
    total = K.Reduce("acc", "sum", K.load(x, (5, 1)))
    rows = K.LoopKernel(
        "rows", (x, out), (4,), (5,), (total, K.Store("y", total.ref()))
    )
    with pytest.raises(LoweringError):
        K.in_place(rows, "y", "x")


def test_two_inout_buffers_that_read_each_other_are_refused():
    a, b = (K.Buffer.dense(n, float32, (4,), "in") for n in ("a", "b"))
    na, nb = (K.Buffer.dense(n, float32, (4,)) for n in ("na", "nb"))
    swap = (K.Store("na", K.load(b)), K.Store("nb", K.load(a)))
    kernel = K.LoopKernel("swap", (a, b, na, nb), (4,), (), swap)
    with pytest.raises(LoweringError, match="read after it is stored"):
        K.in_place(K.in_place(kernel, "na", "a"), "nb", "b")


# Programs ----------------------------------------------------------------------------


class _Update(nn.Module):
    """Returns a sum that reads ``w`` and the new value of ``w``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(ember.ones(4, 3))

    def forward(self, x):
        return (self.w * x).sum(), self.w * 0.5 + x


def test_a_donated_output_is_written_over_its_parameter():
    model = _Update()
    x = ember.tensor(np.arange(12, dtype=np.float32).reshape(4, 3))
    program = compile_llvm(trace(model, x), {1: "w"})
    assert program.donated == {1: program._arg_slots[1]}
    data = model.w._storage.data

    total, new = program([x], dict(model.named_parameters()))

    assert total.item() == pytest.approx(66.0)  # read the old w
    want = 0.5 + np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(model.w.numpy(), want)
    assert model.w._storage.data is data and new._storage is model.w._storage


def test_an_update_kernel_moves_after_a_later_reader_of_its_argument():
    model = _Update()
    x = ember.tensor(np.ones((4, 3), np.float32))
    graph = optimize(trace(model, x))
    groups = lower(fuse(graph))
    update = next(
        g for g in groups if g.kernel and any(v is graph.outputs[1] for v in g.outputs)
    )
    # The update first, the sum (which reads w) second: unsafe as it stands.
    swapped = [update] + [g for g in groups if g is not update]
    order, donations = plan_donations(graph, swapped, {1: "w"})
    assert [d.output for d in donations] == [1]
    assert order[-1] is update


def test_an_argument_sharing_memory_with_an_updated_one_is_refused():
    model = _Update()
    x = ember.tensor(np.ones((4, 3), np.float32))
    program = compile_llvm(trace(model, x), {1: "w"})
    before = model.w.numpy().copy()
    with pytest.raises(AliasError, match="shares memory"):
        program([model.w.detach()], dict(model.named_parameters()))
    np.testing.assert_array_equal(model.w.numpy(), before)  # nothing was written


# Compiled training steps ----------------------------------------------------------------


def _step(make_optimizer):
    ember.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = make_optimizer(model.parameters())

    def step(x, y):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return model, opt, step


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: optim.SGD(p, lr=0.1),
        lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        lambda p: optim.Adam(p, lr=0.01),
        lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd", "nesterov", "adam", "adamw"],
)
def test_every_parameter_and_state_tensor_of_a_step_is_updated_in_place(
    make_optimizer,
):
    _, _, step = _step(make_optimizer)
    compiled = ember.compile(step, backend="llvm")
    x, y = ember.ones(8, 3), ember.zeros(8, 1)
    for _ in range(3):
        compiled(x, y)
    (entry,) = compiled.cache.values()
    donated = sorted(entry.program.donated)
    first = entry.num_results
    assert donated == list(range(first, first + len(entry.writes)))


def test_a_step_whose_input_views_a_parameter_runs_eagerly_and_agrees():
    model, _, step = _step(lambda p: optim.SGD(p, lr=0.1, momentum=0.9))
    eager_model, _, eager_step = _step(lambda p: optim.SGD(p, lr=0.1, momentum=0.9))
    compiled = ember.compile(step, backend="llvm")
    y = ember.zeros(4, 1)
    for _ in range(3):
        compiled(ember.ones(4, 3), y)
        eager_step(ember.ones(4, 3), y)
    calls = compiled.eager_calls

    # The first layer's weight (4 x 3) as the batch: the step reads what it updates.
    loss = compiled(model[0].weight.detach(), y)
    want = eager_step(eager_model[0].weight.detach(), y)

    np.testing.assert_allclose(loss.item(), want.item(), rtol=1e-5)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-5, atol=1e-6)
    assert compiled.eager_calls == calls + 1


# The steady state of a compiled step -------------------------------------------------


def test_the_steady_state_does_not_gather_the_optimizer_state_again(monkeypatch):
    from ember.compiler import step as step_module

    _, _, step = _step(lambda p: optim.SGD(p, lr=0.1, momentum=0.9))
    compiled = ember.compile(step, backend="llvm")
    x, y = ember.ones(8, 3), ember.zeros(8, 1)
    for _ in range(3):
        compiled(x, y)

    def gather(*args):
        raise AssertionError("the state was gathered again")

    monkeypatch.setattr(step_module, "_gather", gather)
    compiled(x, y)
    compiled(ember.full((8, 3), 0.5), y)  # a new batch of the same layout


def test_an_epoch_with_a_shorter_last_batch_keeps_both_steady_states(monkeypatch):
    from ember.compiler import step as step_module

    model, opt, step = _step(lambda p: optim.SGD(p, lr=0.1, momentum=0.9))
    compiled = ember.compile(step, backend="llvm")
    data = ember.tensor(np.linspace(-1, 1, 30 * 3, dtype=np.float32).reshape(30, 3))
    target = ember.zeros(30, 1)
    batches = [(data[s : s + 8], target[s : s + 8]) for s in range(0, 30, 8)]
    for xb, yb in batches * 2:  # eager, traced and compiled for both layouts
        compiled(xb, yb)

    def refuse(*args):
        raise AssertionError("the state was gathered or guarded again")

    monkeypatch.setattr(step_module, "_gather", refuse)
    monkeypatch.setattr(step_module, "_Guard", refuse)
    for xb, yb in batches * 3:
        compiled(xb, yb)
    assert len(compiled._leans) == 2

    # Eager steps on a copy of the model reach the same parameters.
    monkeypatch.undo()
    twin, twin_opt, twin_step = _step(lambda p: optim.SGD(p, lr=0.1, momentum=0.9))
    for xb, yb in batches * 5:
        twin_step(xb, yb)
    for p, q in zip(model.parameters(), twin.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-5, atol=1e-6)


def test_a_changed_state_drops_every_steady_state():
    model, opt, step = _step(lambda p: optim.SGD(p, lr=0.1, momentum=0.9))
    compiled = ember.compile(step, backend="llvm")
    x8, x5 = ember.ones(8, 3), ember.ones(5, 3)
    y8, y5 = ember.zeros(8, 1), ember.zeros(5, 1)
    for _ in range(2):
        compiled(x8, y8)
        compiled(x5, y5)
    assert len(compiled._leans) == 2
    opt.param_groups[0]["momentum"] = 0.5  # traced as a constant: a new program

    compiled(x8, y8)

    assert len(compiled._leans) == 1
    assert compiled._leans[0].guard.holds()


def _set_lr(model, opt):
    opt.param_groups[0]["lr"] = 0.05


def _replace_buffer(model, opt):
    state = opt.state[model[0].weight]
    state["momentum_buffer"] = state["momentum_buffer"] * 0.5


def _freeze(model, opt):
    model[2].bias.requires_grad_(False)
    model[2].bias.grad = None


def _new_parameter_tensor(model, opt):
    # The same Parameter object, its data replaced under it (a new meta).
    with ember.no_grad():
        model[0].bias.copy_(ember.zeros(4))


@pytest.mark.parametrize(
    "change", [_set_lr, _replace_buffer, _freeze, _new_parameter_tensor]
)
def test_a_change_to_the_optimizer_or_parameters_is_followed(change):
    make = lambda p: optim.SGD(p, lr=0.1, momentum=0.9)  # noqa: E731
    model, opt, step = _step(make)
    eager_model, eager_opt, eager_step = _step(make)
    compiled = ember.compile(step, backend="llvm")
    rng = np.random.default_rng(0)
    batches = [
        (
            ember.from_numpy(rng.standard_normal((8, 3)).astype(np.float32)),
            ember.from_numpy(rng.standard_normal((8, 1)).astype(np.float32)),
        )
        for _ in range(10)
    ]
    for k, (x, y) in enumerate(batches):
        if k == 5:
            change(model, opt)
            change(eager_model, eager_opt)
        np.testing.assert_allclose(
            compiled(x, y).item(), eager_step(x, y).item(), rtol=1e-5
        )
    for p, q in zip(model.parameters(), eager_model.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-5, atol=1e-6)


# Random programs: in-place updates never change what a program computes ----------


class _Random(nn.Module):
    """Parameters ``p0..`` read by some outputs and updated by others, as drawn."""

    def __init__(self, count: int, readers: list, updates: list) -> None:
        super().__init__()
        rng = np.random.default_rng(count)
        for k in range(count):
            value = rng.standard_normal((4, 5)).astype(np.float32)
            setattr(self, f"p{k}", nn.Parameter(ember.tensor(value)))
        self.readers, self.updates = readers, updates

    def forward(self, x):
        p = [getattr(self, f"p{k}") for k in range(len(self.updates))]
        outputs = []
        for kind, i, j in self.readers:
            if kind == "sum":
                outputs.append((p[i] * x).sum())
            elif kind == "matmul":
                outputs.append(p[i].T @ p[j])
            else:
                outputs.append((p[i] + p[j]).exp().sum(1))
        for k, (j, scale) in enumerate(self.updates):
            outputs.append(p[k] * 0.9 - p[j] * scale + x * 0.1)
        return outputs


@st.composite
def _random_programs(draw):
    count = draw(st.integers(1, 3))
    index = st.integers(0, count - 1)
    readers = draw(
        st.lists(
            st.tuples(st.sampled_from(["sum", "matmul", "exp"]), index, index),
            max_size=3,
        )
    )
    updates = [(draw(index), draw(st.sampled_from([0.0, 0.5]))) for _ in range(count)]
    return count, readers, updates


@given(_random_programs())
def test_updates_in_place_give_the_interpreters_results(drawn):
    from ember.compiler.interpret import interpret

    count, readers, updates = drawn
    model = _Random(count, readers, updates)
    x = ember.tensor(np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5))
    graph = trace(model, x)
    params = dict(model.named_parameters())
    want = [t.numpy().copy() for t in interpret(graph, [x], params)]
    first = len(readers)
    program = compile_llvm(graph, {first + k: f"p{k}" for k in range(count)})

    got = program([x], params)

    for k in range(first):
        np.testing.assert_allclose(got[k].numpy(), want[k], rtol=1e-5, atol=1e-6)
    for k in range(count):
        np.testing.assert_allclose(
            getattr(model, f"p{k}").numpy()
            if first + k in program.donated
            else got[first + k].numpy(),
            want[first + k],
            rtol=1e-6,
            atol=1e-6,
        )


def test_a_group_option_replaced_by_another_is_followed():
    make = lambda p: optim.SGD(p, lr=0.1, momentum=0.9)  # noqa: E731
    _, opt, step = _step(make)
    opt.param_groups[0]["note"] = "warm-up"  # an option SGD does not read
    compiled = ember.compile(step, backend="llvm")
    x, y = ember.ones(8, 3), ember.zeros(8, 1)
    for _ in range(3):
        compiled(x, y)
    group = opt.param_groups[0]
    del group["note"]
    group["comment"] = "decay"  # as many options as before, one of them new

    loss = compiled(x, y)  # the guard fails (it does not raise): traced again

    assert np.isfinite(loss.item()) and len(compiled.cache) == 2
