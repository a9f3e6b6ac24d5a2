"""A compiled program returns results the caller owns, and writes a result's memory
again only once nothing refers to it any more (ember/compiler/program.py); a small
result is written to the program's own array and copied out."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import ember
from ember.compiler.program import STAGED_BYTES

_softmax = ember.compile(lambda x: ember.softmax(x, -1), backend="llvm")


def _reference(x: ember.Tensor) -> np.ndarray:
    e = np.exp(x.numpy() - x.numpy().max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("rows", [16, 64], ids=["staged", "recycled"])
def test_results_the_caller_holds_are_never_overwritten(rows):
    inputs = [ember.randn(rows, 32) * (i + 1) for i in range(4)]
    held = [_softmax(x) for x in inputs]
    views = [_softmax(x).numpy() for x in inputs]
    for x, result, view in zip(inputs, held, views):
        np.testing.assert_allclose(result.numpy(), _reference(x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(view, _reference(x), rtol=1e-5, atol=1e-6)
    assert len({r.data_ptr() for r in held}) == len(held)


def test_a_result_nobody_holds_is_written_again():
    x = ember.randn(64, 32)  # 8 KiB: larger than a staged result
    assert x.numel() * 4 > STAGED_BYTES
    _softmax(x)  # the first call traces and compiles
    first = _softmax(x)
    address = first.data_ptr()
    del first
    gc.collect()
    second = _softmax(x * 2)
    assert second.data_ptr() == address
    np.testing.assert_allclose(second.numpy(), _reference(x * 2), rtol=1e-5, atol=1e-6)


def test_a_view_of_a_result_keeps_it_alive():
    x = ember.randn(16, 8)
    row = _softmax(x)[3]
    expected = _reference(x)[3]
    _softmax(x * 5)
    np.testing.assert_allclose(row.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_a_small_result_is_a_copy_the_next_call_leaves_alone():
    x = ember.randn(4, 8)
    assert x.numel() * 4 <= STAGED_BYTES
    _softmax(x)
    first = _softmax(x)
    kept = first.numpy().copy()

    second = _softmax(x * 3)

    assert first.data_ptr() != second.data_ptr()
    np.testing.assert_array_equal(first.numpy(), kept)
    np.testing.assert_allclose(second.numpy(), _reference(x * 3), rtol=1e-5, atol=1e-6)
