"""Compiled models in training: a compiled backward behind an eager autograd node.

When a compiled model is called with grad mode on and some argument or parameter
requires grad, :class:`TrainingProgram` runs instead of the plain forward program:

1. at build time, the optimized graph is differentiated with respect to those values
   and partitioned (:mod:`ember.compiler.partition`); the backend builds one program
   for the forward graph (which also returns the saved activations) and one for the
   backward graph;
2. each call runs the forward program with recording off and attaches to every
   floating-point output that depends on those values a custom eager autograd
   node, whose edges lead to the values' own ``grad_fn`` or to the leaves;
3. when eager backward reaches that node, its rule runs the backward program on the
   saved activations and the output's gradient, and hands the gradients on.

With ``EMBER_DUMP_DIR`` set, building a training program writes its backward stage
(the text of ``ember dump --stage backward``) there as ``backward.txt``.

A model with several differentiable outputs gets one node per output; the backward
program then runs once per output that backward reaches, with a zero gradient for
the other outputs, and the eager engine sums what each run returns (backward is
linear in the output gradients, so the sum is exact).

The eager errors keep their meaning: a non-scalar output needs an explicit
gradient, a second backward without ``retain_graph`` raises GraphFreedError, and a
value the backward reads (an input, a parameter or an output) that was modified in
place after the forward raises InplaceModificationError.

    >>> import ember
    >>> model = ember.compile(ember.nn.Linear(3, 1))
    >>> loss = model(ember.ones(4, 3)).sum()
    >>> loss.grad_fn
    <sumBackward #...>
    >>> loss.grad_fn.edges[0]
    <compiled LinearBackward #...>
    >>> loss.backward()
    >>> model.bias.grad.tolist()
    [4.0]
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ember import settings
from ember.compiler.autodiff import check_inplace_writes
from ember.compiler.interpret import interpret
from ember.compiler.partition import (
    TrainingGraphs,
    build_training_graphs,
    format_backward,
)
from ember.compiler.passes.manager import write_text_durably
from ember.errors import (
    InplaceModificationError,
    LoweringError,
    SourceLocation,
    UnsupportedError,
)
from ember.ir.graph import Graph
from ember.ir.meta import TensorMeta
from ember.ir.registry import GradContext, OpDef, OpKind
from ember.runtime import autograd
from ember.runtime.factories import zeros
from ember.runtime.tensor import Tensor

logger = logging.getLogger(__name__)

#: Builds a program from a graph: called with the input tensors and the parameters
#: by qualified name, it returns the graph's outputs.
Builder = Callable[[Graph], Callable[[Sequence[Any], Mapping[str, Any]], list[Any]]]


class TrainingProgram:
    """Forward and backward programs of a graph, differentiated with respect to the
    inputs at ``input_positions`` and the parameters named ``param_names``;
    ``overwritten`` lists the values the model wrote in place, from the trace (see
    :func:`~ember.compiler.autodiff.check_inplace_writes`).

    Called like a plain program (input tensors, parameters by name), it returns the
    outputs with eager autograd nodes attached; see the module docstring.
    """

    def __init__(
        self,
        graph: Graph,
        build: Builder,
        input_positions: Sequence[int],
        param_names: Sequence[str],
        overwritten: dict[str, SourceLocation | None] | None = None,
    ) -> None:
        from ember.compiler.passes import optimize

        wanted = set(param_names)
        check_inplace_writes(
            graph,
            [graph.inputs[i] for i in input_positions]
            + [n for n in graph.params if n.kind == "param" and n.target in wanted],
            overwritten or {},
        )
        optimized = optimize(graph.copy())
        inputs = optimized.inputs
        wrt = [inputs[i] for i in input_positions] + [
            n for n in optimized.params if n.kind == "param" and n.target in wanted
        ]
        self.graphs: TrainingGraphs = build_training_graphs(optimized, wrt)
        _dump(self.graphs)
        self.forward = build(self.graphs.forward)
        self.backward = self._build_backward(build, graph.name)
        # Which argument each differentiated value is: ("input", i) or ("param", name)
        self._wrt = [("input", i) for i in input_positions] + [
            ("param", n.target or "") for n in wrt[len(input_positions) :]
        ]
        self._seed_metas: list[TensorMeta] = []
        for position in self.graphs.seeds:
            meta = self.graphs.forward.outputs[position].meta
            assert meta is not None
            self._seed_metas.append(meta)
        self._op = OpDef(
            f"compiled {graph.name}",
            OpKind.COMPOSITE,
            _no_meta,
            _no_reference,
            grad=_run_backward,
            doc="the compiled backward of a compiled model",
        )

    def _build_backward(self, build: Builder, name: str) -> Any:
        """The backend's program for the backward graph; the interpreter's when the
        backend cannot lower one of its ops (a slice's gradient, ``scatter_slice``,
        has no native kernel), so training still works, more slowly."""
        try:
            return build(self.graphs.backward)
        except LoweringError as error:
            logger.info(
                "backward of %s runs on the interpreter: %s", name, error.message
            )
            return functools.partial(interpret, self.graphs.backward)

    def __call__(
        self, inputs: Sequence[Tensor], params: Mapping[str, Tensor]
    ) -> list[Tensor]:
        with autograd.no_grad():
            values = self.forward(inputs, params)
        count = self.graphs.num_outputs
        results, saved = list(values[:count]), values[count:]
        used = [
            (i, inputs[key] if kind == "input" else params[key])  # type: ignore[index]
            for i, (kind, key) in enumerate(self._wrt)
            if self.graphs.gradients[i] is not None
        ]
        sources = [t for _, t in used]
        call = _BackwardCall(self, saved, params, [i for i, _ in used])
        for seed, position in enumerate(self.graphs.seeds):
            result = results[position]
            if not result.dtype.is_floating_point:
                continue
            # A fresh tensor object: the result may be an argument itself.
            output = Tensor._make(result._storage, result._meta)
            node = autograd.Node(
                self._op, sources, {"call": call, "seed": seed}, output
            )
            call.nodes[seed] = node
            output.grad_fn = node
            output.requires_grad = True
            results[position] = output
        return results


def _dump(graphs: TrainingGraphs) -> None:
    """With ``EMBER_DUMP_DIR`` set, write the backward stage there as
    ``backward.txt``."""
    folder = settings.get("dump_dir")
    if folder:
        text = format_backward(graphs)
        write_text_durably(os.path.join(folder, "backward.txt"), text)


def _no_meta(metas: Any, attrs: Any) -> Any:
    raise UnsupportedError("a compiled backward node is not an op to call")


_no_reference = _no_meta


class _BackwardCall:
    """What the backward of one forward call needs: the saved activations and
    parameters, and the storage versions they had after the forward."""

    def __init__(
        self,
        program: TrainingProgram,
        saved: Sequence[Tensor],
        params: Mapping[str, Tensor],
        used: Sequence[int],
    ) -> None:
        self.program = program
        self.saved = list(saved)
        self.params = params
        self.used = used
        self.nodes: dict[int, autograd.Node] = {}
        read = [p.target for p in program.graphs.backward.params]
        self.watched = [
            (s.name, t) for s, t in zip(program.graphs.saved, self.saved)
        ] + [(f"parameter {name}", params[name]) for name in read if name]
        self.versions = [t._storage.version for _, t in self.watched]

    def gradients(self, seed: int, grad: Tensor) -> tuple[Tensor | None, ...]:
        """Run the backward program for output ``seed`` receiving ``grad``."""
        self._check_versions(seed)
        metas = self.program._seed_metas
        seeds = [
            grad if i == seed else zeros(*m.shape, dtype=m.dtype)
            for i, m in enumerate(metas)
        ]
        if not grad.is_contiguous():
            seeds[seed] = grad.contiguous()
        grads = self.program.backward(self.saved + seeds, self.params)
        positions = self.program.graphs.gradients
        return tuple(grads[positions[i]] for i in self.used)  # type: ignore[index]

    def _check_versions(self, seed: int) -> None:
        node = self.nodes[seed]
        for (name, tensor), version in zip(self.watched, self.versions):
            if tensor._storage.version != version:
                raise InplaceModificationError(
                    f"%{name} ({tensor.meta.type_str()}), saved for the backward of "
                    f"{node.name}, was modified in place after the forward: its "
                    "gradient would be wrong",
                    op=node.name,
                    expected=f"version {version}",
                    actual=f"version {tensor._storage.version}",
                    hint="use the out-of-place form of the later op (x = x * 2), or "
                    ".clone() the value before modifying it",
                    location=node.location(),
                )


def _run_backward(ctx: GradContext, grad: Tensor) -> tuple[Tensor | None, ...]:
    return ctx.attrs["call"].gradients(ctx.attrs["seed"], grad)
