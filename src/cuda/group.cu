// The CUDA engine: a multi-tensor apply over a device-resident chunk table. Each block takes
// chunks (grid-stride); each thread applies the rule to packs of 8 elements with 16-byte loads
// where every stream of the tensor is aligned, one element at a time where not. The rules and
// apply_element are the CPU engine's, unchanged.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "fastopt/element.h"
#include "fastopt/numeric/pack_cuda.h"
#include "group.h"

namespace fastopt::cuda {
namespace {

constexpr int64_t kChunkElems = 65536;  // a multiple of the pack width, so packs stay aligned
constexpr int kThreads = 256;

struct Chunk {
  int64_t begin, end;
  int32_t slot;
};

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

// Makes `device` current for the lifetime of the guard.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

__device__ bool aligned16(const TensorSlot& t) {
  uintptr_t bits = uintptr_t(t.param) | uintptr_t(t.grad) | uintptr_t(t.master);
  for (int k = 0; k < t.num_state; ++k) bits |= uintptr_t(t.state[k]);
  return (bits & 15) == 0;
}

template <class Rule, class P, class G>
__device__ void run_chunk(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t, int64_t begin,
                          int64_t end) {
  int64_t tail = begin;
  if (aligned16(t)) {  // begin is a multiple of 8, so every pack starts 16-byte aligned
    const int64_t packs = (end - begin) / 8;
    for (int64_t k = threadIdx.x; k < packs; k += blockDim.x) {
      apply_element<Rule, Pack8, P, G>(c, x, t, begin + 8 * k);
    }
    tail = begin + 8 * packs;
  }
  for (int64_t i = tail + threadIdx.x; i < end; i += blockDim.x) apply_element<Rule, float, P, G>(c, x, t, i);
}

template <class Rule>
__device__ void run_chunk_any(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t,
                              int64_t begin, int64_t end) {
  switch (int(t.param_dtype) * kNumDTypes + int(t.grad_dtype)) {
    case 0: return run_chunk<Rule, float, float>(c, x, t, begin, end);
    case 1: return run_chunk<Rule, float, f16>(c, x, t, begin, end);
    case 2: return run_chunk<Rule, float, bf16>(c, x, t, begin, end);
    case 3: return run_chunk<Rule, f16, float>(c, x, t, begin, end);
    case 4: return run_chunk<Rule, f16, f16>(c, x, t, begin, end);
    case 5: return run_chunk<Rule, f16, bf16>(c, x, t, begin, end);
    case 6: return run_chunk<Rule, bf16, float>(c, x, t, begin, end);
    case 7: return run_chunk<Rule, bf16, f16>(c, x, t, begin, end);
    default: return run_chunk<Rule, bf16, bf16>(c, x, t, begin, end);
  }
}

template <class T>
struct PerGroup {  // kernel arguments: one T per param group
  T v[kMaxGroups];
};

template <class Rule>
__global__ void __launch_bounds__(kThreads)
    step_kernel(PerGroup<typename Rule::Coeffs> coeffs, GradTransform x, const TensorSlot* slots, const Chunk* chunks,
                int64_t n) {
  for (int64_t k = blockIdx.x; k < n; k += gridDim.x) {
    const Chunk ch = chunks[k];
    const TensorSlot t = slots[ch.slot];
    run_chunk_any<Rule>(coeffs.v[t.hyper_index], x, t, ch.begin, ch.end);
  }
}

// Capturable: coefficients from device-resident lrs and step counts; the last block to finish
// advances the step counts (every block has read them by then).
template <class Rule>
__global__ void __launch_bounds__(kThreads)
    step_capturable_kernel(PerGroup<typename Rule::Hyper> hypers, GradTransform x, int num_groups, const double* lr,
                           int64_t* steps, unsigned* done, const TensorSlot* slots, const Chunk* chunks, int64_t n) {
  __shared__ typename Rule::Coeffs coeffs[kMaxGroups];
  if (threadIdx.x < num_groups) {
    typename Rule::Hyper h = hypers.v[threadIdx.x];
    h.lr = lr[threadIdx.x];
    coeffs[threadIdx.x] = Rule::coeffs(h, steps[threadIdx.x] + 1);
  }
  __syncthreads();
  for (int64_t k = blockIdx.x; k < n; k += gridDim.x) {
    const Chunk ch = chunks[k];
    const TensorSlot t = slots[ch.slot];
    run_chunk_any<Rule>(coeffs[t.hyper_index], x, t, ch.begin, ch.end);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(done, 1u) == gridDim.x - 1) {
      for (int j = 0; j < num_groups; ++j) steps[j] += 1;
      *done = 0;
    }
  }
}

template <class T>
__global__ void set_value_kernel(T* dst, T value) {
  *dst = value;
}

template <class T>
__global__ void widen_kernel(const T* src, float* dst, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    dst[i] = to_f32(src[i]);
  }
}

bool two_pass(RuleId rule) {
  switch (rule) {
#define FASTOPT_TWO_PASS(id, T) \
  case RuleId::id:              \
    return num_sums<T>::value > 0;
    FASTOPT_RULES(FASTOPT_TWO_PASS)
#undef FASTOPT_TWO_PASS
    default: return false;
  }
}

int grid_for(int64_t chunks, int device) {
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  const int64_t most = int64_t(sms) * 8;
  return int(chunks < most ? (chunks > 0 ? chunks : 1) : most);
}

template <class Rule>
void launch(const void* coeffs, size_t stride, const GradTransform& x, int num_groups, const TensorSlot* slots,
            const void* chunks, int64_t n, int device, cudaStream_t stream) {
  PerGroup<typename Rule::Coeffs> args{};
  for (int j = 0; j < num_groups; ++j) {
    args.v[j] = *reinterpret_cast<const typename Rule::Coeffs*>(static_cast<const char*>(coeffs) + j * stride);
  }
  step_kernel<Rule><<<grid_for(n, device), kThreads, 0, stream>>>(args, x, slots, static_cast<const Chunk*>(chunks), n);
  check(cudaGetLastError(), "step kernel launch");
}

template <class Rule>
void launch_capturable(const void* hypers, size_t stride, const GradTransform& x, int num_groups, const double* lr,
                       int64_t* steps, unsigned* done, const TensorSlot* slots, const void* chunks, int64_t n,
                       int device, cudaStream_t stream) {
  PerGroup<typename Rule::Hyper> args{};
  for (int j = 0; j < num_groups; ++j) {
    args.v[j] = *reinterpret_cast<const typename Rule::Hyper*>(static_cast<const char*>(hypers) + j * stride);
  }
  step_capturable_kernel<Rule><<<grid_for(n, device), kThreads, 0, stream>>>(
      args, x, num_groups, lr, steps, done, slots, static_cast<const Chunk*>(chunks), n);
  check(cudaGetLastError(), "capturable step kernel launch");
}

}  // namespace

Group::Group(RuleId rule, const std::vector<TensorSlot>& slots, int device, int num_groups)
    : rule_(rule), device_(device), num_groups_(num_groups) {
  if (rule == RuleId::probe || rule == RuleId::count) throw std::invalid_argument("the CUDA engine has no such rule");
  if (two_pass(rule)) throw std::invalid_argument("two-pass rules (LARS, LAMB) are not yet on the CUDA engine");
  if (num_groups < 1 || num_groups > kMaxGroups) {
    throw std::invalid_argument("the CUDA engine takes 1 to " + std::to_string(kMaxGroups) + " param groups, got " +
                                std::to_string(num_groups));
  }
  std::vector<Chunk> chunks;
  for (size_t s = 0; s < slots.size(); ++s) {
    for (int64_t b = 0; b < slots[s].numel; b += kChunkElems) {
      chunks.push_back({b, b + kChunkElems < slots[s].numel ? b + kChunkElems : slots[s].numel, int32_t(s)});
    }
  }
  num_chunks_ = int64_t(chunks.size());
  DeviceGuard guard(device);
  check(cudaMalloc(&slots_dev_, sizeof(TensorSlot) * (slots.size() + 1)), "cudaMalloc");
  check(cudaMalloc(&chunks_dev_, sizeof(Chunk) * (chunks.size() + 1)), "cudaMalloc");
  check(cudaMalloc(&lr_, sizeof(double) * kMaxGroups), "cudaMalloc");
  check(cudaMalloc(&steps_, sizeof(int64_t) * kMaxGroups), "cudaMalloc");
  check(cudaMalloc(&done_, sizeof(unsigned)), "cudaMalloc");
  // Binding is not a step: these one-off uploads may synchronise.
  check(cudaMemcpy(slots_dev_, slots.data(), sizeof(TensorSlot) * slots.size(), cudaMemcpyHostToDevice), "upload");
  check(cudaMemcpy(chunks_dev_, chunks.data(), sizeof(Chunk) * chunks.size(), cudaMemcpyHostToDevice), "upload");
  check(cudaMemset(lr_, 0, sizeof(double) * kMaxGroups), "cudaMemset");
  check(cudaMemset(steps_, 0, sizeof(int64_t) * kMaxGroups), "cudaMemset");
  check(cudaMemset(done_, 0, sizeof(unsigned)), "cudaMemset");
}

Group::~Group() {
  cudaFree(slots_dev_);
  cudaFree(chunks_dev_);
  cudaFree(lr_);
  cudaFree(steps_);
  cudaFree(done_);
}

void Group::run(const void* coeffs, size_t stride, void* stream, const GradTransform& x) const {
  if (num_chunks_ == 0) return;
  DeviceGuard guard(device_);
  const auto s = static_cast<cudaStream_t>(stream);
  switch (rule_) {
#define FASTOPT_LAUNCH(id, T)                                                              \
  case RuleId::id:                                                                         \
    return launch<T>(coeffs, stride, x, num_groups_, slots_dev_, chunks_dev_, num_chunks_, device_, s);
    FASTOPT_RULES(FASTOPT_LAUNCH)
#undef FASTOPT_LAUNCH
    default: return;
  }
}

void Group::run_capturable(const void* hypers, size_t stride, void* stream, const GradTransform& x) const {
  DeviceGuard guard(device_);
  const auto s = static_cast<cudaStream_t>(stream);
  switch (rule_) {
#define FASTOPT_LAUNCH(id, T)                                                                                   \
  case RuleId::id:                                                                                              \
    return launch_capturable<T>(hypers, stride, x, num_groups_, lr_, steps_, done_, slots_dev_, chunks_dev_,    \
                                num_chunks_, device_, s);
    FASTOPT_RULES(FASTOPT_LAUNCH)
#undef FASTOPT_LAUNCH
    default: return;
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
