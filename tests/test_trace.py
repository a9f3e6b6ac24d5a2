"""Symbolic tracing: what becomes which node, names, source lines, and the errors
users see when their code depends on tensor values."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import ember
from ember import nn
from ember.compiler.trace import Proxy, flatten, trace, trace_call, unflatten
from ember.errors import DTypeError, LayoutError, ShapeError, StrideError, TraceError
from ember.ir.graph import Graph


def ops(graph: Graph) -> list[str]:
    return [n.op or n.kind for n in graph.nodes]


# What becomes which node ------------------------------------------------------------


def test_a_function_of_two_tensors_records_every_op_in_order():
    g = trace(lambda x, y: (x * y + 1.0).relu().sum(0), ember.ones(2, 3), ember.ones(3))
    assert ops(g) == ["input", "input", "mul", "const", "add", "relu", "sum", "output"]
    assert [n.name for n in g.inputs] == ["x", "y"]
    assert g.outputs[0].meta.shape == (3,)


def test_inputs_keep_their_strides_and_views_trace_with_eager_strides():
    base = ember.arange(24.0).view(4, 6)
    x = base.T  # strides (1, 6)

    def f(x):
        return x[1:, ::2].unsqueeze(0).transpose(1, 2)

    g = trace(f, x)
    assert g.inputs[0].meta.strides == (1, 6)
    traced = g.outputs[0].meta
    eager = f(x).meta
    assert (traced.shape, traced.strides) == (eager.shape, eager.strides)
    assert traced.offset - g.inputs[0].meta.offset == eager.offset - x.meta.offset


def test_input_offset_is_not_part_of_the_graph():
    x = ember.arange(10.0)[3:7]
    g = trace(lambda x: x.exp(), x)
    assert g.inputs[0].meta.offset == 0


def test_captured_eager_tensors_become_constants_holding_their_values():
    scale = ember.tensor([1.0, 2.0, 3.0])
    g = trace(lambda x: x * scale, ember.ones(2, 3))
    (const,) = [n for n in g.nodes if n.kind == "const"]
    np.testing.assert_array_equal(const.value, [1.0, 2.0, 3.0])
    assert const.meta.shape == (3,)


def test_a_captured_view_becomes_a_dense_constant():
    table = ember.arange(6.0).view(2, 3).T
    g = trace(lambda x: x + table, ember.ones(3, 2))
    (const,) = [n for n in g.nodes if n.kind == "const"]
    np.testing.assert_array_equal(const.value, table.numpy())
    assert const.meta.is_contiguous()


def test_python_numbers_share_one_constant_per_value_and_dtype():
    g = trace(lambda x: x * 2.0 + x * 2.0 + 1.0, ember.ones(3))
    consts = [n for n in g.nodes if n.kind == "const"]
    assert sorted(float(c.value) for c in consts) == [1.0, 2.0]
    assert all(c.meta.shape == () for c in consts)


def test_control_flow_on_shapes_and_attributes_is_baked_in():
    def f(x):
        if x.shape[0] > 2 and x.dtype == ember.float32 and len(x) == 4:
            return x.sum(0)
        return x

    assert ops(trace(f, ember.ones(4, 2))) == ["input", "sum", "output"]
    assert ops(trace(f, ember.ones(2, 2))) == ["input", "output"]


def test_nested_inputs_and_results_keep_their_structure():
    def f(pair, scale=2.0, *, extra):
        a, b = pair
        return {"sum": a + b, "parts": (a * scale, extra["t"].neg())}

    args = ((ember.ones(2), ember.ones(2)),)
    kwargs = {"extra": {"t": ember.ones(1)}}
    result = trace_call(f, args, kwargs)
    assert [n.name for n in result.graph.inputs] == ["pair_0", "pair_1", "extra_t"]
    leaves = ["s", "p0", "p1"]
    assert unflatten(result.output_spec, leaves) == {"sum": "s", "parts": ("p0", "p1")}


def test_flatten_rebuilds_namedtuples():
    values = ember.tensor([[1.0, 5.0], [7.0, 2.0]]).max(1)
    leaves, spec = flatten(values, lambda v: isinstance(v, ember.Tensor))
    rebuilt = unflatten(spec, leaves)
    assert type(rebuilt) is type(values) and rebuilt.indices is values.indices


def test_a_result_may_be_an_input_a_parameter_or_a_constant():
    lin = nn.Linear(2, 2)
    g = trace(lambda x: (x, lin.weight, ember.ones(1)), ember.ones(2))
    assert [n.kind for n in g.outputs] == ["input", "const", "const"]


# Modules: parameters, buffers, names ------------------------------------------------


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("shift", ember.zeros(4))

    def forward(self, x):
        return self.linear(x).relu() + self.shift


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x @ self.head.weight.T


def test_parameters_and_buffers_become_named_nodes():
    g = trace(Net(), ember.ones(3, 4))
    params = {n.target: n.kind for n in g.params}
    assert params == {
        "layers.0.linear.weight": "param",
        "layers.0.linear.bias": "param",
        "layers.0.shift": "buffer",
        "layers.1.linear.weight": "param",
        "layers.1.linear.bias": "param",
        "layers.1.shift": "buffer",
        "head.weight": "param",
    }
    assert not [n for n in g.nodes if n.kind == "const"]


def test_calls_are_named_after_the_submodule_that_made_them():
    g = trace(Net(), ember.ones(3, 4))
    names = [n.name for n in g.calls()]
    assert names == [
        "layers.0.linear.linear",
        "layers.0.relu",
        "layers.0.add",
        "layers.1.linear.linear",
        "layers.1.relu",
        "layers.1.add",
        "permute",
        "matmul",
    ]


def test_ops_on_parameters_alone_are_recorded_not_run():
    net = Net()
    g = trace(net, ember.ones(3, 4))
    permute = g.node("permute")
    assert permute.inputs[0].kind == "param"
    assert permute.inputs[0].target == "head.weight"
    assert permute.meta.strides == (1, 4)


def test_a_duck_typed_module_works_without_ember_nn():
    class Affine:
        def __init__(self) -> None:
            self.w = ember.ones(3)
            self.b = ember.zeros(3)

        def named_parameters(self):
            return [("w", self.w), ("b", self.b)]

        def __call__(self, x):
            return x * self.w + self.b

    g = trace(Affine(), ember.ones(2, 3))
    assert [(n.kind, n.target) for n in g.params] == [("param", "w"), ("param", "b")]
    assert g.name == "Affine"


def test_a_shared_parameter_is_one_node():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encode = nn.Linear(3, 3, bias=False)
            self.decode = nn.Linear(3, 3, bias=False)
            self.decode.weight = self.encode.weight

        def forward(self, x):
            return self.decode(self.encode(x))

    g = trace(Tied(), ember.ones(1, 3))
    assert [n.target for n in g.params] == ["encode.weight"]


def test_eager_ops_off_the_trace_keep_running_eagerly():
    table = ember.arange(3.0)

    def f(x):
        doubled = table * 2  # only eager operands: runs now, enters as a constant
        return x + doubled

    g = trace(f, ember.ones(3))
    assert ops(g) == ["input", "const", "add", "output"]
    np.testing.assert_array_equal(g.nodes[1].value, [0.0, 2.0, 4.0])


def test_other_threads_run_eagerly_while_a_trace_is_open():
    results = []

    def f(x):
        worker = threading.Thread(target=lambda: results.append(ember.ones(2) + 1))
        worker.start()
        worker.join()
        return x.exp()

    trace(f, ember.ones(2))
    assert isinstance(results[0], ember.Tensor) and results[0].tolist() == [2.0, 2.0]


# Source locations -------------------------------------------------------------------


def test_every_node_records_the_users_line():
    def f(x):
        y = x.exp()
        return y.sum()

    line = f.__code__.co_firstlineno
    g = trace(f, ember.ones(2))
    exp, total = g.calls()
    assert (exp.loc.file, exp.loc.line, exp.loc.code) == (
        __file__,
        line + 1,
        "y = x.exp()",
    )
    assert (total.loc.line, total.loc.code) == (line + 2, "return y.sum()")
    assert g.inputs[0].loc.line == line


def test_calls_inside_ember_nn_point_at_the_users_line_not_ember():
    g = trace(Net(), ember.ones(3, 4))
    for node in g.nodes:
        if node.loc is not None:
            assert node.loc.file == __file__, node
    linear = g.node("layers.0.linear.linear")
    assert linear.loc.code == "return self.linear(x).relu() + self.shift"


# Decisions on values ----------------------------------------------------------------


def trace_error(fn, *inputs) -> TraceError:
    with pytest.raises(TraceError) as info:
        trace(fn, *inputs)
    return info.value


def test_branching_on_a_value_quotes_the_line_and_suggests_where():
    def f(x):
        if x.sum() > 0:
            return x
        return -x

    error = trace_error(f, ember.ones(3))
    text = str(error)
    assert "while tracing f: `if x.sum() > 0:` asks for the truth value of %gt" in text
    assert "ember.where" in text
    assert error.location.file == __file__
    assert error.location.line == f.__code__.co_firstlineno + 1
    assert isinstance(error, RuntimeError)


@pytest.mark.parametrize(
    ("code", "words", "hint"),
    [
        (lambda x: float(x.sum()), "converts to a float", "keep the value a tensor"),
        (lambda x: int(x.sum()), "converts to an int", "keep the value a tensor"),
        (lambda x: x.sum().item(), "asks for the Python number", "a 0-d tensor"),
        (lambda x: bool(x), "asks for the truth value", "ember.where"),
        (lambda x: [v for v in x], "iterates over", "range(x.shape[0])"),
        (lambda x: np.exp(x), "applies numpy.exp to", "ember function"),
        (lambda x: np.asarray(x), "hands to numpy", "ember function"),
        (lambda x: np.concatenate([x, x]), "applies numpy.concatenate", "ember"),
        (lambda x: x.numpy(), "asks for the numpy array", "ember function"),
        (lambda x: x.tolist(), "asks for the values", "keep the value a tensor"),
        (lambda x: [1, 2, 3][x.long().sum()], "uses as an index", "Python ints"),
    ],
)
def test_every_way_of_reading_a_value_raises_a_trace_error(code, words, hint):
    error = trace_error(code, ember.ones(3))
    assert words in error.message and hint in error.hint
    assert error.location.file == __file__


def test_unsupported_tensor_members_say_what_to_do():
    error = trace_error(lambda x: x.backward(), ember.ones(3))
    assert "Tensor.backward" in error.message and "outside the traced" in error.hint
    with pytest.raises(AttributeError):
        trace(lambda x: x.no_such_member, ember.ones(3))


def test_writing_into_a_slice_is_a_trace_error():
    def f(x):
        x[0] = 1.0
        return x

    assert "writes into part of" in trace_error(f, ember.ones(3)).message


def test_a_proxy_kept_after_its_trace_cannot_record():
    kept = []
    trace(lambda x: kept.append(x) or x, ember.ones(2))
    assert isinstance(kept[0], Proxy)
    with pytest.raises(TraceError, match="finished trace"):
        kept[0] + 1


def test_meta_errors_name_the_trace_and_keep_their_class():
    with pytest.raises(StrideError) as info:
        trace(lambda x: x.T.view(-1), ember.ones(2, 3))
    assert info.value.message.startswith("while tracing lambda: view(6,)")
    assert info.value.location.file == __file__
    with pytest.raises(ShapeError, match="while tracing"):
        trace(lambda x, y: x + y, ember.ones(2), ember.ones(3))


# In-place updates -------------------------------------------------------------------


def test_in_place_updates_of_fresh_values_trace_as_new_values():
    def f(x):
        y = x * 2
        y += 1
        y.relu_()
        z = x.long() + 1
        z.mul_(3)
        return y, z

    x = ember.tensor([-1.0, 2.0])
    g = trace(f, x)
    assert [n.op for n in g.calls()] == ["mul", "add", "relu", "cast", "add", "mul"]
    assert [n.meta.dtype for n in g.outputs] == [ember.float32, ember.int64]


def test_an_in_place_update_keeps_the_dtype_as_eager_does():
    def f(x):
        y = x.long() + 0
        y += 1.5  # eager refuses to store a float result in an int tensor
        return y

    with pytest.raises(DTypeError, match="cannot be stored"):
        f(ember.ones(2))
    with pytest.raises(DTypeError, match="cannot be stored"):
        trace(f, ember.ones(2))


@pytest.mark.parametrize(
    ("fn", "why"),
    [
        (lambda x: x.add_(1), "which is a graph input"),
        (lambda x: (x * 1)[0].add_(1), "which is a view (select)"),
        (lambda x: [y := x * 1, y[0], y.add_(1)][2], "which has a view"),
    ],
)
def test_in_place_updates_that_alias_memory_are_trace_errors(fn, why):
    error = trace_error(fn, ember.ones(3))
    assert why in error.message and "out-of-place" in error.hint


def test_writing_into_an_expanded_value_is_the_layout_error_eager_raises():
    def f(x):
        y = (x * 1).expand(3, 2)
        y.add_(1)
        return y

    with pytest.raises(LayoutError, match="several of its elements share"):
        f(ember.ones(2))
    with pytest.raises(LayoutError, match="several of its elements share"):
        trace(f, ember.ones(2))
