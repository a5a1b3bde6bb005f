// A bound group: the tensor table, cut once into segments and tasks, with each tensor's
// kernel resolved for the active ISA. A step is one parallel region over the tasks.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels.h"

namespace fastopt::cpu {

class Group {
 public:
  // Elements per task: large enough to amortise scheduling, small enough to balance
  // two threads on a shared machine; a multiple of every vector width.
  static constexpr int64_t kTaskElems = 131072;

  Group(RuleId rule, std::vector<TensorSlot> slots);
  Group(const Group&) = delete;  // segments point into slots_
  Group& operator=(const Group&) = delete;

  // Runs one step. coeffs points at an array of the rule's Coeffs, one per hyper_index (one
  // per tensor when per_tensor), `stride` bytes apart; every grad goes through `transform`.
  void run(const void* coeffs, size_t stride, const GradTransform& transform = {}, bool per_tensor = false) const;

  // The first pass of a two-pass rule (coeffs as for run, one per hyper_index): sums gets
  // num_sums doubles per tensor, in the canonical order of fastopt/reduce.h.
  void prepass(const void* coeffs, size_t stride, const GradTransform& transform, int num_sums, double* sums) const;

  // run() that also sums, per tensor, the squared updates and the squared old values (fp32
  // values, canonical order): sums gets 2 doubles per tensor.
  void run_diagnosed(const void* coeffs, size_t stride, const GradTransform& transform, bool per_tensor,
                     double* sums) const;

  RuleId rule() const { return rule_; }
  const char* isa() const { return isa_; }
  size_t num_tasks() const { return task_start_.size() - 1; }

 private:
  struct Segment {  // one task's piece of one tensor: a super-block of reduce.h or less
    KernelFn fn;
    PrepassFn prepass, diagnosed;
    const TensorSlot* slot;
    int64_t begin, end;
  };
  RuleId rule_;
  const char* isa_;
  std::vector<TensorSlot> slots_;
  std::vector<Segment> segments_;
  std::vector<size_t> task_start_;  // task t runs segments [task_start_[t], task_start_[t+1])
  // A pass that sums per segment, then adds the segments of each tensor in order.
  void sums_pass(bool diagnosed, const void* coeffs, size_t stride, const GradTransform& transform, bool per_tensor,
                 int num_sums, double* sums) const;
  mutable std::vector<double> segment_sums_;  // partials, num_sums per segment
};

}  // namespace fastopt::cpu
