"""Golden files: what ``ember dump`` prints for every example model at every
available stage, and the messages of the main failure modes.

Each file under ``tests/golden/examples`` and ``tests/golden/errors`` starts with a
one-line title and the command that produced it. A mismatch fails with a unified
diff; ``pytest --update-golden`` rewrites the files (review the diff before
committing). Commands run in the repository folder, so source paths print relative
to it and read the same on every machine.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from ember.cli import main
from ember.compiler.stages import available_stages
from ember.ir.parser import parse

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"

#: Example file -> its factory's inputs, as ``--input`` specs.
EXAMPLES = {
    "linear_regression": ["64x8"],
    "mlp_residual": ["32x16"],
    "attention_scores": ["4x6x8"],
    "classifier": ["16x10", "16x3"],
}

#: Failure case -> (title, input specs); the models are in golden/errors.
ERRORS = {
    "trace_error": ("branching on a tensor value while tracing", ["4x3"]),
    "stride_error": ("view of a transposed input that strides cannot express", ["4x3"]),
    "layout_error": ("in-place write into an expanded tensor", ["4x3"]),
}
ERROR_MODELS = "tests/golden/errors/golden_error_models.py"


def dump(monkeypatch, capsys, argv: list[str]) -> tuple[int, str]:
    """Run ``ember`` in the repository folder: (exit status, stdout + stderr)."""
    monkeypatch.chdir(REPO)
    status = main(argv)
    captured = capsys.readouterr()
    # Paths print relative to the current folder; anything absolute left is a bug,
    # but must not make the files differ between machines.
    return status, (captured.out + captured.err).replace(str(REPO) + "/", "")


def check_golden(
    path: Path, title: str, argv: list[str], body: str, update: bool
) -> None:
    """Compare ``body`` under its header with ``path``, or rewrite ``path``."""
    text = f"# {title}\n# $ ember {' '.join(argv)}\n{body}"
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"{path.relative_to(REPO)} is missing; run pytest --update-golden")
    expected = path.read_text()
    if text != expected:
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=f"{path.relative_to(REPO)} (golden)",
            tofile="current output",
        )
        pytest.fail(
            "output differs from the golden file "
            "(pytest --update-golden rewrites it):\n" + "".join(diff),
            pytrace=False,
        )


def example_argv(example: str, *extra: str) -> list[str]:
    argv = ["dump", f"examples/{example}.py:build"]
    for spec in EXAMPLES[example]:
        argv += ["--input", spec]
    return argv + list(extra)


@pytest.mark.parametrize("stage", available_stages())
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_dumps_match_their_golden_files(
    example, stage, monkeypatch, capsys, update_golden
):
    argv = example_argv(example, "--stage", stage)
    status, body = dump(monkeypatch, capsys, argv)
    assert status == 0, body
    if stage in ("traced", "optimized"):
        parse(body)  # graph stages print IR text that reads back
    path = GOLDEN / "examples" / f"{example}.{stage}.txt"
    check_golden(path, f"{example}, stage {stage}", argv, body, update_golden)


@pytest.mark.parametrize("fmt", ["dot", "json"])
def test_export_formats_match_their_golden_files(
    fmt, monkeypatch, capsys, update_golden
):
    argv = example_argv("mlp_residual", "--format", fmt)
    status, body = dump(monkeypatch, capsys, argv)
    assert status == 0, body
    path = GOLDEN / "examples" / f"mlp_residual.traced.{fmt}"
    check_golden(path, f"mlp_residual, stage traced, {fmt}", argv, body, update_golden)


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_messages_match_their_golden_files(
    case, monkeypatch, capsys, update_golden
):
    title, specs = ERRORS[case]
    argv = ["dump", f"{ERROR_MODELS}:{case}"]
    for spec in specs:
        argv += ["--input", spec]
    status, body = dump(monkeypatch, capsys, argv)
    assert status == 1, body
    check_golden(GOLDEN / "errors" / f"{case}.txt", title, argv, body, update_golden)


def test_every_example_has_golden_files():
    shipped = {p.stem for p in (REPO / "examples").glob("*.py")}
    others = {"tour", "train_regression"}  # scripts, not models for ember dump
    assert shipped - others == set(EXAMPLES)
