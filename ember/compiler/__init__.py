"""The compiler: tracing, graph passes, autodiff, fusion, lowering and codegen.

Each stage is a module or package named for what it does; ``ember dump --stage NAME``
and ``EMBER_DUMP_DIR`` show the program between them.
"""

from ember.compiler.compile import CompiledFunction, CompiledModule, compile
from ember.compiler.interpret import interpret
from ember.compiler.trace import Proxy, trace

__all__ = [
    "CompiledFunction",
    "CompiledModule",
    "Proxy",
    "compile",
    "interpret",
    "trace",
]
