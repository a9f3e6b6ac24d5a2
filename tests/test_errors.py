"""The error hierarchy, its documentation, and every error path of the foundation.

- docs/errors.md documents every class of ``ember.errors`` with its code and builtin
  base, and every code it names exists;
- each error path below raises exactly the documented class, with a message that
  names the op and the shapes or dtypes involved (the text users will see is pinned);
- bad input is refused before any computation: with every op's numpy reference
  replaced by a tripwire, the same calls still raise the same typed errors.
"""

from __future__ import annotations

import builtins
import pickle
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ember
from ember import errors
from ember.errors import (
    DTypeError,
    EmberError,
    IndexingError,
    LayoutError,
    ShapeError,
    StrideError,
    UnsupportedError,
)
from ember.ir.registry import all_ops, get_op

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
SECTION = re.compile(r"^## (\w+) \(`(E-[A-Z-]+)`\)$", re.MULTILINE)


def _sections() -> dict[str, tuple[str, str]]:
    """Class name -> (code, section text) as docs/errors.md documents them."""
    text = DOC.read_text()
    found = list(SECTION.finditer(text))
    result = {}
    for match, following in zip(found, found[1:] + [None]):
        end = following.start() if following else len(text)
        result[match.group(1)] = (match.group(2), text[match.end() : end])
    return result


# The documentation --------------------------------------------------------------------


def test_every_error_class_is_documented_with_its_code() -> None:
    documented = {name: code for name, (code, _) in _sections().items()}
    actual = {cls.__name__: cls.code for cls in errors.all_error_classes()}
    assert documented == actual


def test_every_code_the_page_names_exists() -> None:
    codes = {cls.code for cls in errors.all_error_classes()}
    named = set(re.findall(r"`(E-[A-Z][A-Z-]*)`", DOC.read_text()))
    assert named <= codes, f"unknown codes in docs/errors.md: {sorted(named - codes)}"
    assert named == codes


def test_every_section_says_when_what_and_how_to_fix() -> None:
    for name, (code, body) in _sections().items():
        for part in ("**Also a**", "**Raised when**", "**Example**", "**Fix**"):
            assert part in body, f"{name}: no {part} in docs/errors.md"
        example = body.split("**Example**", 1)[1]
        if name != "EmberError":
            assert f"[{code}]" in example, (
                f"{name}: the example is not an {code} message"
            )


def test_the_documented_bases_are_the_real_ones() -> None:
    for name, (_, body) in _sections().items():
        cls = getattr(errors, name)
        bases = re.search(r"\*\*Also a\*\*: `(\w+)`", body)
        assert bases, name
        base = getattr(builtins, bases.group(1), None) or getattr(
            errors, bases.group(1)
        )
        assert issubclass(cls, base), f"{name} is documented as a {base.__name__}"


def test_the_summary_table_lists_every_class_once() -> None:
    rows = re.findall(
        r"^\| `(E-[A-Z-]+)` \| `(\w+)` \| `(\w+)` \|", DOC.read_text(), re.MULTILINE
    )
    assert sorted(name for _, name, _ in rows) == sorted(
        cls.__name__ for cls in errors.all_error_classes()
    )
    for code, name, base in rows:
        cls = getattr(errors, name)
        assert cls.code == code
        assert issubclass(cls, getattr(builtins, base, None) or getattr(errors, base))


def test_codes_are_unique_and_the_module_tree_names_every_class() -> None:
    classes = errors.all_error_classes()
    assert len({cls.code for cls in classes}) == len(classes)
    tree = errors.__doc__ or ""
    for cls in classes:
        assert re.search(rf"{cls.__name__}\b.*{re.escape(cls.code)}\b", tree), cls


# Error objects ------------------------------------------------------------------------


def test_messages_carry_code_fields_hint_and_the_callers_line() -> None:
    with pytest.raises(ShapeError) as info:
        ember.zeros(2, 3) + ember.zeros(4)  # the line the error must point at
    error = info.value
    text = str(error)
    assert text.startswith("[E-SHAPE] add: shapes (2, 3) and (4,) cannot be broadcast")
    assert "expected: sizes that are equal or 1" in text
    assert "hint: reshape or unsqueeze" in text
    assert error.location is not None and error.location.file == __file__
    assert "the line the error must point at" in error.location.code
    assert error.op == "add"


@pytest.mark.parametrize("cls", errors.all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_pickles_with_its_fields(cls: type[EmberError]) -> None:
    error = cls("something broke", op="add", expected=1, actual=2, hint="do this")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert (copy.message, copy.op, copy.expected, copy.actual, copy.hint) == (
        "something broke",
        "add",
        1,
        2,
        "do this",
    )
    assert str(copy) == str(error)


# Error paths --------------------------------------------------------------------------


def _x() -> ember.Tensor:
    return ember.arange(6.0).view(2, 3)


def _expanded() -> ember.Tensor:
    return ember.zeros(3, 1).expand(3, 4)


def _setitem(t: ember.Tensor, index: Any, value: Any) -> None:
    t[index] = value


def _mask(*shape: int) -> ember.Tensor:
    return ember.zeros(*shape, dtype=ember.bool)


def _read_only() -> ember.Tensor:
    array = np.arange(4.0)
    array.setflags(write=False)
    return ember.from_numpy(array)


Case = tuple[Callable[[], Any], type[EmberError], str]

CASES: dict[str, Case] = {
    # Shapes.
    "broadcast": (
        lambda: _x() + ember.zeros(4),
        ShapeError,
        r"add: shapes \(2, 3\) and \(4,\) cannot be broadcast \(dimension -1 "
        r"has sizes 3 and 4\)",
    ),
    "broadcast-where": (
        lambda: ember.where(_mask(2), _x(), 0.0),
        ShapeError,
        r"where: shapes \(2,\) and \(2, 3\) and \(\) cannot be broadcast",
    ),
    "matmul-inner": (
        lambda: _x() @ _x(),
        ShapeError,
        r"matmul: shapes \(2, 3\) and \(2, 3\) do not line up: 3 columns "
        "against 2 rows",
    ),
    "matmul-batch": (
        lambda: ember.zeros(2, 2, 3) @ ember.zeros(3, 3, 4),
        ShapeError,
        r"matmul: the batch dimensions of shapes \(2, 2, 3\) and \(3, 3, 4\) "
        r"cannot be broadcast: \(2,\) against \(3,\)",
    ),
    "matmul-0d": (
        lambda: ember.tensor(1.0) @ ember.zeros(2),
        ShapeError,
        r"matmul: both operands need at least one dimension, got shapes \(\) "
        r"and \(2,\)",
    ),
    "view-count": (
        lambda: _x().view(4, 4),
        ShapeError,
        r"view: shape \(4, 4\) is invalid for a tensor of 6 elements",
    ),
    "view-two-unknown": (
        lambda: _x().reshape(-1, -1),
        ShapeError,
        r"reshape: only one dimension can be -1, got shape \(-1, -1\)",
    ),
    "view-float-size": (
        lambda: _x().view(3.0, 2),
        ShapeError,
        r"view: sizes must be ints, got 3.0 in \(3.0, 2\)",
    ),
    "view-dtype": (
        lambda: _x().view(ember.int32),
        ShapeError,
        r"view: sizes must be ints, got ember.int32",
    ),
    "expand-non-one": (
        lambda: _x().expand(3, 3),
        ShapeError,
        r"expand: cannot expand shape \(2, 3\) to \(3, 3\): dimension 0 "
        "has size 2",
    ),
    "expand-fewer-dims": (
        lambda: _x().expand(6),
        ShapeError,
        r"expand: cannot expand shape \(2, 3\) to fewer dimensions",
    ),
    "cat-shapes": (
        lambda: ember.cat([_x(), ember.zeros(3, 3)], dim=1),
        ShapeError,
        r"cat: tensor 1 has shape \(3, 3\), tensor 0 has \(2, 3\)",
    ),
    "cat-empty": (
        lambda: ember.cat([]),
        ShapeError,
        "cat: expected a non-empty list of tensors",
    ),
    "cat-0d": (
        lambda: ember.cat([ember.tensor(1.0)]),
        ShapeError,
        "cat: zero-dimensional tensors cannot be concatenated",
    ),
    "stack-shapes": (
        lambda: ember.stack([_x(), _x().T]),
        ShapeError,
        r"stack: tensor 1 has shape \(3, 2\), tensor 0 has \(2, 3\)",
    ),
    "item": (
        lambda: _x().item(),
        ShapeError,
        r"item\(\): only one-element tensors convert to a Python number, this one "
        r"has shape \(2, 3\)",
    ),
    "bool": (
        lambda: bool(_x()),
        ShapeError,
        "the truth value of a tensor with 6 elements is ambiguous",
    ),
    "amax-empty": (
        lambda: ember.zeros(0, 3).amax(0),
        ShapeError,
        r"amax: cannot reduce an empty dimension of shape \(0, 3\)",
    ),
    "argmax-empty": (
        lambda: ember.zeros(2, 0).argmax(),
        ShapeError,
        r"argmax: cannot reduce an empty dimension of shape \(2, 0\)",
    ),
    "inplace-shape": (
        lambda: ember.zeros(3).add_(_x()),
        ShapeError,
        r"add_: a value of shape \(2, 3\) cannot be written into a tensor "
        r"of shape \(3,\)",
    ),
    "copy-shape": (
        lambda: ember.zeros(3).copy_(ember.zeros(2)),
        ShapeError,
        r"copy_: a value of shape \(2,\) cannot be written into a tensor of "
        r"shape \(3,\)",
    ),
    "fill-tensor": (
        lambda: ember.zeros(3).fill_(ember.ones(3)),
        ShapeError,
        r"fill_: the value must be a number or a 0-d tensor, got shape "
        r"\(3,\)",
    ),
    "linear-weight": (
        lambda: ember.linear(_x(), ember.zeros(3)),
        ShapeError,
        r"linear: weight must be 2-d \(out_features, in_features\), got "
        r"\(3,\)",
    ),
    "loss-shapes": (
        lambda: ember.ir.functions.mse_loss(_x(), _x().T),
        ShapeError,
        r"mse_loss: prediction shape \(2, 3\) differs from target shape "
        r"\(3, 2\)",
    ),
    "factory-size": (
        lambda: ember.zeros(2, -1),
        ShapeError,
        r"invalid shape \(2, -1\): sizes must be non-negative ints",
    ),
    "ragged": (
        lambda: ember.tensor([[1, 2], [3]]),
        ShapeError,
        "tensor\\(\\): data is not rectangular",
    ),
    "arange-step": (
        lambda: ember.arange(0, 3, 0),
        ShapeError,
        "arange: step must be non-zero",
    ),
    # Dtypes.
    "neg-bool": (
        lambda: -_mask(2, 3),
        DTypeError,
        r"neg: bool tensors are not supported, got bool\[2, 3\]",
    ),
    "sub-bool": (
        lambda: _mask(2, 3) - 1,
        DTypeError,
        r"sub: bool tensors are not supported, got bool\[2, 3\], i64\[\]",
    ),
    "mean-int": (
        lambda: ember.arange(4).mean(),
        DTypeError,
        r"mean: needs a floating-point tensor, got i64\[4\]",
    ),
    "var-int": (
        lambda: ember.arange(4).var(),
        DTypeError,
        r"var: needs a floating-point tensor, got i64\[4\]",
    ),
    "softmax-int": (
        lambda: ember.arange(4).softmax(0),
        DTypeError,
        r"softmax: needs a floating-point tensor, got i64\[4\]",
    ),
    "where-cond": (
        lambda: ember.where(_x(), _x(), _x()),
        DTypeError,
        r"where: the condition must be bool, got f32\[2, 3\]",
    ),
    "matmul-mixed": (
        lambda: _x() @ ember.zeros(3, 2, dtype=ember.float64),
        DTypeError,
        r"matmul: operands must have the same dtype, got f32\[2, 3\] and "
        r"f64\[3, 2\]",
    ),
    "argmax-bool": (
        lambda: _mask(2, 3).argmax(),
        DTypeError,
        r"argmax: bool tensors are not supported, got bool\[2, 3\]",
    ),
    "not-a-number": (
        lambda: _x() + "1",
        DTypeError,
        "add: expected a tensor or a Python number, got str",
    ),
    "list-operand": (
        lambda: _x() * [1, 2, 3],
        DTypeError,
        "mul: expected a tensor or a Python number, got list",
    ),
    "not-a-tensor": (
        lambda: ember.sum([1, 2]),
        DTypeError,
        "sum: expected a tensor, got list",
    ),
    "int-overflow": (
        lambda: ember.ones(2, dtype=ember.int32) + 2**40,
        DTypeError,
        r"the Python int 1099511627776 does not fit int32",
    ),
    "inplace-kind": (
        lambda: ember.arange(3).add_(0.5),
        DTypeError,
        "add_: result type float32 cannot be stored in a int64 tensor",
    ),
    "copy-not-a-number": (
        lambda: ember.zeros(2).copy_("ab"),
        DTypeError,
        "copy_: expected a tensor, an array or a number, got str",
    ),
    "invert-float": (lambda: ~_x(), DTypeError, "~ is only defined for bool tensors"),
    "and-int": (
        lambda: ember.arange(3) & ember.arange(3),
        DTypeError,
        r"&: logical and is defined for bool tensors only, got i64\[3\]",
    ),
    "dtype-name": (lambda: _x().to("float16"), DTypeError, "unknown dtype 'float16'"),
    "randn-int": (
        lambda: ember.randn(2, dtype=ember.int64),
        DTypeError,
        "randn: needs a floating dtype, got int64",
    ),
    "clamp-no-bounds": (
        lambda: _x().clamp(),
        DTypeError,
        "clamp: at least one of min and max must be given",
    ),
    # Layouts.
    "write-expanded": (
        lambda: _expanded().add_(1),
        LayoutError,
        r"add_: cannot write into f32\[3, 4\] strides=\(1, 0\): several "
        "of its elements share one memory location",
    ),
    "fill-expanded": (
        lambda: _expanded().fill_(1),
        LayoutError,
        r"fill_: cannot write into f32\[3, 4\] strides=\(1, 0\)",
    ),
    "zero-expanded": (
        lambda: _expanded().zero_(),
        LayoutError,
        r"zero_: cannot write into f32\[3, 4\]",
    ),
    "setitem-expanded": (
        lambda: _setitem(_expanded(), 0, 1.0),
        LayoutError,
        r"copy_: cannot write into f32\[4\] strides=\(0,\)",
    ),
    "read-only": (
        lambda: _read_only().mul_(2),
        LayoutError,
        r"mul_: cannot write into f64\[4\]: its memory is read-only",
    ),
    "negative-step": (
        lambda: _x()[:, ::-1],
        LayoutError,
        r"slice: step -1 would need a negative stride, which ember does "
        r"not have \(docs/layout.md, rule L1\)",
    ),
    "from-numpy-negative": (
        lambda: ember.from_numpy(np.arange(3.0)[::-1]),
        LayoutError,
        r"from_numpy: strides \(-8,\) \(bytes\) cannot be shared",
    ),
    "view-strides": (
        lambda: _x().T.view(6),
        StrideError,
        r"view\(6,\) on f32\[3, 2\] with strides \(1, 3\): dimension 0 of "
        r"the new shape \(size 6\) spans dimensions 0, 1",
    ),
    # Dims and indices.
    "dim-range": (
        lambda: _x().sum(2),
        IndexingError,
        r"sum: dimension 2 is out of range for a tensor of shape \(2, 3\)",
    ),
    "dim-negative-range": (
        lambda: _x().softmax(-3),
        IndexingError,
        r"softmax: dimension -3 is out of range for a tensor of "
        r"shape \(2, 3\)",
    ),
    "dim-twice": (
        lambda: _x().sum((1, -1)),
        IndexingError,
        r"sum: dimension list \(1, -1\) names a dimension twice",
    ),
    "dim-float": (
        lambda: _x().mean(1.0),
        IndexingError,
        "mean: dim must be an int, a tuple of ints or None, got float",
    ),
    "transpose-dim": (
        lambda: _x().transpose(0, 2),
        IndexingError,
        r"transpose: dimension 2 is out of range",
    ),
    "unsqueeze-dim": (
        lambda: _x().unsqueeze(4),
        IndexingError,
        "unsqueeze: dimension 4 is out of range for a tensor with 3 dimensions",
    ),
    "permute-count": (
        lambda: _x().permute(0),
        IndexingError,
        r"permute\(0,\): expected 2 dims for a tensor of shape \(2, 3\)",
    ),
    "permute-repeat": (
        lambda: _x().permute(1, 1),
        IndexingError,
        r"permute: dimension list \(1, 1\) names a dimension twice",
    ),
    "flatten-order": (
        lambda: _x().flatten(1, 0),
        IndexingError,
        "flatten: start_dim 1 comes after end_dim 0",
    ),
    "index-range": (
        lambda: _x()[2],
        IndexingError,
        r"select: index 2 is out of range for dimension 0 \(size 2\) of a "
        r"tensor of shape \(2, 3\)",
    ),
    "select-range": (
        lambda: _x().select(1, -4),
        IndexingError,
        r"select: index -4 is out of range for dimension 1 \(size 3\)",
    ),
    "too-many-indices": (
        lambda: _x()[0, 1, 2],
        IndexingError,
        r"index: too many indices for a tensor of shape \(2, 3\): got 3",
    ),
    "two-ellipses": (
        lambda: _x()[..., ...],
        IndexingError,
        r"index: an index can only have a single ellipsis",
    ),
    "zero-step": (lambda: _x()[::0], IndexingError, "slice: step cannot be zero"),
    "float-index": (
        lambda: _x()[0.5],
        IndexingError,
        "index: float is not a valid index",
    ),
    "float-slice": (
        lambda: _x()[0.5:],
        IndexingError,
        "slice: slice start must be an int, got float",
    ),
    "narrow-range": (
        lambda: _x().narrow(1, 2, 2),
        IndexingError,
        r"narrow: start 2 and length 2 exceed dimension 1 of size 3",
    ),
    "narrow-0d": (
        lambda: ember.tensor(1.0).narrow(0, 0, 1),
        IndexingError,
        "narrow: cannot narrow a 0-d tensor",
    ),
    "slice-0d": (
        lambda: ember.tensor(1.0)[0:1],
        IndexingError,
        r"index: too many indices for a tensor of shape \(\): got 1",
    ),
    "size-dim": (
        lambda: _x().size(2),
        IndexingError,
        "size: dimension 2 is out of range",
    ),
    # Unsupported features.
    "list-index": (
        lambda: _x()[[0, 1]],
        UnsupportedError,
        r"indexing with list \(advanced indexing\) is not supported",
    ),
    "tensor-index": (
        lambda: _x()[ember.tensor([0])],
        UnsupportedError,
        r"indexing with Tensor \(advanced indexing\) is not supported",
    ),
    "bool-index": (
        lambda: _x()[True],
        UnsupportedError,
        "indexing with a bool is not supported",
    ),
    "unknown-op": (
        lambda: get_op("sofmax"),
        UnsupportedError,
        r"unknown op 'sofmax'[\s\S]*did you mean softmax",
    ),
}

# Errors that a reference raises on purpose because they depend on values.
VALUE_DEPENDENT: dict[str, Case] = {
    "int-negative-power": (
        lambda: ember.arange(3) ** -1,
        DTypeError,
        "pow: integers cannot be raised to negative integer powers",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES | VALUE_DEPENDENT))
def test_error_paths_raise_the_documented_class(case: str) -> None:
    call, cls, pattern = (CASES | VALUE_DEPENDENT)[case]
    with pytest.raises(EmberError) as info:
        call()
    assert type(info.value) is cls
    assert re.search(pattern, str(info.value)), str(info.value)
    assert str(info.value).startswith(f"[{cls.code}]")


@pytest.fixture
def tripwires(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Replace every op's numpy reference with one that records that it ran."""
    reached: list[str] = []
    for op in all_ops():

        def tripwire(arrays: Any, attrs: Any, name: str = op.name) -> Any:
            reached.append(name)
            raise AssertionError(f"the numpy reference of {name} ran on bad input")

        monkeypatch.setattr(op, "reference", tripwire)
    yield reached


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_before_any_computation(
    case: str, tripwires: list[str]
) -> None:
    call, cls, _ = CASES[case]
    with pytest.raises(cls):
        call()
    assert not tripwires
