"""The eager autograd engine: recording, scheduling, accumulation, determinism and
statistics. Gradients are compared with values derived by hand (or with numpy for
the two-layer case); the per-op rules are checked in ``test_gradients.py`` and the
error paths in ``test_autograd_errors.py``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ember
from ember.ir import functions as F


def f64(values, requires_grad: bool = True) -> ember.Tensor:
    return ember.tensor(values, dtype=ember.float64, requires_grad=requires_grad)


# Recording ---------------------------------------------------------------------------


def test_ops_on_tensors_that_require_grad_record_a_node():
    x = f64([1.0, 2.0])
    y = x * 3.0
    assert x.is_leaf and x.grad_fn is None
    assert y.requires_grad and not y.is_leaf and y.grad_fn.name == "mul"
    assert y.grad_fn.edges[0] is x


def test_no_grad_records_nothing_and_enable_grad_turns_it_back_on():
    x = f64([1.0, 2.0])
    with ember.no_grad():
        y = x * 2.0
        with ember.enable_grad():
            z = x * 2.0
    assert not y.requires_grad and y.grad_fn is None
    assert z.grad_fn is not None
    assert ember.autograd.is_grad_enabled()


def test_no_grad_works_as_a_decorator():
    @ember.no_grad()
    def double(t):
        return t * 2.0

    assert double(f64([1.0])).grad_fn is None


def test_detach_shares_storage_but_leaves_the_graph():
    x = f64([1.0, 2.0])
    d = (x * 2.0).detach()
    assert not d.requires_grad and d.grad_fn is None
    assert d.untyped_storage_id() != x.untyped_storage_id()
    assert x.detach().untyped_storage_id() == x.untyped_storage_id()


def test_requires_grad_can_be_switched_on_a_leaf():
    x = ember.ones(2)
    assert x.requires_grad_() is x and x.requires_grad
    x.requires_grad_(False)
    assert not x.requires_grad


def test_recording_keeps_only_what_the_rule_reads():
    x, w = f64([1.0, 2.0]), f64([3.0, 4.0], requires_grad=False)
    assert (x + w).grad_fn.saved == ()
    assert (x * w).grad_fn.saved == (w,)
    assert x.exp().grad_fn.out_storage is not None


# Shared values -----------------------------------------------------------------------


def test_a_diamond_sums_both_branches_before_the_shared_node_runs():
    # y = (2x)(3x) = 6x^2, dy/dx = 12x
    x = f64([1.0, -2.0, 0.5])
    a, b = x * 2.0, x * 3.0
    (a * b).sum().backward()
    assert x.grad.tolist() == [12.0, -24.0, 6.0]
    stats = ember.autograd.last_stats()
    assert (stats.nodes_run, stats.accumulations, stats.leaves) == (4, 1, 1)


def test_a_value_used_three_times():
    # v = exp(x); y = 2v + 3v + 5v; dy/dx = 10 exp(x)
    x = f64([0.0, 1.0])
    v = x.exp()
    (v * 2.0 + v * 3.0 + v * 5.0).sum().backward()
    assert np.allclose(x.grad.numpy(), 10.0 * np.exp([0.0, 1.0]), rtol=1e-15)
    assert ember.autograd.last_stats().accumulations == 2


def test_one_node_reading_a_value_twice():
    # y = x * x reaches x through two edges of one node: dy/dx = 2x.
    x = f64([3.0, -1.0])
    (x * x).sum().backward()
    assert x.grad.tolist() == [6.0, -2.0]


def test_a_parameter_used_in_two_layers():
    rng = np.random.default_rng(0)
    xs, ws = rng.standard_normal((4, 3)), rng.standard_normal((3, 3))
    x, w = f64(xs, requires_grad=False), f64(ws)
    h = (x @ w).tanh()
    (h @ w).sum().backward()
    # By hand: out = sum(h W), h = tanh(x W).
    hs = np.tanh(xs @ ws)
    g_out = np.ones((4, 3))
    g_h = g_out @ ws.T
    expected = hs.T @ g_out + xs.T @ (g_h * (1 - hs**2))
    assert np.allclose(w.grad.numpy(), expected, rtol=1e-13, atol=1e-13)


def test_a_chain_of_100000_ops_does_not_recurse():
    assert sys.getrecursionlimit() < 100_000
    x = f64([1.0, -2.0])
    y = x
    for _ in range(100_000):
        y = -y
    (y * 3.0).sum().backward()
    assert x.grad.tolist() == [3.0, 3.0]
    assert ember.autograd.last_stats().nodes_run == 100_002
    del y  # freeing the chain must not recurse either


def test_a_wide_fan_in_grows_the_ready_queue():
    x = f64([1.0])
    parts = [x * float(i) for i in range(1, 6)]
    ember.stack(parts).sum().backward()
    assert x.grad.tolist() == [15.0]
    stats = ember.autograd.last_stats()
    assert stats.peak_ready == 5
    assert stats.accumulations == 4


# Leaves, views and .grad -------------------------------------------------------------


def test_leaf_grad_accumulates_across_calls_until_zeroed():
    x = f64([1.0, 2.0])
    for _ in range(3):
        (x * x).sum().backward()
    assert x.grad.tolist() == [6.0, 12.0]
    x.grad.zero_()
    (x * x).sum().backward()
    assert x.grad.tolist() == [2.0, 4.0]
    x.grad = None
    x.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]


def test_grad_is_dense_and_shared_with_nothing():
    a, b = f64([[1.0, 2.0], [3.0, 4.0]]), f64([[1.0, 2.0], [3.0, 4.0]])
    (a.T + b).sum().backward()
    # sum's gradient is a stride-0 view, permute's a transposed one: .grad is neither.
    for leaf in (a, b):
        assert leaf.grad.is_contiguous() and leaf.grad.strides == (2, 1)
    assert a.grad.untyped_storage_id() != b.grad.untyped_storage_id()
    a.grad.mul_(2.0)
    assert b.grad.tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_a_user_gradient_is_not_aliased_by_grad():
    x = f64([1.0, 2.0])
    g = f64([5.0, 7.0], requires_grad=False)
    (x + 0.0).backward(g)
    x.grad.zero_()
    assert g.tolist() == [5.0, 7.0]


def test_views_route_gradients_back_to_their_base():
    base = f64(np.arange(12.0).reshape(3, 4))
    window = base.T[1:3, ::2]  # permute, slice, slice with a step
    (window * f64([[1.0, 2.0], [3.0, 4.0]], requires_grad=False)).sum().backward()
    expected = np.zeros((3, 4))
    expected[0, 1], expected[2, 1], expected[0, 2], expected[2, 2] = 1.0, 2.0, 3.0, 4.0
    assert base.grad.tolist() == expected.tolist()


def test_an_expanded_leaf_receives_the_sum_over_its_copies():
    b = f64([1.0, 2.0])
    (
        b.expand(3, 2) * f64(np.arange(6.0).reshape(3, 2), requires_grad=False)
    ).sum().backward()
    assert b.grad.tolist() == [6.0, 9.0]


def test_retain_grad_keeps_the_gradient_of_an_intermediate():
    x = f64([1.0, 2.0])
    h = x * 3.0
    h.retain_grad()
    (h * h).sum().backward()
    assert h.grad.tolist() == [6.0, 12.0]
    assert x.grad.tolist() == [18.0, 36.0]


def test_gradients_keep_the_dtype_of_each_input():
    x32 = ember.tensor([1.0, 2.0], requires_grad=True)
    x64 = f64([3.0, 4.0])
    (x32 * x64).sum().backward()
    assert x32.grad.dtype is ember.float32 and x64.grad.dtype is ember.float64
    assert x32.grad.tolist() == [3.0, 4.0]


def test_backward_from_a_leaf_and_from_a_zero_dim_output():
    x = f64([2.0])
    x.backward()
    assert x.grad.tolist() == [1.0]
    s = f64([1.0, 2.0]).sum()
    assert s.shape == ()


# retain_graph and grad() --------------------------------------------------------------


def test_retain_graph_allows_a_second_backward():
    x = f64([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    assert x.grad.tolist() == [4.0, 8.0]


def test_grad_returns_gradients_without_touching_dot_grad():
    x, w = f64([1.0, 2.0]), f64([3.0, 4.0])
    y = (x * w).sum()
    gx, gw = ember.autograd.grad(y, [x, w])
    assert gx.tolist() == [3.0, 4.0] and gw.tolist() == [1.0, 2.0]
    assert x.grad is None and w.grad is None


def test_grad_of_an_intermediate_runs_only_the_part_of_the_graph_above_it():
    x = f64([1.0, 2.0])
    h = x.exp()
    loss = (h * h).sum()
    (gh,) = ember.autograd.grad(loss, h)
    assert np.allclose(gh.numpy(), 2 * np.exp([1.0, 2.0]))
    assert ember.autograd.last_stats().nodes_run == 2  # sum and mul, not exp
    (gx,) = ember.autograd.grad(h.sum(), x)  # exp's node was not freed
    assert np.allclose(gx.numpy(), np.exp([1.0, 2.0]))


def test_grad_with_several_outputs_and_explicit_gradients():
    x = f64([1.0, 2.0])
    a, b = x * 2.0, x * x
    (gx,) = ember.autograd.grad(
        [a, b], x, [f64([1.0, 1.0], False), f64([1.0, 0.0], False)]
    )
    assert gx.tolist() == [4.0, 2.0]


def test_grad_allow_unused_gives_none():
    x, unused = f64([1.0]), f64([2.0])
    assert (
        ember.autograd.grad((x * 2.0).sum(), [x, unused], allow_unused=True)[1] is None
    )


def test_grad_when_an_output_is_itself_an_input():
    x = f64([1.0, 2.0])
    y = x * 2.0
    gy, gx = ember.autograd.grad(y.sum(), [y, x])
    assert gy.tolist() == [1.0, 1.0] and gx.tolist() == [2.0, 2.0]


# Determinism --------------------------------------------------------------------------


def shared_graph(seed: int, width: int) -> list[bytes]:
    """A float32 graph in which many values are shared, so summation order shows in
    the last bits; returns the bytes of every leaf gradient."""
    rng = np.random.default_rng(seed)
    leaves = [
        ember.tensor(rng.standard_normal((3, 4)).astype(np.float32), requires_grad=True)
        for _ in range(3)
    ]
    values = list(leaves)
    for i in range(width):
        a, b = values[(7 * i) % len(values)], values[(3 * i + 1) % len(values)]
        values.append((a * b).tanh() + a.sum(0) * 0.1 if i % 3 == 0 else a * 0.9 + b)
    sum(v.sum() for v in values[3:]).backward()
    return [leaf.grad.numpy().tobytes() for leaf in leaves if leaf.grad is not None]


@given(seed=st.integers(0, 1000), width=st.integers(1, 12))
def test_two_runs_are_bit_identical(seed: int, width: int):
    assert shared_graph(seed, width) == shared_graph(seed, width)


# Statistics and logging ---------------------------------------------------------------


def test_stats_count_nodes_edges_accumulations_and_time():
    x = f64([1.0, 2.0])
    y = x * 2.0
    (y + y * x).sum().backward()
    stats = ember.autograd.last_stats()
    # sum -> add -> {y, mul(y, x)}; mul -> {y, x}; y = mul(x, 2) -> x
    assert (stats.nodes_run, stats.edges, stats.accumulations) == (4, 6, 2)
    assert stats.leaves == 1 and stats.seconds > 0
    assert stats.summary().startswith("backward: 4 nodes, 6 edges, 2 accumulations")


def test_each_backward_logs_its_summary_at_debug(caplog):
    with caplog.at_level(logging.DEBUG, logger="ember.runtime.autograd"):
        f64([1.0]).sum().backward()
    assert [r.getMessage() for r in caplog.records] == [
        ember.autograd.last_stats().summary()
    ]


def test_ember_log_autograd_switches_the_summary_on():
    code = "import ember; ember.tensor([1.0], requires_grad=True).sum().backward()"
    env = {**os.environ, "EMBER_LOG": "autograd"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "ember.runtime.autograd: backward: 1 nodes, 1 edges" in done.stderr


# In-place writes ----------------------------------------------------------------------


def test_writing_a_value_that_requires_grad_into_a_plain_tensor_is_refused():
    x = f64([1.0, 2.0])
    buffer = ember.zeros(2, dtype=ember.float64)
    with pytest.raises(ember.errors.AutogradError, match="autograd does not track"):
        buffer[0] = x.sum()
    with ember.no_grad():
        buffer[0] = x.sum()
    assert buffer.tolist() == [3.0, 0.0]


def test_modifying_a_value_no_rule_reads_is_allowed():
    x, w = f64([1.0, 2.0]), f64([1.0, 1.0], requires_grad=False)
    y = (x + w).sum()
    w.add_(1.0)
    y.backward()
    assert x.grad.tolist() == [1.0, 1.0]


def test_f_functions_and_methods_record_the_same_graph():
    x = f64([1.0, 2.0])
    assert F.exp(x).grad_fn.name == x.exp().grad_fn.name == "exp"
