"""ember.nn.Module and Parameter: registration, traversal, modes, printing, state."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import ember
from ember import nn
from ember.errors import DTypeError, StateDictError, UnsupportedError


class Block(nn.Module):
    """A module with every kind of member: parameter, buffers, submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(ember.ones(3))
        self.register_buffer("running", ember.zeros(3))
        self.register_buffer("scratch", ember.zeros(2), persistent=False)
        self.inner = nn.Linear(3, 2)

    def forward(self, x: ember.Tensor) -> ember.Tensor:
        return self.inner(x * self.scale)


def _message(error: BaseException) -> str:
    """The error text without its trailing source location line."""
    return str(error).split("\n  at ")[0]


# Parameter ------------------------------------------------------------------------


def test_parameter_is_a_tensor_leaf_that_requires_grad() -> None:
    data = ember.arange(3.0)
    p = nn.Parameter(data)
    assert isinstance(p, ember.Tensor) and isinstance(p, nn.Parameter)
    assert p.requires_grad and p.is_leaf
    assert p.untyped_storage_id() == data.untyped_storage_id()
    assert not nn.Parameter(ember.zeros(2), requires_grad=False).requires_grad


def test_parameter_from_a_computed_tensor_starts_a_fresh_leaf() -> None:
    x = ember.ones(2, requires_grad=True)
    p = nn.Parameter(x * 2)
    assert p.grad_fn is None and p.is_leaf


def test_results_of_ops_on_parameters_are_plain_tensors() -> None:
    p = nn.Parameter(ember.ones(2))
    for result in (p * 2, p + p, 1.0 - p, p.detach(), p.sum()):
        assert type(result) is ember.Tensor


def test_parameter_repr_says_what_it_is() -> None:
    assert repr(nn.Parameter(ember.zeros(2))) == (
        "Parameter containing:\ntensor([0., 0.], requires_grad=True)"
    )


def test_parameter_rejects_non_tensors() -> None:
    with pytest.raises(DTypeError, match="expects an ember Tensor, got list"):
        nn.Parameter([1.0, 2.0])  # type: ignore[arg-type]


def test_parameter_survives_deepcopy_as_an_independent_copy() -> None:
    p = nn.Parameter(ember.ones(2))
    q = copy.deepcopy(p)
    assert type(q) is nn.Parameter and q.requires_grad
    with ember.no_grad():
        q.add_(1.0)
    assert p.tolist() == [1.0, 1.0]


# Registration and traversal -------------------------------------------------------


def test_members_are_registered_by_assignment_and_named_with_dots() -> None:
    block = Block()
    assert [n for n, _ in block.named_parameters()] == [
        "scale",
        "inner.weight",
        "inner.bias",
    ]
    assert [n for n, _ in block.named_buffers()] == ["running", "scratch"]
    assert [n for n, _ in block.named_modules()] == ["", "inner"]
    assert list(block.children()) == [block.inner]
    assert list(block.modules()) == [block, block.inner]
    assert [p.shape for p in block.parameters()] == [(3,), (2, 3), (2,)]
    assert [b.shape for b in block.buffers()] == [(3,), (2,)]


def test_recurse_false_lists_only_direct_members() -> None:
    block = Block()
    assert [n for n, _ in block.named_parameters(recurse=False)] == ["scale"]
    assert [n for n, _ in block.named_parameters(prefix="model")][0] == "model.scale"


def test_plain_tensor_attributes_are_not_registered() -> None:
    block = Block()
    block.cache = ember.ones(1)
    assert "cache" not in dict(block.named_parameters())
    assert "cache" not in dict(block.named_buffers())


def test_shared_parameters_and_modules_are_listed_once() -> None:
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    assert [n for n, _ in model.named_modules()] == ["", "0", "1"]
    # The state dict names every path, as PyTorch does.
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_reassignment_moves_a_name_between_tables() -> None:
    block = Block()
    block.inner = nn.Parameter(ember.zeros(1))
    assert "inner" in dict(block.named_parameters())
    assert "inner" not in dict(block.named_children())
    del block.inner
    assert not hasattr(block, "inner")


def test_a_parameter_slot_accepts_none_but_not_a_plain_tensor() -> None:
    layer = nn.Linear(2, 2)
    with pytest.raises(DTypeError, match="cannot use a Tensor as parameter 'bias'"):
        layer.bias = ember.zeros(2)
    layer.bias = None
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    assert layer(ember.ones(1, 2)).shape == (1, 2)


def test_registering_before_init_explains_the_fix() -> None:
    class Forgetful(nn.Module):
        def __init__(self) -> None:
            self.w = nn.Parameter(ember.ones(1))

    with pytest.raises(AttributeError, match=r"call super\(\).__init__\(\) first"):
        Forgetful()


def test_register_helpers_check_names_and_types() -> None:
    module = nn.Module()
    with pytest.raises(KeyError, match="contain no '.'"):
        module.register_parameter("a.b", None)
    with pytest.raises(DTypeError, match="cannot use a Tensor as parameter 'w'"):
        module.register_parameter("w", ember.ones(1))  # type: ignore[arg-type]
    with pytest.raises(DTypeError, match="cannot use a ndarray as buffer 'b'"):
        module.register_buffer("b", np.ones(1))  # type: ignore[arg-type]
    module.plain = 3
    with pytest.raises(KeyError, match="attribute 'plain' already exists"):
        module.register_buffer("plain", ember.ones(1))


def test_missing_attribute_names_the_class() -> None:
    with pytest.raises(AttributeError, match="'Linear' object has no attribute 'nope'"):
        nn.Linear(1, 1).nope  # noqa: B018


def test_module_without_forward_raises_a_typed_error() -> None:
    with pytest.raises(UnsupportedError, match="Module has no forward"):
        nn.Module()(ember.ones(1))


def test_apply_visits_children_before_parents() -> None:
    model = nn.Sequential(nn.Linear(1, 1), nn.Sequential(nn.ReLU()))
    visited: list[str] = []
    assert model.apply(lambda m: visited.append(type(m).__name__)) is model
    assert visited == ["Linear", "ReLU", "Sequential", "Sequential"]


def test_get_submodule_follows_dotted_paths() -> None:
    model = nn.Sequential(nn.Linear(1, 1), nn.Sequential(nn.ReLU()))
    assert isinstance(model.get_submodule("1.0"), nn.ReLU)
    assert model.get_submodule("") is model
    with pytest.raises(AttributeError, match="no submodule '7'"):
        model.get_submodule("1.7")


# Modes and gradients --------------------------------------------------------------


def test_train_and_eval_propagate_to_every_descendant() -> None:
    model = nn.Sequential(Block(), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model[1].train()
    assert [m.training for m in model.modules()] == [
        False,
        False,
        False,
        True,
        True,
        True,
    ]
    model.train()
    assert all(m.training for m in model.modules())
    with pytest.raises(DTypeError, match="expects a bool"):
        model.train("no")  # type: ignore[arg-type]


def test_zero_grad_drops_or_zeroes_gradients() -> None:
    model = nn.Linear(3, 1)
    model(ember.ones(2, 3)).sum().backward()
    model.zero_grad(set_to_none=False)
    assert model.weight.grad.tolist() == [[0.0, 0.0, 0.0]]
    model.zero_grad()
    assert model.weight.grad is None and model.bias.grad is None


def test_requires_grad_false_freezes_every_parameter() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].requires_grad_(False)
    model(ember.ones(1, 2)).sum().backward()
    assert model[0].weight.grad is None and model[1].weight.grad is not None


def test_to_float64_converts_parameters_and_buffers() -> None:
    block = Block().double()
    assert {t.dtype for t in block.parameters()} == {ember.float64}
    assert {t.dtype for t in block.buffers()} == {ember.float64}
    assert all(isinstance(p, nn.Parameter) for p in block.parameters())
    assert block(ember.ones(1, 3, dtype=ember.float64)).dtype == ember.float64
    with pytest.raises(DTypeError, match="floating dtypes only"):
        block.to(ember.int32)


# Printing -------------------------------------------------------------------------


def test_repr_nests_children_with_their_arguments() -> None:
    model = nn.Sequential(
        nn.Linear(64, 256),
        nn.GELU(approximate="tanh"),
        nn.Sequential(nn.Linear(256, 1, bias=False), nn.Identity()),
        Block(),
        nn.HuberLoss(reduction="sum", delta=0.5),
    )
    assert (
        repr(model)
        == """\
Sequential(
  (0): Linear(in_features=64, out_features=256, bias=True)
  (1): GELU(approximate='tanh')
  (2): Sequential(
    (0): Linear(in_features=256, out_features=1, bias=False)
    (1): Identity()
  )
  (3): Block(
    (inner): Linear(in_features=3, out_features=2, bias=True)
  )
  (4): HuberLoss(reduction='sum', delta=0.5)
)"""
    )


class Tagged(nn.Module):
    """A module whose extra_repr spans two lines."""

    def extra_repr(self) -> str:
        return "tag=a\nsize=2"


def test_repr_shows_a_multi_line_extra_repr_as_a_block() -> None:
    assert repr(Tagged()) == "Tagged(\n  tag=a\n  size=2\n)"


def test_repr_puts_extra_repr_lines_before_children() -> None:
    tagged = Tagged()
    tagged.body = nn.ReLU()
    assert repr(tagged) == "Tagged(\n  tag=a\n  size=2\n  (body): ReLU()\n)"


# State dict -----------------------------------------------------------------------


def test_state_dict_holds_parameters_and_persistent_buffers() -> None:
    block = Block()
    state = block.state_dict()
    assert list(state) == ["scale", "running", "inner.weight", "inner.bias"]
    assert all(type(v) is ember.Tensor and not v.requires_grad for v in state.values())
    # Shared memory: the values are live views of the module's tensors.
    assert state["scale"].untyped_storage_id() == block.scale.untyped_storage_id()
    kept = block.state_dict(keep_vars=True)
    assert kept["scale"] is block.scale


def test_state_dict_round_trip_restores_every_value() -> None:
    ember.manual_seed(1)
    source = Block()
    with ember.no_grad():
        source.running.copy_(ember.tensor([1.0, 2.0, 3.0]))
    saved = {k: v.clone() for k, v in source.state_dict().items()}
    ember.manual_seed(2)
    target = Block()
    assert not np.array_equal(target.inner.weight.numpy(), source.inner.weight.numpy())

    result = target.load_state_dict(saved)

    assert result == nn.IncompatibleKeys([], [])
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[key].numpy(), value.numpy())
    x = ember.randn(4, 3)
    np.testing.assert_array_equal(target(x).numpy(), source(x).numpy())


def test_load_state_dict_accepts_numpy_arrays() -> None:
    layer = nn.Linear(2, 1)
    layer.load_state_dict(
        {
            "weight": np.array([[1.0, 2.0]], np.float32),
            "bias": np.array([0.5], np.float32),
        }
    )
    assert layer(ember.ones(1, 2)).tolist() == [[3.5]]


def test_load_state_dict_lists_every_problem_at_once() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    state = model.state_dict()
    broken = dict(state)
    del broken["0.bias"]
    del broken["2.bias"]
    broken["0.b"] = ember.zeros(8)
    broken["head.weight"] = [1, 2]
    broken["0.weight"] = ember.zeros(8, 4, dtype=ember.float64)
    broken["2.weight"] = ember.zeros(3, 8)
    before = model[0].weight.numpy().copy()

    with pytest.raises(StateDictError) as caught:
        model.load_state_dict(broken)

    assert (
        _message(caught.value)
        == """\
[E-STATE] load_state_dict(Sequential): 6 problems, nothing was loaded:
  - missing key '0.bias': expected f32[8]
  - missing key '2.bias': expected f32[2]
  - unexpected key '0.b' (f32[8])
  - unexpected key 'head.weight'
  - dtype mismatch for '0.weight': expected f32[8, 4], the state has f64[8, 4]
  - shape mismatch for '2.weight': expected f32[2, 8], the state has f32[3, 8]
  hint: compare model.state_dict() names and shapes with the checkpoint's; \
strict=False skips missing and unexpected keys, never mismatches"""
    )
    error = caught.value
    assert isinstance(error, KeyError)
    assert error.missing_keys == ["0.bias", "2.bias"]
    assert error.unexpected_keys == ["0.b", "head.weight"]
    assert error.mismatched_keys == ["0.weight", "2.weight"]
    np.testing.assert_array_equal(model[0].weight.numpy(), before)


def test_non_strict_load_skips_missing_and_unexpected_keys() -> None:
    layer = nn.Linear(2, 1)
    result = layer.load_state_dict(
        {"weight": ember.ones(1, 2), "extra": ember.zeros(1)}, strict=False
    )
    assert result.missing_keys == ["bias"] and result.unexpected_keys == ["extra"]
    assert layer.weight.tolist() == [[1.0, 1.0]]


def test_non_strict_load_still_refuses_mismatches() -> None:
    layer = nn.Linear(2, 1)
    with pytest.raises(StateDictError) as caught:
        layer.load_state_dict({"weight": ember.ones(2, 2)}, strict=False)
    assert (
        _message(caught.value)
        == """\
[E-STATE] load_state_dict(Linear): 1 problem, nothing was loaded:
  - shape mismatch for 'weight': expected f32[1, 2], the state has f32[2, 2]
  hint: compare model.state_dict() names and shapes with the checkpoint's"""
    )


def test_load_state_dict_rejects_a_non_mapping() -> None:
    with pytest.raises(DTypeError, match="expects a mapping of names to tensors"):
        nn.Linear(1, 1).load_state_dict([("weight", ember.ones(1, 1))])  # type: ignore


def test_non_persistent_buffers_are_neither_saved_nor_expected() -> None:
    block = Block()
    assert "scratch" not in block.state_dict()
    with pytest.raises(StateDictError, match="unexpected key 'scratch'"):
        block.load_state_dict({**block.state_dict(), "scratch": ember.zeros(2)})


def test_deepcopy_of_a_module_is_independent() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    twin = copy.deepcopy(model)
    with ember.no_grad():
        twin[0].weight.zero_()
    assert model[0].weight.numpy().any()
    assert isinstance(twin[0].weight, nn.Parameter)
