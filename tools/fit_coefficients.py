"""Fit the polynomial coefficients of ember's vector math library (a developer tool).

Run ``python tools/fit_coefficients.py > coefficients.py`` to rebuild
``ember/compiler/codegen/coefficients.py``. It needs ``mpmath`` (not a runtime
dependency of ember). Each approximation is a Chebyshev fit at 40 significant digits,
converted to monomial coefficients in a variable mapped to ``[-1, 1]`` (so that Horner
evaluation stays well conditioned), then rounded to the target float type. The fitted
functions and their reductions are described in ``docs/codegen.md``.
"""

from __future__ import annotations

import numpy as np


def _fits() -> dict[str, tuple[float, float, list[object], object]]:
    import mpmath as mp

    mp.mp.dps = 40
    half_ln2 = mp.log(2) / 2
    s_max = (mp.sqrt(2) - 1) / (mp.sqrt(2) + 1)

    def expm1_tail(r: object) -> object:
        # (e**r - 1 - r) / r**2 on |r| <= ln(2)/2, so that expm1(r) = r + r*r*q(r).
        return mp.mpf(1) / 2 if r == 0 else (mp.expm1(r) - r) / (r * r)

    def log_tail(w: object) -> object:
        # log((1+s)/(1-s)) = 2s + s*w*R(w) with w = s*s.
        if w == 0:
            return mp.mpf(2) / 3
        s = mp.sqrt(w)
        return (mp.log((1 + s) / (1 - s)) - 2 * s) / (w * s)

    def erf_small(t: object) -> object:
        # erf(x) = x * P(x*x) on |x| < 1.
        return 2 / mp.sqrt(mp.pi) if t == 0 else mp.erf(mp.sqrt(t)) / mp.sqrt(t)

    def erfcx(x: object) -> object:
        # erfc(x) = exp(-x*x) * Q(x) on 1 <= x < x_max.
        return mp.erfc(x) * mp.exp(x * x)

    plan = {
        # name: (function, low, high, terms for float32, terms for float64)
        "expm1_tail": (expm1_tail, -half_ln2, half_ln2, 5, 11),
        # e**r itself on the same interval, for exp(x - max(x)) (docs/codegen.md)
        "exp_reduced": (mp.exp, -half_ln2, half_ln2, 7, 12),
        "log_tail": (log_tail, mp.mpf(0), s_max * s_max, 3, 7),
        "erf_small": (erf_small, mp.mpf(0), mp.mpf(1), 7, 12),
        "erfcx_1_4": (erfcx, mp.mpf(1), mp.mpf(4), 12, 0),
        "erfcx_1_2.5": (erfcx, mp.mpf(1), mp.mpf(2.5), 0, 18),
        "erfcx_2.5_4": (erfcx, mp.mpf(2.5), mp.mpf(4), 0, 14),
        "erfcx_4_6": (erfcx, mp.mpf(4), mp.mpf(6), 0, 10),
    }
    out = {}
    for name, (fn, low, high, n32, n64) in plan.items():
        mid, half = (low + high) / 2, (high - low) / 2
        for dtype, terms in (("f32", n32), ("f64", n64)):
            if not terms:
                continue
            coeffs, err = mp.chebyfit(
                lambda z, fn=fn, m=mid, h=half: fn(m + h * z),
                [-1, 1],
                terms,
                error=True,
            )
            out[f"{name}/{dtype}"] = (float(mid), float(half), coeffs, err)
    return out


def _ln2_parts() -> dict[str, tuple[float, float]]:
    import mpmath as mp

    mp.mp.dps = 40
    ln2 = mp.log(2)
    hi32 = float(np.float32(float(ln2)))
    hi64 = float(ln2)
    return {
        "f32": (hi32, float(np.float32(float(ln2 - hi32)))),
        "f64": (hi64, float(ln2 - hi64)),
    }


def main() -> None:
    """Print the coefficients module to standard output."""
    lines = [
        '"""Polynomial coefficients of the vector math library (generated).',
        "",
        "Made by ``python tools/fit_coefficients.py``; do not edit by",
        "hand. Each entry maps ``name/dtype`` to ``(mid, half, coefficients)``: the",
        "polynomial is evaluated by Horner's rule, highest degree first, at",
        "``z = (v - mid) / half``.",
        '"""',
        "",
        "COEFFICIENTS: dict[str, tuple[float, float, tuple[float, ...]]] = {",
    ]
    for key, (mid, half, coeffs, err) in _fits().items():
        cast = np.float32 if key.endswith("f32") else np.float64
        lines.append(f"    # fit error {float(err):.2e}")
        lines.append(f'    "{key}": ({mid!r}, {half!r}, (')
        lines += [f"        {float(cast(float(c)))!r}," for c in coeffs]
        lines.append("    )),")
    lines.append("}")
    lines.append("")
    lines.append(
        "#: ln(2) as hi + lo, hi rounded to the float type, for Cody-Waite reduction."
    )
    lines.append("LN2_PARTS: dict[str, tuple[float, float]] = {")
    for key, (hi, lo) in _ln2_parts().items():
        lines.append(f'    "{key}": ({hi!r}, {lo!r}),')
    lines.append("}")
    print("\n".join(lines))  # noqa: T201 - a developer tool that writes to stdout


if __name__ == "__main__":
    main()
