// The canonical order of fastopt's reductions (sums of squares for norms), shared by every
// engine so that a norm is bit-identical on every CPU ISA, any thread count and the GPU:
//
//   a tensor is cut into blocks of kBlock elements from its start; in a block, element i goes
//   to float lane i % kLanes, each lane accumulating fma(x, x, lane) in element order; the
//   lanes fold in a fixed tree (fold_lanes); the block sums, as doubles, add up in order into
//   super-block sums (kSuper elements), and those in order into the tensor's sum. Tensors
//   combine in order within runs of kTensorRun, and the runs in order (combine_tensors).
//
// Counts of non-finite values are integers: exact in any order.
#pragma once
#include <cstdint>

#include "fastopt/platform.h"

namespace fastopt::reduce {

constexpr int kLanes = 64;
constexpr int64_t kBlock = 2048;
constexpr int64_t kSuper = 131072;  // 64 blocks
constexpr int64_t kTensorRun = 64;

// The fixed tree: lane l += lane l + w, for w = 32, 16, ..., 1.
FASTOPT_HD float fold_lanes(float (&lanes)[kLanes]) {
  for (int w = kLanes / 2; w >= 1; w /= 2) {
    for (int l = 0; l < w; ++l) lanes[l] = lanes[l] + lanes[l + w];
  }
  return lanes[0];
}

// The sum of n per-tensor sums in the canonical order.
FASTOPT_HD double combine_tensors(const double* sums, int64_t n) {
  double total = 0;
  for (int64_t r = 0; r < n; r += kTensorRun) {
    double run = 0;
    for (int64_t i = r; i < n && i < r + kTensorRun; ++i) run += sums[i];
    total += run;
  }
  return total;
}

}  // namespace fastopt::reduce
