"""The pass manager: run named passes in order, verify and dump after each one.

Verification (``EMBER_VERIFY=1``, setting ``verify_passes``) runs the IR verifier
after every pass, so a broken invariant is caught where it appears. The graph handed
in is not verified: the first pass, ``propagate_meta``, exists to repair the metas of
a graph whose input metas changed, which the verifier would reject.

With ``EMBER_DUMP_DIR`` (setting ``dump_dir``) the manager writes the graph's IR text
before the first pass and after each pass to numbered files: ``00-input.ir``,
``01-propagate_meta.ir``, ...; a ``label`` prefixes the names
(``forward-03-decompose.ir``) so several pipelines can share one folder.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

from ember import settings
from ember.compiler.passes.base import GraphPass
from ember.errors import EmberError, VerifyError
from ember.fileio import write_text_durably
from ember.ir.graph import Graph

logger = logging.getLogger(__name__)


class PassManager:
    """Runs ``passes`` in order on a graph; see the module docstring.

    ``verify`` and ``dump_dir`` default to the settings of the same names, read when
    :meth:`run` starts.
    """

    def __init__(
        self,
        passes: Sequence[GraphPass],
        *,
        verify: bool | None = None,
        dump_dir: str | os.PathLike[str] | None = None,
        label: str = "",
    ) -> None:
        self.passes = tuple(passes)
        self.verify = verify
        self.dump_dir = dump_dir
        self.label = label

    def run(self, graph: Graph) -> Graph:
        """Apply every pass; return the final graph (``graph`` itself when in place)."""
        verify = settings.get("verify_passes") if self.verify is None else self.verify
        dump_dir = settings.get("dump_dir") if self.dump_dir is None else self.dump_dir
        if dump_dir:
            self._dump(graph, dump_dir, 0, "input")
        for index, graph_pass in enumerate(self.passes, start=1):
            start = time.perf_counter()
            before = len(graph)
            result = graph_pass.run(graph)
            graph = graph if result is None else result
            logger.debug(
                "%s: %d -> %d nodes in %.2f ms",
                graph_pass.name,
                before,
                len(graph),
                (time.perf_counter() - start) * 1e3,
            )
            if verify:
                _verify(graph, graph_pass.name)
            if dump_dir:
                self._dump(graph, dump_dir, index, graph_pass.name)
        return graph

    def _dump(
        self, graph: Graph, folder: str | os.PathLike[str], index: int, stage: str
    ) -> None:
        from ember.ir.printer import format_graph

        prefix = f"{self.label}-" if self.label else ""
        path = os.path.join(os.fspath(folder), f"{prefix}{index:02d}-{stage}.ir")
        write_text_durably(path, format_graph(graph))
        logger.debug("wrote %s", path)

    def __repr__(self) -> str:
        return f"PassManager({', '.join(p.name for p in self.passes)})"


def _verify(graph: Graph, stage: str) -> None:
    from ember.ir.verify import verify

    try:
        verify(graph)
    except EmberError as error:
        raise VerifyError(
            f"the graph after pass {stage} does not verify: {error.message}",
            op=error.op,
            expected=error.expected,
            actual=error.actual,
            hint=f"pass {stage} broke this IR invariant, or it was broken before "
            "and the pass did not repair it; EMBER_DUMP_DIR shows the graph before "
            "and after each pass",
            location=error.location,
        ) from error
