#include "group.h"

#include "isa.h"
#include "pool.h"

namespace fastopt::cpu {

Group::Group(RuleId rule, std::vector<TensorSlot> slots)
    : rule_(rule), isa_(active_kernels().isa), slots_(std::move(slots)) {
  const KernelSet& ks = active_kernels();
  task_start_.push_back(0);
  int64_t in_task = 0;  // elements in the task being filled
  for (const TensorSlot& t : slots_) {
    const KernelFn fn = ks.kernels[int(rule)][int(t.param_dtype)][int(t.grad_dtype)];
    for (int64_t b = 0; b < t.numel; b += kTaskElems) {
      const int64_t e = b + kTaskElems < t.numel ? b + kTaskElems : t.numel;
      segments_.push_back({fn, &t, b, e});
      in_task += e - b;
      if (in_task >= kTaskElems) {
        task_start_.push_back(segments_.size());
        in_task = 0;
      }
    }
  }
  if (task_start_.back() != segments_.size()) task_start_.push_back(segments_.size());
}

void Group::run(const void* coeffs, size_t stride, const GradTransform& transform) const {
  struct Ctx {
    const Group* g;
    const char* coeffs;
    size_t stride;
    GradTransform transform;
  } ctx{this, static_cast<const char*>(coeffs), stride, transform};
  ThreadPool::instance().run(
      int64_t(num_tasks()),
      [](void* p, int64_t task) {
        const Ctx& c = *static_cast<const Ctx*>(p);
        const Group& g = *c.g;
        for (size_t s = g.task_start_[task]; s < g.task_start_[task + 1]; ++s) {
          const Segment& seg = g.segments_[s];
          seg.fn(c.coeffs + seg.slot->hyper_index * c.stride, c.transform, *seg.slot, seg.begin, seg.end);
        }
      },
      &ctx);
}

}  // namespace fastopt::cpu
