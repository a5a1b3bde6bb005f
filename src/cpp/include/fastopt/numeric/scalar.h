// The scalar lane: one fp32 value. Used by the CPU scalar target, by every SIMD target's
// tail and by a CUDA thread, so that a rule written once is correct everywhere.
// Every operation is a single IEEE-754 operation with round-to-nearest-even; fused
// multiply-add is only ever explicit (builds use -ffp-contract=off / -fmad=false), which
// is what makes fp32 results bit-identical across targets.
#pragma once
#include <cmath>

#include "fastopt/platform.h"

namespace fastopt {

FASTOPT_HD float vfma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

FASTOPT_HD float vsqrt(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

FASTOPT_HD float vdiv(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// Returns b when either operand is NaN, exactly like x86 MAXPS(a, b), so that NaN
// propagation is the same on every target.
FASTOPT_HD float vmax(float a, float b) { return a > b ? a : b; }
// Likewise MINPS(a, b): b when either is NaN.
FASTOPT_HD float vmin(float a, float b) { return a < b ? a : b; }

// |a|: the sign bit cleared (NaN stays NaN).
FASTOPT_HD float vabs(float a) {
#if defined(__CUDA_ARCH__)
  return fabsf(a);
#else
  return std::fabs(a);
#endif
}

// 1 where a is infinite or NaN, else 0 (a - a is 0 exactly for every finite a).
FASTOPT_HD int count_nonfinite(float a) { return !(a - a == 0.0f); }
// a where a is finite, else b.
FASTOPT_HD float vfinite_or(float a, float b) { return a - a == 0.0f ? a : b; }

// acc + x^2 in double (fastopt/reduce.h): the square is exact, so the add is the one rounding,
// as in fma(x, x, acc), whether or not the compiler contracts the two.
FASTOPT_HD double add_square(float x, double acc) {
  const double d = x;
  return acc + d * d;
}

FASTOPT_HD void store(double* p, double x) { *p = x; }

// 1 for a > 0, -1 for a < 0, a itself for +-0 and NaN (torch.sign).
FASTOPT_HD float vsign(float a) { return a > 0 ? 1.0f : (a < 0 ? -1.0f : a); }

}  // namespace fastopt
