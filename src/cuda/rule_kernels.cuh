// The kernels templated on a rule: the update pass (a multi-tensor apply over the chunk
// table, 8-element packs with 16-byte loads where every stream of a tensor is aligned, one
// element at a time where not), its diagnosed variant, and the two passes of two-pass rules.
// The rules and apply_element are the CPU engine's, unchanged. Every kernel computes the
// groups' coefficients itself, from the Hyper structs and the device step counts (and device
// lrs or schedules), so that a captured graph replays with the current values.
#pragma once
#include "device.cuh"
#include "fastopt/numeric/pack_cuda.h"

namespace fastopt::cuda {

// Each group's Hyper structs (coefficients computed on the device) or Coeffs (from the host).
template <class Rule>
union GroupParams {
  PerGroup<typename Rule::Hyper> hypers;
  PerGroup<typename Rule::Coeffs> coeffs;
  __host__ __device__ GroupParams() : coeffs{} {}
};

template <class Rule>
struct RuleArgs {
  GroupParams<Rule> group;
  bool host_coeffs;
  int num_groups;
  const double* lr;  // null: each Hyper's lr
  int64_t* steps;
  GradTransform transform;
  bool control;
  uint64_t seed;
  int64_t round_step;
  bool not_a_step;     // a mode switch: no count advances, round_key is the stochastic rounding's key
  uint64_t round_key;
};
#define FASTOPT_ARGS_FIT(id, T) \
  static_assert(sizeof(RuleArgs<T>) + sizeof(Group::Tables) < 4000, "kernel arguments are at most 4 KB");
FASTOPT_RULES(FASTOPT_ARGS_FIT)
#undef FASTOPT_ARGS_FIT

// Each group's Coeffs into coeffs (shared), and the grad transform into x. Returns false, for
// every thread of the block alike, when the control kernel decided to skip the step.
template <class Rule>
__device__ bool prologue(const RuleArgs<Rule>& a, const Group::Tables& tb, typename Rule::Coeffs* coeffs,
                         GradTransform& x) {
  x = a.transform;
  int64_t taken = 0;  // (the CPU engine's default round step: the largest count + 1)
  for (int j = 0; j < a.num_groups; ++j) taken = max(taken, a.steps[j]);
  x.round_key = a.not_a_step ? a.round_key
                             : random::step_key(a.seed, uint64_t(a.round_step > 0 ? a.round_step : taken + 1));
  if (a.control) {
    const Control c = *tb.control;
    if (c.skip) return false;
    x.scale = c.scale;
  }
  if (threadIdx.x < a.num_groups && a.host_coeffs) {
    coeffs[threadIdx.x] = a.group.coeffs.v[threadIdx.x];
  } else if (threadIdx.x < a.num_groups) {
    const int j = threadIdx.x;
    typename Rule::Hyper h = a.group.hypers.v[j];
    const int64_t taken = a.steps[j];
    if (tb.scheduled[j]) set_lr(h, lr_at(tb.schedules[j], taken));
    else if (a.lr) set_lr(h, a.lr[j]);
    coeffs[j] = Rule::coeffs(h, taken + 1);
  }
  __syncthreads();
  return true;
}

// The last block to finish advances the step counts (every block has read them by then).
__device__ __forceinline__ void advance_steps(int64_t* steps, int num_groups, unsigned* done) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(done, 1u) == gridDim.x - 1) {
      for (int j = 0; j < num_groups; ++j) steps[j] += 1;
      *done = 0;
    }
  }
}

// 8-bit state on the GPU: a block's new absmax comes from a first pass that computes its new
// state and writes nothing (next_state); the second pass applies the same updates and quantizes
// them as they come (the CPU keeps them in scratch instead: the same codes). The new absmax is
// written as soon as every thread has read the old one. `q` and the max of the first pass's
// |values| as bits, per stream, for this thread's elements of [begin, end) (`stride` apart).
template <class Rule, bool first, class P>
__device__ void quant_first_pass(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t,
                                 int64_t begin, int64_t end, int64_t start, int stride, QuantBlock& q,
                                 uint32_t (&bits)[kMaxState]) {
  q.begin = begin;
  for (int k = 0; k < kMaxState; ++k) {
    q.values[k] = nullptr;
    q.absmax[k] = k < t.num_state ? t.absmax[k][begin / quant::kQuantBlock] : 0.0f;
    bits[k] = 0;
  }
  for (int64_t i = start; i < end; i += stride) {
    float s[Rule::max_state];
    next_state<Rule, first, float, P>(c, x, t, i, &q, s);
    for (int k = 0; k < Rule::max_state; ++k) bits[k] = max(bits[k], quant::float_bits(s[k]) & 0x7fffffffu);
  }
}

// Takes a block's new absmax (max as bits, every thread the same) into q and, from `writer`,
// into the tensor.
__device__ __forceinline__ void quant_new_absmax(const TensorSlot& t, QuantBlock& q, const uint32_t (&bits)[kMaxState],
                                                 bool writer) {
  for (int k = 0; k < kMaxState; ++k) {
    const float m = quant::absmax_of_bits(bits[k]);
    q.inv[k] = quant::inv_absmax(m);
    if (writer && k < t.num_state) t.absmax[k][q.begin / quant::kQuantBlock] = m;
  }
}

// The update over [begin, end) of a tensor with 8-bit state (begin a multiple of the block),
// one block at a time by the whole thread block.
template <class Rule, class P>
__device__ void run_quantized(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t,
                              int64_t begin, int64_t end) {
  __shared__ uint32_t block_bits[kMaxState];
  for (int64_t b = begin; b < end; b += quant::kQuantBlock) {
    const int64_t e = b + quant::kQuantBlock < end ? b + quant::kQuantBlock : end;
    if constexpr (!writes_state<Rule>::update) {  // (LAMB: the update reads what its first pass stored)
      QuantBlock q{};
      for (int k = 0; k < t.num_state; ++k) q.absmax[k] = t.absmax[k][b / quant::kQuantBlock];
      for (int64_t i = b + threadIdx.x; i < e; i += blockDim.x) apply_element<Rule, float, P>(c, x, t, i, &q);
      continue;
    }
    if (threadIdx.x < kMaxState) block_bits[threadIdx.x] = 0;
    __syncthreads();
    QuantBlock q;
    uint32_t bits[kMaxState];
    quant_first_pass<Rule, false, P>(c, x, t, b, e, b + threadIdx.x, blockDim.x, q, bits);
    for (int k = 0; k < t.num_state; ++k) atomicMax(&block_bits[k], bits[k]);
    __syncthreads();  // every thread has read the old absmax
    for (int k = 0; k < kMaxState; ++k) bits[k] = block_bits[k];
    quant_new_absmax(t, q, bits, threadIdx.x == 0);
    for (int64_t i = b + threadIdx.x; i < e; i += blockDim.x) apply_element<Rule, float, P>(c, x, t, i, &q);
    __syncthreads();  // block_bits is read: the next block may reset it
  }
}

__device__ __forceinline__ bool aligned16(const TensorSlot& t) {
  uintptr_t bits = uintptr_t(t.param) | uintptr_t(t.grad) | uintptr_t(t.master) | uintptr_t(t.remainder) |
                   uintptr_t(t.compensation);
  for (int k = 0; k < t.num_state; ++k) bits |= uintptr_t(t.state[k]);
  return (bits & 15) == 0;
}

template <class Rule, class P>
__device__ void run_chunk(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t, int64_t begin,
                          int64_t end) {
  if constexpr (is_factored<Rule>::value) {
    if (t.rows) {  // factored state: one element at a time, the row found by the thread's cursor
      RowCursor rows;
      for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        apply_element<Rule, float, P>(c, x, t, i, nullptr, &rows);
      }
      return;
    }
  }
  if (t.state_store == StateStore::q8 && t.num_state > 0) return run_quantized<Rule, P>(c, x, t, begin, end);
  int64_t tail = begin;
  if (aligned16(t)) {  // begin is a multiple of 8, so every pack starts 16-byte aligned
    const int64_t packs = (end - begin) / 8;
    for (int64_t k = threadIdx.x; k < packs; k += blockDim.x) {
      apply_element<Rule, Pack8, P>(c, x, t, begin + 8 * k, nullptr);
    }
    tail = begin + 8 * packs;
  }
  for (int64_t i = tail + threadIdx.x; i < end; i += blockDim.x) apply_element<Rule, float, P>(c, x, t, i, nullptr);
}

// A warp's task of 8-bit state (one block of reduce.h: one quantization block), for the passes
// that sum as they go: its first pass (run_quantized's), whose new absmax lane 0 writes. The
// second pass is the caller's, with the block returned. A pass that writes no state (LARS's
// first, LAMB's update) only reads it: the old absmax. Other tensors: no block (their state is
// stored in place).
template <class Rule, bool first, class P>
__device__ QuantBlock warp_quant_block(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t,
                                       Range task) {
  QuantBlock q{};
  if (t.state_store != StateStore::q8 || t.num_state == 0) return q;
  if (!(first ? writes_state<Rule>::prepass : writes_state<Rule>::update)) {
    for (int k = 0; k < t.num_state; ++k) q.absmax[k] = t.absmax[k][task.begin / quant::kQuantBlock];
    return q;
  }
  uint32_t bits[kMaxState];
  const int lane = threadIdx.x % 32;
  quant_first_pass<Rule, first, P>(c, x, t, task.begin, task.end, task.begin + lane, 32, q, bits);
  for (int k = 0; k < kMaxState; ++k) {
    for (int d = 16; d >= 1; d /= 2) bits[k] = max(bits[k], __shfl_xor_sync(0xffffffffu, bits[k], d));
  }
  quant_new_absmax(t, q, bits, lane == 0);
  return q;
}

// f(rows): rows &cursor for a tensor with factored state (fastopt/factored.h), else nullptr.
template <class Rule, class F>
__device__ __forceinline__ void with_rows(const TensorSlot& t, RowCursor& cursor, F&& f) {
  if constexpr (is_factored<Rule>::value) {
    if (t.rows) return f(&cursor);
  }
  f(nullptr);
}

// The factor step (fastopt/factored.h), after the factor pass (group.cu): a thread block per
// factored tensor, its rows' and columns' new values, then each matrix's row values.
template <class Rule>
__global__ void __launch_bounds__(kThreads) factor_step_kernel(RuleArgs<Rule> a, Group::Tables tb) {
  __shared__ typename Rule::Coeffs coeffs[kMaxGroups];
  GradTransform x;
  if (!prologue(a, tb, coeffs, x)) return;
  for (int64_t f = blockIdx.x; f < tb.num_factored; f += gridDim.x) {
    const TensorSlot t = tb.slots[tb.factored[f]];
    const typename Rule::Coeffs c = tensor_coeffs<Rule>(coeffs[t.hyper_index], t);
    const int64_t n = factored::matrices(t);
    for (int64_t q = threadIdx.x; q < n * t.rows; q += blockDim.x) factored::step_row<Rule>(c, t, q, x.round_key);
    for (int64_t j = threadIdx.x; j < n * t.cols; j += blockDim.x) factored::step_col<Rule>(c, t, j, x.round_key);
    __syncthreads();
    for (int64_t m = threadIdx.x; m < n; m += blockDim.x) factored::row_values<Rule>(c, t, m);
    __syncthreads();
  }
}

// The coefficients tensor `slot` is updated with: its group's, or, for a two-pass rule, its own.
template <class Rule>
__device__ __forceinline__ typename Rule::Coeffs coeffs_of(const Group::Tables& tb, const typename Rule::Coeffs* group,
                                                           const TensorSlot& t, int32_t slot) {
  if constexpr (num_sums<Rule>::value > 0) {
    return static_cast<const typename Rule::Coeffs*>(tb.tensor_coeffs)[slot];
  } else {
    return group[t.hyper_index];
  }
}

template <class Rule>
__global__ void __launch_bounds__(kThreads) update_kernel(RuleArgs<Rule> a, Group::Tables tb) {
  __shared__ typename Rule::Coeffs coeffs[kMaxGroups];
  GradTransform x;
  if (!prologue(a, tb, coeffs, x)) return;
  for (int64_t k = blockIdx.x; k < tb.num_chunks; k += gridDim.x) {
    const Range ch = tb.chunks[k];
    const TensorSlot t = tb.slots[ch.slot];
    const typename Rule::Coeffs c = coeffs_of<Rule>(tb, coeffs, t, ch.slot);
    with_dtype(t.param_dtype, [&](auto p) { run_chunk<Rule, typename decltype(p)::type>(c, x, t, ch.begin, ch.end); });
  }
  if (!a.not_a_step) advance_steps(a.steps, a.num_groups, tb.done);
}

// The update that also sums, per block of reduce.h, the squared updates (new - old fp32
// value) and the squared old values (diagnosed_values: the new values and their non-finite
// count where the rule sums_values): the CPU's run_diagnosed.
template <class Rule>
__global__ void __launch_bounds__(kThreads) diagnosed_update_kernel(RuleArgs<Rule> a, Group::Tables tb) {
  __shared__ typename Rule::Coeffs coeffs[kMaxGroups];
  GradTransform x;
  if (!prologue(a, tb, coeffs, x)) return;
  task_sums<2>(tb, [&](int32_t slot, const TensorSlot& t, auto p, Range task) {
    using P = typename decltype(p)::type;
    const typename Rule::Coeffs c = coeffs_of<Rule>(tb, coeffs, t, slot);
    const QuantBlock q = warp_quant_block<Rule, false, P>(c, x, t, task);
    return [&, c, q, rows = RowCursor{}](int64_t i, float (&v)[2]) mutable {
      const float before = load_value<float, P>(t, i);
      with_rows<Rule>(t, rows, [&](auto r) { apply_element<Rule, float, P>(c, x, t, i, const_cast<QuantBlock*>(&q), r); });
      diagnosed_values<Rule>(before, load_value<float, P>(t, i), v);
      return 0;
    };
  });
  advance_steps(a.steps, a.num_groups, tb.done);
}

// The first pass of a two-pass rule: per block of reduce.h, the sums of squares of the
// rule's prepass values.
template <class Rule>
__global__ void __launch_bounds__(kThreads) prepass_kernel(RuleArgs<Rule> a, Group::Tables tb) {
  constexpr int K = num_sums<Rule>::value;
  __shared__ typename Rule::Coeffs coeffs[kMaxGroups];
  GradTransform x;
  if (!prologue(a, tb, coeffs, x)) return;
  task_sums<K>(tb, [&](int32_t, const TensorSlot& t, auto p, Range task) {
    using P = typename decltype(p)::type;
    const typename Rule::Coeffs c = tensor_coeffs<Rule>(coeffs[t.hyper_index], t);
    const QuantBlock q = warp_quant_block<Rule, true, P>(c, x, t, task);
    return [&, c, q, rows = RowCursor{}](int64_t i, float (&v)[K]) mutable {
      with_rows<Rule>(t, rows, [&](auto r) { prepass_element<Rule, float, P>(c, x, t, i, v, const_cast<QuantBlock*>(&q), r); });
      return 0;
    };
  });
}

// Between the passes of a two-pass rule, in one block: each tensor's sums, then its Coeffs.
template <class Rule>
__global__ void __launch_bounds__(kReduceThreads) finish_kernel(RuleArgs<Rule> a, Group::Tables tb) {
  __shared__ typename Rule::Coeffs coeffs[kMaxGroups];
  GradTransform x;
  if (!prologue(a, tb, coeffs, x)) return;
  tensor_sums<num_sums<Rule>::value>(tb, false);
  auto* out = static_cast<typename Rule::Coeffs*>(tb.tensor_coeffs);
  for (int64_t t = threadIdx.x; t < tb.num_tensors; t += blockDim.x) {
    const TensorSlot slot = tb.slots[t];
    out[t] = Rule::finish(tensor_coeffs<Rule>(coeffs[slot.hyper_index], slot), &tb.tensor_sums[t * kMaxSums], slot);
  }
}

template <class Rule>
void launch_rule(const RuleLaunch& l) {
  const StepArgs& s = *l.args;
  RuleArgs<Rule> a;
  a.host_coeffs = s.coeffs != nullptr;
  for (int j = 0; j < l.num_groups; ++j) {
    if (a.host_coeffs) {
      a.group.coeffs.v[j] = *reinterpret_cast<const typename Rule::Coeffs*>(static_cast<const char*>(s.coeffs) +
                                                                      j * s.coeffs_stride);
    } else {
      a.group.hypers.v[j] = *reinterpret_cast<const typename Rule::Hyper*>(static_cast<const char*>(s.hypers) + j * s.stride);
    }
  }
  a.num_groups = l.num_groups;
  a.lr = s.lr_on_device ? l.lr : nullptr;
  a.steps = l.steps;
  a.transform = s.transform;
  a.control = l.control;
  a.seed = s.seed;
  a.round_step = s.round_step;
  a.not_a_step = s.not_a_step;
  a.round_key = s.round_key;
  if constexpr (is_factored<Rule>::value) {
    if (l.tables.num_factored > 0) {
      factor_step_kernel<Rule><<<l.factored_grid, kThreads, 0, l.stream>>>(a, l.tables);
      check(cudaGetLastError(), "factor step kernel launch");
    }
  }
  if constexpr (num_sums<Rule>::value > 0) {
    static_assert(num_sums<Rule>::value <= kMaxSums, "more sums than the tables hold");
    prepass_kernel<Rule><<<l.task_grid, kThreads, 0, l.stream>>>(a, l.tables);
    check(cudaGetLastError(), "prepass kernel launch");
    finish_kernel<Rule><<<1, kReduceThreads, 0, l.stream>>>(a, l.tables);
    check(cudaGetLastError(), "finish kernel launch");
  }
  if (s.diagnostics || s.value_sumsq) {
    diagnosed_update_kernel<Rule><<<l.task_grid, kThreads, 0, l.stream>>>(a, l.tables);
  } else {
    update_kernel<Rule><<<l.chunk_grid, kThreads, 0, l.stream>>>(a, l.tables);
  }
  check(cudaGetLastError(), "update kernel launch");
}

template <int Part>
bool launch_part(RuleId id, const RuleLaunch& l) {
  switch (id) {
#define FASTOPT_PART_CASE(rid, T)                                \
  case RuleId::rid:                                              \
    if constexpr (int(RuleId::rid) % kRuleParts == Part) {       \
      launch_rule<T>(l);                                         \
      return true;                                               \
    } else {                                                     \
      return false;                                              \
    }
    FASTOPT_RULES(FASTOPT_PART_CASE)
#undef FASTOPT_PART_CASE
    default:
      return false;
  }
}

}  // namespace fastopt::cuda
