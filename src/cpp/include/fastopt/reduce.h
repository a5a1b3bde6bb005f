// The canonical order of fastopt's reductions (sums of squares for norms), shared by every
// engine so that a norm is bit-identical on every CPU ISA, any thread count and the GPU:
//
//   a tensor is cut into blocks of kBlock elements from its start; in a block, element i goes
//   to double lane i % kLanes, each lane accumulating x * x + lane in element order (x, the
//   fp32 value, converted to double: add_square); the lanes fold in a fixed tree (fold_lanes);
//   the block sums add up in order into super-block sums (kSuper elements), and those in order
//   into the tensor's sum. Tensors combine in order within runs of kTensorRun, and the runs in
//   order (combine_tensors).
//
// Why double lanes: the square of a finite fp32 value (fp16 and bf16 load as fp32) is exact in
// double (at most 48 significant bits, between 2^-298 and 2^256), so a sum of squares of finite
// values neither overflows nor underflows to 0, as fp32 squares do beyond ~1.8e19 and below
// ~1e-19 (a sum of 2^64 squares of FLT_MAX is still below 1e97). Only the additions round, by
// 2^-53 each, and an exact product plus one rounded add is what an fma gives, so every target,
// fused or not, gets the same bits.
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
FASTOPT_HD double fold_lanes(double (&lanes)[kLanes]) {
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
