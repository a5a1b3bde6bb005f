// The CUDA engine's bound group, as plain C++ (no CUDA headers), so that the Python module
// can be compiled by the host compiler. A group uploads its tensor table and chunk list to
// device memory once; a step is one kernel launch on the caller's stream, for all tensors.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fastopt/element.h"
#include "fastopt/rules/registry.h"
#include "fastopt/tensor_list.h"

namespace fastopt::cuda {

constexpr int kMaxGroups = 32;  // param groups per optimizer (coefficients travel as kernel arguments)

class Group {
 public:
  // slots hold device pointers on `device`. Throws std::runtime_error on a CUDA error.
  Group(RuleId rule, const std::vector<TensorSlot>& slots, int device, int num_groups);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  // One step with coefficients computed on the host: coeffs holds num_groups Coeffs of the
  // rule, `stride` bytes apart. Enqueued on `stream` (a cudaStream_t); never synchronises.
  // Every grad goes through `transform` first (identity by default).
  void run(const void* coeffs, size_t stride, void* stream, const GradTransform& transform = {}) const;

  // One capturable step: the coefficients are computed on the device from the hyperparameters
  // (num_groups Hyper structs, `stride` bytes apart) with each group's lr and step count read
  // from device memory (lr_device() and steps_device()); the step counts are incremented by
  // the same launch. Safe to capture in a CUDA graph and replay while the lrs change.
  void run_capturable(const void* hypers, size_t stride, void* stream, const GradTransform& transform = {}) const;

  // Copies the device-resident step counts (num_groups of them) to `out`, in order on
  // `stream`, and waits for them: for checkpoints, not for the step loop.
  void read_steps(int64_t* out, void* stream) const;

  double* lr_device() const { return lr_; }
  int64_t* steps_device() const { return steps_; }
  RuleId rule() const { return rule_; }
  int device() const { return device_; }
  int num_groups() const { return num_groups_; }
  int64_t num_chunks() const { return num_chunks_; }

 private:
  RuleId rule_;
  int device_, num_groups_;
  int64_t num_chunks_ = 0;
  TensorSlot* slots_dev_ = nullptr;
  void* chunks_dev_ = nullptr;
  double* lr_ = nullptr;       // device: one per group (capturable steps)
  int64_t* steps_ = nullptr;   // device: one per group (capturable steps)
  unsigned* done_ = nullptr;   // device: blocks finished in the current capturable step
};

int device_count();  // 0 where there is no driver or no device

// Writes value into *dst (memory of `device`) on `stream`, as a kernel: capturable, no host sync.
void set_device_value(double* dst, double value, int device, void* stream);
void set_device_value(int64_t* dst, int64_t value, int device, void* stream);

// dst[i] = exact fp32 value of src[i], on `device`.
void widen(const void* src, DType src_dtype, float* dst, int64_t n, int device, void* stream);

// Whether `stream` is being captured into a CUDA graph.
bool stream_is_capturing(void* stream);

}  // namespace fastopt::cuda
