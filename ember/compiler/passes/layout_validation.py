"""``validate_layout``: reject layouts that later stages cannot honour."""

from __future__ import annotations

import logging
from typing import Any

from ember.compiler.passes.base import GraphPass, in_node, is_view, op_of
from ember.errors import EmberError, LayoutError, StrideError
from ember.ir import layout
from ember.ir.graph import Graph, Node
from ember.ir.meta import TensorMeta

logger = logging.getLogger(__name__)


class ValidateLayout(GraphPass):
    """Check every value's layout against the rules of ``docs/layout.md``.

    - L1: strides and offsets are never negative (raises LayoutError);
    - L3: a view's meta is what its op's rule computes over its base; a view the
      base's strides cannot express raises StrideError;
    - L4: a kernel never writes into memory that overlaps itself, so a non-view call
      (which writes its result) must not have an overlapping layout (LayoutError);
    - kernels write dense row-major outputs, so a non-view call's meta must be
      contiguous with offset 0, and a const's meta must describe its dense value
      (LayoutError).

    Together these give L2, every span inside its storage: dense outputs and
    constants fill exactly their own storage, and every view rule addresses a subset
    of the elements its base addresses. Arguments are checked against their real
    storage when a compiled program is called.

    Every error names the pass, the node and the source line that created it.

    Changes: nothing (a pure check). Keeps: everything.
    """

    name = "validate_layout"

    def run(self, graph: Graph) -> None:
        for node in graph.nodes:
            if node.meta is None:
                continue
            _check_no_negative(node, node.meta)
            if node.kind == "const":
                _check_const(node, node.meta)
            elif node.kind == "call":
                if is_view(node):
                    _check_view(node, node.meta)
                else:
                    _check_written(node, node.meta)
        logger.debug("validate_layout: %d nodes pass", len(graph.nodes))


def _fail(
    node: Node, message: str, error: type[LayoutError] = LayoutError, **fields: Any
) -> EmberError:
    return in_node(error(message, **fields), node, ValidateLayout.name)


def _check_no_negative(node: Node, meta: TensorMeta) -> None:
    if any(s < 0 for s in meta.strides) or meta.offset < 0:
        raise _fail(
            node,
            f"layout {meta!r} breaks docs/layout.md rule L1: strides and offsets are "
            "never negative",
            expected="non-negative strides and offset",
            actual=(meta.strides, meta.offset),
            hint="pass arguments with non-negative strides (np.ascontiguousarray)",
        )


def _check_const(node: Node, meta: TensorMeta) -> None:
    value = node.value
    found = "no value" if value is None else f"{value.dtype}{list(value.shape)}"
    fits = (
        value is not None
        and value.shape == meta.shape
        and value.dtype == meta.dtype.np_dtype
    )
    if not (fits and meta.is_contiguous() and meta.offset == 0):
        raise _fail(
            node,
            f"constant stored as {found} does not match its meta {meta!r}",
            expected=f"a dense {meta.type_str()} value",
            actual=found,
            hint="build constants with Graph.const, which stores the value densely",
        )


def _check_view(node: Node, meta: TensorMeta) -> None:
    base_meta = node.inputs[0].meta
    assert base_meta is not None
    try:
        expected = op_of(node).meta([base_meta], node.attrs)
    except EmberError as error:
        raise in_node(error, node, ValidateLayout.name) from error
    if expected != meta:
        raise _fail(
            node,
            f"the view's meta {meta!r} cannot be expressed over its base "
            f"{base_meta!r}: {node.op} gives strides {expected.strides} and offset "
            f"{expected.offset} (docs/layout.md rule L3)",
            StrideError,
            expected=f"strides {expected.strides}, offset {expected.offset}",
            actual=f"strides {meta.strides}, offset {meta.offset}",
            hint="run propagate_meta after changing input metas",
        )


def _check_written(node: Node, meta: TensorMeta) -> None:
    if layout.has_internal_overlap(meta.shape, meta.strides):
        raise _fail(
            node,
            f"{node.op} would write its result into the overlapping layout {meta!r} "
            f"(strides {meta.strides}); docs/layout.md rule L4",
            expected="a layout where every index has its own element",
            actual=meta.strides,
            hint="write into a dense tensor, then expand the result",
        )
    if not meta.is_contiguous() or meta.offset:
        raise _fail(
            node,
            f"{node.op} writes a dense row-major result, but its meta says {meta!r} "
            f"(strides {meta.strides}, offset {meta.offset})",
            expected=f"strides {layout.contiguous_strides(meta.shape)}, offset 0",
            actual=f"strides {meta.strides}, offset {meta.offset}",
            hint="run propagate_meta, which gives each call the meta its rule computes",
        )


validate_layout = ValidateLayout()
