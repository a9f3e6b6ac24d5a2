"""Golden files pin the printed IR of hand-built graphs (tests/golden/ir/*.ir).

Each file starts with a one-line ``#`` title; the rest is ``format_graph`` of the case.
A mismatch fails with a unified diff; ``pytest --update-golden`` rewrites the files.
Every golden file also parses back to the graph it was printed from and verifies.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ember.errors import SourceLocation
from ember.ir import dtypes
from ember.ir.compare import explain_difference
from ember.ir.dtypes import float32, float64, int64
from ember.ir.graph import Graph
from ember.ir.meta import TensorMeta
from ember.ir.parser import parse
from ember.ir.printer import format_graph
from ember.ir.verify import verify

GOLDEN = Path(__file__).resolve().parent / "golden" / "ir"


def at(line: int, code: str) -> SourceLocation:
    return SourceLocation("model.py", line, code)


def dense(shape: tuple[int, ...], dtype: dtypes.DType = float32) -> TensorMeta:
    return TensorMeta.contiguous(shape, dtype)


def mlp_forward() -> Graph:
    g = Graph("mlp")
    x = g.input("x", dense((8, 4)), at(20, "def forward(self, x):"))
    w = g.param("fc.weight", dense((16, 4)), loc=at(21, "h = self.fc(x)"))
    b = g.param("fc.bias", dense((16,)), loc=at(21, "h = self.fc(x)"))
    wt = g.call("permute", [w], {"dims": (1, 0)}, loc=at(21, "h = self.fc(x)"))
    h = g.call("matmul", [x, wt], loc=at(21, "h = self.fc(x)"))
    h = g.call("add", [h, b], loc=at(21, "h = self.fc(x)"))
    h = g.call("relu", [h], loc=at(22, "h = h.relu()"))
    loss = g.call(
        "mean", [h], {"dims": (0, 1), "keepdim": False}, loc=at(23, "h.mean()")
    )
    g.output([loss, h])
    return g


def strided_views() -> Graph:
    g = Graph("views")
    x = g.input("x", dense((4, 6)))
    base = g.input("base", TensorMeta((3, 4), float32, (1, 3), 0))
    s = g.call("slice", [x], {"dim": 1, "start": 1, "stop": 6, "step": 2})
    row = g.call("select", [s], {"dim": 0, "index": -1})
    u = g.call("unsqueeze", [row], {"dim": 0})
    e = g.call("expand", [u], {"shape": (2, 4, -1)})
    t = g.call("permute", [base], {"dims": (1, 0)})
    v = g.call("view", [t], {"shape": (2, 6)})
    sq = g.call("squeeze", [u], {"dims": (0,)})
    g.output([e, v, sq])
    return g


def constants_and_attrs() -> Graph:
    g = Graph("constants and attrs")
    x = g.input(
        "x",
        dense((2, 3), float64),
        SourceLocation(
            "/home/ana/my project/ütils.py", 5, 'y = f(x, "tab\\there")  # ü'
        ),
    )
    special = np.array([[np.nan, np.inf, -np.inf], [-0.0, 1e-300, 0.1]])
    c = g.const(special, dense((2, 3), float64), name="special")
    table = g.const(
        np.arange(20, dtype=np.int64).reshape(4, 5), dense((4, 5), int64), name="table"
    )
    flag = g.const(np.array(True), dense((), dtypes.bool_), name="flag")
    y = g.call("clamp", [x], {"min": -float("inf"), "max": 0.5})
    y = g.call("add", [y, c])
    y.name = "sum of parts"  # not an identifier, so the text quotes it
    i = g.call("argmax", [y], {"dim": None, "keepdim": False})
    z = g.call("cast", [table], {"dtype": float32})
    v = g.call("var", [z], {"dims": (1,), "keepdim": True, "correction": 0})
    g.output([y, i, v, flag])
    return g


CASES: dict[str, tuple[str, Callable[[], Graph]]] = {
    "mlp_forward": (
        "a linear layer, relu and a mean loss, with source lines",
        mlp_forward,
    ),
    "strided_views": (
        "views leave strides and offsets; only non-defaults print",
        strided_views,
    ),
    "constants_and_attrs": (
        "special floats, a base64 table, dtype and None attrs, quoted names",
        constants_and_attrs,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_printed_ir_matches_golden_file(case: str, update_golden: bool) -> None:
    title, build = CASES[case]
    graph = build()
    verify(graph)
    text = f"# {title}\n" + format_graph(graph)
    path = GOLDEN / f"{case}.ir"
    if update_golden:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    expected = path.read_text(encoding="utf-8") if path.exists() else ""
    if text != expected:
        diff = "\n".join(
            difflib.unified_diff(
                expected.splitlines(),
                text.splitlines(),
                f"golden/ir/{case}.ir",
                "printed",
                lineterm="",
            )
        )
        pytest.fail(
            f"printed IR differs from the golden file (rerun with "
            f"--update-golden if the change is intended):\n{diff}"
        )
    difference = explain_difference(parse(expected, source=str(path)), graph)
    assert not difference, difference
