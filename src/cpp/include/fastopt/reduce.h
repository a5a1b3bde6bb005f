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
//
// Factored tensors (a batch of rows x cols matrices: fastopt/factored.h) also take per-row and
// per-column sums of squares, in their own canonical order:
//
//   a row is cut into blocks of kBlock columns from its start; in a block, column c goes to
//   double lane c % kRowLanes, each lane accumulating in column order; the lanes fold in the
//   fixed tree (fold_used); the block sums add up in order into the row's sum;
//   a column of each matrix is cut into groups of factor_rows(cols) rows from the matrix's first
//   row; in a group, the rows add up in order; the group sums add up in order into its sum.
//
// kRowLanes is 256 rather than kLanes so that a GPU thread block of 256 threads holds one lane
// per thread (column c0 + t + 256 j) and the column chains (a thread per column) in the same
// registers: one read of the grads gives both. A group of one block of columns is about a
// super-block, the task of a thread (CPU) or of a thread block (GPU).
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

constexpr int kRowLanes = 256;

// Rows per group of a factored tensor's column sums (cols >= 1).
FASTOPT_HD int64_t factor_rows(int64_t cols) { return kSuper / (cols < kBlock ? cols : kBlock); }

// The fixed tree over N lanes (lane l += lane l + w, for w = N/2, ..., 1) where only the first
// `used` lanes are set: the others count as +0 and are not read. Adding +0 to a sum of squares
// (>= +0, or NaN) leaves it as it is, so this is the whole tree's result.
template <int N>
FASTOPT_HD double fold_used(double (&lanes)[N], int used) {
  for (int w = N / 2; w >= 1; w /= 2) {
    if (used >= 2 * w) {  // (a whole level: a loop the compiler vectorizes, the same adds)
      for (int l = 0; l < w; ++l) lanes[l] = lanes[l] + lanes[l + w];
    } else {
      for (int l = 0; l + w < used; ++l) lanes[l] = lanes[l] + lanes[l + w];
    }
    if (used > w) used = w;
  }
  return used > 0 ? lanes[0] : 0.0;
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
