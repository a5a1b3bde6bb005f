// Factored state, the engines' side (Adafactor's second moment: Shazeer & Stern, 2018). A rule
// that declares `factored` keeps, for a param of >= 2 dims seen as a batch of rows x cols
// matrices (its last two dims), one value per row (stream 0) and one per column (stream 1)
// instead of one per element; params of < 2 dims keep its `unfactored_state` streams of one value
// per element, as any rule's. Each step of such a rule then runs, for its factored tensors:
//
//   the factor pass: per row and per column, the sum of the squared (transformed) grads, in the
//     canonical order of fastopt/reduce.h, by pieces (a group of rows x a block of columns) that
//     the engine's threads or thread blocks share; partial sums into TensorSlot::factor_sums;
//   the factor step: the partials combined in order; each row's and column's new value
//     Rule::factor(c, old, sum, n) (n: the elements summed), stored; then per matrix, from the sum
//     of its rows' new values (in order, in double), each row's Rule::row_value(c, row, sum,
//     rows) into TensorSlot::row_value;
//
// and then its two passes, where s[0] of an element is its row's row_value and s[1] its
// column's value (element.h: load_factored); the passes never write factored state.
//
// Engine scratch per factored tensor, in doubles: matrices * rows * blocks row partials (row q's
// block b at q * blocks + b), then matrices * groups * cols column partials (column c of matrix m,
// group g at (m * groups + g) * cols + c): at most a double per row and per column of each
// matrix plus 1/64 of one per element; and a float per row (row_value).
#pragma once
#include <cstdint>

#include "fastopt/element.h"
#include "fastopt/reduce.h"
#include "fastopt/tensor_list.h"

namespace fastopt::factored {

FASTOPT_HD int64_t matrices(const TensorSlot& t) { return t.numel / (t.rows * t.cols); }
// Blocks of reduce::kBlock columns per row.
FASTOPT_HD int64_t blocks(const TensorSlot& t) { return (t.cols + reduce::kBlock - 1) / reduce::kBlock; }
// Groups of rows per matrix (reduce::factor_rows each).
FASTOPT_HD int64_t groups(const TensorSlot& t) {
  const int64_t g = reduce::factor_rows(t.cols);
  return (t.rows + g - 1) / g;
}
// Pieces of the factor pass: (matrix, group, block), numbered in this order.
FASTOPT_HD int64_t pieces(const TensorSlot& t) { return matrices(t) * groups(t) * blocks(t); }
FASTOPT_HD int64_t row_partials_size(const TensorSlot& t) { return matrices(t) * t.rows * blocks(t); }
FASTOPT_HD int64_t scratch_size(const TensorSlot& t) {
  return row_partials_size(t) + matrices(t) * groups(t) * t.cols;
}

struct Piece {
  int64_t row, rows;  // its first row (counted over the whole tensor) and its row count
  int64_t col, cols;  // its first column and its column count (at most reduce::kBlock)
  double* row_sums;   // row r's block sum at row_sums[r * blocks]
  double* col_sums;   // column c's sum over these rows at col_sums[c]
};

FASTOPT_HD Piece piece(const TensorSlot& t, int64_t k) {
  const int64_t nb = blocks(t), ng = groups(t), per = reduce::factor_rows(t.cols);
  const int64_t block = k % nb, group = (k / nb) % ng, m = k / (nb * ng);
  Piece p;
  p.row = m * t.rows + group * per;
  p.rows = t.rows - group * per < per ? t.rows - group * per : per;
  p.col = block * reduce::kBlock;
  p.cols = t.cols - p.col < reduce::kBlock ? t.cols - p.col : reduce::kBlock;
  p.row_sums = t.factor_sums + p.row * nb + block;
  p.col_sums = t.factor_sums + row_partials_size(t) + (m * ng + group) * t.cols + p.col;
  return p;
}

// After the factor pass: row q's sum (its block sums added in order), and column j's (j =
// matrix * cols + column: its group sums added in order).
FASTOPT_HD double row_sum(const TensorSlot& t, int64_t q) {
  const int64_t nb = blocks(t);
  double sum = 0;
  for (int64_t b = 0; b < nb; ++b) sum += t.factor_sums[q * nb + b];
  return sum;
}
FASTOPT_HD double col_sum(const TensorSlot& t, int64_t j) {
  const int64_t ng = groups(t), m = j / t.cols;
  const double* p = t.factor_sums + row_partials_size(t) + m * ng * t.cols + (j - m * t.cols);
  double sum = 0;
  for (int64_t g = 0; g < ng; ++g) sum += p[g * t.cols];
  return sum;
}

// Row q's new value (stream 0), and column j's (stream 1).
template <class Rule>
FASTOPT_HD void step_row(const typename Rule::Coeffs& c, const TensorSlot& t, int64_t q, uint64_t round_key) {
  store_stream<float>(t, 0, q, Rule::factor(c, load_stream<float>(t, 0, q), row_sum(t, q), t.cols), round_key);
}
template <class Rule>
FASTOPT_HD void step_col(const typename Rule::Coeffs& c, const TensorSlot& t, int64_t j, uint64_t round_key) {
  store_stream<float>(t, 1, j, Rule::factor(c, load_stream<float>(t, 1, j), col_sum(t, j), t.rows), round_key);
}

// The row values of matrix m, from its rows' new values as stored.
template <class Rule>
FASTOPT_HD void row_values(const typename Rule::Coeffs& c, const TensorSlot& t, int64_t m) {
  double sum = 0;
  for (int64_t r = m * t.rows; r < (m + 1) * t.rows; ++r) sum += double(load_stream<float>(t, 0, r));
  for (int64_t r = m * t.rows; r < (m + 1) * t.rows; ++r) {
    t.row_value[r] = Rule::row_value(c, load_stream<float>(t, 0, r), sum, t.rows);
  }
}

// The factor step of matrices [begin, end) of a tensor, in one thread (the matrices' rows,
// columns and row values are their own: threads may share a tensor's matrices).
template <class Rule>
FASTOPT_HD void step_matrices(const typename Rule::Coeffs& c, const TensorSlot& t, int64_t begin, int64_t end,
                              uint64_t round_key) {
  for (int64_t q = begin * t.rows; q < end * t.rows; ++q) step_row<Rule>(c, t, q, round_key);
  for (int64_t j = begin * t.cols; j < end * t.cols; ++j) step_col<Rule>(c, t, j, round_key);
  for (int64_t m = begin; m < end; ++m) row_values<Rule>(c, t, m);
}

}  // namespace fastopt::factored
