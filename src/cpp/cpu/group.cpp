#include "group.h"

#include <algorithm>

#include "fastopt/factored.h"
#include "fastopt/numeric/quantize8.h"
#include "fastopt/reduce.h"
#include "isa.h"
#include "pool.h"

namespace fastopt::cpu {

// A segment is then at most one super-block, starting on one: the reductions' canonical order.
static_assert(Group::kTaskElems == reduce::kSuper, "tasks must be reduce.h's super-blocks");
static_assert(Group::kFusedElems <= reduce::kSuper, "a fused tensor's first pass must be one super-block");
static_assert(Group::kMinUpdateTaskElems % quant::kQuantBlock == 0 && Group::kTaskElems % quant::kQuantBlock == 0,
              "8-bit state is updated by whole blocks");

void Group::set_grads(const std::vector<TensorSlot>& slots) {
  for (size_t i = 0; i < slots_.size(); ++i) {
    slots_[i].grad = slots[i].grad;
    slots_[i].grad_dtype = slots[i].grad_dtype;
  }
}

Group::Group(RuleId rule, std::vector<TensorSlot> slots)
    : rule_(rule), isa_(active_kernels().isa), slots_(std::move(slots)) {
  const KernelSet& ks = active_kernels();
  // Cuts every tensor into segments of at most `task` elements from its start, and those into
  // tasks of about `task` elements (a task may go on into the next tensor's segments).
  const auto cut_segments = [&](int64_t task, bool fusing, std::vector<Segment>& segments, std::vector<size_t>& starts) {
    starts.push_back(0);
    int64_t in_task = 0;
    for (const TensorSlot& t : slots_) {
      const int pd = int(t.param_dtype);
      const PrepassFn fused = fusing && t.numel <= kFusedElems ? ks.fused[int(rule)][pd] : nullptr;
      for (int64_t b = 0; b < t.numel; b += task) {
        const int64_t e = b + task < t.numel ? b + task : t.numel;
        segments.push_back(
            {ks.kernels[int(rule)][pd], ks.prepass[int(rule)][pd], ks.diagnosed[int(rule)][pd], fused, &t, b, e});
        in_task += e - b;
        if (in_task >= task) starts.push_back(segments.size()), in_task = 0;
      }
    }
    if (starts.back() != segments.size()) starts.push_back(segments.size());
  };
  cut_segments(kTaskElems, true, segments_, task_start_);
  all_fused_ = std::all_of(segments_.begin(), segments_.end(), [](const Segment& s) { return s.fused; });
  int64_t total = 0;
  for (const TensorSlot& t : slots_) total += t.numel;
  const int64_t share = total / (4 * int64_t(ThreadPool::instance().num_threads()));
  const int64_t blocks = (share + quant::kQuantBlock - 1) / quant::kQuantBlock;
  const int64_t task = total < 2 * kMinUpdateTaskElems ? 2 * kMinUpdateTaskElems  // (one task)
                                                      : std::clamp(blocks * quant::kQuantBlock, kMinUpdateTaskElems, kTaskElems);
  cut_segments(task, false, update_segments_, update_task_start_);

  // Factored state: scratch for each factored tensor, the runs of pieces of its factor pass
  // (each piece about a super-block, or a small matrix: factored.h) cut into tasks of about
  // kTaskElems elements, and the runs of matrices of its factor step, into tasks of about
  // kTaskElems / 8 rows and columns (a batch of small matrices is shared by the threads).
  size_t doubles = 0, floats = 0;
  for (const TensorSlot& t : slots_) {
    if (t.rows) doubles += size_t(factored::scratch_size(t)), floats += size_t(factored::matrices(t) * t.rows);
  }
  factor_scratch_.resize(doubles);
  row_values_.resize(floats);
  doubles = floats = 0;
  // Splits [0, count) of a tensor into runs that end where their task's load reaches `task` or
  // the tensor ends (a task may go on into the next tensor's runs).
  int64_t piece_load = 0, matrix_load = 0;
  const auto cut = [](const TensorSlot& t, bool fused, int64_t count, int64_t task, auto load, int64_t& in_task,
                      std::vector<FactorRun>& runs, std::vector<size_t>& starts) {
    int64_t begin = 0;
    for (int64_t k = 0; k < count; ++k) {
      in_task += load(k);
      const bool full = in_task >= task;
      if (full || k + 1 == count) {
        runs.push_back({&t, begin, k + 1, fused});
        begin = k + 1;
      }
      if (full) starts.push_back(runs.size()), in_task = 0;
    }
  };
  piece_task_start_.push_back(0);
  matrix_task_start_.push_back(0);
  for (TensorSlot& t : slots_) {
    if (!t.rows) continue;
    t.factor_sums = factor_scratch_.data() + doubles;
    t.row_value = row_values_.data() + floats;
    doubles += size_t(factored::scratch_size(t)), floats += size_t(factored::matrices(t) * t.rows);
    const bool fused = t.numel <= kFusedElems && ks.fused[int(rule)][int(t.param_dtype)];
    cut(t, fused, factored::pieces(t), kTaskElems, [&t](int64_t k) {
      const factored::Piece p = factored::piece(t, k);
      return p.rows * p.cols;
    }, piece_load, pieces_, piece_task_start_);
    cut(t, fused, factored::matrices(t), kTaskElems / 8, [&t](int64_t) { return t.rows + t.cols; }, matrix_load,
        matrices_, matrix_task_start_);
  }
  if (piece_task_start_.back() != pieces_.size()) piece_task_start_.push_back(pieces_.size());
  if (matrix_task_start_.back() != matrices_.size()) matrix_task_start_.push_back(matrices_.size());
  factor_ = ks.factor;
  factor_step_ = ks.factor_step[int(rule)];
}

template <class F>
void Group::each_task(const std::vector<size_t>& starts, F&& f) const {
  struct Ctx {
    const std::vector<size_t>* starts;
    std::remove_reference_t<F>* f;
  } ctx{&starts, &f};
  ThreadPool::instance().run(
      int64_t(starts.size() - 1),
      [](void* p, int64_t task) {
        const Ctx& c = *static_cast<const Ctx*>(p);
        for (size_t s = (*c.starts)[task]; s < (*c.starts)[task + 1]; ++s) (*c.f)(s);
      },
      &ctx);
}

void Group::add_segments(const std::vector<double>& partials, int k, double* sums) const {
  for (size_t j = 0; j < slots_.size() * size_t(k); ++j) sums[j] = 0;
  for (size_t s = 0; s < segments_.size(); ++s) {  // super-blocks in tensor order: the canonical sum
    for (int j = 0; j < k; ++j) sums[tensor_of(segments_[s]) * k + j] += partials[s * k + j];
  }
}

void Group::run(const void* coeffs, size_t stride, const GradTransform& transform, double* diag) const {
  const char* c = static_cast<const char*>(coeffs);
  const GradTransform x = transform;
  if (!diag) {
    each_task(update_task_start_, [&](size_t s) {
      const Segment& seg = update_segments_[s];
      seg.fn(c + size_t(seg.slot->hyper_index) * stride, x, *seg.slot, seg.begin, seg.end);
    });
    return;
  }
  diag_partials_.assign(segments_.size() * 2, 0.0);
  each_segment([&](size_t s) {
    const Segment& seg = segments_[s];
    seg.diagnosed(c + size_t(seg.slot->hyper_index) * stride, x, *seg.slot, seg.begin, seg.end, &diag_partials_[2 * s]);
  });
  add_segments(diag_partials_, 2, diag);
}

void Group::run_two_pass(const void* coeffs, size_t stride, const GradTransform& transform, int num_sums,
                         FinishFn finish, size_t coeffs_size, const StepOptions::CombineSums& combine,
                         double* diag) const {
  const char* c = static_cast<const char*>(coeffs);
  const GradTransform x = transform;
  const size_t k = size_t(num_sums);
  partials_.assign(segments_.size() * k, 0.0);
  diag_partials_.assign(diag ? segments_.size() * 2 : 0, 0.0);
  const bool fuse = !combine;
  // The factor pass and step of the factored tensors that take their passes apart (the others'
  // are part of their fused task). Whole-tensor tasks for the step: it is O(rows + cols).
  if (std::any_of(pieces_.begin(), pieces_.end(), [&](const FactorRun& p) { return !(p.fused && fuse); })) {
    each_task(piece_task_start_, [&](size_t k) {
      const FactorRun& r = pieces_[k];
      if (!(r.fused && fuse)) factor_(x, *r.slot, r.begin, r.end);
    });
    each_task(matrix_task_start_, [&](size_t k) {
      const FactorRun& r = matrices_[k];
      if (!(r.fused && fuse)) factor_step_(c + size_t(r.slot->hyper_index) * stride, x, *r.slot, r.begin, r.end);
    });
  }
  // Region 1: small tensors take both passes; the others, their first pass.
  each_segment([&](size_t s) {
    const Segment& seg = segments_[s];
    const char* gc = c + size_t(seg.slot->hyper_index) * stride;
    if (seg.fused && fuse) seg.fused(gc, x, *seg.slot, seg.begin, seg.end, diag ? &diag_partials_[2 * s] : nullptr);
    else seg.prepass(gc, x, *seg.slot, seg.begin, seg.end, &partials_[k * s]);
  });
  if (!all_fused_ || !fuse) {
    tensor_sums_.resize(slots_.size() * k);
    add_segments(partials_, num_sums, tensor_sums_.data());
    if (combine) combine(tensor_sums_.data(), slots_.size(), num_sums);
    tensor_coeffs_.resize(slots_.size() * coeffs_size);
    for (const Segment& seg : segments_) {
      const size_t t = tensor_of(seg);
      if ((!seg.fused || !fuse) && seg.begin == 0) {
        finish(c + size_t(seg.slot->hyper_index) * stride, &tensor_sums_[t * k], *seg.slot,
               &tensor_coeffs_[t * coeffs_size]);
      }
    }
    // Region 2: the update of the tensors that took only their first pass.
    each_segment([&](size_t s) {
      const Segment& seg = segments_[s];
      if (seg.fused && fuse) return;
      const char* tc = &tensor_coeffs_[tensor_of(seg) * coeffs_size];
      if (diag) seg.diagnosed(tc, x, *seg.slot, seg.begin, seg.end, &diag_partials_[2 * s]);
      else seg.fn(tc, x, *seg.slot, seg.begin, seg.end);
    });
  }
  if (diag) add_segments(diag_partials_, 2, diag);
}

}  // namespace fastopt::cpu
