"""The host CPU target: optimization at O3, object code, and the JIT that runs it.

One target machine describes the host (``llvm.get_host_cpu_name()`` and its feature
string). Modules are optimized with LLVM's new pass manager at speed level 3 with loop
and SLP vectorization on, compiled to object code, and that object code is what both
a fresh compile and the disk cache hand to an MCJIT engine, so the
two paths run the same bytes. LLVM is not re-entrant here: one lock serializes every
call into it.
"""

from __future__ import annotations

import functools
import logging
import threading

import llvmlite
import llvmlite.binding as llvm

from ember.errors import CodegenError

logger = logging.getLogger("ember.compiler.codegen")

#: Serializes LLVM work (parsing, optimizing, emitting, adding to the engine).
LLVM_LOCK = threading.RLock()


@functools.cache
def target_machine() -> llvm.TargetMachine:
    """The target machine of the host CPU, at optimization level 3."""
    return new_target_machine()


def new_target_machine() -> llvm.TargetMachine:
    """A fresh host target machine (an execution engine takes ownership of its own)."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(
        cpu=host_cpu(),
        features=host_features(),
        opt=3,
        reloc="default",
        codemodel="jitdefault",
    )


@functools.cache
def data_layout() -> str:
    """The data layout string of the host target machine."""
    return str(target_machine().target_data)


@functools.cache
def host_cpu() -> str:
    """LLVM's name of the host CPU, e.g. ``znver4``."""
    return llvm.get_host_cpu_name()


@functools.cache
def host_features() -> str:
    """The host CPU's feature string, e.g. ``+avx2,+fma,...``."""
    return llvm.get_host_cpu_features().flatten()


def toolchain_description() -> str:
    """Everything besides the IR that decides the machine code (for cache keys)."""
    return (
        f"triple={llvm.get_process_triple()}\ncpu={host_cpu()}\n"
        f"features={host_features()}\nllvmlite={llvmlite.__version__}\n"
        f"llvm={'.'.join(map(str, llvm.llvm_version_info))}"
    )


def optimize(llvm_ir: str, name: str) -> llvm.ModuleRef:
    """Parse, verify and optimize a module at O3 with loop and SLP vectorization."""
    with LLVM_LOCK:
        try:
            module = llvm.parse_assembly(llvm_ir)
            module.verify()
        except RuntimeError as exc:
            raise CodegenError(
                f"kernel {name}: LLVM rejected the generated module: {exc}",
                hint="this is a bug in ember's code generator; please report it "
                "with the output of `ember dump --stage lowered`",
            ) from None
        module.triple = llvm.get_process_triple()
        module.data_layout = data_layout()
        tuning = llvm.PipelineTuningOptions(speed_level=3)
        tuning.loop_vectorization = True
        tuning.slp_vectorization = True
        tuning.loop_interleaving = True
        tuning.loop_unrolling = True
        builder = llvm.create_pass_builder(target_machine(), tuning)
        builder.getModulePassManager().run(module, builder)
        return module


def emit_object(module: llvm.ModuleRef) -> bytes:
    """Machine code of an optimized module, as a relocatable object file."""
    with LLVM_LOCK:
        return bytes(target_machine().emit_object(module))


def emit_assembly(module: llvm.ModuleRef) -> str:
    """The assembly text of an optimized module (``ember dump --stage asm``)."""
    with LLVM_LOCK:
        return target_machine().emit_assembly(module)


def load_object(code: bytes, symbols: list[str]) -> tuple[object, dict[str, int]]:
    """Link object code into a new JIT engine; return it and each symbol's address.

    Each kernel gets its own engine, so loading the same object twice (after the
    memory cache was cleared) never defines a symbol twice. The engine owns the
    machine code: keep it alive as long as the addresses are used.
    """
    with LLVM_LOCK:
        engine = llvm.create_mcjit_compiler(
            llvm.parse_assembly(""), new_target_machine()
        )
        engine.add_object_file(llvm.ObjectFileRef.from_data(code))
        engine.finalize_object()
        addresses = {s: engine.get_function_address(s) for s in symbols}
    missing = [s for s, a in addresses.items() if not a]
    if missing:
        raise CodegenError(f"the JIT found no code for {missing} in the object file")
    return engine, addresses
