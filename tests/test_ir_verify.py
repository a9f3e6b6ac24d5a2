"""The verifier rejects each broken invariant, naming the node, its op and its line.

Broken graphs are written in the text form: the parser reads them as they are and
leaves the judgement to ``verify``. Use-def links are not part of the text (the
parser derives users from operands), so those cases break a parsed graph in Python.
"""

from __future__ import annotations

import pytest

from ember.errors import VerifyError
from ember.ir.graph import Graph
from ember.ir.parser import parse
from ember.ir.registry import all_ops
from ember.ir.verify import ATTR_SCHEMAS, attr_schema, verify

LOC = 'loc("model.py", 7, "y = f(x)")'


def graph_of(*lines: str) -> Graph:
    """A graph named ``g`` whose body is ``lines``."""
    return parse("graph g {\n" + "\n".join("  " + line for line in lines) + "\n}\n")


def rejection(graph: Graph) -> str:
    with pytest.raises(VerifyError) as info:
        verify(graph)
    return str(info.value)


def test_a_well_formed_graph_verifies() -> None:
    verify(
        graph_of(
            "%x: f32[2, 3] = input",
            '%w: f32[3, 4] = param "layer.weight"',
            "%t: f32[3, 2] strides=(1, 3) = permute(%x) {dims=(1, 0)}",
            "%s: f32[2, 4] = matmul(%x, %w)",
            "%c: f32[] = const 2.0",
            "%m: f32[2, 4] = mul(%s, %c)",
            "output(%m, %t)",
        )
    )


def test_message_names_graph_node_op_and_source_line() -> None:
    message = rejection(
        graph_of(
            "%x: f32[2] = input",
            f"%y: f32[3] = relu(%x)  {LOC}",
            "output(%y)",
        )
    )
    assert message.startswith("[E-VERIFY] graph g: %y = relu: ")
    assert "at model.py:7: y = f(x)" in message


def test_error_carries_the_node_location_and_op() -> None:
    with pytest.raises(VerifyError) as info:
        verify(
            graph_of("%x: f32[2] = input", f"%y: f32[3] = exp(%x)  {LOC}", "output(%y)")
        )
    assert info.value.op == "exp"
    assert info.value.location is not None and info.value.location.line == 7


# 1. Structure -----------------------------------------------------------------------


def test_duplicate_names() -> None:
    message = rejection(
        graph_of(
            "%x: f32[2] = input",
            f"%x: f32[2] = relu(%x)  {LOC}",
            "output(%x)",
        )
    )
    assert "%x = relu: the name %x is defined twice (nodes #0 and #1)" in message


def test_no_output_node() -> None:
    assert "has no output node" in rejection(graph_of("%x: f32[2] = input"))


def test_two_output_nodes() -> None:
    message = rejection(
        graph_of("%x: f32[2] = input", "%o1 = output(%x)", "output(%x)")
    )
    assert "%output = output: a second output node (the first is %o1)" in message


def test_output_node_not_last() -> None:
    message = rejection(
        graph_of(
            "%x: f32[2] = input",
            "output(%y)",
            "%y: f32[2] = relu(%x)",
        )
    )
    assert "the output node is not last (%y follows it)" in message


def test_value_without_meta() -> None:
    message = rejection(
        graph_of("%x: f32[2] = input", "%y: none = relu(%x)", "output(%y)")
    )
    assert "%y = relu: the value has no TensorMeta" in message


def test_param_without_qualified_name() -> None:
    message = rejection(graph_of('%w: f32[2] = param ""', "output(%w)"))
    assert "%w = param: a param needs its qualified name" in message


def test_const_without_value() -> None:
    message = rejection(graph_of("%c: f32[2] = const None", "output(%c)"))
    assert "%c = const: a const node holds no value" in message


def test_attrs_on_a_non_call_node() -> None:
    g = graph_of("%x: f32[2] = input", "output(%x)")
    g.node("x").attrs["dim"] = 0
    assert "only call nodes carry attrs" in rejection(g)


def test_node_of_another_graph() -> None:
    g = graph_of("%x: f32[2] = input", "output(%x)")
    g.node("x").graph = Graph("other")
    assert "%x = input: the node belongs to another graph" in rejection(g)


# 2. Use-def links -------------------------------------------------------------------


def test_operand_missing_the_user_link() -> None:
    g = graph_of("%x: f32[2] = input", "%y: f32[2] = relu(%x)", "output(%y)")
    g.node("x").users.clear()
    assert "%y = relu: reads %x, but %x does not list it among its users" in rejection(
        g
    )


def test_user_link_without_the_operand() -> None:
    g = graph_of("%x: f32[2] = input", "%y: f32[2] = relu(%x)", "output(%y)")
    g.node("y").users.append(g.node("x"))
    assert "%y = relu: lists %x as a user, but %x does not read it" in rejection(g)


def test_user_listed_twice() -> None:
    g = graph_of("%x: f32[2] = input", "%y: f32[2] = add(%x, %x)", "output(%y)")
    g.node("x").users.append(g.node("y"))
    assert "%x = input: lists %y twice among its users" in rejection(g)


def test_operand_outside_the_graph() -> None:
    g = graph_of("%x: f32[2] = input", "%y: f32[2] = relu(%x)", "output(%y)")
    stray = graph_of("%x: f32[2] = input", "output(%x)").node("x")
    g.node("x").users.clear()
    g.node("y").inputs[0] = stray
    stray.users.append(g.node("y"))
    assert "%y = relu: reads %x, which is not a node of this graph" in rejection(g)


# 3. Acyclicity and order ------------------------------------------------------------


def test_use_before_definition() -> None:
    message = rejection(
        graph_of(
            "%x: f32[2] = input",
            f"%y: f32[2] = relu(%z)  {LOC}",
            "%z: f32[2] = exp(%x)",
            "output(%y)",
        )
    )
    assert "%y = relu: reads %z before it is defined" in message
    assert "model.py:7" in message


def test_cycle() -> None:
    message = rejection(
        graph_of(
            "%x: f32[2] = input",
            "%a: f32[2] = add(%x, %b)",
            "%b: f32[2] = relu(%a)",
            "output(%b)",
        )
    )
    assert "the graph has a cycle: %" in message
    assert "%a" in message and "%b" in message


# 4. Metas ---------------------------------------------------------------------------


def test_negative_stride() -> None:
    message = rejection(graph_of("%x: f32[2, 3] strides=(3, -1) = input", "output(%x)"))
    assert (
        "%x = input: strides (3, -1) must be non-negative ints (layout rule L1)"
        in message
    )


def test_negative_offset() -> None:
    message = rejection(graph_of("%x: f32[2] offset=-1 = input", "output(%x)"))
    assert "storage offset -1 must be a non-negative int" in message


def test_strides_not_one_per_dimension() -> None:
    message = rejection(graph_of("%x: f32[2, 3] strides=(1,) = input", "output(%x)"))
    assert "1 strides for 2 dimensions" in message


# 5. Calls ---------------------------------------------------------------------------


def test_unknown_op() -> None:
    message = rejection(
        graph_of("%x: f32[2] = input", "%y: f32[2] = rleu(%x)", "output(%y)")
    )
    assert "%y = rleu: unknown op 'rleu'" in message
    assert "did you mean relu" in message


def test_wrong_operand_count() -> None:
    message = rejection(
        graph_of(
            "%x: f32[2] = input",
            "%y: f32[2] = relu(%x, %x)",
            "output(%y)",
        )
    )
    assert "%y = relu: relu takes 1 operand, found 2" in message


def test_meta_differs_from_the_meta_rule() -> None:
    message = rejection(
        graph_of(
            "%x: f32[2, 3] = input",
            "%t: f32[3, 2] = permute(%x) {dims=(1, 0)}",
            "output(%t)",
        )
    )
    assert (
        "%t = permute: its meta f32[3, 2] differs from f32[3, 2] strides=(1, 3), "
        "which the meta rule of permute computes from the operands"
    ) in message


def test_dtype_differs_from_the_meta_rule() -> None:
    message = rejection(
        graph_of(
            "%x: i32[2] = input",
            "%y: i32[2] = exp(%x)",
            "output(%y)",
        )
    )
    assert "its meta i32[2] differs from f32[2]" in message


def test_meta_rule_rejects_the_operands() -> None:
    message = rejection(
        graph_of(
            "%x: f32[2] = input",
            "%y: f32[3] = input",
            f"%z: f32[3] = add(%x, %y)  {LOC}",
            "output(%z)",
        )
    )
    assert "%z = add: the meta rule of add rejects the operands: add: shapes" in message
    assert "cannot be broadcast" in message


def test_unknown_attr() -> None:
    message = rejection(
        graph_of(
            "%x: f32[2] = input",
            "%y: f32[2] = relu(%x) {alpha=0.1}",
            "output(%y)",
        )
    )
    assert "%y = relu: relu takes no attr 'alpha' (it accepts: none)" in message


def test_attr_of_the_wrong_type() -> None:
    message = rejection(
        graph_of(
            "%x: f32[2, 3] = input",
            "%t: f32[3, 2] strides=(1, 3) = permute(%x) {dims=(1.0, 0)}",
            "output(%t)",
        )
    )
    assert "attr dims=(1.0, 0) should be a tuple of ints" in message


def test_missing_required_attr() -> None:
    message = rejection(
        graph_of(
            "%x: f32[2, 3] = input",
            "%s: f32[2] = sum(%x) {keepdim=False}",
            "output(%s)",
        )
    )
    assert "%s = sum: sum needs the attr(s) dims" in message


def test_attr_value_the_text_cannot_hold() -> None:
    g = graph_of("%x: f32[2] = input", "%y: f32[2] = clamp(%x) {min=0.0}", "output(%y)")
    g.node("y").attrs["min"] = object()
    assert "has a type the IR text cannot hold" in rejection(g)


def test_every_registered_op_has_an_attr_schema() -> None:
    unchecked = [op.name for op in all_ops() if attr_schema(op) is None]
    assert not unchecked, f"add these ops to ember.ir.verify.ATTR_SCHEMAS: {unchecked}"
    assert set(ATTR_SCHEMAS) <= {op.name for op in all_ops()}


# 6. Storage bounds ------------------------------------------------------------------


def test_view_outside_its_base() -> None:
    message = rejection(
        graph_of(
            "%x: f32[4] = input",
            "%s: f32[3] offset=4 = slice(%x) {dim=0, start=0, step=1, stop=3}",
            "output(%s)",
        )
    )
    assert "%s = slice: the view spans storage [4, 7), outside [0, 4) of %x" in message


def test_op_output_outside_its_own_storage() -> None:
    message = rejection(
        graph_of(
            "%x: f32[2] = input",
            "%y: f32[2] strides=(2,) = relu(%x)",
            "output(%y)",
        )
    )
    assert (
        "output layout f32[2] strides=(2,) reaches outside its own storage" in message
    )


def test_const_value_disagrees_with_its_meta() -> None:
    message = rejection(graph_of("%c: f32[3] = const f32[2] [1.0, 2.0]", "output(%c)"))
    assert "%c = const: the value is float32[2] but the meta says f32[3]" in message


def test_const_layout_outside_its_array() -> None:
    message = rejection(
        graph_of(
            "%c: f32[2] strides=(2,) = const [1.0, 2.0]",
            "output(%c)",
        )
    )
    assert "reaches outside the constant's 2 elements" in message
