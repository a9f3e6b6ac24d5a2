"""The pass manager: the default pipeline, verification after each pass, dump files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember import settings
from ember.compiler.passes import (
    DEFAULT_PIPELINE,
    PASSES,
    GraphPass,
    PassManager,
    eliminate_dead_code,
    get_pass,
    optimize,
)
from ember.errors import UnsupportedError, VerifyError
from ember.ir.graph import Graph
from ember.ir.parser import parse
from ember.ir.printer import format_graph

SOFTMAX = """
graph g {
  %x: f32[2, 4] = input
  %s: f32[2, 4] = softmax(%x) {dim=1}  loc("model.py", 3, "x.softmax(1)")
  output(%s)
}
"""


class DropUserLinks(GraphPass):
    """A broken pass: rewires an operand without updating the users lists."""

    name = "drop_user_links"

    def run(self, graph: Graph) -> None:
        call = next(iter(graph.calls()))
        call.inputs[0].users.clear()


class Rebuild(GraphPass):
    """A pass that returns a new graph instead of editing the one it gets."""

    name = "rebuild"

    def run(self, graph: Graph) -> Graph:
        return parse(format_graph(graph).replace("graph g", "graph rebuilt"))


def test_the_default_pipeline_runs_the_passes_in_the_documented_order() -> None:
    assert DEFAULT_PIPELINE == (
        "propagate_meta",
        "validate_layout",
        "decompose",
        "multiply_outer_products",
        "simplify_algebra",
        "fold_constants",
        "eliminate_common_subexpressions",
        "eliminate_dead_code",
    )


@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_pass_is_named_and_states_its_contract(name: str) -> None:
    graph_pass = get_pass(name)
    assert graph_pass.name == name
    doc = type(graph_pass).__doc__ or ""
    assert "Changes:" in doc and "Keeps:" in doc


def test_an_unknown_pass_name_lists_the_known_ones() -> None:
    with pytest.raises(UnsupportedError, match="unknown pass 'dce'") as caught:
        get_pass("dce")
    assert "eliminate_dead_code" in str(caught.value.hint)


def test_verification_blames_the_pass_that_broke_the_graph() -> None:
    manager = PassManager([get_pass("propagate_meta"), DropUserLinks()], verify=True)
    with pytest.raises(VerifyError, match="after pass drop_user_links") as caught:
        manager.run(parse(SOFTMAX))
    assert "does not list it among its users" in str(caught.value)


def test_verification_follows_the_verify_passes_setting() -> None:
    manager = PassManager([DropUserLinks()])
    with settings.override(verify_passes=True), pytest.raises(VerifyError):
        manager.run(parse(SOFTMAX))
    with settings.override(verify_passes=False):
        manager.run(parse(SOFTMAX))


def test_verification_follows_ember_verify_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMBER_VERIFY", "1")
    with pytest.raises(VerifyError):
        PassManager([DropUserLinks()]).run(parse(SOFTMAX))


def test_a_pass_may_return_a_new_graph() -> None:
    result = PassManager([Rebuild(), eliminate_dead_code], verify=True).run(
        parse(SOFTMAX)
    )
    assert result.name == "rebuilt"


def test_dump_dir_receives_the_graph_after_every_pass(tmp_path: Path) -> None:
    with settings.override(dump_dir=str(tmp_path)):
        result = optimize(parse(SOFTMAX), verify=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "00-input.ir",
        "01-propagate_meta.ir",
        "02-validate_layout.ir",
        "03-decompose.ir",
        "04-multiply_outer_products.ir",
        "05-simplify_algebra.ir",
        "06-fold_constants.ir",
        "07-eliminate_common_subexpressions.ir",
        "08-eliminate_dead_code.ir",
    ]
    assert (tmp_path / "00-input.ir").read_text() == format_graph(parse(SOFTMAX))
    assert "= softmax(" not in (tmp_path / "03-decompose.ir").read_text()
    assert (tmp_path / "08-eliminate_dead_code.ir").read_text() == format_graph(result)
    for path in tmp_path.iterdir():
        parse(path.read_text(), source=str(path))


def test_a_label_keeps_pipelines_apart_in_one_dump_dir(tmp_path: Path) -> None:
    optimize(parse(SOFTMAX), passes=("decompose",), dump_dir=tmp_path, label="forward")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "forward-00-input.ir",
        "forward-01-decompose.ir",
    ]


def test_no_dump_files_without_a_dump_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with settings.override(dump_dir=None):
        optimize(parse(SOFTMAX), verify=True)
    assert list(tmp_path.iterdir()) == []
