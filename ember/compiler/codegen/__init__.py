"""Native code generation: LoopKernels to LLVM IR, machine code and callables.

``emit`` builds the LLVM module of a kernel, ``mathlib`` its vectorizable math
functions, ``target`` optimizes and links for the host CPU, ``launch`` validates
arguments and calls the kernels (threaded when large). Importing this package
imports llvmlite; ``import ember`` never does.
"""

from __future__ import annotations

from ember.compiler.codegen.emit import CODEGEN_VERSION, EmittedKernel, emit_kernel
from ember.compiler.codegen.launch import CompiledKernel, compile_kernel

__all__ = [
    "CODEGEN_VERSION",
    "CompiledKernel",
    "EmittedKernel",
    "compile_kernel",
    "emit_kernel",
]
