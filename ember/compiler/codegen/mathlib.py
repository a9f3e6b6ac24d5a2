"""Vectorizable math functions, written as straight-line LLVM IR.

Calls to libm stop the loop vectorizer, so every transcendental op is emitted as an
internal ``alwaysinline`` function built from operations LLVM vectorizes (fma, rint,
bit casts, integer shifts, selects, and ``llvm.ldexp`` where the host has AVX-512; no
branches). The O3 pipeline inlines them into
the loop body before vectorizing. The reductions and their accuracy are described in
``docs/codegen.md``; the polynomial coefficients come from
:mod:`ember.compiler.codegen.coefficients`.

Every function returns NaN for a NaN argument: exp because NaN propagates through
each of its steps (it converts no float to an integer), the others through a final
select, so values computed from a NaN never escape.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

from llvmlite import ir

from ember.compiler.codegen.coefficients import COEFFICIENTS, LN2_PARTS

F32, F64 = ir.FloatType(), ir.DoubleType()
I32, I64 = ir.IntType(32), ir.IntType(64)

#: Per float type: bits, mantissa bits, exponent bias, int type, polynomial suffix.
_FORMAT = {
    "float": (32, 23, 127, I32, "f32"),
    "double": (64, 52, 1023, I64, "f64"),
}
#: Argument bounds of the exp core: below ``lo`` the result is 0, above ``hi`` inf.
_EXP_RANGE = {"float": (-104.0, 89.0), "double": (-746.0, 710.0)}
#: tanh(x) rounds to +-1 beyond these magnitudes.
_TANH_SATURATE = {"float": 10.0, "double": 20.0}
#: erf(x) rounds to +-1 beyond these magnitudes, and the erfc intervals below them.
_ERF_ONE = {"float": 4.0, "double": 6.0}
_ERFC_PIECES = {
    "float": ["erfcx_1_4"],
    "double": ["erfcx_1_2.5", "erfcx_2.5_4", "erfcx_4_6"],
}


@functools.cache
def has_avx512() -> bool:
    """Does the host CPU have AVX-512 (``+avx512f``)?

    Then it scales by a power of two in one instruction (``vscalefps``/``vscalefpd``,
    which LLVM uses for ``llvm.ldexp``); elsewhere LLVM expands ``llvm.ldexp`` into a
    longer sequence than the integer construction of two scale factors that
    :meth:`MathBuilder.exp` uses instead.
    """
    from ember.compiler.codegen.target import host_features

    return "+avx512f" in host_features().split(",")


class MathBuilder:
    """Emit arithmetic of one float type into an IRBuilder, with named helpers.

    ``ldexp`` chooses how exp applies its power of two (default: :func:`has_avx512`);
    both ways give the same bits.
    """

    def __init__(
        self, builder: ir.IRBuilder, ty: ir.Type, ldexp: bool | None = None
    ) -> None:
        self.b = builder
        self.ty = ty
        self.bits, self.mant, self.bias, self.ity, self.suffix = _FORMAT[str(ty)]
        self.ldexp = has_avx512() if ldexp is None else ldexp

    # constants and intrinsics
    def c(self, value: float) -> ir.Constant:
        return ir.Constant(self.ty, value)

    def ci(self, value: int) -> ir.Constant:
        return ir.Constant(self.ity, value)

    def intrinsic(self, name: str, *args: ir.Value) -> ir.Value:
        return self.b.call(declare(self.b.module, name, self.ty, len(args)), args)

    def fma(self, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        return self.intrinsic("llvm.fma", a, b, c)

    def select(self, cond: ir.Value, a: ir.Value, b: ir.Value) -> ir.Value:
        return self.b.select(cond, a, b)

    def cmp(self, op: str, a: ir.Value, b: ir.Value) -> ir.Value:
        return self.b.fcmp_ordered(op, a, b)

    def isnan(self, x: ir.Value) -> ir.Value:
        return self.b.fcmp_unordered("uno", x, x)

    def nan_through(self, x: ir.Value, result: ir.Value) -> ir.Value:
        """``result``, or ``x`` itself where ``x`` is NaN."""
        return self.select(self.isnan(x), x, result)

    def horner(self, z: ir.Value, coeffs: Sequence[ir.Value]) -> ir.Value:
        acc = coeffs[0]
        for coeff in coeffs[1:]:
            acc = self.fma(acc, z, coeff)
        return acc

    def poly(self, v: ir.Value, key: str) -> ir.Value:
        """The fitted polynomial ``key`` at ``v`` (mapped to its ``[-1, 1]`` variable)."""
        mid, half, coeffs = COEFFICIENTS[f"{key}/{self.suffix}"]
        if mid == 0.0:
            # p(v / half) = sum c_j (v / half)**d_j: fold the scaling into the
            # coefficients (exact in double, then rounded once) and save a multiply.
            degree = len(coeffs) - 1
            scaled = [c / half ** (degree - j) for j, c in enumerate(coeffs)]
            return self.horner(v, [self.c(k) for k in scaled])
        z = self.b.fmul(self.b.fsub(v, self.c(mid)), self.c(1.0 / half))
        return self.horner(z, [self.c(k) for k in coeffs])

    def pow2(self, k: ir.Value) -> ir.Value:
        """2**k for an integer k inside the normal exponent range."""
        biased = self.b.add(k, self.ci(self.bias))
        return self.b.bitcast(self.b.shl(biased, self.ci(self.mant)), self.ty)

    # building blocks shared by several functions
    def reduce_ln2(self, x: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
        """``x = k*ln2 + r`` with ``|r| <= ln2/2``: returns ``k`` as a float, ``r`` and
        ``k`` as an integer, for ``|x| < 2**(mant-2)`` (callers clamp).

        Adding 1.5 * 2**mant rounds x/ln2 to the integer k in the low mantissa bits
        of the sum t, so k comes out as a float (t minus the shifter) and as an
        integer (the bits of t minus those of the shifter) without a float-to-int
        conversion, whose result for NaN would be poison: NaN stays NaN throughout.
        """
        shifter = self.c(1.5 * 2.0**self.mant)
        t = self.fma(x, self.c(1 / math.log(2)), shifter)
        k = self.b.fsub(t, shifter)
        ki = self.b.sub(self.b.bitcast(t, self.ity), self.b.bitcast(shifter, self.ity))
        hi, lo = ln2_parts(self.ty)
        r = self.fma(self.b.fneg(k), self.c(hi), x)
        return k, self.fma(self.b.fneg(k), self.c(lo), r), ki

    def expm1_reduced(self, r: ir.Value) -> ir.Value:
        """e**r - 1 for ``|r| <= ln2/2``, accurate relative to the result."""
        q = self.poly(r, "expm1_tail")
        return self.fma(self.b.fmul(r, r), q, r)

    def exp(self, x: ir.Value, nonpositive: bool = False) -> ir.Value:
        """e**x; NaN in gives NaN out (NaN times any scale factor is NaN).

        ``nonpositive`` promises that ``x`` is at most 0 or NaN (softmax's
        ``x - max``): the clamp against overflow is left out and e**r comes from the
        direct fit (see :meth:`exp_reduced`); the accuracy bound is the same.
        """
        lo, hi = _EXP_RANGE[str(self.ty)]
        xc = x
        if not nonpositive:
            xc = self.select(self.cmp(">", xc, self.c(hi)), self.c(hi), xc)
        xc = self.select(self.cmp("<", xc, self.c(lo)), self.c(lo), xc)
        _, r, ki = self.reduce_ln2(xc)
        if self.ldexp:
            # e**r rounds once; scaling it by 2**k is exact for normal results and
            # rounds once for subnormal ones: the bits of the other path.
            scale = _ldexp(self.b.module, self.ty)
            return self.b.call(scale, [self.exp_reduced(r, nonpositive), self._i32(ki)])
        # Two scale factors keep both inside the normal range, so results that are
        # subnormal are rounded once, at the last multiply; (1 + p) * s1 is one fma.
        k1 = self.b.ashr(ki, self.ci(1))
        k2 = self.b.sub(ki, k1)
        s1 = self.pow2(k1)
        if nonpositive:
            scaled = self.b.fmul(self.exp_reduced(r, direct=True), s1)
        else:
            scaled = self.fma(self.expm1_reduced(r), s1, s1)
        return self.b.fmul(scaled, self.pow2(k2))

    def exp_reduced(self, r: ir.Value, direct: bool) -> ir.Value:
        """e**r for ``|r| <= ln2/2``, rounded once.

        As 1 + (e**r - 1), or with ``direct`` as the Horner sum of a fit of e**r
        itself, whose last step adds 1: one fma in place of a multiply, an fma and
        an add (softmax's shift, where every vector operation shows in the time).
        """
        if direct:
            return self.poly(r, "exp_reduced")
        return self.b.fadd(self.expm1_reduced(r), self.c(1.0))

    def _i32(self, value: ir.Value) -> ir.Value:
        return value if self.ity == I32 else self.b.trunc(value, I32)

    def expm1(self, x: ir.Value) -> ir.Value:
        """e**x - 1 for ``x`` in [-60, 60] (callers clamp), relative accuracy near 0."""
        _, r, ki = self.reduce_ln2(x)
        scale = self.pow2(ki)
        return self.fma(scale, self.expm1_reduced(r), self.b.fsub(scale, self.c(1.0)))

    def log(self, x: ir.Value) -> ir.Value:
        tiny = self.cmp("<", x, self.c(2.0 ** (1 - self.bias)))
        xs = self.select(tiny, self.b.fmul(x, self.c(2.0**self.mant)), x)
        # Subtracting the bits of sqrt(1/2) puts the mantissa m in [sqrt(1/2), sqrt(2)).
        anchor = self.ci(float_bits(math.sqrt(0.5), self.ty))
        ix = self.b.sub(self.b.bitcast(xs, self.ity), anchor)
        exponent = self.b.ashr(ix, self.ci(self.mant))
        exponent = self.b.sub(
            exponent, self.b.select(tiny, self.ci(self.mant), self.ci(0))
        )
        m_bits = self.b.add(self.b.and_(ix, self.ci((1 << self.mant) - 1)), anchor)
        f = self.b.fsub(self.b.bitcast(m_bits, self.ty), self.c(1.0))
        # log(m) = 2*atanh(s) = 2s + s*w*R(w) with s = f / (2 + f), w = s*s.
        s = self.b.fdiv(f, self.b.fadd(f, self.c(2.0)))
        w = self.b.fmul(s, s)
        log_m = self.fma(self.b.fmul(s, w), self.poly(w, "log_tail"), self.b.fadd(s, s))
        e = self.b.sitofp(exponent, self.ty)
        hi, lo = ln2_parts(self.ty)
        result = self.fma(e, self.c(hi), self.fma(e, self.c(lo), log_m))
        result = self.select(self.cmp("==", x, self.c(math.inf)), x, result)
        result = self.select(self.cmp("==", x, self.c(0.0)), self.c(-math.inf), result)
        result = self.select(self.cmp("<", x, self.c(0.0)), self.c(math.nan), result)
        return self.nan_through(x, result)

    def tanh(self, x: ir.Value) -> ir.Value:
        a = self.intrinsic("llvm.fabs", x)
        limit = self.c(_TANH_SATURATE[str(self.ty)])
        a = self.select(self.cmp(">", a, limit), limit, a)
        t = self.expm1(self.b.fadd(a, a))
        y = self.b.fdiv(t, self.b.fadd(t, self.c(2.0)))
        return self.nan_through(x, self.intrinsic("llvm.copysign", y, x))

    def sigmoid(self, x: ir.Value) -> ir.Value:
        # e = exp(-|x|) never overflows; sigmoid(-|x|) = e / (1 + e) keeps precision.
        e = self.exp(self.b.fneg(self.intrinsic("llvm.fabs", x)))
        s = self.b.fdiv(self.c(1.0), self.b.fadd(self.c(1.0), e))
        return self.select(self.cmp(">=", x, self.c(0.0)), s, self.b.fmul(e, s))

    def erf(self, x: ir.Value) -> ir.Value:
        a = self.intrinsic("llvm.fabs", x)
        small = self.b.fmul(a, self.poly(self.b.fmul(a, a), "erf_small"))
        large = self.b.fsub(
            self.c(1.0),
            self.b.fmul(self.exp(self.b.fneg(self.b.fmul(a, a))), self._erfcx(a)),
        )
        y = self.select(self.cmp("<", a, self.c(1.0)), small, large)
        one = self.cmp(">=", a, self.c(_ERF_ONE[str(self.ty)]))
        y = self.select(one, self.c(1.0), y)
        return self.nan_through(x, self.intrinsic("llvm.copysign", y, x))

    def _erfcx(self, a: ir.Value) -> ir.Value:
        """exp(a*a) * erfc(a) for 1 <= a, by piecewise polynomials chosen per lane."""
        pieces = [
            COEFFICIENTS[f"{p}/{self.suffix}"] for p in _ERFC_PIECES[str(self.ty)]
        ]
        bounds = [mid - half for mid, half, _ in pieces[1:]]
        width = max(len(c) for _, _, c in pieces)
        padded = [(0.0,) * (width - len(c)) + tuple(c) for _, _, c in pieces]
        above = [self.cmp(">=", a, self.c(bound)) for bound in bounds]

        def pick(values: Sequence[float]) -> ir.Value:
            chosen: ir.Value = self.c(values[0])
            for cond, value in zip(above, values[1:]):
                chosen = self.select(cond, self.c(value), chosen)
            return chosen

        mid = pick([p[0] for p in pieces])
        inv_half = pick([1.0 / p[1] for p in pieces])
        z = self.b.fmul(self.b.fsub(a, mid), inv_half)
        return self.horner(z, [pick(column) for column in zip(*padded)])

    def pow(self, x: ir.Value, y: ir.Value) -> ir.Value:
        """x**y with IEEE/numpy special cases; float32 computes in float64."""
        if self.ty == F32:
            wide = MathBuilder(self.b, F64, self.ldexp)
            r = wide.pow(self.b.fpext(x, F64), self.b.fpext(y, F64))
            return self.b.fptrunc(r, F32)
        ax = self.intrinsic("llvm.fabs", x)
        magnitude = self.exp(self.b.fmul(y, self.log(ax)))
        is_int = self.cmp("==", self.intrinsic("llvm.rint", y), y)
        half_y = self.b.fmul(y, self.c(0.5))
        odd = self.b.and_(
            is_int, self.cmp("!=", self.intrinsic("llvm.rint", half_y), half_y)
        )
        negative_base = self.b.icmp_signed("<", self.b.bitcast(x, self.ity), self.ci(0))
        signed = self.select(
            self.b.and_(negative_base, odd), self.b.fneg(magnitude), magnitude
        )
        below_zero = self.cmp("<", x, self.c(0.0))
        bad = self.b.and_(below_zero, self.b.not_(is_int))
        result = self.select(bad, self.c(math.nan), signed)
        unit = self.cmp("==", ax, self.c(1.0))
        inf_y = self.cmp("==", self.intrinsic("llvm.fabs", y), self.c(math.inf))
        result = self.select(self.b.and_(unit, inf_y), self.c(1.0), result)
        result = self.select(self.cmp("==", x, self.c(1.0)), self.c(1.0), result)
        return self.select(self.cmp("==", y, self.c(0.0)), self.c(1.0), result)


def float_bits(value: float, ty: ir.Type) -> int:
    """The IEEE bit pattern of ``value`` rounded to the float type ``ty``."""
    import struct

    if ty == F32:
        return struct.unpack("<i", struct.pack("<f", value))[0]
    return struct.unpack("<q", struct.pack("<d", value))[0]


def ln2_parts(ty: ir.Type) -> tuple[float, float]:
    """ln(2) as ``hi + lo``: ``hi`` rounded to the precision of ``ty``, ``lo`` the rest."""
    return LN2_PARTS["f32" if ty == F32 else "f64"]


def _ldexp(module: ir.Module, ty: ir.Type) -> ir.Function:
    """``llvm.ldexp`` for float type ``ty`` with an i32 exponent (declared once)."""
    full = f"llvm.ldexp.{_FORMAT[str(ty)][4]}.i32"
    existing = module.globals.get(full)
    if existing is not None:
        return existing
    return ir.Function(module, ir.FunctionType(ty, [ty, I32]), name=full)


def declare(module: ir.Module, name: str, ty: ir.Type, arity: int) -> ir.Function:
    """The overloaded LLVM intrinsic ``name`` for type ``ty`` (declared once)."""
    suffix = {"float": "f32", "double": "f64"}.get(str(ty), str(ty))
    full = f"{name}.{suffix}"
    existing = module.globals.get(full)
    if existing is not None:
        return existing
    return ir.Function(module, ir.FunctionType(ty, [ty] * arity), name=full)


#: The float functions this module provides, by registry op name.
UNARY: dict[str, Callable[[MathBuilder, ir.Value], ir.Value]] = {
    "exp": MathBuilder.exp,
    "log": MathBuilder.log,
    "tanh": MathBuilder.tanh,
    "sigmoid": MathBuilder.sigmoid,
    "erf": MathBuilder.erf,
}
#: Variants for arguments known to lie in a narrower range (see ``MathBuilder.exp``).
NARROW: dict[str, Callable[[MathBuilder, ir.Value], ir.Value]] = {
    "exp_nonpositive": functools.partial(MathBuilder.exp, nonpositive=True),
}


def math_function(module: ir.Module, name: str, ty: ir.Type) -> ir.Function:
    """The internal, always-inlined function ``ember.<name>.<type>`` of ``module``."""
    symbol = f"ember.{name}.{_FORMAT[str(ty)][4]}"
    existing = module.globals.get(symbol)
    if existing is not None:
        return existing
    arity = 2 if name == "pow" else 1
    fn = ir.Function(module, ir.FunctionType(ty, [ty] * arity), name=symbol)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    math_builder = MathBuilder(builder, ty)
    if name == "pow":
        builder.ret(math_builder.pow(*fn.args))
    else:
        builder.ret({**UNARY, **NARROW}[name](math_builder, fn.args[0]))
    return fn
