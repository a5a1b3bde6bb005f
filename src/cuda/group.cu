// The CUDA engine's groups: the device tables laid out at bind, and a step's launches. A plain
// step is one kernel (the update pass). Options add passes, all on the step's stream and
// decided on the device: the grad norm pass and the control kernel (norm, clip factor, skip),
// a two-pass rule's prepass and finish, and the diagnostics' sums.
#include <algorithm>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>

#include "fastopt/numeric/quantize8.h"
#include "fastopt/step_control.h"
#include "device.cuh"
#include "group.h"

namespace fastopt::cuda {
namespace {

// The grad norm pass: per block of reduce.h, the sum of squares and the non-finite count of
// the raw grads (the CPU's sumsq).
__global__ void __launch_bounds__(kThreads) grad_sums_kernel(Group::Tables tb) {
  task_sums<1>(tb, [](int32_t, const TensorSlot& t, auto, Range) {
    return [&t](int64_t i, float (&v)[1]) {
      v[0] = load_grad<float>(t, i);
      return count_nonfinite(v[0]);
    };
  });
}

// The factor pass (fastopt/factored.h, reduce.h's factored order), a thread block (kThreads =
// reduce::kRowLanes threads) per piece: thread t holds row lane t, columns t + 256 j of the
// block (j < 8), chained in j order, and their column chains down the rows; 8 rows at a time
// (one per warp) the lanes fold in the fixed tree (w = 128, 64, 32 in registers from shared
// memory, then shuffles 16..1). Lanes past the block's columns hold +0 and change no sum.
static_assert(kThreads == reduce::kRowLanes && reduce::kBlock == 8 * kThreads, "a lane per thread, 8 columns each");
__global__ void __launch_bounds__(kThreads) factor_kernel(Group::Tables tb, GradTransform x, bool controlled) {
  __shared__ double lanes[kThreads / 32][kThreads];
  if (controlled) {
    const Control c = *tb.control;
    if (c.skip) return;
    x.scale = c.scale;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t k = blockIdx.x; k < tb.num_pieces; k += gridDim.x) {
    const TensorSlot t = tb.slots[tb.pieces[k].slot];
    const factored::Piece p = factored::piece(t, tb.pieces[k].begin);
    const int64_t nb = factored::blocks(t);
    double cols[8] = {};
    for (int64_t r0 = 0; r0 < p.rows; r0 += kThreads / 32) {
      for (int64_t r = r0; r < r0 + kThreads / 32; ++r) {
        double acc = 0.0;
        for (int j = 0; j < 8 && r < p.rows; ++j) {
          const int64_t c = threadIdx.x + kThreads * j;
          if (c < p.cols) {
            const float v = transform_grad(x, load_grad<float>(t, (p.row + r) * t.cols + p.col + c));
            acc = add_square(v, acc);
            cols[j] = add_square(v, cols[j]);
          }
        }
        lanes[r - r0][threadIdx.x] = acc;
      }
      __syncthreads();
      if (r0 + warp < p.rows) {
        double v[8];
        for (int i = 0; i < 8; ++i) v[i] = lanes[warp][lane + 32 * i];
        for (int i = 0; i < 4; ++i) v[i] = v[i] + v[i + 4];  // w = 128
        for (int i = 0; i < 2; ++i) v[i] = v[i] + v[i + 2];  // w = 64
        double s = v[0] + v[1];                               // w = 32
        for (int d = 16; d >= 1; d /= 2) s = s + __shfl_down_sync(0xffffffffu, s, d);
        if (lane == 0) p.row_sums[(r0 + warp) * nb] = s;
      }
      __syncthreads();
    }
    for (int j = 0; j < 8; ++j) {
      const int64_t c = threadIdx.x + kThreads * j;
      if (c < p.cols) p.col_sums[c] = cols[j];
    }
  }
}

struct ControlArgs {
  float scale;              // the unscale factor, unless loss_scale
  const float* loss_scale;  // device: the factor is float(1 / double(*loss_scale))
  bool sums;                // the grad norm pass ran
  bool skip_nonfinite;
  double max_grad_norm;
  double* grad_norm;
  bool* skipped;
  double* diagnostics;
  int64_t* nonfinite;
  const double* given_sumsq;  // the grads' per-tensor sums, given: no grad norm pass ran
  const int64_t* given_nonfinite;
};

// The step's decision, in one block, as the CPU engine's optimizer takes it on the host: the
// global norm (canonical order) times the unscale factor; skip when asked and any grad is not
// finite; torch's clip coefficient max_norm / (norm + 1e-6) in float32 (as torch computes it:
// max_norm times the reciprocal), when below 1.
__global__ void __launch_bounds__(kReduceThreads) control_kernel(ControlArgs a, Group::Tables tb) {
  const float inv = a.loss_scale ? float(1.0 / double(*a.loss_scale)) : a.scale;
  if (!a.sums) {
    if (threadIdx.x == 0) *tb.control = Control{inv, 0};
    return;
  }
  __shared__ unsigned long long bad;
  if (threadIdx.x == 0) bad = 0;
  if (a.given_sumsq) {
    for (int64_t t = threadIdx.x; t < tb.num_tensors; t += blockDim.x) {
      tb.tensor_sums[t * kMaxSums] = a.given_sumsq[t], tb.tensor_bad[t] = a.given_nonfinite[t];
    }
    __syncthreads();  // (orders the reset of `bad` and the copies before the adds)
  } else {
    tensor_sums<1>(tb, true);  // its barriers order the reset of `bad` before the adds
  }
  const int64_t n = tb.num_tensors, runs = (n + reduce::kTensorRun - 1) / reduce::kTensorRun;
  unsigned long long my_bad = 0;
  for (int64_t r = threadIdx.x; r < runs; r += blockDim.x) {
    double run = 0;
    for (int64_t t = r * reduce::kTensorRun; t < n && t < (r + 1) * reduce::kTensorRun; ++t) {
      run += tb.tensor_sums[t * kMaxSums];
      my_bad += (unsigned long long)tb.tensor_bad[t];
    }
    tb.run_sums[r] = run;
  }
  atomicAdd(&bad, my_bad);
  if (a.diagnostics) {
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
      a.diagnostics[t] = sqrt(tb.tensor_sums[t * kMaxSums]) * double(inv);
      a.nonfinite[t] = tb.tensor_bad[t];
    }
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  double total = 0;
  for (int64_t r = 0; r < runs; ++r) total += tb.run_sums[r];
  const StepControl c = step_control(inv, total, int64_t(bad), a.skip_nonfinite, a.max_grad_norm);
  *tb.control = Control{c.factor, c.skip ? 1 : 0};
  if (a.grad_norm) *a.grad_norm = c.norm;
  if (a.skipped) *a.skipped = c.skip;
}

// After a diagnosed update, in one block: each tensor's update and param norms and their
// ratio (NaN when the step was skipped: nothing was updated).
__global__ void __launch_bounds__(kReduceThreads) diagnostics_kernel(Group::Tables tb, double* out) {
  const bool skipped = tb.control->skip != 0;
  if (!skipped) tensor_sums<2>(tb, false);
  const int64_t n = tb.num_tensors;
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
    const double update = skipped ? NAN : sqrt(tb.tensor_sums[t * kMaxSums]);
    const double param = skipped ? NAN : sqrt(tb.tensor_sums[t * kMaxSums + 1]);
    out[n + t] = update;
    out[2 * n + t] = param;
    out[3 * n + t] = update / param;
  }
}

// After the update pass of a rule that sums_values, in one block: each tensor's sum of squares
// of its new values and their non-finite count (diagnosed_values).
__global__ void __launch_bounds__(kReduceThreads) value_sums_kernel(Group::Tables tb, double* sumsq, int64_t* bad) {
  tensor_sums<2>(tb, false);
  for (int64_t t = threadIdx.x; t < tb.num_tensors; t += blockDim.x) {
    sumsq[t] = tb.tensor_sums[t * kMaxSums];
    bad[t] = int64_t(tb.tensor_sums[t * kMaxSums + 1]);
  }
}

// torch.amp.GradScaler's update (the CPU's DynamicLossScaler.update), in double as torch's kernel,
// with the backoff floored at min_scale.
__global__ void loss_scale_kernel(float* scale, int32_t* clean_steps, int32_t* floor_skips, const Control* control,
                                  double growth, double backoff, int32_t interval, float min_scale) {
  if (control->skip) {
    *floor_skips = *scale == min_scale ? *floor_skips + 1 : 0;
    const float backed_off = float(double(*scale) * backoff);
    *scale = backed_off < min_scale ? min_scale : backed_off;
    *clean_steps = 0;
    return;
  }
  *floor_skips = 0;
  const int32_t clean = *clean_steps + 1;
  if (clean < interval) {
    *clean_steps = clean;
    return;
  }
  const double grown = double(*scale) * growth;
  if (grown <= 3.4028234663852886e38) *scale = float(grown);  // a growth past float32 is not taken
  *clean_steps = 0;
}

__global__ void set_schedule_kernel(Schedule* dst, int32_t* scheduled, Schedule value, int32_t on) {
  *dst = value;
  *scheduled = on;
}

template <class T>
__global__ void set_value_kernel(T* dst, T value) {
  *dst = value;
}

// The grad pointers and dtypes of slots first .. first + count - 1, carried as kernel arguments:
// a launch is captured with its arguments (each replay of a graph writes the graph's grads), and
// nothing is staged from pageable memory (which may wait for the GPU). 448 of them fill the 4 KB
// of arguments every architecture and CUDA version takes (32 KB needs CUDA 12.1 and Volta).
constexpr int kGradPatch = 448;
struct GradPatch {
  int64_t first;
  int32_t count;
  DType dtype[kGradPatch];
  const void* grad[kGradPatch];
};
static_assert(sizeof(TensorSlot*) + sizeof(GradPatch) <= 4096, "set_grads_kernel's arguments exceed 4 KB");

__global__ void __launch_bounds__(kGradPatch) set_grads_kernel(TensorSlot* slots, GradPatch p) {
  const int i = int(threadIdx.x);
  if (i < p.count) {
    slots[p.first + i].grad = p.grad[i];
    slots[p.first + i].grad_dtype = p.dtype[i];
  }
}

template <class T>
__global__ void widen_kernel(const T* src, float* dst, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    dst[i] = to_f32(src[i]);
  }
}

size_t coeffs_size(RuleId rule) {
  switch (rule) {
#define FASTOPT_COEFFS_SIZE(id, T) \
  case RuleId::id:                 \
    return sizeof(T::Coeffs);
    FASTOPT_RULES(FASTOPT_COEFFS_SIZE)
#undef FASTOPT_COEFFS_SIZE
    default: return 0;
  }
}

int grid_for(int64_t blocks_wanted, int device) {
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  const int64_t most = int64_t(sms) * 8;
  return int(blocks_wanted < most ? (blocks_wanted > 0 ? blocks_wanted : 1) : most);
}

// Device memory of a group, freed with it.
class Arena {
 public:
  template <class T>
  T* alloc(size_t n) {
    void* p = nullptr;
    check(cudaMalloc(&p, sizeof(T) * (n > 0 ? n : 1)), "cudaMalloc");
    blocks_.push_back(p);
    return static_cast<T*>(p);
  }
  template <class T>
  T* upload(const std::vector<T>& host) {
    T* p = alloc<T>(host.size());
    // Binding is not a step: these one-off uploads may synchronise.
    if (!host.empty()) check(cudaMemcpy(p, host.data(), sizeof(T) * host.size(), cudaMemcpyHostToDevice), "upload");
    return p;
  }
  ~Arena() {
    for (void* p : blocks_) cudaFree(p);
  }

 private:
  std::vector<void*> blocks_;
};

}  // namespace

Group::Group(RuleId rule, const std::vector<TensorSlot>& slots, int device, int num_groups)
    : rule_(rule), device_(device), num_groups_(num_groups), num_tensors_(int64_t(slots.size())) {
  if (rule == RuleId::probe || rule == RuleId::count) throw std::invalid_argument("the CUDA engine has no such rule");
  if (num_groups < 1 || num_groups > kMaxGroups) {
    throw std::invalid_argument("the CUDA engine takes 1 to " + std::to_string(kMaxGroups) + " param groups, got " +
                                std::to_string(num_groups));
  }
  std::vector<Range> chunks, tasks;
  std::vector<int64_t> super_first, tensor_super;
  for (size_t s = 0; s < slots.size(); ++s) {
    const int64_t n = slots[s].numel;
    for (int64_t b = 0; b < n; b += kChunkElems) chunks.push_back({b, b + kChunkElems < n ? b + kChunkElems : n, int32_t(s)});
    tensor_super.push_back(int64_t(super_first.size()));
    for (int64_t b = 0; b < n; b += reduce::kBlock) {
      if (b % reduce::kSuper == 0) super_first.push_back(int64_t(tasks.size()));
      tasks.push_back({b, b + reduce::kBlock < n ? b + reduce::kBlock : n, int32_t(s)});
    }
  }
  tensor_super.push_back(int64_t(super_first.size()));
  const int64_t num_supers = int64_t(super_first.size());
  std::vector<Range> pieces;  // the factor pass: a thread block per piece
  std::vector<int32_t> factored;
  for (size_t s = 0; s < slots.size(); ++s) {
    if (!slots[s].rows) continue;
    factored.push_back(int32_t(s));
    for (int64_t k = 0; k < factored::pieces(slots[s]); ++k) pieces.push_back({k, k + 1, int32_t(s)});
  }
  super_first.push_back(int64_t(tasks.size()));
  num_chunks_ = int64_t(chunks.size());

  DeviceGuard guard(device);
  auto arena = std::make_unique<Arena>();
  auto tables = std::make_unique<Tables>();
  Tables& tb = *tables;
  Arena& mem = *arena;
  maps_ = mem.upload(std::vector<quant::Tables>{quant::tables(true), quant::tables(false)});
  factor_sums_.assign(slots.size(), nullptr);
  row_values_.assign(slots.size(), nullptr);
  for (int32_t s : factored) {
    factor_sums_[s] = mem.alloc<double>(size_t(factored::scratch_size(slots[s])));
    row_values_[s] = mem.alloc<float>(size_t(factored::matrices(slots[s]) * slots[s].rows));
  }
  tb.pieces = mem.upload(pieces);
  tb.num_pieces = int64_t(pieces.size());
  tb.factored = mem.upload(factored);
  tb.num_factored = int64_t(factored.size());
  tb.slots = mem.upload(on_device(slots));
  tb.num_tensors = num_tensors_;
  tb.chunks = mem.upload(chunks);
  tb.num_chunks = num_chunks_;
  tb.tasks = mem.upload(tasks);
  tb.num_tasks = int64_t(tasks.size());
  tb.super_first = mem.upload(super_first);
  tb.num_supers = num_supers;
  tb.tensor_super = mem.upload(tensor_super);
  tb.task_sums = mem.alloc<double>(tasks.size() * kMaxSums);
  tb.task_bad = mem.alloc<int32_t>(tasks.size());
  tb.super_sums = mem.alloc<double>(size_t(num_supers) * kMaxSums);
  tb.super_bad = mem.alloc<int64_t>(size_t(num_supers));
  tb.tensor_sums = mem.alloc<double>(slots.size() * kMaxSums);
  tb.tensor_bad = mem.alloc<int64_t>(slots.size());
  tb.run_sums = mem.alloc<double>(slots.size() / reduce::kTensorRun + 1);
  tb.control = mem.alloc<Control>(1);
  tb.tensor_coeffs = mem.alloc<char>(coeffs_size(rule) * slots.size());
  tb.schedules = mem.alloc<Schedule>(kMaxGroups);
  tb.scheduled = mem.alloc<int32_t>(kMaxGroups);
  tb.done = mem.alloc<unsigned>(1);
  lr_ = mem.alloc<double>(kMaxGroups);
  steps_ = mem.alloc<int64_t>(kMaxGroups);
  check(cudaMemset(tb.scheduled, 0, sizeof(int32_t) * kMaxGroups), "cudaMemset");
  check(cudaMemset(tb.control, 0, sizeof(Control)), "cudaMemset");
  check(cudaMemset(tb.done, 0, sizeof(unsigned)), "cudaMemset");
  check(cudaMemset(lr_, 0, sizeof(double) * kMaxGroups), "cudaMemset");
  check(cudaMemset(steps_, 0, sizeof(int64_t) * kMaxGroups), "cudaMemset");
  chunk_grid_ = grid_for(num_chunks_, device);
  piece_grid_ = grid_for(tb.num_pieces, device);
  factored_grid_ = grid_for(tb.num_factored, device);
  task_grid_ = grid_for((tb.num_tasks + kThreads / 32 - 1) / (kThreads / 32), device);
  // Binding may synchronise: the uploads and memsets above (legacy stream) are done before any
  // step or setter enqueued on another stream can run.
  check(cudaStreamSynchronize(cudaStreamLegacy), "cudaStreamSynchronize");
  arena_ = arena.release();
  tables_ = tables.release();
}

Group::~Group() {
  if (skip_event_) cudaEventDestroy(static_cast<cudaEvent_t>(skip_event_));
  if (skip_host_) cudaFreeHost(skip_host_);
  delete static_cast<Arena*>(arena_);
  delete tables_;
}

int Group::poll_skip() const {
  if (!skip_pending_) return -1;
  const cudaError_t done = cudaEventQuery(static_cast<cudaEvent_t>(skip_event_));
  if (done == cudaErrorNotReady) {
    cudaGetLastError();  // the runtime keeps "not ready" as the last error: the next launch check would throw it
    return -1;
  }
  check(done, "cudaEventQuery");
  skip_pending_ = false;
  return *skip_host_ != 0 ? 1 : 0;
}

void Group::step(const StepArgs& in) {
  StepArgs a = in;
  if (a.not_a_step && (!a.coeffs || a.diagnostics || a.grad_norm || a.skip_nonfinite || a.max_grad_norm > 0 ||
                       a.grad_norm_out || a.skipped_out || a.loss_scale)) {
    throw std::invalid_argument("a pass that is not a step takes host coefficients and no step option");
  }
  a.grad_norm = a.grad_norm || a.skip_nonfinite || a.max_grad_norm > 0 || a.grad_norm_out || a.skipped_out ||
                a.diagnostics;
  if (a.diagnostics && !a.nonfinite) throw std::invalid_argument("diagnostics need their non-finite counts");
  if (!a.grad_sumsq != !a.grad_nonfinite || !a.value_sumsq != !a.value_nonfinite) {
    throw std::invalid_argument("sums and non-finite counts go together");
  }
  if (a.value_sumsq && (a.grad_norm || a.loss_scale || a.diagnostics)) {
    throw std::invalid_argument("value sums are for a plain update: the other step options must be off");
  }
  const bool control = a.grad_norm || a.loss_scale;
  DeviceGuard guard(device_);
  const auto s = static_cast<cudaStream_t>(a.stream);
  if (a.grad_norm && !a.grad_sumsq) {
    grad_sums_kernel<<<task_grid_, kThreads, 0, s>>>(*tables_);
    check(cudaGetLastError(), "grad norm kernel launch");
  }
  if (control) {
    const ControlArgs c{a.transform.scale, a.loss_scale,  a.grad_norm,   a.skip_nonfinite, a.max_grad_norm,
                        a.grad_norm_out,   a.skipped_out, a.diagnostics, a.nonfinite,    a.grad_sumsq,
                        a.grad_nonfinite};
    control_kernel<<<1, kReduceThreads, 0, s>>>(c, *tables_);
    check(cudaGetLastError(), "control kernel launch");
  }
  if (tables_->num_pieces > 0) {  // factored state: the factor pass (its step is the rule's)
    factor_kernel<<<piece_grid_, kThreads, 0, s>>>(*tables_, a.transform, control);
    check(cudaGetLastError(), "factor kernel launch");
  }
  const RuleLaunch l{&a, control, *tables_, lr_, steps_, num_groups_, chunk_grid_, task_grid_, factored_grid_, s};
  if (!(launch_part<0>(rule_, l) || launch_part<1>(rule_, l) || launch_part<2>(rule_, l) || launch_part<3>(rule_, l))) {
    throw std::invalid_argument("the CUDA engine has no such rule");
  }
  static_assert(kRuleParts == 4, "launch every part");
  if (a.diagnostics) {
    diagnostics_kernel<<<1, kReduceThreads, 0, s>>>(*tables_, a.diagnostics);
    check(cudaGetLastError(), "diagnostics kernel launch");
  }
  if (a.value_sumsq) {
    value_sums_kernel<<<1, kReduceThreads, 0, s>>>(*tables_, a.value_sumsq, a.value_nonfinite);
    check(cudaGetLastError(), "value sums kernel launch");
  }
  if (a.track_skip && control) {
    if (!skip_host_) {
      check(cudaHostAlloc(reinterpret_cast<void**>(&skip_host_), sizeof(int32_t), cudaHostAllocDefault), "cudaHostAlloc");
      cudaEvent_t e;
      check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
      skip_event_ = e;
    }
    check(cudaMemcpyAsync(skip_host_, &tables_->control->skip, sizeof(int32_t), cudaMemcpyDeviceToHost, s),
          "skip readback");
    check(cudaEventRecord(static_cast<cudaEvent_t>(skip_event_), s), "cudaEventRecord");
    skip_pending_ = true;
  }
}

void Group::set_schedule(int group, const Schedule* schedule, void* stream) const {
  DeviceGuard guard(device_);
  set_schedule_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(
      tables_->schedules + group, tables_->scheduled + group, schedule ? *schedule : Schedule{}, schedule ? 1 : 0);
  check(cudaGetLastError(), "set_schedule kernel launch");
}

void Group::update_loss_scale(float* scale, int32_t* clean_steps, int32_t* floor_skips, double growth,
                              double backoff, int32_t interval, float min_scale, void* stream) const {
  DeviceGuard guard(device_);
  loss_scale_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(scale, clean_steps, floor_skips, tables_->control,
                                                                     growth, backoff, interval, min_scale);
  check(cudaGetLastError(), "loss scale kernel launch");
}

std::vector<TensorSlot> Group::on_device(std::vector<TensorSlot> slots) const {
  for (size_t s = 0; s < slots.size(); ++s) {
    TensorSlot& t = slots[s];
    for (int k = 0; k < kMaxState; ++k) {
      if (t.quant[k]) t.quant[k] = t.quant[k]->is_signed ? maps_ : maps_ + 1;
    }
    t.factor_sums = factor_sums_[s];
    t.row_value = row_values_[s];
  }
  return slots;
}

void Group::set_grads(const std::vector<TensorSlot>& slots, void* stream) {
  if (int64_t(slots.size()) != num_tensors_) throw std::invalid_argument("set_grads: one slot per bound tensor");
  DeviceGuard guard(device_);
  const auto s = static_cast<cudaStream_t>(stream);
  for (int64_t first = 0; first < num_tensors_; first += kGradPatch) {
    GradPatch p{};
    p.first = first;
    p.count = int32_t(std::min<int64_t>(kGradPatch, num_tensors_ - first));
    for (int i = 0; i < p.count; ++i) {
      p.grad[i] = slots[size_t(first + i)].grad;
      p.dtype[i] = slots[size_t(first + i)].grad_dtype;
    }
    set_grads_kernel<<<1, kGradPatch, 0, s>>>(tables_->slots, p);
    check(cudaGetLastError(), "set_grads kernel launch");
  }
}

void Group::read_steps(int64_t* out, void* stream) const {
  DeviceGuard guard(device_);
  const auto s = static_cast<cudaStream_t>(stream);
  check(cudaMemcpyAsync(out, steps_, sizeof(int64_t) * num_groups_, cudaMemcpyDeviceToHost, s), "read steps");
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error to keep
    return 0;
  }
  return n;
}

std::string no_device_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  cudaGetLastError();
  if (e != cudaSuccess) return cudaGetErrorString(e);
  return n > 0 ? "" : "the CUDA runtime counts no device";
}

void set_device_value(double* dst, double value, int device, void* stream) {
  DeviceGuard guard(device);
  set_value_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(dst, value);
  check(cudaGetLastError(), "set_value kernel launch");
}

void set_device_value(int64_t* dst, int64_t value, int device, void* stream) {
  DeviceGuard guard(device);
  set_value_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(dst, value);
  check(cudaGetLastError(), "set_value kernel launch");
}

void widen(const void* src, DType src_dtype, float* dst, int64_t n, int device, void* stream) {
  if (n == 0) return;
  DeviceGuard guard(device);
  const auto s = static_cast<cudaStream_t>(stream);
  const int blocks = int(n / kThreads + 1 < 4096 ? n / kThreads + 1 : 4096);
  switch (src_dtype) {
    case DType::f32: widen_kernel<<<blocks, kThreads, 0, s>>>(static_cast<const float*>(src), dst, n); break;
    case DType::f16: widen_kernel<<<blocks, kThreads, 0, s>>>(static_cast<const f16*>(src), dst, n); break;
    case DType::bf16: widen_kernel<<<blocks, kThreads, 0, s>>>(static_cast<const bf16*>(src), dst, n); break;
  }
  check(cudaGetLastError(), "widen kernel launch");
}

bool stream_is_capturing(void* stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &status), "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}

}  // namespace fastopt::cuda
