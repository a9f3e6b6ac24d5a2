"""The native backend of :func:`ember.compile`: a traced graph in, a Program out.

``compile_llvm(graph)`` runs the pipeline below the tracer, each step a named stage
of ``ember dump``: ``optimized`` (the default passes, on a copy of the graph),
``fused`` (:mod:`ember.compiler.fusion`), ``lowered`` (:mod:`ember.compiler.lower`),
then machine code for every kernel (:mod:`ember.compiler.codegen`, through the
kernel cache) and a :class:`~ember.compiler.program.Program` that owns the kernels,
the buffer plan and the schedule. ``ember.compile(model, backend="llvm")`` reaches it
through the backend table of :mod:`ember.compiler.compile`.

With ``EMBER_DUMP_DIR`` set, the fused and lowered stages are written there as
``fused.txt`` and ``lowered.txt`` (the pass manager writes the graph stages).

    >>> import ember
    >>> from ember.compiler.trace import trace
    >>> g = trace(lambda x: (x * 2.0).relu().sum(1), ember.ones(2, 3))
    >>> program = compile_llvm(g)
    >>> x = ember.tensor([[1.0, -1.0, 2.0], [0.5, 0.5, 0.5]])
    >>> [t.tolist() for t in program([x])]
    [[6.0, 3.0]]
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

from ember import settings
from ember.compiler.fusion import FusedGraph, format_fused, fuse
from ember.compiler.lower import LoweredGroup, format_lowered, lower
from ember.compiler.passes import optimize
from ember.compiler.passes.manager import write_text_durably
from ember.compiler.program import Program, build_program
from ember.ir.graph import Graph

logger = logging.getLogger(__name__)


def compile_llvm(graph: Graph, donate: Mapping[int, str] | None = None) -> Program:
    """Compile ``graph`` (left unchanged) to a native :class:`Program`; ``donate``
    names outputs it may write over a parameter or buffer in place
    (:func:`~ember.compiler.program.build_program`)."""
    from ember.compiler.codegen import compile_kernel

    start = time.perf_counter()
    optimized = optimize(graph.copy())
    fused = fuse(optimized)
    lowered = lower(fused)
    _dump(fused, lowered)
    program = build_program(fused, lowered, compile_kernel, donate)
    logger.debug(
        "compiled %d kernels for graph %s in %.1f ms",
        len(lowered),
        graph.name,
        (time.perf_counter() - start) * 1e3,
    )
    return program


def _dump(fused: FusedGraph, lowered: list[LoweredGroup]) -> None:
    folder = settings.get("dump_dir")
    if not folder:
        return
    write_text_durably(os.path.join(folder, "fused.txt"), format_fused(fused) + "\n")
    write_text_durably(
        os.path.join(folder, "lowered.txt"), format_lowered(lowered) + "\n"
    )
