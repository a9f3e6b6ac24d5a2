"""Checking a state dict against what it is loaded into, before anything is written.

:func:`check_state` compares two name-to-tensor tables and collects every problem:
missing keys, unexpected keys, entries whose shape or dtype differ, and values that
are not tensors. :func:`raise_problems` turns such a list into one
:class:`~ember.errors.StateDictError` whose message names each problem on its own
line, so a user fixes a checkpoint in one pass instead of one error at a time.
Optimizers reuse both for their own state.

    >>> import ember
    >>> own = {"w": ember.zeros(2, 3), "b": ember.zeros(3)}
    >>> report = check_state("Net", own, {"w": ember.zeros(2, 3), "x": ember.zeros(1)},
    ...                      strict=False)
    >>> report.missing, report.unexpected
    (['b'], ['x'])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ember.errors import DTypeError, EmberError, StateDictError
from ember.ir import dtypes
from ember.ir.meta import TensorMeta
from ember.runtime.autograd import no_grad
from ember.runtime.tensor import Tensor


@dataclass
class StateReport:
    """The problems :func:`check_state` found: keys by kind, and one line each.

    ``problems`` pairs a kind (``missing``, ``unexpected`` or ``mismatch``, which
    also covers values that are not tensors) with the line the error shows for it.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def add(self, kind: str, key: str, line: str) -> None:
        """Record one problem of ``kind`` about ``key``."""
        keys = {"missing": self.missing, "unexpected": self.unexpected}
        keys.get(kind, self.mismatched).append(key)
        self.problems.append((kind, line))


def value_meta(value: Any) -> TensorMeta | str:
    """The shape and dtype of a tensor or numpy array, or why it has none."""
    if isinstance(value, Tensor):
        return value.meta
    if isinstance(value, np.ndarray):
        try:
            dtype = dtypes.from_numpy_dtype(value.dtype)
        except EmberError:
            return f"a numpy array of dtype {value.dtype}, which ember does not support"
        return TensorMeta.contiguous(value.shape, dtype)
    return f"a {type(value).__name__}, not a tensor"


def compare(key: str, want: TensorMeta, value: Any, where: str) -> str | None:
    """A line describing how ``value`` fails to fit ``want``, or None when it fits."""
    found = value_meta(value)
    if isinstance(found, str):
        return f"bad value for {key!r}: {where} holds {found}"
    shape_differs = found.shape != want.shape
    dtype_differs = found.dtype is not want.dtype
    if not (shape_differs or dtype_differs):
        return None
    kind = " and ".join(
        word
        for word, bad in (("shape", shape_differs), ("dtype", dtype_differs))
        if bad
    )
    return (
        f"{kind} mismatch for {key!r}: expected {want.type_str()}, {where} has "
        f"{found.type_str()}"
    )


def check_state(
    owner: str, own: Mapping[str, Tensor], given: Mapping[str, Any], strict: bool
) -> StateReport:
    """Compare ``given`` with ``own``; raise StateDictError listing every problem.

    With ``strict`` False, missing and unexpected keys are reported back instead of
    raised; mismatched values and values that are not tensors always raise.
    """
    if not isinstance(given, Mapping):
        raise DTypeError(
            f"load_state_dict({owner}) expects a mapping of names to tensors, got "
            f"{type(given).__name__}",
            op="load_state_dict",
            expected="a dict such as model.state_dict()",
            actual=type(given).__name__,
        )
    report = StateReport()
    for key, tensor in own.items():
        if key not in given:
            report.add(
                "missing",
                key,
                f"missing key {key!r}: expected {tensor.meta.type_str()}",
            )
            continue
        line = compare(key, tensor.meta, given[key], "the state")
        if line is not None:
            report.add("mismatch", key, line)
    for key in given:
        if key not in own:
            report.add("unexpected", key, f"unexpected key {key!r}{_shown(given[key])}")
    tolerated = () if strict else ("missing", "unexpected")
    order = {"missing": 0, "unexpected": 1, "mismatch": 2}
    problems = sorted(report.problems, key=lambda problem: order[problem[0]])
    lines = [line for kind, line in problems if kind not in tolerated]
    if lines:
        hint = "compare model.state_dict() names and shapes with the checkpoint's"
        if strict and (report.missing or report.unexpected):
            hint += "; strict=False skips missing and unexpected keys, never mismatches"
        raise_problems(f"load_state_dict({owner})", lines, hint, report)
    return report


def _shown(value: Any) -> str:
    found = value_meta(value)
    return f" ({found.type_str()})" if isinstance(found, TensorMeta) else ""


def raise_problems(
    title: str, lines: list[str], hint: str, report: StateReport | None = None
) -> None:
    """Raise one StateDictError that lists ``lines``, one problem per line."""
    count = f"{len(lines)} problem" + ("s" if len(lines) != 1 else "")
    body = "\n".join(f"  - {line}" for line in lines)
    error = StateDictError(
        f"{title}: {count}, nothing was loaded:\n{body}",
        op="load_state_dict",
        hint=hint,
    )
    report = report or StateReport()
    error.missing_keys = report.missing  # type: ignore[attr-defined]
    error.unexpected_keys = report.unexpected  # type: ignore[attr-defined]
    error.mismatched_keys = report.mismatched  # type: ignore[attr-defined]
    error.problems = list(lines)  # type: ignore[attr-defined]
    raise error


def copy_state(own: Mapping[str, Tensor], given: Mapping[str, Any]) -> None:
    """Copy every entry of ``given`` that ``own`` has into it, in place."""
    with no_grad():
        for key, target in own.items():
            if key in given:
                target.copy_(given[key])
