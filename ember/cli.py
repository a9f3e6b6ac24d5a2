"""The ``ember`` command line.

    ember --version
    ember dump examples/mlp_residual.py:build --input 32x16 --stage all

``ember dump`` loads a model from a file or an importable module, traces it on random
inputs of the shapes given and prints its IR at the requested stages (see
:mod:`ember.compiler.stages`). Exit status: 0 on success, 1 when the model fails
(to load, to trace or in a stage), 2 for a bad command line (a missing file or name,
a bad ``--input`` spec, an unknown stage).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any

_DUMP_EXAMPLES = """\
examples:
  ember dump examples/linear_regression.py:build --input 64x8
  ember dump examples/mlp_residual.py:build --input 32x16 --stage all
  ember dump examples/attention_scores.py:build --input 4x6x8 --stage optimized
  ember dump examples/classifier.py:build --input 16x10 --input 16:i64 --format dot
  ember dump mypackage.models:make_model --input 8x3:f64 --format json

TARGET is FILE.py:NAME or module.path:NAME. NAME may be a module class (built with
no arguments), a factory function without required arguments that returns a model,
or a function of tensors, which is traced itself.

--input SHAPE[:DTYPE] gives one input per flag, in order: sizes joined by x (32x16),
or "scalar" for a 0-d tensor; DTYPE is f32 (the default), f64, i32, i64 or bool.
"""


class UsageError(Exception):
    """A command line ember dump cannot act on (exit status 2)."""


class ModelError(Exception):
    """The model failed to load, trace or pass a stage (exit status 1)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    import ember

    parser = argparse.ArgumentParser(
        prog="ember",
        description="ember: a small deep-learning graph compiler",
    )
    parser.add_argument(
        "--version", action="version", version=f"ember {ember.__version__}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_dump(commands)
    _add_cache(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args.run(args) or 0)


# ember dump -------------------------------------------------------------------------


def _add_cache(commands: Any) -> None:
    cache = commands.add_parser(
        "cache",
        help="inspect or clear the compiled-kernel cache",
        description="The compiled-kernel disk cache (EMBER_CACHE_DIR, default "
        "~/.cache/ember).",
    )
    cache.add_argument("action", choices=["info", "clear"], help="what to do")
    cache.set_defaults(run=run_cache)


def run_cache(args: argparse.Namespace) -> int:
    """``ember cache info|clear``."""
    from ember.compiler import cache

    if args.action == "clear":
        removed = cache.disk_clear()
        sys.stdout.write(f"removed {removed} entries from {cache.cache_folder()}\n")
        return 0
    info = cache.disk_info()
    sys.stdout.write(
        f"folder   {info['folder']}\n"
        f"entries  {info['entries']} ({info['damaged']} damaged)\n"
        f"bytes    {info['bytes']}\n"
        f"format   version {info['format_version']}\n"
    )
    return 0


def _add_dump(commands: Any) -> None:
    from ember.compiler.stages import FORMATS, all_stages

    stage_names = ", ".join(s.name for s in all_stages())
    dump = commands.add_parser(
        "dump",
        help="trace a model and print its IR at one or more stages",
        description="Trace a model on random inputs and print its IR.",
        epilog=_DUMP_EXAMPLES + f"\nstages: {stage_names}; all = every available one.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dump.add_argument(
        "target", metavar="TARGET", help="FILE.py:NAME or module.path:NAME"
    )
    dump.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="SHAPE[:DTYPE]",
        help="one model input, e.g. 32x16 or 16:f64 (repeat for more)",
    )
    dump.add_argument(
        "--stage",
        "-s",
        action="append",
        default=[],
        metavar="NAME",
        help="stage to print (repeatable; default traced; all for every one)",
    )
    dump.add_argument(
        "--format",
        "-f",
        choices=FORMATS,
        default="text",
        help="output format (default text)",
    )
    dump.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for the model's initial weights and the inputs",
    )
    dump.set_defaults(run=run_dump)


def run_dump(args: argparse.Namespace) -> int:
    """``ember dump``: load, trace, run the stages, print; returns the exit status."""
    try:
        sys.stdout.write(
            dump_text(
                args.target,
                args.input,
                args.stage or ["traced"],
                args.format,
                args.seed,
            )
        )
    except UsageError as error:
        sys.stderr.write(f"ember dump: {error}\n")
        return 2
    except ModelError as error:
        sys.stderr.write(f"ember dump: {error}\n")
        return 1
    return 0


def dump_text(
    target: str,
    input_specs: Sequence[str],
    stages: Sequence[str],
    fmt: str = "text",
    seed: int = 0,
) -> str:
    """What ``ember dump`` prints; raises UsageError or ModelError on failure."""
    import ember
    from ember.compiler import stages as registry
    from ember.compiler.trace import trace_call
    from ember.errors import EmberError

    names = _stage_names(stages)
    shapes = [parse_input_spec(spec) for spec in input_specs]
    ember.manual_seed(seed)
    model = load_model(target)
    inputs = [_random_input(shape, dtype) for shape, dtype in shapes]
    try:
        traced = trace_call(model, inputs).graph
    except EmberError as error:
        raise ModelError(f"cannot trace {target}:\n{_relative_error(error)}") from None
    except Exception as error:
        raise ModelError(
            f"{target} failed while tracing:\n{_describe(error)}"
        ) from None
    _relativize_locations(traced)
    try:
        artifacts = registry.run_stages(traced, names)
        texts = {name: registry.render(name, artifacts[name], fmt) for name in names}
    except EmberError as error:
        raise ModelError(f"{target}: {_relative_error(error)}") from None
    return _join(texts, fmt)


def _stage_names(requested: Sequence[str]) -> list[str]:
    from ember.compiler import stages as registry

    names: list[str] = []
    for name in requested:
        if name == "all":
            names.extend(registry.available_stages())
            continue
        if name not in {s.name for s in registry.all_stages()}:
            known = ", ".join(s.name for s in registry.all_stages())
            raise UsageError(f"unknown stage {name!r}; known stages: {known}, all")
        if not registry.is_available(name):
            raise UsageError(
                f"stage {name!r} is not available in this build; available: "
                f"{', '.join(registry.available_stages())}"
            )
        names.append(name)
    return list(dict.fromkeys(names))


def _join(texts: dict[str, str], fmt: str) -> str:
    """One stage's text as it is; several stages each under a header."""
    if len(texts) == 1:
        return next(iter(texts.values()))
    if fmt == "json":
        stages = {name: json.loads(text) for name, text in texts.items()}
        document = {"format": "ember.dump", "version": 1, "stages": stages}
        return json.dumps(document, indent=1) + "\n"
    comment = "//" if fmt == "dot" else "#"
    return "\n".join(f"{comment} stage {name}\n{text}" for name, text in texts.items())


# Input specs ------------------------------------------------------------------------

_SPEC = re.compile(r"(?P<shape>scalar|\d+(?:x\d+)*)(?::(?P<dtype>\w+))?")


def parse_input_spec(spec: str) -> tuple[tuple[int, ...], Any]:
    """``"32x16"`` -> ((32, 16), float32); ``"16:f64"``; ``"scalar:i64"`` is 0-d.

    >>> parse_input_spec("4x8:i64")
    ((4, 8), ember.int64)
    """
    from ember.errors import DTypeError
    from ember.ir import dtypes

    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        raise UsageError(
            f"bad --input {spec!r}: expected sizes joined by x and an optional dtype, "
            "such as 32x16, 16:f64 or scalar:i64"
        )
    shape_text = match["shape"]
    shape = (
        () if shape_text == "scalar" else tuple(int(s) for s in shape_text.split("x"))
    )
    try:
        dtype = dtypes.by_name(match["dtype"] or "f32")
    except DTypeError:
        known = ", ".join(d.short for d in dtypes.ALL_DTYPES)
        raise UsageError(
            f"bad --input {spec!r}: unknown dtype {match['dtype']!r}; "
            f"use one of {known}"
        ) from None
    return shape, dtype


def _random_input(shape: tuple[int, ...], dtype: Any) -> Any:
    import ember
    from ember.runtime.factories import generator

    if dtype.is_floating_point:
        return ember.randn(*shape, dtype=dtype)
    if dtype is ember.bool:
        return ember.from_numpy(generator().random(shape) < 0.5)
    return ember.from_numpy(generator().integers(0, 10, shape).astype(dtype.np_dtype))


# Loading models ---------------------------------------------------------------------


def load_model(target: str) -> Any:
    """The model ``target`` names: ``FILE.py:NAME`` or ``module.path:NAME``."""
    location, sep, name = target.rpartition(":")
    if not sep or not location or not name:
        raise UsageError(
            f"bad target {target!r}: expected FILE.py:NAME or module.path:NAME, "
            "e.g. examples/mlp_residual.py:build"
        )
    module = _load_module(location)
    if not hasattr(module, name):
        defined = sorted(
            n
            for n, v in vars(module).items()
            if not n.startswith("_")
            and callable(v)
            and getattr(v, "__module__", None) == module.__name__
        )
        raise UsageError(
            f"{location} has no {name!r}; it defines: "
            f"{', '.join(defined) or 'nothing callable'}"
        )
    return _instantiate(getattr(module, name), target)


def _load_module(location: str) -> Any:
    if location.endswith(".py") or os.sep in location or "/" in location:
        if not os.path.isfile(location):
            raise UsageError(f"no such file: {location}")
        module_name = "ember_dump_" + re.sub(
            r"\W", "_", os.path.basename(location)[:-3]
        )
        spec = importlib.util.spec_from_file_location(module_name, location)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        folder = os.path.dirname(os.path.abspath(location))
        sys.path.insert(0, folder)  # so the file can import its neighbours
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise ModelError(f"cannot load {location}:\n{_describe(error)}") from None
        finally:
            sys.path.remove(folder)
        return module
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as error:
        if error.name is not None and location.startswith(error.name):
            raise UsageError(
                f"no module named {location!r} (and no such file)"
            ) from None
        raise ModelError(f"cannot import {location}:\n{_describe(error)}") from None
    except Exception as error:
        raise ModelError(f"cannot import {location}:\n{_describe(error)}") from None


def _instantiate(obj: Any, target: str) -> Any:
    """A model from what NAME is: a class, a factory, a function or a model."""
    if inspect.isclass(obj):
        return _call_factory(obj, target)
    if inspect.isfunction(obj) and not _required_parameters(obj):
        return _call_factory(obj, target)
    if callable(obj):
        return obj
    raise UsageError(f"{target} is a {type(obj).__name__}, not a model or a function")


def _required_parameters(fn: Any) -> list[str]:
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _call_factory(factory: Any, target: str) -> Any:
    try:
        required = _required_parameters(factory)
    except (TypeError, ValueError):
        required = []
    if inspect.isclass(factory) and required:
        raise UsageError(
            f"{target} needs arguments ({', '.join(required)}) to be built; add a "
            "factory function without required arguments that builds it"
        )
    try:
        model = factory()
    except Exception as error:
        raise ModelError(f"building {target} failed:\n{_describe(error)}") from None
    if not callable(model):
        raise ModelError(f"{target} returned a {type(model).__name__}, not a model")
    return model


# Messages ---------------------------------------------------------------------------


def _describe(error: BaseException) -> str:
    """An exception as its type and message, plus the innermost user line."""
    from ember.errors import EmberError, is_ember_frame

    if isinstance(error, EmberError):
        return _relative_error(error)
    text = f"{type(error).__name__}: {error}"
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if not is_ember_frame(f.filename)
    ]
    if frames:
        last = frames[-1]
        where = f"{_relative_path(last.filename)}:{last.lineno}"
        text += f"\n  at {where}: {last.line}" if last.line else f"\n  at {where}"
    return text


def _relative_error(error: Any) -> str:
    """``str(error)`` with its source location relative to the current folder."""
    if error.location is not None:
        error.location = _relative_location(error.location)
    return str(error)


def _relative_path(path: str) -> str:
    """``path`` relative to the current folder when it lies inside it."""
    absolute = os.path.abspath(path)
    here = os.getcwd()
    if absolute.startswith(here + os.sep):
        return os.path.relpath(absolute, here)
    return path


def _relative_location(loc: Any) -> Any:
    return dataclasses.replace(loc, file=_relative_path(loc.file))


def _relativize_locations(graph: Any) -> None:
    """Make the graph's source paths relative, so dumps read the same on any machine."""
    for node in graph.nodes:
        if node.loc is not None:
            node.loc = _relative_location(node.loc)


if __name__ == "__main__":
    sys.exit(main())
