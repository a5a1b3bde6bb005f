#include "reduce.h"

#include "fastopt/reduce.h"
#include "isa.h"
#include "pool.h"

namespace fastopt::cpu {

Reducer::Reducer(const std::vector<Span>& spans) : num_tensors_(spans.size()) {
  const KernelSet& ks = active_kernels();
  task_start_.push_back(0);
  int64_t in_task = 0;
  for (size_t t = 0; t < spans.size(); ++t) {
    for (int64_t b = 0; b < spans[t].numel; b += reduce::kSuper) {
      const int64_t e = b + reduce::kSuper < spans[t].numel ? b + reduce::kSuper : spans[t].numel;
      pieces_.push_back({ks.sumsq[int(spans[t].dtype)], spans[t].data, b, e, t});
      in_task += e - b;
      if (in_task >= reduce::kSuper) {
        task_start_.push_back(pieces_.size());
        in_task = 0;
      }
    }
  }
  if (task_start_.back() != pieces_.size()) task_start_.push_back(pieces_.size());
  piece_sum_.resize(pieces_.size());
  piece_bad_.resize(pieces_.size());
}

void Reducer::run(double* sums, int64_t* nonfinite) const {
  ThreadPool::instance().run(
      int64_t(task_start_.size() - 1),
      [](void* p, int64_t task) {
        const Reducer& r = *static_cast<const Reducer*>(p);
        for (size_t k = r.task_start_[task]; k < r.task_start_[task + 1]; ++k) {
          const Piece& piece = r.pieces_[k];
          piece.fn(piece.data, piece.begin, piece.end, &r.piece_sum_[k], &r.piece_bad_[k]);
        }
      },
      const_cast<Reducer*>(this));
  for (size_t t = 0; t < num_tensors_; ++t) {
    sums[t] = 0;
    nonfinite[t] = 0;
  }
  for (size_t k = 0; k < pieces_.size(); ++k) {  // in order: the canonical sum of super-blocks
    sums[pieces_[k].tensor] += piece_sum_[k];
    nonfinite[pieces_[k].tensor] += piece_bad_[k];
  }
}

}  // namespace fastopt::cpu
