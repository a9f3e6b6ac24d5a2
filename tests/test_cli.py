"""``ember dump``: loading models from files and modules, input specs, stages,
formats, and the errors and exit statuses of everything that can go wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ember.cli import main, parse_input_spec
from ember.compiler.stages import available_stages

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(monkeypatch, capsys):
    """Run ``ember`` with arguments in the repository folder: (status, out, err)."""
    monkeypatch.chdir(REPO)

    def invoke(*argv: str) -> tuple[int, str, str]:
        status = main(list(argv))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return invoke


@pytest.fixture
def model_file(tmp_path):
    """Write a model file into a temporary folder and return its path."""

    def write(source: str, name: str = "model.py") -> str:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


# Loading what TARGET names ----------------------------------------------------------


def test_a_factory_in_an_example_file_dumps_its_traced_graph(run):
    status, out, err = run("dump", "examples/mlp_residual.py:build", "--input", "32x16")
    assert (status, err) == (0, "")
    assert out.startswith("graph ResidualMLP {\n  %x: f32[32, 16] = input")
    assert 'loc("examples/mlp_residual.py", ' in out
    assert "%blocks.0.up.linear" in out and '= param "blocks.1.down.bias"' in out


def test_a_class_a_function_and_a_module_path_load_too(run, model_file, monkeypatch):
    path = model_file(
        """
        import ember
        from ember import nn

        class Scale(nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = nn.Parameter(ember.ones(3))

            def forward(self, x):
                return x * self.weight

        def double(x, y):
            return (x + y) * 2

        model = Scale()
        """,
        name="cli_models.py",
    )
    status, out, _ = run("dump", f"{path}:Scale", "--input", "2x3")
    assert status == 0 and 'param "weight"' in out and out.startswith("graph Scale")
    status, out, _ = run("dump", f"{path}:double", "-i", "3", "-i", "3:f64")
    assert status == 0 and "%y: f64[3] = input" in out and "graph double" in out
    monkeypatch.syspath_prepend(os.path.dirname(path))
    status, out, _ = run("dump", "cli_models:model", "--input", "4x3")
    assert status == 0 and "%x: f32[4, 3] = input" in out


def test_inputs_with_dtypes_and_a_scalar(run, model_file):
    path = model_file("def f(x, n, s):\n    return x * s + n.float().sum()\n")
    status, out, _ = run(
        "dump", f"{path}:f", "-i", "2x2", "-i", "5:i64", "-i", "scalar"
    )
    assert status == 0
    assert "%n: i64[5] = input" in out and "%s: f32[] = input" in out


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("32x16", ((32, 16), "float32")),
        ("16:f64", ((16,), "float64")),
        ("scalar:bool", ((), "bool")),
        (" 2x0x3:int32 ", ((2, 0, 3), "int32")),
    ],
)
def test_input_specs(spec, expected):
    shape, dtype = parse_input_spec(spec)
    assert (shape, dtype.name) == expected


# Stages and formats -----------------------------------------------------------------


def test_all_stages_print_under_headers(run):
    status, out, _ = run(
        "dump", "examples/linear_regression.py:build", "-i", "64x8", "--stage", "all"
    )
    assert status == 0
    headers = [line for line in out.splitlines() if line.startswith("# stage ")]
    assert headers == [f"# stage {name}" for name in available_stages()]


def test_stages_print_in_the_order_asked_once_each(run):
    if "optimized" not in available_stages():
        pytest.skip("the optimized stage is not in this build")
    status, out, _ = run(
        "dump",
        "examples/linear_regression.py:build",
        "-i",
        "4x8",
        "-s",
        "optimized",
        "-s",
        "traced",
        "-s",
        "optimized",
    )
    assert status == 0
    assert [line for line in out.splitlines() if line.startswith("# stage")] == [
        "# stage optimized",
        "# stage traced",
    ]


def test_json_and_dot_formats(run):
    argv = ("dump", "examples/classifier.py:build", "-i", "16x10", "-i", "16x3")
    status, out, _ = run(*argv, "--format", "json")
    document = json.loads(out)
    assert status == 0 and document["name"] == "Classifier"
    assert [n["name"] for n in document["nodes"]][:2] == ["x", "target"]
    status, out, _ = run(*argv, "--format", "dot", "-s", "traced", "-s", "traced")
    assert status == 0 and out.startswith('digraph "Classifier" {')
    status, out, _ = run(*argv, "-f", "json", "-s", "traced", "-s", "optimized")
    assert set(json.loads(out)["stages"]) == {"traced", "optimized"}


# Errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["examples/nope.py:build", "-i", "2"], "no such file: examples/nope.py"),
        (
            ["examples/mlp_residual.py:nope", "-i", "2"],
            "examples/mlp_residual.py has no 'nope'; it defines: ResidualBlock, "
            "ResidualMLP, build, main",
        ),
        (
            ["examples/mlp_residual.py", "-i", "2"],
            "bad target 'examples/mlp_residual.py'",
        ),
        (["no_such_package.models:build", "-i", "2"], "no module named"),
        (["examples/mlp_residual.py:build", "-i", "32xx16"], "bad --input '32xx16'"),
        (["examples/mlp_residual.py:build", "-i", "3:f16"], "unknown dtype 'f16'"),
        (
            ["examples/mlp_residual.py:build", "-i", "3", "-s", "jitted"],
            "unknown stage 'jitted'; known stages: traced",
        ),
    ],
)
def test_command_line_mistakes_exit_with_status_2(run, argv, message):
    status, out, err = run("dump", *argv)
    assert (status, out) == (2, "")
    assert err.startswith("ember dump: ") and message in err


def test_a_model_that_fails_to_trace_shows_the_users_line(run, model_file):
    path = model_file(
        """
        def branchy(x):
            if x.mean() > 0:
                return x
            return -x
        """
    )
    status, out, err = run("dump", f"{path}:branchy", "--input", "3")
    assert (status, out) == (1, "")
    assert f"cannot trace {path}:branchy" in err
    assert "`if x.mean() > 0:` asks for the truth value" in err
    assert f"at {path}:3: if x.mean() > 0:" in err


@pytest.mark.parametrize(
    ("source", "argv", "status", "message", "line"),
    [
        ("import missing_dependency_xyz\n", ["-i", "2"], 1, "cannot load", 1),
        (
            "def f(x):\n    return x.no_such_method()\n",
            ["-i", "2"],
            1,
            "AttributeError: 'Proxy' object has no attribute 'no_such_method'",
            2,
        ),
        (
            "def f(x):\n    return x\n",
            [],
            1,
            "TypeError: f() missing 1 required positional argument",
            None,
        ),
        (
            "def f():\n    raise ValueError('broken factory')\n",
            [],
            1,
            "ValueError: broken factory",
            2,
        ),
        (
            "class f:\n    def __init__(self, size):\n        pass\n",
            [],
            2,
            "needs arguments (size) to be built",
            None,
        ),
    ],
)
def test_models_that_fail_to_load_or_run(
    run, model_file, source, argv, status, message, line
):
    path = model_file(source)
    got_status, out, err = run("dump", f"{path}:f", *argv)
    assert (got_status, out) == (status, "")
    assert message in err
    if line is not None:
        assert f"at {path}:{line}: " in err


def test_help_lists_examples_and_stages(run, capsys):
    with pytest.raises(SystemExit) as info:
        main(["dump", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "ember dump examples/mlp_residual.py:build --input 32x16 --stage all" in out
    assert "stages: traced, optimized" in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "dump" in capsys.readouterr().err


def test_the_console_script_runs_as_a_program():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ember.cli",
            "dump",
            "examples/linear_regression.py:build",
            "--input",
            "8x8",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("graph LinearRegression {")
