"""The ``llvm`` and ``asm`` stages: the lowered kernels compiled for this CPU.

:func:`compile_lowered` compiles every generated kernel of the ``lowered`` stage (a
BLAS matmul has no generated code; its epilogue kernel does). The ``llvm`` stage
prints each kernel's optimized LLVM module, the ``asm`` stage its assembly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ember.compiler.lower import LoweredGroup


@dataclass
class CompiledGroup:
    """A lowered group with its compiled kernels (empty for a bare BLAS matmul)."""

    name: str
    what: str
    kernels: list[Any]


def compile_lowered(groups: Sequence[LoweredGroup]) -> list[CompiledGroup]:
    """Compile the generated kernels of every lowered group (through the cache)."""
    from ember.compiler.codegen import compile_kernel

    compiled = []
    for group in groups:
        loops = []
        if group.matmul is not None and group.matmul.epilogue is not None:
            loops.append(group.matmul.epilogue.kernel)
        if group.kernel is not None:
            loops.append(group.kernel.kernel)
        what = "blas matmul" if group.matmul is not None else group.group.kind.value
        kernels = [compile_kernel(kernel) for kernel in loops]
        compiled.append(CompiledGroup(group.group.name, what, kernels))
    return compiled


def _render(groups: Sequence[CompiledGroup], text: Callable[[Any], str]) -> str:
    parts = []
    for group in groups:
        header = f"; {group.name} ({group.what})"
        if not group.kernels:
            parts.append(header + ": no generated code, the product runs in BLAS")
        for kernel in group.kernels:
            parts.append(f"{header}: kernel {kernel.kernel.name}\n{text(kernel)}")
    return "\n\n".join(parts)


def format_llvm(groups: Sequence[CompiledGroup]) -> str:
    """The text of the ``llvm`` stage: each kernel's optimized LLVM IR."""
    return _render(groups, lambda kernel: kernel.llvm_ir())


def format_asm(groups: Sequence[CompiledGroup]) -> str:
    """The text of the ``asm`` stage: each kernel's assembly for this CPU."""
    return _render(groups, lambda kernel: kernel.assembly())


def same_groups(groups: list[CompiledGroup]) -> list[CompiledGroup]:
    """The ``asm`` stage starts from the ``llvm`` stage's compiled kernels."""
    return groups
