// The CUDA engine's bound group, as plain C++ (no CUDA headers), so that the Python module
// can be compiled by the host compiler. A group uploads its tensor tables to device memory
// once; a step is a few kernel launches on the caller's stream (one for a plain step), for all
// tensors, and never synchronises the host.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fastopt/element.h"
#include "fastopt/rules/registry.h"
#include "fastopt/schedule.h"
#include "fastopt/tensor_list.h"

namespace fastopt::cuda {

constexpr int kMaxGroups = 32;  // param groups per optimizer (hyperparameters travel as kernel arguments)

// One step's inputs. The device-resident step counts (steps_device()) advance at the end of
// the step unless it is skipped.
struct StepArgs {
  const void* hypers = nullptr;  // num_groups Hyper structs of the group's rule, `stride` bytes apart
  size_t stride = 0;
  // The coefficients: num_groups Coeffs of the rule computed on the host, `coeffs_stride` bytes
  // apart (the CPU engine's very bits); or, where null, computed on the device from the Hyper
  // structs with each group's device count + 1 as the step (and its schedule or device lr).
  const void* coeffs = nullptr;
  size_t coeffs_stride = 0;
  void* stream = nullptr;  // a cudaStream_t
  // Every grad is multiplied by the unscale factor, then by the clip-by-norm coefficient, then
  // clamped to +-transform.clip_value when > 0. The factor is transform.scale, or, when
  // loss_scale is set, float(1 / double(*loss_scale)) (a float32 on the device).
  GradTransform transform;  // (its round_key is made on the device, from seed and round_step)
  const float* loss_scale = nullptr;
  // Stochastic rounding draws the bits of step round_step (0: the largest device count + 1).
  uint64_t seed = 0;
  int64_t round_step = 0;
  bool lr_on_device = false;  // capturable: each group's lr from lr_device(), not its Hyper
  // The grad norm pass: per-tensor sums of squares and non-finite counts of the raw grads, in
  // the canonical order of fastopt/reduce.h, then the global norm (times the unscale factor).
  // Implied by skip_nonfinite, max_grad_norm > 0, grad_norm_out and diagnostics.
  bool grad_norm = false;
  bool skip_nonfinite = false;  // skip the step on the device when any grad is inf or NaN
  double max_grad_norm = 0;     // > 0: clip by global norm, torch's coefficient in float32
  double* grad_norm_out = nullptr;  // device: the global grad norm
  bool* skipped_out = nullptr;      // device: whether the step was skipped
  // Copy the skip decision to pinned host memory after the step, for poll_skip(): the host's
  // step counts stay exact without waiting for the GPU (not while capturing a graph).
  bool track_skip = false;
  // device, 4 x num_tensors: grad norm, update norm, param norm, update/param ratio (the last
  // three NaN for a skipped step), and num_tensors non-finite grad counts; the update pass then
  // also sums updates and params.
  double* diagnostics = nullptr;
  int64_t* nonfinite = nullptr;
  // device, num_tensors each: the grads' sums of squares and non-finite counts, given (an
  // accumulation's value sums): the grad norm pass is not run, the control kernel takes them.
  const double* grad_sumsq = nullptr;
  const int64_t* grad_nonfinite = nullptr;
  // device, num_tensors each: a rule that sums_values sums its new values (their squares and
  // non-finite counts) as the update pass writes them (StepOptions::value_sums).
  double* value_sumsq = nullptr;
  int64_t* value_nonfinite = nullptr;
  // A pass that is not a step (a mode switch, host coefficients): the step counts stay, and
  // stochastic rounding draws the bits of `round_key` (GradTransform::round_key, made on the host).
  bool not_a_step = false;
  uint64_t round_key = 0;
};

class Group {
 public:
  // slots hold device pointers on `device`. Throws std::runtime_error on a CUDA error.
  Group(RuleId rule, const std::vector<TensorSlot>& slots, int device, int num_groups);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  // One step, enqueued on args.stream. Safe to capture in a CUDA graph: it reads lrs, step
  // counts, schedules and the loss scale from device memory when told to, so a replay sees
  // their current values.
  void step(const StepArgs& args);

  // Takes the grad pointers and dtypes of `slots` (the same tensors as bound, new grads): the
  // device table is rewritten on `stream` by kernels, in order with the steps enqueued there
  // (capturable: each replay of a graph that captured them writes them again).
  void set_grads(const std::vector<TensorSlot>& slots, void* stream);

  // Group j's lr is lr_at(*schedule, steps taken) on the device from now on (null: its Hyper's
  // or device lr again). Enqueued on `stream` (a kernel: capturable, no host sync).
  void set_schedule(int group, const Schedule* schedule, void* stream) const;

  // Torch's GradScaler update from the last step's skip decision, on the device: after a
  // skipped step *scale = max(*scale * backoff, min_scale) and *clean_steps = 0; else
  // ++*clean_steps, and at `interval` the scale grows by `growth` (when the result is finite)
  // and the count restarts. *floor_skips counts the skipped steps in a row whose scale was
  // already min_scale (0 after any other step).
  void update_loss_scale(float* scale, int32_t* clean_steps, int32_t* floor_skips, double growth, double backoff,
                         int32_t interval, float min_scale, void* stream) const;

  // The skip decision of the last step run with track_skip: -1 while its copy to the host
  // has not completed (never waits), else 1 (skipped) or 0; -1 again once read.
  int poll_skip() const;

  // Copies the device-resident step counts (num_groups of them) to `out`, in order on
  // `stream`, and waits for them: for checkpoints, not for the step loop.
  void read_steps(int64_t* out, void* stream) const;

  double* lr_device() const { return lr_; }
  int64_t* steps_device() const { return steps_; }
  RuleId rule() const { return rule_; }
  int device() const { return device_; }
  int num_groups() const { return num_groups_; }
  int64_t num_tensors() const { return num_tensors_; }
  int64_t num_chunks() const { return num_chunks_; }

  // Device memory of the group, laid out once at bind (see group.cu).
  struct Tables;

 private:
  RuleId rule_;
  int device_, num_groups_;
  int64_t num_tensors_ = 0, num_chunks_ = 0;
  Tables* tables_ = nullptr;  // host-side record of the device pointers
  void* arena_ = nullptr;     // owns the device memory
  int chunk_grid_ = 1, task_grid_ = 1;  // blocks for the update pass and the reduction passes
  double* lr_ = nullptr;       // device: one per group (capturable steps)
  int32_t* skip_host_ = nullptr;  // pinned: the last tracked skip decision (made on first use)
  void* skip_event_ = nullptr;    // cudaEvent_t recorded after its copy
  mutable bool skip_pending_ = false;
  int64_t* steps_ = nullptr;   // device: one per group
  const quant::Tables* maps_ = nullptr;  // device: the signed and the unsigned 8-bit map
  // Factored state (fastopt/factored.h), per slot: its scratch in device memory, or null.
  std::vector<double*> factor_sums_;
  std::vector<float*> row_values_;
  int piece_grid_ = 1, factored_grid_ = 1;  // blocks for the factor pass and for the factor step

  // `slots` as the kernels read them: their 8-bit maps the device's, their factored state's
  // scratch.
  std::vector<TensorSlot> on_device(std::vector<TensorSlot> slots) const;
};

int device_count();  // 0 where there is no driver or no device
std::string no_device_reason();  // why device_count() is 0: the runtime's message ("" where it is not)

// Writes value into *dst (memory of `device`) on `stream`, as a kernel: capturable, no host sync.
void set_device_value(double* dst, double value, int device, void* stream);
void set_device_value(int64_t* dst, int64_t value, int device, void* stream);

// dst[i] = exact fp32 value of src[i], on `device`.
void widen(const void* src, DType src_dtype, float* dst, int64_t n, int device, void* stream);

// Whether `stream` is being captured into a CUDA graph.
bool stream_is_capturing(void* stream);

}  // namespace fastopt::cuda
