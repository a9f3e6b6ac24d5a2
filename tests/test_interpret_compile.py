"""``ember.compile(..., backend="interpret")``: agrees with eager, looks like the
module, specializes on the call signature and says why it recompiles."""

from __future__ import annotations

import importlib
import logging

import numpy as np
import pytest

import ember
from ember import nn
from ember.compiler.compile import CompiledModule, RecompileLimitWarning
from ember.compiler.trace import trace
from ember.errors import TraceError, UnsupportedError

RECOMPILE_LOGGER = "ember.compiler.compile"


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.outer = nn.Linear(4, 2)

    def forward(self, x):
        h = x + self.inner(x).tanh()
        return self.outer(h), h.sum(-1)


@pytest.fixture
def model() -> Residual:
    ember.manual_seed(0)
    return Residual()


def recompiles(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == RECOMPILE_LOGGER and r.getMessage().startswith("recompiling")
    ]


# Agreement with eager ---------------------------------------------------------------


def test_a_compiled_module_computes_what_the_module_computes(model):
    compiled = ember.compile(model)
    x = ember.randn(3, 4)
    (out, total), (eager_out, eager_total) = compiled(x), model(x)
    np.testing.assert_array_equal(out.numpy(), eager_out.numpy())
    np.testing.assert_array_equal(total.numpy(), eager_total.numpy())


def test_gradients_through_the_interpreter_equal_eager_gradients(model):
    x = ember.randn(5, 4)
    model(x)[0].pow(2).sum().backward()
    eager = {name: p.grad.numpy().copy() for name, p in model.named_parameters()}
    model.zero_grad()

    ember.compile(model)(x)[0].pow(2).sum().backward()
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), eager[name], rtol=1e-6, err_msg=name)


def test_a_compiled_function_keeps_its_name_and_nested_results():
    def scaled(x, factor=2.0, *, shift):
        """Scale and shift."""
        return {"out": x * factor + shift, "parts": [x.sum()]}

    compiled = ember.compile(scaled)
    result = compiled(ember.ones(2), shift=ember.ones(2))
    assert result["out"].tolist() == [3.0, 3.0] and result["parts"][0].item() == 2.0
    assert compiled.__name__ == "scaled" and compiled.__doc__ == "Scale and shift."
    assert compiled(ember.ones(2), 3.0, shift=ember.zeros(2))["out"].tolist() == [
        3.0,
        3.0,
    ]


def test_a_compiled_model_called_while_tracing_is_traced_inline(model):
    compiled = ember.compile(model)
    g = trace(lambda x: compiled(x)[0].relu(), ember.ones(2, 4))
    assert [n.op for n in g.calls()] == [
        "linear",
        "tanh",
        "add",
        "linear",
        "sum",
        "relu",
    ]
    assert compiled.graph is None


# Looking like the module ------------------------------------------------------------


def test_the_compiled_module_forwards_attributes_and_state(model):
    compiled = ember.compile(model)
    assert isinstance(compiled, CompiledModule) and compiled.module is model
    assert compiled.inner is model.inner and compiled.inner.in_features == 4
    assert [n for n, _ in compiled.named_parameters()] == [
        "inner.weight",
        "inner.bias",
        "outer.weight",
        "outer.bias",
    ]
    assert list(compiled.state_dict()) == list(model.state_dict())
    compiled.tag = "set through the wrapper"
    assert model.tag == "set through the wrapper"
    assert "inner" in dir(compiled) and "graph" in dir(compiled)
    assert repr(compiled).startswith("CompiledModule(backend='interpret', Residual(")


def test_train_and_eval_return_the_wrapper(model):
    compiled = ember.compile(model)
    assert compiled.eval() is compiled and model.training is False
    assert compiled.train() is compiled and model.training is True


def test_loading_a_state_dict_through_the_wrapper_changes_the_results(model):
    compiled = ember.compile(model)
    x = ember.randn(2, 4)
    before = compiled(x)[0].numpy().copy()
    state = {k: v * 0 for k, v in model.state_dict().items()}
    compiled.load_state_dict(state)
    assert compiled(x)[0].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert not np.array_equal(before, 0)


def test_containers_index_and_iterate_like_the_module():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    compiled = ember.compile(seq)
    assert compiled[0] is seq[0] and len(compiled) == 2 and list(compiled) == list(seq)
    assert compiled.forward(ember.ones(1, 2)).shape == (1, 3)


# Specialization ---------------------------------------------------------------------


def test_the_same_signature_reuses_the_program(model, caplog):
    caplog.set_level(logging.DEBUG, logger=RECOMPILE_LOGGER)
    compiled = ember.compile(model)
    compiled(ember.randn(3, 4))
    first = compiled.graph
    compiled(ember.randn(3, 4))
    assert compiled.graph is first and recompiles(caplog) == []


def test_each_changed_guard_is_logged_when_recompiling(model, caplog):
    caplog.set_level(logging.INFO, logger=RECOMPILE_LOGGER)
    compiled = ember.compile(model)
    compiled(ember.randn(3, 4))
    compiled(ember.randn(6, 4))
    compiled(ember.randn(4, 6).T)
    compiled.eval()(ember.randn(6, 4))
    compiled(ember.randn(6, 4, dtype=ember.float64).float())
    assert recompiles(caplog) == [
        "recompiling Residual: x: shape (3, 4) -> (6, 4)",
        "recompiling Residual: x: strides (4, 1) -> (1, 6)",
        "recompiling Residual: x: strides (1, 6) -> (4, 1); training True -> False",
    ]


def test_a_known_signature_after_a_change_is_not_recompiled(model, caplog):
    caplog.set_level(logging.INFO, logger=RECOMPILE_LOGGER)
    compiled = ember.compile(model)
    for rows in (3, 5, 3, 5):
        compiled(ember.randn(rows, 4))
    assert len(recompiles(caplog)) == 1


def test_non_tensor_arguments_and_parameter_layouts_are_guards(caplog):
    caplog.set_level(logging.INFO, logger=RECOMPILE_LOGGER)
    compiled = ember.compile(lambda x, power=2: x**power)
    assert compiled(ember.full((2,), 3.0)).tolist() == [9.0, 9.0]
    assert compiled(ember.full((2,), 3.0), 3).tolist() == [27.0, 27.0]

    lin = nn.Linear(2, 2)
    compiled_lin = ember.compile(lin)
    compiled_lin(ember.ones(1, 2))
    lin.weight = nn.Parameter(ember.ones(2, 2).T)
    assert compiled_lin(ember.ones(1, 2)).shape == (1, 2)
    assert recompiles(caplog) == [
        "recompiling lambda: the argument structure or a non-tensor argument changed",
        "recompiling Linear: parameter weight: strides (2, 1) -> (1, 2)",
    ]


def test_empty_and_size_one_dims_do_not_count_as_stride_changes(caplog):
    caplog.set_level(logging.INFO, logger=RECOMPILE_LOGGER)
    compiled = ember.compile(lambda x: x + 1)
    compiled(ember.ones(1, 3))
    compiled(ember.ones(3, 1).T)  # strides (1, 1) instead of (3, 1)
    assert recompiles(caplog) == []


def test_old_programs_are_dropped_past_the_cache_limit(monkeypatch, caplog):
    # The package re-exports the function `compile`, which hides the module name.
    monkeypatch.setattr(
        importlib.import_module("ember.compiler.compile"), "CACHE_LIMIT", 2
    )
    caplog.set_level(logging.INFO, logger=RECOMPILE_LOGGER)
    compiled = ember.compile(lambda x: x.exp())
    compiled(ember.ones(1))
    compiled(ember.ones(2))
    for n in (3, 1):
        with pytest.warns(RecompileLimitWarning, match="more than 2 input signatures"):
            compiled(ember.ones(n))
    assert len(recompiles(caplog)) == 3
    assert sum("dropped the oldest" in r.getMessage() for r in caplog.records) == 2


# Errors -----------------------------------------------------------------------------


def test_a_trace_error_reaches_the_caller_with_the_users_line():
    def branchy(x):
        return x if x.sum() > 0 else -x

    with pytest.raises(TraceError) as info:
        ember.compile(branchy)(ember.ones(2))
    assert info.value.location.code == "return x if x.sum() > 0 else -x"


def test_unknown_backends_and_non_callables_are_refused(model):
    with pytest.raises(UnsupportedError) as info:
        ember.compile(model, backend="tvm")
    assert "unknown backend 'tvm'" in info.value.message
    assert info.value.hint == "use one of: interpret, llvm"
    with pytest.raises(UnsupportedError, match="expects a module or a function"):
        ember.compile(42)
