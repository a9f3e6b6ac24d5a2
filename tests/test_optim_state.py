"""Optimizer state dicts: keyed by parameter name, round trips, every error at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ember
from ember import nn, optim
from ember.errors import CheckpointVersionError, StateDictError


class TwoLayer(nn.Module):
    """Declares its layers in either order, so parameter order differs, names not."""

    def __init__(self, head_first: bool = False) -> None:
        super().__init__()
        if head_first:
            self.head = nn.Linear(8, 1)
            self.body = nn.Linear(3, 8)
        else:
            self.body = nn.Linear(3, 8)
            self.head = nn.Linear(8, 1)

    def forward(self, x: ember.Tensor) -> ember.Tensor:
        return self.head(self.body(x).tanh())


MakeOpt = Callable[[Any], optim.Optimizer]
OPTIMIZERS: dict[str, MakeOpt] = {
    "sgd-momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "adam-amsgrad": lambda ps: optim.Adam(ps, lr=0.01, amsgrad=True),
    "adamw": lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
}

X = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
Y = np.random.default_rng(1).standard_normal((16, 1)).astype(np.float32)


def _train(model: nn.Module, opt: optim.Optimizer, steps: int) -> None:
    x, y = ember.tensor(X), ember.tensor(Y)
    for _ in range(steps):
        opt.zero_grad()
        nn.MSELoss()(model(x), y).backward()
        opt.step()


def _snapshot(state: Any) -> Any:
    """A deep copy of a state dict whose tensors are cloned."""
    if isinstance(state, ember.Tensor):
        return state.clone()
    if isinstance(state, dict):
        return {k: _snapshot(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_snapshot(v) for v in state]
    return state


def _weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _message(error: BaseException) -> str:
    return str(error).split("\n  at ")[0]


def _interrupted_run(make: MakeOpt) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """Train 3 steps, snapshot model and optimizer, train 4 more.

    Returns both snapshots and the weights after all 7 steps: what a resumed run
    must reproduce bit for bit.
    """
    ember.manual_seed(0)
    model = TwoLayer()
    opt = make(model.named_parameters())
    _train(model, opt, 3)
    saved_model, saved_opt = _snapshot(model.state_dict()), _snapshot(opt.state_dict())
    _train(model, opt, 4)
    return saved_model, saved_opt, _weights(model)


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_resuming_from_a_state_dict_matches_uninterrupted_training(make) -> None:
    saved_model, saved_opt, expected = _interrupted_run(make)
    ember.manual_seed(99)
    resumed = TwoLayer()
    resumed.load_state_dict(saved_model)
    resumed_opt = make(resumed.named_parameters())
    resumed_opt.load_state_dict(saved_opt)
    _train(resumed, resumed_opt, 4)

    for key, value in expected.items():
        np.testing.assert_array_equal(_weights(resumed)[key], value, err_msg=key)


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_state_restores_by_name_into_a_reordered_model(make) -> None:
    saved_model, saved_opt, expected = _interrupted_run(make)
    reordered = TwoLayer(head_first=True)
    assert [n for n, _ in reordered.named_parameters()][0] == "head.weight"
    reordered.load_state_dict(saved_model)
    reordered_opt = make(reversed(list(reordered.named_parameters())))
    reordered_opt.load_state_dict(saved_opt)
    _train(reordered, reordered_opt, 4)

    for key, value in expected.items():
        np.testing.assert_array_equal(_weights(reordered)[key], value, err_msg=key)


def test_state_dict_layout_names_every_parameter() -> None:
    model = TwoLayer()
    opt = optim.Adam(model.named_parameters(), lr=0.01)
    _train(model, opt, 2)
    state = opt.state_dict()
    assert state["format_version"] == optim.FORMAT_VERSION
    assert state["keyed_by"] == "name"
    assert state["param_groups"][0]["params"] == [
        "body.weight",
        "body.bias",
        "head.weight",
        "head.bias",
    ]
    assert state["param_groups"][0]["lr"] == 0.01
    entry = state["state"]["head.weight"]
    assert sorted(entry) == ["exp_avg", "exp_avg_sq", "step"]
    assert entry["step"] == 2 and entry["exp_avg"].shape == (1, 8)


def test_unnamed_parameters_are_keyed_by_position() -> None:
    model = TwoLayer()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, opt, 2)
    state = _snapshot(opt.state_dict())
    assert state["keyed_by"] == "position"
    assert sorted(state["state"]) == [0, 1, 2, 3]
    again = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    again.load_state_dict(state)
    buffer = again.state[model.head.weight]["momentum_buffer"]
    np.testing.assert_array_equal(
        buffer.numpy(), opt.state[model.head.weight]["momentum_buffer"].numpy()
    )


def test_named_and_positional_states_do_not_mix() -> None:
    model = TwoLayer()
    positional = optim.SGD(model.parameters(), lr=0.1).state_dict()
    named = optim.SGD(model.named_parameters(), lr=0.1)
    with pytest.raises(StateDictError) as caught:
        named.load_state_dict(positional)
    assert (
        _message(caught.value)
        == """\
[E-STATE] SGD.load_state_dict: 1 problem, nothing was loaded:
  - the state is keyed by position but this optimizer's parameters are keyed by names
  hint: build both optimizers from model.named_parameters(), or both from \
model.parameters()"""
    )


def test_loading_restores_options_and_copies_the_buffers() -> None:
    model = TwoLayer()
    opt = optim.Adam(model.named_parameters(), lr=0.01)
    _train(model, opt, 1)
    state = _snapshot(opt.state_dict())
    state["param_groups"][0]["lr"] = 0.123
    fresh = optim.Adam(model.named_parameters(), lr=0.5)
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["lr"] == 0.123
    with ember.no_grad():
        state["state"]["body.bias"]["exp_avg"].zero_()
    assert fresh.state[model.body.bias]["exp_avg"].numpy().any()


def test_load_lists_every_problem_at_once_and_changes_nothing() -> None:
    model = TwoLayer()
    opt = optim.Adam(model.named_parameters(), lr=0.01)
    _train(model, opt, 1)
    state = _snapshot(opt.state_dict())
    group = state["param_groups"][0]["params"]
    group.remove("head.bias")
    group.append("tail.weight")
    state["param_groups"].append({"params": [], "lr": 0.1})
    state["state"]["body.weight"]["exp_avg"] = ember.zeros(3, 8)
    state["state"]["body.bias"]["exp_avg_sq"] = ember.zeros(8, dtype=ember.float64)
    state["state"]["ghost"] = {"step": 1}
    before = opt.state[model.body.weight]["exp_avg"].numpy().copy()

    with pytest.raises(StateDictError) as caught:
        opt.load_state_dict(state)

    assert (
        _message(caught.value)
        == """\
[E-STATE] Adam.load_state_dict: 6 problems, nothing was loaded:
  - the state has 2 param groups, this optimizer 1
  - missing parameter 'head.bias' (f32[1], group 0)
  - unexpected parameter 'tail.weight' (group 0)
  - shape mismatch for 'body.weight.exp_avg': expected f32[8, 3], the state has f32[3, 8]
  - dtype mismatch for 'body.bias.exp_avg_sq': expected f32[8], the state has f64[8]
  - state for unknown parameter 'ghost'
  hint: build the optimizer from the same model and param groups that produced the \
state"""
    )
    assert opt.param_groups[0]["lr"] == 0.01
    np.testing.assert_array_equal(
        opt.state[model.body.weight]["exp_avg"].numpy(), before
    )


def test_a_parameter_moved_to_another_group_is_reported() -> None:
    model = TwoLayer()
    groups = [
        {"params": list(model.body.named_parameters(prefix="body"))},
        {"params": list(model.head.named_parameters(prefix="head")), "lr": 0.1},
    ]
    opt = optim.SGD(groups, lr=0.01)
    state = opt.state_dict()
    state["param_groups"][0]["params"].append("head.bias")
    state["param_groups"][1]["params"].remove("head.bias")
    with pytest.raises(
        StateDictError, match="'head.bias' is in group 1 here but in group 0"
    ):
        opt.load_state_dict(state)


def test_a_newer_format_is_refused() -> None:
    opt = optim.SGD(TwoLayer().named_parameters(), lr=0.1)
    state = opt.state_dict()
    state["format_version"] = optim.FORMAT_VERSION + 1
    with pytest.raises(CheckpointVersionError, match="upgrade ember"):
        opt.load_state_dict(state)


def test_numpy_buffers_are_accepted() -> None:
    p = nn.Parameter(ember.zeros(2))
    opt = optim.SGD([("p", p)], lr=1.0, momentum=0.5)
    opt.load_state_dict(
        {
            "state": {"p": {"momentum_buffer": np.array([1.0, 2.0], np.float32)}},
            "param_groups": [{"params": ["p"], "lr": 1.0, "momentum": 0.5}],
        }
    )
    p.grad = ember.zeros(2)
    opt.step()
    assert p.tolist() == [-0.5, -1.0]
