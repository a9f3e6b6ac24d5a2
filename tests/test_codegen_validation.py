"""Every native call is guarded: a mismatched or out-of-bounds argument raises
SignatureError and never reaches native code."""

from __future__ import annotations

import numpy as np
import pytest

from ember import settings
from ember.compiler.codegen import compile_kernel
from ember.compiler.kernel import Buffer, LoopKernel, Store, load, op
from ember.errors import SignatureError
from ember.ir.dtypes import float32


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    with settings.override(cache_dir=str(tmp_path_factory.mktemp("kernel-cache"))):
        yield


@pytest.fixture(scope="module")
def transpose_add():
    """out[i, j] = x[j, i] + 1 for x of shape (3, 4) read through strides (1, 4)."""
    x = Buffer("x", float32, (4, 3), (1, 4), offset=2)
    out = Buffer.dense("out", float32, (4, 3))
    return compile_kernel(
        LoopKernel(
            "transpose_add",
            (x, out),
            (4, 3),
            (),
            (Store("out", op("add", load(x), 1.0)),),
        )
    )


def poisoned_output() -> np.ndarray:
    return np.full((4, 3), -7.0, np.float32)


def assert_untouched(out: np.ndarray) -> None:
    assert (out == -7.0).all(), "native code ran despite a bad argument"


def test_valid_view_and_storage_calls(transpose_add) -> None:
    base = np.arange(14, dtype=np.float32)
    out = poisoned_output()
    transpose_add(base[2:].reshape(3, 4).T, out)
    np.testing.assert_array_equal(out, base[2:].reshape(3, 4).T + 1)
    flat = np.empty(12, np.float32)
    transpose_add.call_storage(base, flat)
    np.testing.assert_array_equal(flat.reshape(4, 3), out)


@pytest.mark.parametrize(
    "make_x, message",
    [
        (lambda: np.zeros((3, 4), np.float32).T.astype(np.float64), "wrong dtype"),
        (lambda: np.zeros((4, 3), np.float32), "wrong strides"),
        (lambda: np.zeros((5, 3), np.float32), "wrong shape"),
        (lambda: [[0.0] * 3] * 4, "not a numpy array"),
        (
            lambda: np.lib.stride_tricks.as_strided(
                np.zeros(4, np.float32), (4, 3), (4, 16)
            ),
            "outside the memory",
        ),
    ],
)
def test_bad_views_raise_before_native_code(transpose_add, make_x, message) -> None:
    out = poisoned_output()
    with pytest.raises(SignatureError, match=message):
        transpose_add(make_x(), out)
    assert_untouched(out)


@pytest.mark.parametrize(
    "storage, message",
    [
        (np.zeros(13, np.float32), "storage too small"),
        (np.zeros((2, 7), np.float32), "flat contiguous"),
        (np.zeros(28, np.float32)[::2], "flat contiguous"),
        (np.zeros(14, np.int32), "wrong dtype"),
    ],
)
def test_bad_storages_raise_before_native_code(transpose_add, storage, message) -> None:
    out = np.full(12, -7.0, np.float32)
    with pytest.raises(SignatureError, match=message):
        transpose_add.call_storage(storage, out)
    assert (out == -7.0).all()


def test_outputs_must_be_writeable_and_not_overlap_inputs(transpose_add) -> None:
    base = np.arange(14, dtype=np.float32)
    x = base[2:].reshape(3, 4).T
    out = poisoned_output()
    out.flags.writeable = False
    with pytest.raises(SignatureError, match="read-only"):
        transpose_add(x, out)
    storage = np.zeros(20, np.float32)
    with pytest.raises(SignatureError, match="overlaps"):
        transpose_add.call_storage(storage, storage[2:14])


def test_wrong_argument_count_names_the_buffers(transpose_add) -> None:
    with pytest.raises(SignatureError, match=r"takes 2 arrays \['x', 'out'\], got 1"):
        transpose_add(np.zeros((4, 3), np.float32))


def test_signature_error_is_a_value_error_with_fields(transpose_add) -> None:
    with pytest.raises(ValueError) as info:
        transpose_add(np.zeros((5, 3), np.float32), poisoned_output())
    assert info.value.expected == (4, 3) and info.value.actual == (5, 3)
