"""The kernel cache: memory hits, disk hits across a cleared memory cache, and
recovery from damaged entries."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ember import settings
from ember.compiler import cache
from ember.compiler.codegen import compile_kernel, emit, target
from ember.compiler.kernel import Buffer, LoopKernel, Store, load, op
from ember.fileio import write_durably
from ember.ir.dtypes import float64


def square_kernel(n: int = 8) -> LoopKernel:
    x = Buffer("x", float64, (n,), (1,))
    y = Buffer.dense("y", float64, (n,))
    return LoopKernel(
        "square", (x, y), (n,), (), (Store("y", op("mul", load(x), load(x))),)
    )


def check_runs(compiled) -> None:
    x = np.arange(8.0)
    y = np.empty(8)
    compiled(x, y)
    np.testing.assert_array_equal(y, x * x)


def entry_for(kernel: LoopKernel) -> str:
    emitted = emit.emit_kernel(kernel)
    key = cache.cache_key(
        emitted.llvm_ir, target.toolchain_description(), emit.CODEGEN_VERSION
    )
    return cache.entry_path(key)


@pytest.fixture
def fresh_cache(tmp_path):
    with settings.override(cache_dir=str(tmp_path)):
        cache.clear_memory()
        yield tmp_path
        cache.clear_memory()


def test_miss_then_memory_hit_then_disk_hit(fresh_cache) -> None:
    first = compile_kernel(square_kernel())
    assert first.origin == "compiled"
    assert os.path.exists(entry_for(square_kernel()))
    assert compile_kernel(square_kernel()) is first
    cache.clear_memory()
    second = compile_kernel(square_kernel())
    assert second.origin == "disk" and second is not first
    check_runs(second)
    assert "define" in second.llvm_ir() and "ret" in second.assembly()


def test_key_depends_on_content_and_toolchain_not_time(fresh_cache) -> None:
    ir_text = emit.emit_kernel(square_kernel()).llvm_ir
    key = cache.cache_key(ir_text, "cpu=a", 1)
    assert key == cache.cache_key(ir_text, "cpu=a", 1)
    assert key != cache.cache_key(ir_text, "cpu=b", 1)
    assert key != cache.cache_key(ir_text, "cpu=a", 2)
    assert key != cache.cache_key(
        emit.emit_kernel(square_kernel(9)).llvm_ir, "cpu=a", 1
    )


@pytest.mark.parametrize(
    "damage",
    [
        lambda blob: blob[: len(blob) // 2],  # truncated
        lambda blob: blob[:-1] + bytes([blob[-1] ^ 1]),  # flipped payload bit
        lambda blob: b"NOTEMBER" + blob[8:],  # wrong magic
        lambda blob: b"",  # empty file
    ],
    ids=["truncated", "bitflip", "magic", "empty"],
)
def test_damaged_entry_is_discarded_and_rebuilt(fresh_cache, damage) -> None:
    compile_kernel(square_kernel())
    path = entry_for(square_kernel())
    with open(path, "rb") as handle:
        good = handle.read()
    with open(path, "wb") as handle:
        handle.write(damage(good))
    cache.clear_memory()
    rebuilt = compile_kernel(square_kernel())
    assert rebuilt.origin == "compiled"
    check_runs(rebuilt)
    with open(path, "rb") as handle:
        assert cache.decode_entry(handle.read()) is not None


def test_entries_carry_format_version_and_hash() -> None:
    blob = cache.encode_entry(b"payload")
    assert blob.startswith(cache.MAGIC)
    assert cache.decode_entry(blob) == b"payload"
    newer = bytearray(blob)
    newer[8] = cache.FORMAT_VERSION + 1
    assert cache.decode_entry(bytes(newer)) is None


def test_unwritable_cache_folder_still_compiles(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with settings.override(cache_dir=str(blocker)):
        cache.clear_memory()
        check_runs(compile_kernel(square_kernel()))
    cache.clear_memory()


def test_atomic_write_leaves_no_temporary_files(tmp_path) -> None:
    path = tmp_path / "a" / "entry.o"
    write_durably(str(path), b"abc")
    assert path.read_bytes() == b"abc"
    assert os.listdir(tmp_path / "a") == ["entry.o"]
