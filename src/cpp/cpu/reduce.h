// Multi-tensor sums of squares on the CPU engine, in the canonical order of fastopt/reduce.h:
// the same bits on every ISA and for any number of threads. Cut into pieces and tasks once;
// each run is one parallel region.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels.h"

namespace fastopt::cpu {

struct Span {
  const void* data;
  DType dtype;
  int64_t numel;
};

class Reducer {
 public:
  explicit Reducer(const std::vector<Span>& spans);

  // For every tensor: its sum of squares and its count of non-finite values.
  void run(double* sums, int64_t* nonfinite) const;

  size_t num_tensors() const { return num_tensors_; }

 private:
  struct Piece {  // one super-block of one tensor
    SumsqFn fn;
    const void* data;
    int64_t begin, end;
    size_t tensor;
  };
  size_t num_tensors_;
  std::vector<Piece> pieces_;
  std::vector<size_t> task_start_;  // task t runs pieces [task_start_[t], task_start_[t+1])
  mutable std::vector<double> piece_sum_;
  mutable std::vector<int64_t> piece_bad_;
};

}  // namespace fastopt::cpu
