// What the CUDA engine's kernels share: the group's device tables, the canonical reductions
// of fastopt/reduce.h on the GPU, and the launch interface of the per-rule kernels.
//
// Reductions: a task is one block of reduce.h (kBlock elements of one tensor, or its tail),
// summed by one warp, lane j holding reduce lanes j and j + 32 (so each warp load is 128
// contiguous bytes) as doubles and accumulating add_square(v, lane) in element order; the fold
// is reduce.h's tree (w = 32 inside the thread, then shuffles 16..1). Block sums go to memory;
// one thread block then adds them in order into super-block and tensor sums.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "fastopt/element.h"
#include "fastopt/factored.h"
#include "fastopt/reduce.h"
#include "fastopt/schedule.h"
#include "group.h"

namespace fastopt::cuda {

constexpr int64_t kChunkElems = 65536;  // update pass: a multiple of the pack width, so packs stay aligned
constexpr int kThreads = 256;           // per block, update and reduction kernels
constexpr int kReduceThreads = 1024;    // the one-block kernels that combine sums
constexpr int kMaxSums = 2;             // sums per element a pass can take (LARS/LAMB, diagnostics)

inline void check(cudaError_t e, const char* what) {
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

struct Range {  // elements [begin, end) of tensor `slot`
  int64_t begin, end;
  int32_t slot;
};

// The step's device-side decision, written by the control kernel: the factor every grad is
// multiplied by (unscale and clip by norm), and whether the step is skipped.
struct Control {
  float scale;
  int32_t skip;
};

struct Group::Tables {
  TensorSlot* slots;
  int64_t num_tensors;
  Range* chunks;  // update pass: kChunkElems per chunk
  int64_t num_chunks;
  Range* tasks;  // reductions: one block of reduce.h per task
  int64_t num_tasks;
  int64_t* super_first;   // super-block s is tasks [super_first[s], super_first[s + 1])
  int64_t num_supers;
  int64_t* tensor_super;  // tensor t is super-blocks [tensor_super[t], tensor_super[t + 1])
  double* task_sums;      // kMaxSums per task
  int32_t* task_bad;      // non-finite counts per task (grad norm pass)
  double* super_sums;     // kMaxSums per super-block
  int64_t* super_bad;
  double* tensor_sums;    // kMaxSums per tensor
  int64_t* tensor_bad;
  double* run_sums;       // one per run of reduce::kTensorRun tensors
  Control* control;
  void* tensor_coeffs;    // two-pass rules: one Coeffs per tensor, made by the rule's finish()
  Schedule* schedules;    // per param group, used where scheduled[j]
  int32_t* scheduled;
  unsigned* done;         // blocks finished in the current update kernel
  // Factored state (fastopt/factored.h): the pieces of the factor pass (begin: the piece's
  // number in its tensor) and the factored tensors, in slot order.
  Range* pieces;
  int64_t num_pieces;
  int32_t* factored;
  int64_t num_factored;
};

template <class T>
struct PerGroup {  // kernel arguments: one T per param group
  T v[kMaxGroups];
};

template <class T>
struct Tag {
  using type = T;
};

// f(Tag<T>{}) with T the storage type of `d`.
template <class F>
__device__ __forceinline__ void with_dtype(DType d, F&& f) {
  switch (d) {
    case DType::f32: return f(Tag<float>{});
    case DType::f16: return f(Tag<f16>{});
    default: return f(Tag<bf16>{});
  }
}

// For every task of the group, one warp sums the squares of K values per element in reduce.h's
// order and stores the block's sums and non-finite count in tb.task_sums / tb.task_bad.
// make(slot, t, Tag<P>{}, task) returns a callable f(i, float (&v)[K]) -> non-finite count
// that fills v for element i of tensor t (made once per task: the param dtype's dispatch stays
// out of the loop; the grad's is load_grad's uniform branch).
template <int K, class F>
__device__ void task_sums(const Group::Tables& tb, F&& make) {
  static_assert(K <= kMaxSums, "more sums than the tables hold");
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; w < tb.num_tasks; w += warps) {
    const Range task = tb.tasks[w];
    const TensorSlot t = tb.slots[task.slot];
    with_dtype(t.param_dtype, [&](auto p) {
      auto f = make(task.slot, t, p, task);
      double lo[K], hi[K];
      int bad = 0;
      for (int k = 0; k < K; ++k) lo[k] = hi[k] = 0.0;
      for (int64_t row = task.begin; row < task.end; row += reduce::kLanes) {
        float v[K];
        if (row + lane < task.end) {
          bad += f(row + lane, v);
          for (int k = 0; k < K; ++k) lo[k] = add_square(v[k], lo[k]);
        }
        if (row + 32 + lane < task.end) {
          bad += f(row + 32 + lane, v);
          for (int k = 0; k < K; ++k) hi[k] = add_square(v[k], hi[k]);
        }
      }
      for (int k = 0; k < K; ++k) {
        double s = lo[k] + hi[k];  // the tree's w = 32: lane j += lane j + 32
        for (int d = 16; d >= 1; d /= 2) s = s + __shfl_down_sync(0xffffffffu, s, d);
        if (lane == 0) tb.task_sums[w * kMaxSums + k] = s;
      }
      for (int d = 16; d >= 1; d /= 2) bad += __shfl_down_sync(0xffffffffu, bad, d);
      if (lane == 0) tb.task_bad[w] = bad;
    });
  }
}

// Per tensor, in one thread block: K sums from the tasks' block sums in the canonical order
// (blocks in order into super-blocks, super-blocks in order into the tensor), into
// tb.tensor_sums, and with `bad` the non-finite counts into tb.tensor_bad.
template <int K>
__device__ void tensor_sums(const Group::Tables& tb, bool bad) {
  for (int64_t s = threadIdx.x; s < tb.num_supers; s += blockDim.x) {
    double acc[K] = {};
    int64_t n = 0;
    for (int64_t b = tb.super_first[s]; b < tb.super_first[s + 1]; ++b) {
      for (int k = 0; k < K; ++k) acc[k] += tb.task_sums[b * kMaxSums + k];
      if (bad) n += tb.task_bad[b];
    }
    for (int k = 0; k < K; ++k) tb.super_sums[s * kMaxSums + k] = acc[k];
    if (bad) tb.super_bad[s] = n;
  }
  __syncthreads();
  for (int64_t t = threadIdx.x; t < tb.num_tensors; t += blockDim.x) {
    double acc[K] = {};
    int64_t n = 0;
    for (int64_t s = tb.tensor_super[t]; s < tb.tensor_super[t + 1]; ++s) {
      for (int k = 0; k < K; ++k) acc[k] += tb.super_sums[s * kMaxSums + k];
      if (bad) n += tb.super_bad[s];
    }
    for (int k = 0; k < K; ++k) tb.tensor_sums[t * kMaxSums + k] = acc[k];
    if (bad) tb.tensor_bad[t] = n;
  }
  __syncthreads();
}

// What the per-rule launches need besides the rule's type.
struct RuleLaunch {
  const StepArgs* args;
  bool control;  // the control kernel ran: read skip and grad factor from tb.control
  Group::Tables tables;
  const double* lr;  // the group's device lrs
  int64_t* steps;    // the group's device step counts
  int num_groups;
  int chunk_grid, task_grid;  // blocks for the update pass and for the reduction passes
  int factored_grid;          // blocks for the factor step (one per factored tensor)
  cudaStream_t stream;
};

// The per-rule kernels are compiled in kRuleParts translation units (rule_kernels_N.cu);
// launch_part<N> launches the rule `id` when it is compiled in part N, else returns false.
constexpr int kRuleParts = 4;
template <int Part>
bool launch_part(RuleId id, const RuleLaunch& l);

}  // namespace fastopt::cuda
