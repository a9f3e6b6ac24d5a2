"""The one error hierarchy of ember.

Every error ember raises on purpose is an :class:`EmberError`. Each class has a stable
``code`` that documentation, tests and bug reports can cite, structured attributes
(``op``, ``expected``, ``actual``, ``hint``, ``location``) and a message that says what
went wrong, what was expected and how to fix it. A subclass also inherits the builtin
exception it refines, so ``except ValueError`` keeps working for callers that do not
know ember::

    EmberError (Exception)                       E-EMBER
    ├── ShapeError (ValueError)                  E-SHAPE
    ├── DTypeError (TypeError)                   E-DTYPE
    ├── LayoutError (ValueError)                 E-LAYOUT
    │   └── StrideError                          E-STRIDE
    ├── IndexingError (IndexError)               E-INDEX
    ├── TraceError (RuntimeError)                E-TRACE
    ├── IRError (ValueError)                     E-IR
    │   ├── VerifyError                          E-VERIFY
    │   └── ParseError                           E-PARSE
    ├── LoweringError (NotImplementedError)      E-LOWER
    ├── CodegenError (RuntimeError)              E-CODEGEN
    ├── SignatureError (ValueError)              E-SIGNATURE
    │   └── AliasError                           E-SIGNATURE-ALIAS
    ├── AutogradError (RuntimeError)             E-AUTOGRAD
    │   ├── NonScalarLossError                   E-AUTOGRAD-NONSCALAR
    │   ├── MissingGradError                     E-AUTOGRAD-MISSING
    │   ├── NoGradError                          E-AUTOGRAD-NOGRAD
    │   ├── GraphFreedError                      E-AUTOGRAD-FREED
    │   ├── GradientMismatchError                E-AUTOGRAD-GRADMISMATCH
    │   └── InplaceModificationError             E-AUTOGRAD-VERSION
    ├── StateDictError (KeyError)                E-STATE
    ├── CheckpointError (ValueError)             E-CKPT
    │   ├── CheckpointVersionError               E-CKPT-VERSION
    │   └── CheckpointCorruptError               E-CKPT-CORRUPT
    ├── ConfigError (ValueError)                 E-CONFIG
    ├── StoreError (OSError)                     E-STORE
    └── UnsupportedError (NotImplementedError)   E-UNSUPPORTED

``docs/errors.md`` lists every class with an example message and the usual fix; a test
keeps that page and this module in step.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class SourceLocation:
    """Where in the user's code something happened: a file, a line and its text."""

    file: str
    line: int
    code: str = ""

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}"
        return f"{text}: {self.code}" if self.code else text


def is_ember_frame(filename: str) -> bool:
    """True for code inside the ember package (or the import machinery), whose frames
    error locations and warnings skip to reach the user's own line."""
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_DIR + os.sep) or "/importlib/" in path


def user_location(skip_internal: bool = True) -> SourceLocation | None:
    """The innermost stack frame that lies outside the ember package.

    >>> user_location() is None or isinstance(user_location(), SourceLocation)
    True
    """
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not (skip_internal and is_ember_frame(filename)):
            return SourceLocation(filename, frame.f_lineno, _line_text(filename, frame))
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _line_text(filename: str, frame: Any) -> str:
    import linecache

    return linecache.getline(filename, frame.f_lineno).strip()


class EmberError(Exception):
    """Base of every error ember raises on purpose.

    Attributes: ``code`` (stable, e.g. ``E-STRIDE``), ``op`` (the op or object
    involved), ``expected`` and ``actual`` (what was wanted and what was found),
    ``hint`` (how to fix it) and ``location`` (the user's file and line).
    """

    code = "E-EMBER"

    def __init__(
        self,
        message: str,
        *,
        op: str | None = None,
        expected: Any = None,
        actual: Any = None,
        hint: str | None = None,
        location: SourceLocation | None = None,
    ) -> None:
        self.message = message
        self.op = op
        self.expected = expected
        self.actual = actual
        self.hint = hint
        self.location = location if location is not None else user_location()
        super().__init__(message)

    def __str__(self) -> str:
        parts = [f"[{self.code}] {self.message}"]
        found = [
            f"{label}: {value}"
            for label, value in (("expected", self.expected), ("found", self.actual))
            if value is not None
        ]
        if found:
            parts.append("  " + "; ".join(found))
        if self.hint:
            parts.append(f"  hint: {self.hint}")
        if self.location is not None:
            parts.append(f"  at {self.location}")
        return "\n".join(parts)

    def __reduce__(self) -> Any:
        kwargs = dict(
            op=self.op,
            expected=self.expected,
            actual=self.actual,
            hint=self.hint,
            location=self.location,
        )
        return (_rebuild, (type(self), self.message, kwargs))


def _rebuild(cls: type[EmberError], message: str, kwargs: dict) -> EmberError:
    return cls(message, **kwargs)


class ShapeError(EmberError, ValueError):
    """Shapes that do not fit: broadcasting, matmul inner sizes, reshape sizes."""

    code = "E-SHAPE"


class DTypeError(EmberError, TypeError):
    """A dtype the op does not accept, or two dtypes that cannot meet."""

    code = "E-DTYPE"


class LayoutError(EmberError, ValueError):
    """A memory layout an operation cannot honour, such as a write into overlap."""

    code = "E-LAYOUT"


class StrideError(LayoutError):
    """A view whose shape the existing strides cannot express."""

    code = "E-STRIDE"


class IndexingError(EmberError, IndexError):
    """A dimension or an index outside the valid range."""

    code = "E-INDEX"


class TraceError(EmberError, RuntimeError):
    """Tracing met something it cannot record, such as a decision on a tensor value."""

    code = "E-TRACE"


class IRError(EmberError, ValueError):
    """A malformed IR graph."""

    code = "E-IR"


class VerifyError(IRError):
    """The verifier found a graph that breaks an IR invariant."""

    code = "E-VERIFY"


class ParseError(IRError):
    """The IR text could not be read back."""

    code = "E-PARSE"


class LoweringError(EmberError, NotImplementedError):
    """An op or a layout the native backend cannot lower."""

    code = "E-LOWER"


class CodegenError(EmberError, RuntimeError):
    """LLVM code generation or linking failed."""

    code = "E-CODEGEN"


class SignatureError(EmberError, ValueError):
    """Inputs that do not match what a compiled program was built for."""

    code = "E-SIGNATURE"


class AliasError(SignatureError):
    """An argument a program updates in place shares memory with another argument."""

    code = "E-SIGNATURE-ALIAS"


class AutogradError(EmberError, RuntimeError):
    """Backward cannot run as asked."""

    code = "E-AUTOGRAD"


class NonScalarLossError(AutogradError):
    """backward() on a tensor with more than one element and no explicit gradient."""

    code = "E-AUTOGRAD-NONSCALAR"


class MissingGradError(AutogradError):
    """A value that needs a gradient received none."""

    code = "E-AUTOGRAD-MISSING"


class NoGradError(AutogradError):
    """backward() or grad() on a tensor that does not require grad."""

    code = "E-AUTOGRAD-NOGRAD"


class GraphFreedError(AutogradError):
    """A second backward through a graph whose saved values were already freed."""

    code = "E-AUTOGRAD-FREED"


class GradientMismatchError(AutogradError):
    """A gradient of the wrong shape or dtype was supplied or produced."""

    code = "E-AUTOGRAD-GRADMISMATCH"


class InplaceModificationError(AutogradError):
    """A value saved for backward was modified in place afterwards."""

    code = "E-AUTOGRAD-VERSION"


class StateDictError(EmberError, KeyError):
    """load_state_dict found missing, unexpected or mismatched entries."""

    code = "E-STATE"

    def __str__(self) -> str:
        # KeyError quotes its argument; an error report should read as text.
        return EmberError.__str__(self)


class CheckpointError(EmberError, ValueError):
    """A checkpoint file that cannot be loaded."""

    code = "E-CKPT"


class CheckpointVersionError(CheckpointError):
    """A checkpoint written by a newer format version than this ember reads."""

    code = "E-CKPT-VERSION"


class CheckpointCorruptError(CheckpointError):
    """A checkpoint that is truncated, or whose content hash does not match."""

    code = "E-CKPT-CORRUPT"


class ConfigError(EmberError, ValueError):
    """A setting or configuration value that is not valid."""

    code = "E-CONFIG"


class StoreError(EmberError, OSError):
    """The run store or a file ember writes could not be read or written."""

    code = "E-STORE"


class UnsupportedError(EmberError, NotImplementedError):
    """A feature ember does not support; the message says what to do instead."""

    code = "E-UNSUPPORTED"


def all_error_classes() -> list[type[EmberError]]:
    """Every error class of the hierarchy, base first, in definition order."""
    found: list[type[EmberError]] = []
    pending: list[type[EmberError]] = [EmberError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
