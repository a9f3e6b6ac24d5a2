"""The named stages of the pipeline, as ``ember dump --stage NAME`` shows them.

A :class:`Stage` says which stage it starts from and which function turns that
stage's artifact into its own, both by name (``"ember.compiler.passes:optimize"``),
so this table imports nothing heavy and a stage whose code is not there yet is
simply unavailable. A new stage plugs in with one :func:`register_stage` entry::

    register_stage(Stage("llvm", "the LLVM module", source="lowered",
                         entry="ember.compiler.codegen:emit_module"))

An artifact renders as ``text``, ``dot`` or ``json``: graphs through the IR printer
and exporters, other artifacts through the stage's ``render`` function (text only,
unless that function accepts the other formats too).

    >>> [s.name for s in all_stages()][:2]
    ['traced', 'optimized']
    >>> is_available("traced")
    True
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ember.errors import UnsupportedError
from ember.ir.graph import Graph

FORMATS = ("text", "dot", "json")


@dataclass(frozen=True)
class Stage:
    """One stage: its name, a line of help, where it starts and how it is made.

    ``source`` is the stage whose artifact ``entry`` transforms (None only for
    ``traced``, which tracing itself produces). ``entry`` and ``render`` are
    ``"module:function"`` references; ``render(artifact)`` or
    ``render(artifact, fmt)`` gives the text of a non-graph artifact.
    """

    name: str
    doc: str
    source: str | None = None
    entry: str | None = None
    render: str | None = None


_STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add ``stage`` to the table; names are unique, sources must exist."""
    assert stage.name not in _STAGES, f"stage {stage.name} registered twice"
    assert stage.source is None or stage.source in _STAGES, stage.source
    _STAGES[stage.name] = stage
    return stage


def all_stages() -> list[Stage]:
    """Every registered stage, in pipeline order."""
    return list(_STAGES.values())


def get_stage(name: str) -> Stage:
    """The stage called ``name``, or an UnsupportedError listing the names."""
    stage = _STAGES.get(name)
    if stage is None:
        raise UnsupportedError(
            f"unknown stage {name!r}",
            expected=list(_STAGES),
            actual=name,
            hint=f"use one of: {', '.join(_STAGES)}, or all",
        )
    return stage


def _resolve(reference: str) -> Callable[..., Any] | None:
    """The function behind ``"module:function"``, or None when it does not exist."""
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            return None  # the stage's module is not written yet
        raise
    return getattr(module, attr, None)


def is_available(name: str) -> bool:
    """True when ``name`` and every stage it starts from can run in this build."""
    stage = get_stage(name)
    while stage.source is not None:
        if stage.entry is None or _resolve(stage.entry) is None:
            return False
        if stage.render is not None and _resolve(stage.render) is None:
            return False
        stage = _STAGES[stage.source]
    return True


def available_stages() -> list[str]:
    """The names of the stages that can run in this build, in pipeline order."""
    return [s.name for s in all_stages() if is_available(s.name)]


def run_stages(traced: Graph, names: Sequence[str]) -> dict[str, Any]:
    """The artifact of every stage in ``names``, computed from the ``traced`` graph.

    Each stage runs once, on a copy of its source's artifact when that artifact can
    be copied, so earlier artifacts stay as they were.
    """
    done: dict[str, Any] = {"traced": traced}

    def produce(name: str) -> Any:
        if name in done:
            return done[name]
        stage = get_stage(name)
        if not is_available(name):
            raise UnsupportedError(
                f"stage {name!r} is not available in this build of ember: it needs "
                f"{stage.entry}",
                op=name,
                hint=f"available stages: {', '.join(available_stages())}",
            )
        assert stage.source is not None and stage.entry is not None
        source = produce(stage.source)
        if hasattr(source, "copy"):
            source = source.copy()
        done[name] = _resolve(stage.entry)(source)  # type: ignore[misc]
        return done[name]

    return {name: produce(name) for name in names}


def render(name: str, artifact: Any, fmt: str = "text") -> str:
    """The text of stage ``name``'s ``artifact`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise UnsupportedError(f"unknown format {fmt!r}", expected=FORMATS, actual=fmt)
    if isinstance(artifact, Graph):
        return _render_graph(artifact, fmt)
    stage = get_stage(name)
    renderer = _resolve(stage.render) if stage.render else None
    if renderer is not None and len(inspect.signature(renderer).parameters) > 1:
        return _newline(renderer(artifact, fmt))
    if fmt != "text":
        raise UnsupportedError(
            f"stage {name!r} has no {fmt} form",
            op=name,
            hint="use --format text for this stage",
        )
    return _newline(renderer(artifact) if renderer is not None else str(artifact))


def _render_graph(graph: Graph, fmt: str) -> str:
    if fmt == "text":
        from ember.ir.printer import format_graph

        return format_graph(graph)
    from ember.ir import export

    return _newline(export.to_dot(graph) if fmt == "dot" else export.to_json(graph))


def _newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


register_stage(Stage("traced", "the graph as tracing recorded it"))
register_stage(
    Stage(
        "optimized",
        "after the default pass pipeline: decomposed, folded, deduplicated",
        source="traced",
        entry="ember.compiler.passes:optimize",
    )
)
register_stage(
    Stage(
        "backward",
        "the backward graph of every parameter, its saved activations and schedule",
        source="optimized",
        entry="ember.compiler.partition:backward_stage",
        render="ember.compiler.partition:format_backward",
    )
)
register_stage(
    Stage(
        "fused",
        "the optimized graph partitioned into kernels, with every declined fusion",
        source="optimized",
        entry="ember.compiler.fusion:fuse",
        render="ember.compiler.fusion:format_fused",
    )
)
register_stage(
    Stage(
        "lowered",
        "every kernel as loops over its output, reading inputs through their strides",
        source="fused",
        entry="ember.compiler.lower:lower",
        render="ember.compiler.lower:format_lowered",
    )
)
register_stage(
    Stage(
        "llvm",
        "every generated kernel's optimized LLVM IR for this CPU",
        source="lowered",
        entry="ember.compiler.machine_code:compile_lowered",
        render="ember.compiler.machine_code:format_llvm",
    )
)
register_stage(
    Stage(
        "asm",
        "every generated kernel's assembly for this CPU",
        source="llvm",
        entry="ember.compiler.machine_code:same_groups",
        render="ember.compiler.machine_code:format_asm",
    )
)
