#include "group.h"

#include "fastopt/reduce.h"
#include "isa.h"
#include "pool.h"

namespace fastopt::cpu {

// A segment is then at most one super-block, starting on one: the prepass's canonical order.
static_assert(Group::kTaskElems == reduce::kSuper, "tasks must be reduce.h's super-blocks");

Group::Group(RuleId rule, std::vector<TensorSlot> slots)
    : rule_(rule), isa_(active_kernels().isa), slots_(std::move(slots)) {
  const KernelSet& ks = active_kernels();
  task_start_.push_back(0);
  int64_t in_task = 0;  // elements in the task being filled
  for (const TensorSlot& t : slots_) {
    const KernelFn fn = ks.kernels[int(rule)][int(t.param_dtype)][int(t.grad_dtype)];
    const PrepassFn pre = ks.prepass[int(rule)][int(t.param_dtype)][int(t.grad_dtype)];
    const PrepassFn diag = ks.diagnosed[int(rule)][int(t.param_dtype)][int(t.grad_dtype)];
    for (int64_t b = 0; b < t.numel; b += kTaskElems) {
      const int64_t e = b + kTaskElems < t.numel ? b + kTaskElems : t.numel;
      segments_.push_back({fn, pre, diag, &t, b, e});
      in_task += e - b;
      if (in_task >= kTaskElems) {
        task_start_.push_back(segments_.size());
        in_task = 0;
      }
    }
  }
  if (task_start_.back() != segments_.size()) task_start_.push_back(segments_.size());
}

void Group::run(const void* coeffs, size_t stride, const GradTransform& transform, bool per_tensor) const {
  struct Ctx {
    const Group* g;
    const char* coeffs;
    size_t stride;
    GradTransform transform;
    bool per_tensor;
  } ctx{this, static_cast<const char*>(coeffs), stride, transform, per_tensor};
  ThreadPool::instance().run(
      int64_t(num_tasks()),
      [](void* p, int64_t task) {
        const Ctx& c = *static_cast<const Ctx*>(p);
        const Group& g = *c.g;
        for (size_t s = g.task_start_[task]; s < g.task_start_[task + 1]; ++s) {
          const Segment& seg = g.segments_[s];
          const size_t index = c.per_tensor ? size_t(seg.slot - g.slots_.data()) : size_t(seg.slot->hyper_index);
          seg.fn(c.coeffs + index * c.stride, c.transform, *seg.slot, seg.begin, seg.end);
        }
      },
      &ctx);
}

void Group::prepass(const void* coeffs, size_t stride, const GradTransform& transform, int num_sums,
                    double* sums) const {
  sums_pass(false, coeffs, stride, transform, false, num_sums, sums);
}

void Group::run_diagnosed(const void* coeffs, size_t stride, const GradTransform& transform, bool per_tensor,
                          double* sums) const {
  sums_pass(true, coeffs, stride, transform, per_tensor, 2, sums);
}

void Group::sums_pass(bool diagnosed, const void* coeffs, size_t stride, const GradTransform& transform,
                      bool per_tensor, int num_sums, double* sums) const {
  segment_sums_.resize(segments_.size() * size_t(num_sums));
  struct Ctx {
    const Group* g;
    const char* coeffs;
    size_t stride;
    GradTransform transform;
    bool diagnosed, per_tensor;
    int num_sums;
  } ctx{this, static_cast<const char*>(coeffs), stride, transform, diagnosed, per_tensor, num_sums};
  ThreadPool::instance().run(
      int64_t(num_tasks()),
      [](void* p, int64_t task) {
        const Ctx& c = *static_cast<const Ctx*>(p);
        const Group& g = *c.g;
        for (size_t s = g.task_start_[task]; s < g.task_start_[task + 1]; ++s) {
          const Segment& seg = g.segments_[s];
          const size_t index = c.per_tensor ? size_t(seg.slot - g.slots_.data()) : size_t(seg.slot->hyper_index);
          (c.diagnosed ? seg.diagnosed : seg.prepass)(c.coeffs + index * c.stride, c.transform, *seg.slot, seg.begin,
                                                      seg.end, &g.segment_sums_[s * size_t(c.num_sums)]);
        }
      },
      &ctx);
  // Segments are super-blocks in tensor order: adding them in order is the canonical sum.
  for (size_t k = 0; k < slots_.size() * size_t(num_sums); ++k) sums[k] = 0;
  for (size_t s = 0; s < segments_.size(); ++s) {
    const size_t t = size_t(segments_[s].slot - slots_.data());
    for (int k = 0; k < num_sums; ++k) sums[t * num_sums + k] += segment_sums_[s * num_sums + k];
  }
}

}  // namespace fastopt::cpu
