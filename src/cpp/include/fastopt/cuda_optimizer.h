// fastopt's C++ API on the CUDA engine (libfastopt_cuda): the same binding and validation as
// fastopt::Optimizer, over device memory; a step is a few kernel launches (one for a plain
// step) on the caller's stream and never waits for the GPU: its results (grad norm, skip
// decision, diagnostics) are written to device memory the caller provides.
//
// Thread-safety: as fastopt::Optimizer. Every call that takes a stream enqueues its work there,
// in order with the steps enqueued on it; use one stream per optimizer, or order the streams.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fastopt/optimizer.h"

typedef struct CUstream_st* cudaStream_t;  // as cuda_runtime_api.h declares it

namespace fastopt {

// StepOptions, plus where a CUDA step reads and writes its device values.
struct CudaStepOptions : StepOptions {
  // Device float32: the loss scale, read by the kernels when they run (a graph replay reads
  // its value then); overrides grad_scale.
  const float* loss_scale = nullptr;
  // Capturable step: lrs from device memory (set_lr) and step counts from the device counts
  // (rule_steps must be null), so that a CUDA graph of the step replays correctly.
  bool capturable = false;
  // Device outputs (each may be null): the global grad norm (float64), the skip decision
  // (bool), and with `diagnostics`, 4 x num_params float64 (grad norm, update norm, param norm,
  // update/param ratio per param; the last three NaN for a skipped step) and num_params int64
  // non-finite grad counts (both required then).
  double* grad_norm_out = nullptr;
  bool* skipped_out = nullptr;
  double* diagnostics_out = nullptr;
  int64_t* nonfinite_out = nullptr;
  // Copy the skip decision to pinned host memory after the step, for poll_skip() (not while
  // capturing a graph).
  bool track_skip = false;
  // Device memory, num_params each (StepOptions::grad_sums and value_sums on this engine; the
  // host grad_sums is refused): the grads' sums of squares and non-finite counts, given; and
  // the outputs of value_sums.
  const double* grad_sumsq_in = nullptr;
  const int64_t* grad_nonfinite_in = nullptr;
  double* value_sumsq_out = nullptr;
  int64_t* value_nonfinite_out = nullptr;
};

class CudaOptimizer {
 public:
  // Binds device tensors of one CUDA device, validated as Optimizer's (at most 32 param
  // groups: their hyperparameters travel as kernel arguments). Allocates the device tables
  // (synchronously). Throws TensorError, std::invalid_argument, std::runtime_error (CUDA).
  explicit CudaOptimizer(std::vector<ParamGroup> groups);
  CudaOptimizer(RuleId rule, std::vector<ParamGroup> groups);
  ~CudaOptimizer();  // frees the device tables (cudaFree: waits for the device)
  // A moved-from optimizer may only be destroyed or assigned to.
  CudaOptimizer(CudaOptimizer&&) noexcept;
  CudaOptimizer& operator=(CudaOptimizer&&) noexcept;

  // One step over every param, enqueued on `stream`. Without options.rule_steps the rule's
  // coefficients are computed on the device from the device step counts; with them, on the
  // host (the CPU engine's very bits). The device counts advance unless the step is skipped.
  void step(cudaStream_t stream, const CudaStepOptions& options = {});

  // The seed of stochastic rounding (default 0): the same bits as Optimizer::set_seed's.
  void set_seed(uint64_t seed);

  RuleId rule() const;
  size_t num_groups() const;
  size_t num_params() const;
  int device() const;  // the CUDA device ordinal

  // Host hyperparameters, applied from the next step (validated as Optimizer::set_hyper).
  const Hyper& hyper(size_t group) const;
  void set_hyper(size_t group, const Hyper& h);
  void set_hypers(const std::vector<Hyper>& hypers);

  // Group j's device lr (for capturable steps), written on `stream` (a kernel: capturable).
  void set_lr(size_t group, double lr, cudaStream_t stream);
  // Group j's lr is lr_at(*schedule, device steps) on the device from now on; null: its Hyper's
  // (or device) lr again. Enqueued on `stream`.
  void set_schedule(size_t group, const Schedule* schedule, cudaStream_t stream);

  // The device step counts: read (waits for `stream`), or set from a checkpoint (enqueued).
  std::vector<int64_t> read_steps(cudaStream_t stream) const;
  void set_steps(const std::vector<int64_t>& steps, cudaStream_t stream);

  // The skip decision of the last step run with track_skip: -1 while not back on the host
  // (never waits), else 1 (skipped) or 0.
  int poll_skip() const;

  // torch's GradScaler update from the last step's skip decision, on the device (see
  // src/cuda/group.h): *scale, *clean_steps and *floor_skips are device values.
  void update_loss_scale(float* scale, int32_t* clean_steps, int32_t* floor_skips, double growth, double backoff,
                         int32_t interval, float min_scale, cudaStream_t stream) const;

  const ParamTensors& tensors(size_t param) const;
  // New grad buffers, validated as at binding; the device table is rewritten on `stream` (by
  // kernels: a graph capturing them writes its grads at each replay).
  void set_grads(const std::vector<Tensor>& grads, cudaStream_t stream);
  // The bound grads written into the device table again, on `stream`: after a graph's replay
  // wrote the graph's there.
  void write_grads(cudaStream_t stream);

  int64_t num_chunks() const;  // the update kernel's work items

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// fastopt::ModeSwitch on the CUDA engine: the same binding, validation and bits, over device
// memory; run() is one kernel launch on `stream` (the coefficients computed on the host: the step
// counts are the caller's, read back from the optimizer where they may have moved on the device).
class CudaModeSwitch {
 public:
  CudaModeSwitch(RuleId rule, std::vector<ParamGroup> groups);
  ~CudaModeSwitch();
  CudaModeSwitch(CudaModeSwitch&&) noexcept;
  CudaModeSwitch& operator=(CudaModeSwitch&&) noexcept;

  void run(const std::vector<Hyper>& hypers, const std::vector<int64_t>& steps, bool to_eval, uint64_t seed,
           cudaStream_t stream);

  RuleId rule() const;
  size_t num_groups() const;
  int device() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The number of CUDA devices (0 where there is no driver or no device).
int cuda_device_count();

// Why cuda_device_count() is 0: the CUDA runtime's message, e.g. a driver older than the runtime
// ("" where devices were found).
std::string cuda_no_device_reason();

// dst = the exact float32 value of every element of src (device memory of one device, same
// shape), enqueued on `stream`.
void cuda_widen(const Tensor& src, const Tensor& dst, cudaStream_t stream);

// Whether `stream` is being captured into a CUDA graph.
bool cuda_stream_is_capturing(cudaStream_t stream);

}  // namespace fastopt
