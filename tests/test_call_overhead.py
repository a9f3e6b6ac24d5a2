"""The cheap per-call path of compiled programs stays exact and safe.

``ember.compile`` answers most calls from a fast guard (exact argument layouts and
a snapshot of the module's parameter tables); a program checks its arguments once
at its boundary and lets kernels that see only its own buffers skip their per-call
checks. These tests pin that every change the full guard would see still
recompiles or rebinds, and that memory the boundary cannot vouch for never reaches
native code.
"""

from __future__ import annotations

import logging
import weakref

import numpy as np
import pytest

import ember
from ember import nn, settings
from ember.compiler.backends import compile_llvm
from ember.compiler.codegen import compile_kernel
from ember.compiler.codegen.launch import Region
from ember.compiler.kernel import Buffer, LoopKernel, Store, load, op
from ember.errors import SignatureError
from ember.ir.dtypes import float32, float64
from ember.ir.graph import Graph
from ember.ir.meta import TensorMeta

RECOMPILE_LOGGER = "ember.compiler.compile"


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    with settings.override(cache_dir=str(tmp_path_factory.mktemp("kernels"))):
        yield


def recompiles(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == RECOMPILE_LOGGER and r.getMessage().startswith("recompiling")
    ]


def linear(x: ember.Tensor, layer: nn.Linear) -> np.ndarray:
    return x.numpy() @ layer.weight.numpy().T + layer.bias.numpy()


# The fast guard -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["interpret", "llvm"])
def test_a_reassigned_parameter_of_the_same_layout_is_read_on_the_next_call(backend):
    ember.manual_seed(0)
    layer = nn.Linear(3, 2)
    compiled = ember.compile(layer, backend=backend)
    x = ember.randn(4, 3)
    with ember.no_grad():
        compiled(x)
        layer.weight = nn.Parameter(ember.ones(2, 3))
        out = compiled(x)

    np.testing.assert_allclose(out.numpy(), linear(x, layer), rtol=1e-6)


def test_a_parameter_added_to_a_submodule_is_seen(caplog):
    caplog.set_level(logging.INFO, logger=RECOMPILE_LOGGER)
    ember.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    compiled = ember.compile(model, backend="llvm")
    x = ember.randn(4, 3)
    with ember.no_grad():
        compiled(x)
        model[0].register_buffer("scale", ember.ones(2))
        compiled(x)

    assert recompiles(caplog) == ["recompiling Sequential: parameter 0.scale was added"]


def test_a_table_edited_in_place_is_seen():
    ember.manual_seed(0)
    layer = nn.Linear(3, 2)
    compiled = ember.compile(layer, backend="llvm")
    x = ember.randn(4, 3)
    with ember.no_grad():
        compiled(x)
        # What Module.to does: replace the entry without going through setattr.
        layer._parameters["bias"] = nn.Parameter(ember.full((2,), 5.0))
        out = compiled(x)

    np.testing.assert_allclose(out.numpy(), linear(x, layer), rtol=1e-6)


def test_a_forged_parameter_layout_recompiles(caplog):
    caplog.set_level(logging.INFO, logger=RECOMPILE_LOGGER)
    layer = nn.Linear(2, 2)
    compiled = ember.compile(layer, backend="llvm")
    with ember.no_grad():
        compiled(ember.ones(1, 2))
        transposed = ember.ones(2, 2).T
        layer.weight._meta = transposed.meta
        layer.weight._storage = transposed._storage
        compiled(ember.ones(1, 2))

    assert recompiles(caplog) == [
        "recompiling Linear: parameter weight: strides (2, 1) -> (1, 2)"
    ]


def test_requires_grad_switched_on_a_parameter_switches_to_training():
    layer = nn.Linear(2, 2)
    compiled = ember.compile(layer, backend="llvm")
    x = ember.ones(1, 2)
    layer.requires_grad_(False)
    assert compiled(x).grad_fn is None

    layer.weight.requires_grad_(True)
    compiled(x).sum().backward()

    assert layer.weight.grad is not None and layer.bias.grad is None


def test_strides_of_an_argument_are_guarded_exactly_on_the_fast_path(caplog):
    caplog.set_level(logging.INFO, logger=RECOMPILE_LOGGER)
    compiled = ember.compile(lambda x: x * 2.0, backend="llvm")
    dense = ember.arange(6.0).view(2, 3)
    transposed = ember.arange(6.0).view(3, 2).T
    for _ in range(2):
        assert compiled(dense).tolist() == (dense * 2.0).tolist()
        assert compiled(transposed).tolist() == (transposed * 2.0).tolist()

    assert recompiles(caplog) == ["recompiling lambda: x: strides (3, 1) -> (1, 2)"]


def test_requires_grad_of_an_argument_is_part_of_the_fast_key():
    compiled = ember.compile(lambda x: (x * x).sum(), backend="llvm")
    x = ember.full((3,), 2.0)
    assert compiled(x).grad_fn is None

    x.requires_grad_(True)
    compiled(x).backward()

    assert x.grad.tolist() == [4.0, 4.0, 4.0]


# The program boundary ---------------------------------------------------------------


def _chain(shape: tuple[int, ...] = (8, 16)) -> Graph:
    """Two kernels separated by a view: the intermediate is a planned buffer."""
    g = Graph()
    x = g.input("x", TensorMeta.contiguous(shape, float32))
    h = g.call("permute", [g.call("neg", [x])], {"dims": (1, 0)})
    g.output([g.call("exp", [h])])
    return g


def test_kernels_that_see_only_checked_memory_skip_their_own_checks():
    program = compile_llvm(_chain())
    x = np.linspace(-1, 1, 128, dtype=np.float32).reshape(8, 16)

    (out,) = program.run_arrays(x)

    assert program.checked_per_call == []
    np.testing.assert_allclose(out, np.exp(-x).T, rtol=1e-6)


def test_an_argument_inside_the_programs_own_buffers_is_refused():
    program = compile_llvm(_chain())
    inside = program.plan.buffers[0][:512].view(np.float32).reshape(8, 16)

    with pytest.raises(SignatureError, match="memory the program uses"):
        program.run_arrays(inside)


def test_a_read_only_argument_is_accepted():
    program = compile_llvm(_chain((2, 3)))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    x.flags.writeable = False

    (out,) = program.run_arrays(x)

    np.testing.assert_allclose(out, np.exp(-x).T, rtol=1e-6)


def test_a_storage_that_reaches_outside_its_owner_is_refused():
    program = compile_llvm(_chain((2, 3)))
    owner = np.zeros(4, np.float32)
    lying = np.lib.stride_tricks.as_strided(owner, shape=(6,), strides=(4,))
    forged = ember.from_numpy(np.zeros(6, np.float32)).view(2, 3)
    forged._storage.data = lying

    with pytest.raises(SignatureError, match="outside the memory it views"):
        program([forged])


def test_a_storage_swapped_under_a_tensor_seen_before_is_checked_again():
    program = compile_llvm(_chain((2, 3)))
    x = ember.from_numpy(np.arange(6, dtype=np.float32)).view(2, 3)
    (first,) = program([x])
    (again,) = program([x])  # the same storage and layout: remembered

    x._storage.data = np.zeros(4, np.float32)[:4]

    np.testing.assert_array_equal(first.numpy(), again.numpy())
    with pytest.raises(SignatureError, match="addresses elements"):
        program([x])


def test_a_tensor_seen_before_is_read_at_its_new_values():
    program = compile_llvm(_chain((2, 3)))
    x = ember.from_numpy(np.zeros(6, np.float32)).view(2, 3)
    program([x])

    x._storage.data[:] = 1.0
    (out,) = program([x])

    np.testing.assert_allclose(out.numpy(), np.full((3, 2), np.exp(-1.0)), rtol=1e-6)


def test_results_fed_back_as_arguments_are_not_kept_alive():
    from ember.compiler.trace import trace

    shape = (64, 32)  # larger than STAGED_BYTES: results are recycled, not copied
    program = compile_llvm(trace(lambda x: x * 2.0, ember.ones(*shape)))
    (out,) = program([ember.ones(*shape)])
    (twice,) = program([out])

    # The table of arguments seen before holds their arrays by weak reference.
    seen = program._seen if program._resident is None else program._resident_seen
    (entry,) = seen
    assert entry is not None and isinstance(entry[1], weakref.ref)
    del out
    address = twice._storage.data.ctypes.data
    del twice
    (again,) = program([ember.ones(*shape)])
    assert again._storage.data.ctypes.data == address  # recycled: nobody held it


def test_a_storage_of_another_dtype_is_refused():
    program = compile_llvm(_chain((2, 3)))
    forged = ember.zeros(2, 3)
    forged._storage.data = np.zeros(6, np.float64)

    with pytest.raises(SignatureError, match="not a flat float32 one"):
        program([forged])


def test_a_kernel_that_writes_memory_it_cannot_own_keeps_its_checks():
    g = Graph()
    x = g.input("x", TensorMeta.contiguous((4,), float32))
    g.output([g.call("neg", [x])])
    program = compile_llvm(g)
    neg = program.steps[0].compiled
    storage = np.arange(4, dtype=np.float32)

    with pytest.raises(SignatureError, match="needs memory of its own"):
        neg.prepare([Region(float32, 4), Region(float32, 4)])
    launch = neg.prepare([storage, Region(float32, 4, private=True)])
    out = np.empty(4, np.float32)
    launch([out.ctypes.data])

    assert out.tolist() == [-0.0, -1.0, -2.0, -3.0]


# Prepared launches --------------------------------------------------------------------


@pytest.fixture(scope="module")
def shifted_copy():
    """y[i] = x[i] for x read at offset 2 of its storage."""
    x = Buffer("x", float32, (4,), (1,), offset=2)
    y = Buffer.dense("y", float32, (4,))
    return compile_kernel(
        LoopKernel("shifted_copy", (x, y), (4,), (), (Store("y", op("neg", load(x))),))
    )


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        ([Region(float32, 5), Region(float32, 4, True)], "region too small"),
        ([Region(float64, 6), Region(float32, 4, True)], "wrong dtype"),
        ([Region(float32, 6), Region(float32, 3, True)], "region too small"),
        ([np.zeros(5, np.float32), Region(float32, 4, True)], "storage too small"),
    ],
    ids=["input-short", "input-dtype", "output-short", "fixed-short"],
)
def test_prepare_checks_every_buffer_once(shifted_copy, memory, message):
    with pytest.raises(SignatureError, match=message):
        shifted_copy.prepare(memory)


def test_fixed_outputs_may_not_overlap_fixed_inputs(shifted_copy):
    storage = np.zeros(8, np.float32)

    with pytest.raises(SignatureError, match="overlaps"):
        shifted_copy.prepare([storage, storage[2:]])


def test_a_prepared_launch_applies_the_buffer_offset(shifted_copy):
    x = np.arange(6, dtype=np.float32)
    out = np.empty(4, np.float32)
    launch = shifted_copy.prepare([Region(float32, 6), out])

    launch([x.ctypes.data])

    assert out.tolist() == [-2.0, -3.0, -4.0, -5.0]


# One native call for a run of kernels -------------------------------------------------


def test_consecutive_small_kernels_run_in_one_native_call():
    program = compile_llvm(_chain())
    x = np.linspace(-2, 2, 128, dtype=np.float32).reshape(8, 16)

    (out,) = program.run_arrays(x)

    assert [len(run) for run in program.sequences] == [2]
    np.testing.assert_allclose(out, np.exp(-x).T, rtol=1e-6)


def test_kernels_large_enough_for_threads_keep_their_own_launch():
    program = compile_llvm(_chain((1024, 1024)))
    x = np.full((1024, 1024), 0.5, np.float32)

    (out,) = program.run_arrays(x)

    assert program.sequences == [] and program.checked_per_call == []
    np.testing.assert_allclose(out, np.exp(-x).T, rtol=1e-6)


def test_a_call_repeating_the_last_arguments_skips_binding(monkeypatch):
    program = compile_llvm(_chain((2, 3)))
    x = ember.from_numpy(np.arange(6, dtype=np.float32)).view(2, 3)
    (first,) = program.run_fresh_arrays([x])
    want = first.copy()

    def unexpected(values):
        raise AssertionError("the arguments were bound again")

    monkeypatch.setattr(program, "_execute", unexpected)
    (again,) = program.run_fresh_arrays([x])
    np.testing.assert_array_equal(again, want)


def test_a_storage_swapped_under_a_repeated_argument_is_checked_again():
    program = compile_llvm(_chain((2, 3)))
    x = ember.from_numpy(np.arange(6, dtype=np.float32)).view(2, 3)
    program.run_fresh_arrays([x])
    program.run_fresh_arrays([x])

    x._storage.data = np.zeros(4, np.float32)[:4]

    with pytest.raises(SignatureError, match="addresses elements"):
        program.run_fresh_arrays([x])
