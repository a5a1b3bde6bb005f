// What a step decides from its grads' global sum of squares, shared by the engines (the CPU
// engine's Python side through _core.step_control, the CUDA engine in its control kernel), so
// that both clip and skip alike.
#pragma once
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "fastopt/platform.h"

namespace fastopt {

struct StepControl {
  double norm;   // the global L2 norm of the unscaled grads
  float factor;  // what every grad element is multiplied by: the unscale factor times the clip coefficient
  bool skip;     // the step is skipped (nothing written, the step count does not advance)
};

// `inv`: the unscale factor (1 / loss scale, in float32); `sumsq`: the sum of the raw grads'
// squares (fastopt/reduce.h's order, in double: finite for any finite grads); `nonfinite`: the
// count of inf/NaN grad elements; max_grad_norm 0: no clipping.
//
// The clip coefficient is torch's clip_grad_norm_, computed in float32 as torch does:
// max_grad_norm / (norm + 1e-6), at most 1; for a norm beyond float32's range (where torch's
// float32 norm is inf and its coefficient 0: nothing would move) it is taken in double. The
// step counts as non-finite when a grad is inf or NaN, or when an unscaled element may overflow
// float32: unclipped, with a loss scale below 1 (inv > 1; else |g * inv| <= |g|), and an
// unscaled norm beyond float32's range (within it, no element can exceed it; clipping brings
// every element within max_grad_norm).
FASTOPT_HD StepControl step_control(float inv, double sumsq, int64_t nonfinite, bool skip_nonfinite,
                                    double max_grad_norm) {
  const double norm = std::sqrt(sumsq) * double(inv);
  float factor = inv;
  if (max_grad_norm > 0) {
    const float coef = norm <= double(FLT_MAX) ? float(max_grad_norm) * (1.0f / (float(norm) + 1e-6f))
                                               : float(max_grad_norm / norm);
    factor = factor * (1.0f < coef ? 1.0f : coef);  // min(coef, 1) as Python's min: NaN stays
  }
  const bool overflow = max_grad_norm <= 0 && inv > 1.0f && norm > double(FLT_MAX);
  return {norm, factor, skip_nonfinite && (nonfinite > 0 || overflow)};
}

}  // namespace fastopt
