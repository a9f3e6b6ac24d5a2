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
import re
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

#: Stages whose text depends on the CPU and the LLVM version: their golden files pin
#: the structure that matters (kernels, vector code, no calls out), not the text.
MACHINE_STAGES = ("llvm", "asm")
TEXT_STAGES = [s for s in available_stages() if s not in MACHINE_STAGES]

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


@pytest.mark.parametrize("stage", TEXT_STAGES)
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


_HEADER = re.compile(r"^; (g\d+) \(([^)]*)\)(?:: kernel (\S+)|: no generated code.*)$")


def llvm_structure(body: str) -> str:
    """One line per generated kernel: is it vectorized, what does it call out to."""
    lines: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        match = _HEADER.match(line)
        if match:
            group, what, kernel = match.groups()
            title = f"{group} ({what})" + (f" kernel {kernel}" if kernel else "")
            sections.append((title, []))
        elif sections:
            sections[-1][1].append(line)
    for title, text in sections:
        if " kernel " not in title:
            lines.append(f"{title}: BLAS, no generated code")
            continue
        code = "\n".join(text)
        vector = re.search(r"<\d+ x (float|double)>", code) is not None
        calls = sorted(
            name
            for name in set(re.findall(r"^declare [^@]*@([\w.]+)\(", code, re.M))
            if not name.startswith("llvm.")
        )
        lines.append(
            f"{title}: vector instructions {'yes' if vector else 'no'}; "
            f"external calls {', '.join(calls) or 'none'}"
        )
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_llvm_stage_structure_matches_its_golden_file(
    example, monkeypatch, capsys, update_golden
):
    argv = example_argv(example, "--stage", "llvm")
    status, body = dump(monkeypatch, capsys, argv)
    assert status == 0, body
    path = GOLDEN / "examples" / f"{example}.llvm-structure.txt"
    title = f"{example}, stage llvm: structure only"
    check_golden(path, title, argv, llvm_structure(body), update_golden)


def test_asm_stage_prints_machine_code(monkeypatch, capsys):
    status, body = dump(
        monkeypatch, capsys, example_argv("mlp_residual", "--stage", "asm")
    )
    assert status == 0, body
    assert re.search(r"^; g\d+ \(", body, re.M)
    assert re.search(r"\b(vfmadd|vmul|vadd|mulps|addps)\w*", body)


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
