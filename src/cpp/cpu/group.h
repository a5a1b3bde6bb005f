// A bound group: the tensor table, cut once into segments and tasks, with each tensor's
// kernel resolved for the active ISA. A step is one parallel region over the tasks (two for
// a two-pass rule with tensors too large to stay in cache between its passes).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "fastopt/optimizer.h"
#include "kernels.h"

namespace fastopt::cpu {

class Group {
 public:
  // Elements per task of the passes that sum (one super-block of reduce.h, so that their sums
  // keep the canonical order): large enough to amortise scheduling, small enough to balance
  // two threads on a shared machine; a multiple of every vector width.
  static constexpr int64_t kTaskElems = 131072;
  // The plain update sums nothing, so its tasks may be smaller: about a quarter of a thread's
  // share of the group (balanced over the threads at mid sizes: 196608 elements made one task
  // of 131072 and one of 65536, and a thread waited), at least this many elements and a
  // multiple of 8-bit state's block. A group of fewer than twice as many runs on the caller
  // alone: a worker that slept (one that the step finds more than ThreadPool::kSpinNs after the
  // last region) takes 10 to 50 us to wake, about what a thread alone takes over it.
  static constexpr int64_t kMinUpdateTaskElems = 32768;
  // A two-pass rule's tensors of at most this many elements take both passes in one task, so
  // that the update reads what the first pass left in L2 (LAMB: 12 B per element to re-read;
  // the size of a task, so no tensor loses a thread to it).
  static constexpr int64_t kFusedElems = 131072;

  Group(RuleId rule, std::vector<TensorSlot> slots);
  Group(const Group&) = delete;  // segments point into slots_
  Group& operator=(const Group&) = delete;

  // Runs one step of a one-pass rule. coeffs points at an array of the rule's Coeffs, one per
  // hyper_index, `stride` bytes apart; every grad goes through `transform`. With diag (2
  // doubles per tensor), the update also sums, per tensor, the squared updates and the
  // squared old values (fp32 values, canonical order of fastopt/reduce.h).
  void run(const void* coeffs, size_t stride, const GradTransform& transform = {}, double* diag = nullptr) const;

  // Makes a tensor's Coeffs (at out) from its group's Coeffs and its num_sums sums.
  using FinishFn = void (*)(const void* coeffs, const double* sums, const TensorSlot& t, void* out);

  // Runs one step of a two-pass rule (coeffs, transform and diag as for run): the first pass
  // gives each tensor its sums (canonical order), finish() its Coeffs (coeffs_size bytes),
  // then the update pass runs with them. `combine`, where set, may replace the sums first
  // (StepOptions::combine_sums); every tensor then takes its passes apart. Tensors with
  // factored state (fastopt/factored.h) take the factor pass and step before their first pass:
  // a tensor that takes its passes apart, in two parallel regions before the first pass's.
  void run_two_pass(const void* coeffs, size_t stride, const GradTransform& transform, int num_sums,
                    FinishFn finish, size_t coeffs_size, const StepOptions::CombineSums& combine = {},
                    double* diag = nullptr) const;

  // Takes the grad pointers and dtypes of `slots` (the same tensors as bound, new grads).
  void set_grads(const std::vector<TensorSlot>& slots);

  RuleId rule() const { return rule_; }
  const char* isa() const { return isa_; }
  // The tasks of a one-pass rule's update (the passes that sum take reduce.h's super-blocks).
  size_t num_tasks() const { return update_task_start_.size() - 1; }

 private:
  struct Segment {  // one task's piece of one tensor: a super-block of reduce.h or less
    KernelFn fn;
    PrepassFn prepass, diagnosed;
    PrepassFn fused;  // set where the segment is a whole tensor taking both passes at once
    const TensorSlot* slot;
    int64_t begin, end;
  };
  struct FactorRun {  // pieces of the factor pass, or matrices of the factor step (factored.h), of a factored tensor
    const TensorSlot* slot;
    int64_t begin, end;
    bool fused;  // its tensor takes its factor pass and step with its other passes (Segment::fused)
  };
  RuleId rule_;
  const char* isa_;
  std::vector<TensorSlot> slots_;
  std::vector<Segment> segments_;
  std::vector<size_t> task_start_;  // task t runs segments [task_start_[t], task_start_[t+1])
  // The plain update's (run without diagnostics): segments of at most a task of its size.
  std::vector<Segment> update_segments_;
  std::vector<size_t> update_task_start_;
  bool all_fused_ = true;           // no segment needs a second parallel region
  // Factored state: the pieces of the factor pass, cut into tasks as the segments are; the
  // factored tensors; the engine's scratch they point into (TensorSlot::factor_sums, row_value).
  std::vector<FactorRun> pieces_;  // runs of pieces of the factor pass
  std::vector<size_t> piece_task_start_;
  std::vector<FactorRun> matrices_;  // runs of matrices of the factor step
  std::vector<size_t> matrix_task_start_;
  FactorFn factor_ = nullptr;
  FactorStepFn factor_step_ = nullptr;
  std::vector<double> factor_scratch_;
  std::vector<float> row_values_;

  // f(index) for every index of [starts[t], starts[t + 1]) for every task t, in one parallel
  // region over the tasks.
  template <class F>
  void each_task(const std::vector<size_t>& starts, F&& f) const;
  template <class F>
  void each_segment(F&& f) const { each_task(task_start_, f); }
  size_t tensor_of(const Segment& s) const { return size_t(s.slot - slots_.data()); }
  // sums[t * k + j] = the in-order sum of partials[s * k + j] over tensor t's segments s.
  void add_segments(const std::vector<double>& partials, int k, double* sums) const;
  mutable std::vector<double> partials_, diag_partials_, tensor_sums_;  // scratch
  mutable std::vector<char> tensor_coeffs_;
};

}  // namespace fastopt::cpu
