"""Matrix products through numpy's BLAS, called from native code.

A program's matmul on 2-D float operands whose layouts BLAS can read (each
operand row-major with a leading dimension, or its transpose; the product
row-major) becomes a :class:`Gemm`. :meth:`Gemm.prepare` checks, once, what the
kernel launcher checks for kernels (dtype, that each operand's layout fits the
storage or region it is given, that the product is private and overlaps neither
operand) and returns a :class:`GemmLaunch`: a small native function that reads
the operands' addresses and the BLAS arguments from a pointer array and calls
``?gemm`` of the OpenBLAS that numpy loaded. A :class:`~ember.compiler.codegen.
launch.LaunchSequence` runs it between kernels, so a whole program can run in
one native call.

The gemm symbol is looked up in the shared libraries of this process (numpy's
wheels bundle OpenBLAS as ``scipy_openblas``, whose symbols carry the suffix
``64_`` and take 64-bit integers). When none is found, :func:`gemm_entry`
returns None and matmuls stay with ``np.matmul``.

    >>> from ember.ir import dtypes
    >>> plan = Gemm.plan(dtypes.float32, ((2, 3), (3, 1), 0), ((3, 2), (2, 1), 0),
    ...                  ((2, 2), (2, 1), 0))
    >>> plan.describe()
    'gemm NN 2x3 @ 3x2'
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ember.compiler.codegen import target
from ember.errors import SignatureError
from ember.ir import dtypes
from ember.ir.dtypes import DType

logger = logging.getLogger("ember.compiler.codegen")

#: (rows, columns), (row stride, column stride) in elements, element offset.
Matrix = tuple[tuple[int, int], tuple[int, int], int]

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
#: Candidate symbols per precision letter, with the width of BLAS integers.
_SYMBOLS = (
    ("scipy_cblas_{}gemm64_", 64),
    ("cblas_{}gemm64_", 64),
    ("scipy_cblas_{}gemm", 32),
    ("cblas_{}gemm", 32),
)
_LETTER = {dtypes.float32: "s", dtypes.float64: "d"}

#: The pointer array's integer fields after the pointers and flags, in order.
_INTEGERS = ("m", "n", "k", "lda", "ldb", "ldc")


def _gemm_ir(width: int, float_type: str) -> str:
    """The native entry: read a pointer array laid out as in :class:`GemmLaunch`
    and call the gemm whose address it holds (alpha 1, beta 0)."""
    lines = ["define void @ember_gemm(ptr %args, i64 %start, i64 %stop) {", "entry:"]
    for index, name in enumerate(("a", "b", "c", "fn")):
        lines.append(f"  %{name}.at = getelementptr i64, ptr %args, i64 {index}")
        lines.append(f"  %{name} = load ptr, ptr %{name}.at")
    for index, name in enumerate(("ta", "tb")):
        lines.append(f"  %{name}.at = getelementptr i64, ptr %args, i64 {4 + index}")
        lines.append(f"  %{name}.64 = load i64, ptr %{name}.at")
        lines.append(f"  %{name} = trunc i64 %{name}.64 to i32")
    for index, name in enumerate(_INTEGERS):
        lines.append(f"  %{name}.at = getelementptr i64, ptr %args, i64 {6 + index}")
        if width == 64:
            lines.append(f"  %{name} = load i64, ptr %{name}.at")
        else:
            lines.append(f"  %{name}.64 = load i64, ptr %{name}.at")
            lines.append(f"  %{name} = trunc i64 %{name}.64 to i{width}")
    i = f"i{width}"
    lines.append(
        f"  call void %fn(i32 {_ROW_MAJOR}, i32 %ta, i32 %tb, {i} %m, {i} %n, "
        f"{i} %k, {float_type} 1.0, ptr %a, {i} %lda, ptr %b, {i} %ldb, "
        f"{float_type} 0.0, ptr %c, {i} %ldc)"
    )
    lines += ["  ret void", "}"]
    return "\n".join(lines)


_ENTRY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)


@functools.cache
def _blas_library() -> tuple[Any, str, int] | None:
    """numpy's BLAS: (library, symbol pattern, integer width), or None."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                name = path.rsplit("/", 1)[-1].lower()
                if "blas" in name and ".so" in name and path not in paths:
                    paths.append(path)
    except OSError:
        return None
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for pattern, width in _SYMBOLS:
            if hasattr(library, pattern.format("s")) and hasattr(
                library, pattern.format("d")
            ):
                logger.debug("BLAS gemm: %s in %s", pattern, path)
                return library, pattern, width
    logger.info("no BLAS gemm symbol found; matmuls call np.matmul")
    return None


#: How OpenBLAS builds name the call that reports its thread count.
_THREAD_SYMBOLS = (
    "scipy_openblas_get_num_threads64_",
    "scipy_openblas_get_num_threads",
    "openblas_get_num_threads64_",
    "openblas_get_num_threads",
)


@functools.cache
def _thread_count_entry() -> Any:
    found = _blas_library()
    if found is None:
        return None
    for name in _THREAD_SYMBOLS:
        entry = getattr(found[0], name, None)
        if entry is not None:
            entry.restype = ctypes.c_int
            entry.argtypes = []
            return entry
    return None


def blas_threads() -> int | None:
    """How many threads numpy's BLAS runs a product on now (it may change at run
    time, through ``threadpoolctl`` say), or None when the BLAS does not say."""
    entry = _thread_count_entry()
    return None if entry is None else int(entry())


def blas_multithreaded() -> bool:
    """Whether a BLAS product may take more than the calling thread (unknown
    counts as yes): running two side by side would then oversubscribe."""
    threads = blas_threads()
    return threads is None or threads > 1


@functools.cache
def gemm_entry(dtype: DType) -> tuple[Any, int, int, int] | None:
    """(JIT engine, native entry address, gemm address, integer width) for
    ``dtype``, or None when no BLAS gemm is available for it."""
    letter = _LETTER.get(dtype)
    found = _blas_library()
    if letter is None or found is None:
        return None
    library, pattern, width = found
    gemm = ctypes.cast(getattr(library, pattern.format(letter)), ctypes.c_void_p)
    llvm_ir = _gemm_ir(width, "float" if letter == "s" else "double")
    code = target.emit_object(target.optimize(llvm_ir, "ember_gemm"))
    engine, addresses = target.load_object(code, ["ember_gemm"])
    return engine, addresses["ember_gemm"], gemm.value or 0, width


def _operand_layout(
    rows: int, cols: int, strides: tuple[int, int]
) -> tuple[int, int] | None:
    """(transpose flag, leading dimension) under which BLAS reads a rows x cols
    matrix with these element strides, or None when it cannot."""
    row, col = strides
    if (cols == 1 or col == 1) and (rows == 1 or row >= max(1, cols)):
        return _NO_TRANS, row if rows > 1 else max(1, cols)
    if (rows == 1 or row == 1) and (cols == 1 or col >= max(1, rows)):
        return _TRANS, col if cols > 1 else max(1, rows)
    return None


def _extent(matrix: Matrix) -> int:
    """Elements from the slot's first element to one past the matrix's last."""
    (rows, cols), (row, col), offset = matrix
    return offset + (rows - 1) * row + (cols - 1) * col + 1


class Gemm:
    """``c = a @ b`` for 2-D operands, planned for BLAS; see the module docstring."""

    def __init__(
        self, dtype: DType, matrices: tuple[Matrix, Matrix, Matrix], fields: list[int]
    ) -> None:
        self.dtype = dtype
        self.matrices = matrices
        self.fields = fields
        self.itemsize = dtype.itemsize

    @classmethod
    def plan(cls, dtype: DType, a: Matrix, b: Matrix, c: Matrix) -> Gemm | None:
        """A gemm for these operand layouts, or None when BLAS cannot take them
        (another dtype, no BLAS, an empty or overlong dimension, a layout that is
        neither row- nor column-major with a leading dimension)."""
        entry = gemm_entry(dtype)
        (m, k), (k2, n), (m2, n2) = a[0], b[0], c[0]
        if entry is None or (k, m, n) != (k2, m2, n2) or min(m, n, k) < 1:
            return None
        if max(m, n, k) >= 2 ** (entry[3] - 1):
            return None
        layout_a = _operand_layout(m, k, a[1])
        layout_b = _operand_layout(k, n, b[1])
        layout_c = _operand_layout(m, n, c[1])
        if layout_a is None or layout_b is None or layout_c is None:
            return None
        if layout_c[0] != _NO_TRANS or min(a[2], b[2], c[2]) < 0:
            return None
        fields = [0, 0, 0, entry[2], layout_a[0], layout_b[0], m, n, k]
        fields += [layout_a[1], layout_b[1], layout_c[1]]
        return cls(dtype, (a, b, c), fields)

    def describe(self) -> str:
        (m, k), (_, n) = self.matrices[0][0], self.matrices[1][0]
        flags = "".join("T" if f == _TRANS else "N" for f in self.fields[4:6])
        return f"gemm {flags} {m}x{k} @ {k}x{n}"

    def prepare(self, memory: Sequence[Any]) -> GemmLaunch:
        """A launch whose checks run now; ``memory`` gives, for a, b and c, a
        fixed flat storage or a :class:`~ember.compiler.codegen.launch.Region`
        passed by address per call (as for ``CompiledKernel.prepare``)."""
        from ember.compiler.codegen.launch import Region

        if len(memory) != 3:
            raise SignatureError(f"{self.describe()} takes 3 operands", expected=3)
        args = (ctypes.c_int64 * 12)(*self.fields)
        variable: list[tuple[int, int]] = []
        spans: dict[int, tuple[int, int]] = {}
        for position, (matrix, given) in enumerate(zip(self.matrices, memory)):
            needed = _extent(matrix)
            delta = matrix[2] * self.itemsize
            if isinstance(given, Region):
                if given.dtype != self.dtype or given.elements < needed:
                    self._fail(position, f"a {self.dtype.name} region of {needed}")
                if position == 2 and not given.private:
                    self._fail(position, "a private region for the product")
                variable.append((position, delta))
                continue
            if (
                not isinstance(given, np.ndarray)
                or given.dtype != self.dtype.np_dtype
                or given.ndim != 1
                or not given.flags.c_contiguous
                or given.shape[0] < needed
                or (position == 2 and not given.flags.writeable)
            ):
                self._fail(position, f"a flat {self.dtype.name} storage of {needed}")
            start = given.ctypes.data + delta
            args[position] = start
            spans[position] = (start, given.ctypes.data + needed * self.itemsize)
        product = spans.get(2)
        for position in (0, 1):
            other = spans.get(position)
            if product and other and product[0] < other[1] and other[0] < product[1]:
                self._fail(2, "a product that overlaps no operand")
        return GemmLaunch(self, args, variable)

    def _fail(self, position: int, expected: str) -> None:
        raise SignatureError(
            f"{self.describe()}: operand {'abc'[position]} does not fit",
            expected=expected,
        )


class GemmLaunch:
    """A gemm checked once by :meth:`Gemm.prepare`, with the interface of a
    :class:`~ember.compiler.codegen.launch.PreparedLaunch`.

    The pointer array holds a, b, c, the gemm's address, the two transpose
    flags, m, n, k and the three leading dimensions.
    """

    sequenceable = True

    def __init__(self, gemm: Gemm, args: Any, variable: list[tuple[int, int]]) -> None:
        self.gemm = gemm
        self._args = args
        self._variable = variable
        entry = gemm_entry(gemm.dtype)
        assert entry is not None
        self._engine = entry[0]
        self._entry = entry[1]
        self._call = _ENTRY(entry[1])

    @property
    def regions(self) -> int:
        """How many addresses a call takes."""
        return len(self._variable)

    def fill(self, addresses: Sequence[int]) -> None:
        """Write the regions' addresses into the pointer array, without running."""
        args = self._args
        for (position, delta), address in zip(self._variable, addresses):
            args[position] = address + delta

    def record(self) -> tuple[int, ...]:
        """This launch's record of a LaunchSequence table: call the entry once."""
        return self._entry, ctypes.addressof(self._args), 0, 1, 0, 0, 0

    @property
    def targets(self) -> list[tuple[Any, int, int]]:
        """Where each address a call takes goes (see :attr:`PreparedLaunch.targets`)."""
        return [(self._args, position, delta) for position, delta in self._variable]

    def __call__(self, addresses: Sequence[int]) -> None:
        self.fill(addresses)
        self.run()

    def run(self) -> None:
        """Run on the addresses written last."""
        self._call(self._args, 0, 1)
