"""Each graph pass on small cases written in IR text: the graph before, the graph after.

Passes run through the pass manager with verification on, so every case also checks
that the pass leaves a graph the verifier accepts.
"""

from __future__ import annotations

import difflib
import textwrap
from pathlib import Path

import pytest

from ember.compiler.passes import fold_constants, optimize, validate_layout
from ember.compiler.passes.constant_folding import FoldConstants
from ember.errors import (
    DTypeError,
    LayoutError,
    ShapeError,
    StrideError,
)
from ember.ir.parser import parse
from ember.ir.printer import format_graph

GOLDEN = Path(__file__).resolve().parent / "golden" / "passes"


def ir(text: str) -> str:
    """IR text written indented inside a test, as the printer writes it."""
    return textwrap.dedent(text).strip("\n") + "\n"


def apply(text: str, *passes: str) -> str:
    """The text of the graph ``text`` after ``passes``, verified after each one."""
    return format_graph(optimize(parse(text), passes=passes, verify=True))


# propagate_meta ---------------------------------------------------------------------


def test_propagate_meta_recomputes_metas_after_an_input_changes() -> None:
    # %x was f32[4, 3] when the graph was traced; the sums and the permute follow it.
    before = """
        graph g {
          %x: f32[2, 3] = input
          %y: f32[4] = sum(%x) {dims=(1,), keepdim=False}
          %t: f32[3, 4] strides=(1, 3) = permute(%x) {dims=(1, 0)}
          output(%y, %t)
        }
    """
    assert apply(before, "propagate_meta") == ir("""
        graph g {
          %x: f32[2, 3] = input
          %y: f32[2] = sum(%x) {dims=(1,), keepdim=False}
          %t: f32[3, 2] strides=(1, 3) = permute(%x) {dims=(1, 0)}
          output(%y, %t)
        }
    """)


def test_propagate_meta_names_the_node_and_source_line_of_a_bad_shape() -> None:
    text = """
        graph g {
          %x: f32[2, 3] = input
          %v: f32[12] = view(%x) {shape=(12,)}  loc("model.py", 12, "x.view(12)")
          output(%v)
        }
    """
    with pytest.raises(ShapeError) as caught:
        apply(text, "propagate_meta")
    message = str(caught.value)
    assert "in pass propagate_meta, at %v = view(%x)" in message
    assert "model.py:12: x.view(12)" in message


def test_propagate_meta_raises_stride_error_for_a_view_of_a_transpose() -> None:
    text = """
        graph g {
          %x: f32[2, 3] = input
          %t: f32[3, 2] strides=(1, 3) = permute(%x) {dims=(1, 0)}
          %v: f32[6] = view(%t) {shape=(6,)}  loc("model.py", 4, "x.T.view(6)")
          output(%v)
        }
    """
    with pytest.raises(StrideError, match=r"at %v = view\(%t\)"):
        apply(text, "propagate_meta")


def test_propagate_meta_keeps_dtype_errors_typed() -> None:
    text = """
        graph g {
          %x: i64[3] = input
          %s: f32[3] = softmax(%x) {dim=0}
          output(%s)
        }
    """
    with pytest.raises(DTypeError, match="softmax: needs a floating-point tensor"):
        apply(text, "propagate_meta")


# validate_layout --------------------------------------------------------------------


def test_validate_layout_accepts_views_and_dense_results_unchanged() -> None:
    text = ir("""
        graph g {
          %x: f32[4, 6] = input
          %t: f32[6, 4] strides=(1, 6) = permute(%x) {dims=(1, 0)}
          %s: f32[6, 2] strides=(1, 12) offset=6 = slice(%t) {dim=1, start=1, step=2,
                                                              stop=4}
          %e: f32[6, 2] = exp(%s)
          output(%e)
        }
    """)
    assert apply(text, "validate_layout") == format_graph(parse(text))


@pytest.mark.parametrize(
    ("title", "line", "error", "pattern"),
    [
        (
            "a negative stride (rule L1)",
            "%y: f32[3] strides=(-1,) offset=2 = slice(%x) "
            "{dim=0, start=0, step=1, stop=3}",
            LayoutError,
            "rule L1",
        ),
        (
            "a view meta its base cannot express (rule L3)",
            "%y: f32[3] strides=(2,) = slice(%x) {dim=0, start=0, step=1, stop=3}",
            StrideError,
            r"cannot be expressed over its base f32\[3\]: slice gives strides \(1,\)"
            r".*rule L3",
        ),
        (
            "a result written into overlapping memory (rule L4)",
            "%y: f32[3] strides=(0,) = relu(%x)",
            LayoutError,
            "overlapping layout .*rule L4",
        ),
        (
            "a result that is not dense",
            "%y: f32[3] offset=1 = relu(%x)",
            LayoutError,
            "writes a dense row-major result",
        ),
    ],
)
def test_validate_layout_rejects(
    title: str, line: str, error: type, pattern: str
) -> None:
    graph = parse(f"""
        graph g {{
          %x: f32[3] = input
          {line}  loc("model.py", 9, "...")
          output(%y)
        }}
    """)
    with pytest.raises(error, match=pattern) as caught:
        validate_layout.run(graph)
    assert "in pass validate_layout, at %y" in str(caught.value), title
    assert str(caught.value.location) == "model.py:9: ..."


def test_validate_layout_rejects_a_view_of_an_expanded_tensor() -> None:
    graph = parse("""
        graph g {
          %x: f32[3, 1] = input
          %e: f32[3, 4] strides=(1, 0) = expand(%x) {shape=(3, 4)}
          %v: f32[12] strides=(1,) = view(%e) {shape=(12,)}
          output(%v)
        }
    """)
    with pytest.raises(StrideError, match="at %v = view"):
        validate_layout.run(graph)


def test_validate_layout_rejects_a_constant_stored_strided() -> None:
    graph = parse("""
        graph g {
          %c: f32[3] strides=(2,) = const [1.0, 2.0, 3.0]
          output(%c)
        }
    """)
    with pytest.raises(LayoutError, match="does not match its meta"):
        validate_layout.run(graph)


# simplify_algebra -------------------------------------------------------------------

_IDENTITY_CASES = [
    ("x * 1", "mul(%r, %k)", "1.0"),
    ("1 * x", "mul(%k, %r)", "1.0"),
    ("x + 0", "add(%r, %k)", "0.0"),
    ("0 + x", "add(%k, %r)", "0.0"),
    ("x - 0", "sub(%r, %k)", "0.0"),
    ("x / 1", "div(%r, %k)", "1.0"),
    ("x ** 1", "pow(%r, %k)", "1.0"),
]


@pytest.mark.parametrize(("title", "call", "constant"), _IDENTITY_CASES)
def test_simplify_algebra_drops_identity_arithmetic(
    title: str, call: str, constant: str
) -> None:
    before = f"""
        graph g {{
          %x: f32[2, 3] = input
          %r: f32[2, 3] = relu(%x)
          %k: f32[] = const {constant}
          %y: f32[2, 3] = {call}
          %e: f32[2, 3] = exp(%y)
          output(%e)
        }}
    """
    assert apply(before, "simplify_algebra", "eliminate_dead_code") == ir("""
        graph g {
          %x: f32[2, 3] = input
          %r: f32[2, 3] = relu(%x)
          %e: f32[2, 3] = exp(%r)
          output(%e)
        }
    """), title


@pytest.mark.parametrize(
    ("title", "constant", "call"),
    [
        ("0 - x is not x", "%k: f32[] = const 0.0", "%y: f32[2, 3] = sub(%k, %r)"),
        ("x * 2 is not x", "%k: f32[] = const 2.0", "%y: f32[2, 3] = mul(%r, %k)"),
        (
            "broadcasting to a bigger shape",
            "%k: f32[4, 1, 1] = const [[[1.0]], [[1.0]], [[1.0]], [[1.0]]]",
            "%y: f32[4, 2, 3] = mul(%r, %k)",
        ),
        (
            "promotion to a wider dtype",
            "%k: f64[2, 3] = const [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]",
            "%y: f64[2, 3] = mul(%r, %k)",
        ),
    ],
)
def test_simplify_algebra_keeps(title: str, constant: str, call: str) -> None:
    lines = ["%x: f32[2, 3] = input", "%r: f32[2, 3] = relu(%x)", constant, call]
    body = "".join(f"  {line}\n" for line in lines)
    text = f"graph g {{\n{body}  output(%y)\n}}\n"
    assert apply(text, "simplify_algebra") == text, title


def test_simplify_algebra_does_not_return_an_input_where_eager_returns_a_copy() -> None:
    text = ir("""
        graph g {
          %x: f32[3] = input
          %k: f32[] = const 1.0
          %y: f32[3] = mul(%x, %k)
          output(%y)
        }
    """)
    assert apply(text, "simplify_algebra") == text


def test_simplify_algebra_cancels_a_double_transpose() -> None:
    before = """
        graph g {
          %x: f32[2, 3] = input
          %t: f32[3, 2] strides=(1, 3) = permute(%x) {dims=(1, 0)}
          %u: f32[2, 3] = permute(%t) {dims=(1, 0)}
          %e: f32[2, 3] = exp(%u)
          output(%e)
        }
    """
    assert apply(before, "simplify_algebra", "eliminate_dead_code") == ir("""
        graph g {
          %x: f32[2, 3] = input
          %e: f32[2, 3] = exp(%x)
          output(%e)
        }
    """)


def test_simplify_algebra_merges_two_permutes_into_one() -> None:
    before = """
        graph g {
          %x: f32[2, 3, 4] = input
          %p: f32[3, 4, 2] strides=(4, 1, 12) = permute(%x) {dims=(1, 2, 0)}
          %q: f32[4, 3, 2] strides=(1, 4, 12) = permute(%p) {dims=(1, 0, 2)}
          output(%q)
        }
    """
    assert apply(before, "simplify_algebra", "eliminate_dead_code") == ir("""
        graph g {
          %x: f32[2, 3, 4] = input
          %permute: f32[4, 3, 2] strides=(1, 4, 12) = permute(%x) {dims=(2, 1, 0)}
          output(%permute)
        }
    """)


def test_simplify_algebra_merges_a_view_of_a_view() -> None:
    before = """
        graph g {
          %x: f32[2, 3, 4] = input
          %a: f32[6, 4] = view(%x) {shape=(6, 4)}
          %u: f32[1, 6, 4] = unsqueeze(%a) {dim=0}
          %b: f32[24] = view(%u) {shape=(24,)}
          output(%b)
        }
    """
    assert apply(before, "simplify_algebra", "eliminate_dead_code") == ir("""
        graph g {
          %x: f32[2, 3, 4] = input
          %view: f32[24] = view(%x) {shape=(24,)}
          output(%view)
        }
    """)


def test_simplify_algebra_drops_a_view_expand_and_cast_that_change_nothing() -> None:
    before = """
        graph g {
          %x: f32[2, 3] = input
          %r: f32[2, 3] = relu(%x)
          %v: f32[2, 3] = view(%r) {shape=(2, 3)}
          %e: f32[2, 3] = expand(%v) {shape=(2, 3)}
          %c: f32[2, 3] = cast(%e) {dtype=f32}
          %y: f32[2, 3] = exp(%c)
          output(%y)
        }
    """
    assert apply(before, "simplify_algebra", "eliminate_dead_code") == ir("""
        graph g {
          %x: f32[2, 3] = input
          %r: f32[2, 3] = relu(%x)
          %y: f32[2, 3] = exp(%r)
          output(%y)
        }
    """)


def test_simplify_algebra_keeps_a_dense_copy_that_a_view_needs() -> None:
    # Forwarding the cast would make %v a view of the transpose, which strides
    # cannot express.
    text = ir("""
        graph g {
          %x: f32[2, 3] = input
          %t: f32[3, 2] strides=(1, 3) = permute(%x) {dims=(1, 0)}
          %c: f32[3, 2] = cast(%t) {dtype=f32}
          %v: f32[6] = view(%c) {shape=(6,)}
          %y: f32[6] = exp(%v)
          output(%y)
        }
    """)
    assert apply(text, "simplify_algebra") == text


# fold_constants ---------------------------------------------------------------------


def test_fold_constants_evaluates_chains_of_constant_calls() -> None:
    before = """
        graph g {
          %x: f32[2, 3] = input
          %a: f32[] = const 2.0
          %b: f32[] = const 3.0
          %s: f32[] = add(%a, %b)
          %t: f32[] = mul(%s, %s)
          %y: f32[2, 3] = mul(%x, %t)
          output(%y)
        }
    """
    assert apply(before, "fold_constants", "eliminate_dead_code") == ir("""
        graph g {
          %x: f32[2, 3] = input
          %t_const: f32[] = const 25.0
          %y: f32[2, 3] = mul(%x, %t_const)
          output(%y)
        }
    """)


def test_fold_constants_leaves_results_above_the_size_limit() -> None:
    text = """
        graph g {
          %c: f32[] = const 1.5
          %e: f32[64, 64] strides=(0, 0) = expand(%c) {shape=(64, 64)}
          %y: f32[64, 64] = exp(%e)
          output(%y)
        }
    """
    kept = optimize(parse(text), passes=("fold_constants",), verify=True)
    assert [n.op for n in kept.calls()] == ["expand", "exp"]
    bigger = optimize(parse(text), passes=(), verify=True)
    FoldConstants(max_elements=64 * 64).run(bigger)
    assert list(bigger.calls()) == []


def test_fold_constants_leaves_a_call_whose_reference_raises() -> None:
    text = ir("""
        graph g {
          %a: i64[] = const 2
          %b: i64[] = const -1
          %p: i64[] = pow(%a, %b)
          output(%p)
        }
    """)
    assert apply(text, "fold_constants") == text


def test_fold_constants_recomputes_the_strides_of_views_it_did_not_fold() -> None:
    # The permute folds into a dense constant; the expand of it is too big to fold,
    # and its strides must now follow the dense constant.
    text = """
        graph g {
          %c: f32[2, 3] = const [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
          %t: f32[3, 2] strides=(1, 3) = permute(%c) {dims=(1, 0)}
          %u: f32[1, 3, 2] strides=(6, 1, 3) = unsqueeze(%t) {dim=0}
          %e: f32[400, 3, 2] strides=(0, 1, 3) = expand(%u) {shape=(400, 3, 2)}
          output(%e)
        }
    """
    folder = FoldConstants(max_elements=6)
    graph = parse(text)
    folder.run(graph)
    assert graph.node("e").meta.strides == (0, 2, 1)
    assert graph.node("e").inputs[0].kind == "const"
    assert fold_constants.max_elements == 1024


# eliminate_common_subexpressions ----------------------------------------------------


def test_cse_merges_equal_calls_and_then_their_users() -> None:
    before = """
        graph g {
          %x: f32[3] = input
          %a: f32[3] = exp(%x)
          %b: f32[3] = exp(%x)
          %c: f32[3] = log(%a)
          %d: f32[3] = log(%b)
          %s: f32[3] = add(%c, %d)
          output(%s)
        }
    """
    assert apply(before, "eliminate_common_subexpressions") == ir("""
        graph g {
          %x: f32[3] = input
          %a: f32[3] = exp(%x)
          %c: f32[3] = log(%a)
          %s: f32[3] = add(%c, %c)
          output(%s)
        }
    """)


def test_cse_keeps_calls_with_different_attrs_and_distinct_inputs() -> None:
    text = ir("""
        graph g {
          %x: f32[3, 3] = input
          %y: f32[3, 3] = input
          %a: f32[3] = sum(%x) {dims=(0,), keepdim=False}
          %b: f32[3] = sum(%x) {dims=(1,), keepdim=False}
          %c: f32[3] = sum(%y) {dims=(0,), keepdim=False}
          %z: f32[] = const 0.0
          %n: f32[] = const -0.0
          output(%a, %b, %c, %z, %n)
        }
    """)
    assert apply(text, "eliminate_common_subexpressions") == text


def test_cse_merges_equal_constants() -> None:
    before = """
        graph g {
          %x: f32[3] = input
          %h: f32[] = const 0.5
          %a: f32[3] = mul(%x, %h)
          %h2: f32[] = const 0.5
          %b: f32[3] = mul(%a, %h2)
          output(%b)
        }
    """
    assert apply(before, "eliminate_common_subexpressions") == ir("""
        graph g {
          %x: f32[3] = input
          %h: f32[] = const 0.5
          %a: f32[3] = mul(%x, %h)
          %b: f32[3] = mul(%a, %h)
          output(%b)
        }
    """)


# eliminate_dead_code ----------------------------------------------------------------


def test_dce_drops_unused_values_but_keeps_the_signature() -> None:
    before = """
        graph g {
          %x: f32[3] = input
          %unused: f32[3] = input
          %w: f32[3] = param "w"
          %a: f32[3] = exp(%x)
          %b: f32[3] = log(%a)
          %k: f32[] = const 2.0
          output(%a)
        }
    """
    assert apply(before, "eliminate_dead_code") == ir("""
        graph g {
          %x: f32[3] = input
          %unused: f32[3] = input
          %w: f32[3] = param "w"
          %a: f32[3] = exp(%x)
          output(%a)
        }
    """)


# The default pipeline on whole examples (tests/golden/passes) --------------------


@pytest.mark.parametrize(
    "case", sorted(p.name.split(".")[0] for p in GOLDEN.glob("*.before.ir"))
)
def test_optimize_matches_golden_file(case: str, update_golden: bool) -> None:
    before = (GOLDEN / f"{case}.before.ir").read_text(encoding="utf-8")
    title = before.splitlines()[0]
    text = f"{title}\n" + format_graph(optimize(parse(before), verify=True))
    path = GOLDEN / f"{case}.after.ir"
    if update_golden:
        path.write_text(text, encoding="utf-8")
        return
    expected = path.read_text(encoding="utf-8") if path.exists() else ""
    if text != expected:
        diff = difflib.unified_diff(
            expected.splitlines(),
            text.splitlines(),
            str(path.name),
            "optimized",
            lineterm="",
        )
        pytest.fail(
            "the optimized graph differs from the golden file (rerun with "
            "--update-golden if the change is intended):\n" + "\n".join(diff)
        )
