// The kernel table that each ISA translation unit exports, and the rule registry.
#pragma once
#include <cstdint>

#include "fastopt/element.h"
#include "fastopt/rules/registry.h"
#include "fastopt/tensor_list.h"

namespace fastopt::cpu {

// Updates elements [begin, end) of one tensor; coeffs points at the rule's Coeffs.
using KernelFn = void (*)(const void* coeffs, const GradTransform& transform, const TensorSlot& t, int64_t begin,
                          int64_t end);

// Sum of squares (canonical order, fastopt/reduce.h) and non-finite count of elements
// [begin, end) of a tensor, begin a multiple of reduce::kSuper, at most kSuper elements.
using SumsqFn = void (*)(const void* data, int64_t begin, int64_t end, double* sum, int64_t* nonfinite);

// The first pass of a two-pass rule over [begin, end) of one tensor (begin a multiple of
// reduce::kSuper, at most kSuper elements): sums[k], the k-th per-tensor sum of squares.
using PrepassFn = void (*)(const void* coeffs, const GradTransform& transform, const TensorSlot& t, int64_t begin,
                           int64_t end, double* sums);

// The factor pass over pieces [begin, end) of a factored tensor (fastopt/factored.h): their
// partial row and column sums of the squared transformed grads, into the tensor's scratch.
using FactorFn = void (*)(const GradTransform& transform, const TensorSlot& t, int64_t begin, int64_t end);

// The factor step of matrices [begin, end) of a factored tensor (factored.h: step_matrices),
// its coeffs its group's.
using FactorStepFn = void (*)(const void* coeffs, const GradTransform& transform, const TensorSlot& t,
                              int64_t begin, int64_t end);

// x[0, n) rounded stochastically to a 16-bit dtype and stored at out, element k with
// random::bits32(key, start + k): store_stochastic_lane over the target's lanes, then its scalar
// tail, as the kernels store such params (for the tests, through fastopt._core.numeric).
using StochasticFn = void (*)(const float* x, int64_t n, uint64_t key, int64_t start, void* out);

// Kernels are per rule and param dtype; each reads its grad's dtype from the slot (load_grad).
struct KernelSet {
  const char* isa;
  KernelFn kernels[int(RuleId::count)][kNumDTypes];    // [rule][param dtype]
  PrepassFn prepass[int(RuleId::count)][kNumDTypes];   // null for one-pass rules
  PrepassFn diagnosed[int(RuleId::count)][kNumDTypes]; // the update, with sums of squared
                                                       // updates and old values
  // Both passes of a two-pass rule over a whole tensor of at most reduce::kSuper elements (after
  // the factor pass and step, for factored state): the first pass, the rule's finish() and the update (the diagnosed one, with its 2 sums
  // in `sums`, where sums is not null). Null for one-pass rules.
  PrepassFn fused[int(RuleId::count)][kNumDTypes];
  FactorStepFn factor_step[int(RuleId::count)];  // null for rules without factored state
  FactorFn factor;
  SumsqFn sumsq[kNumDTypes];
  StochasticFn stochastic[kNumDTypes];  // null for f32
};

// Each target's kernels compile as FASTOPT_KERNEL_PARTS translation units (CMake compiles
// kernels_<isa>.cpp once per part, FASTOPT_PART defined), so that a many-core build compiles them
// side by side: fill_part<k> sets the entries of the rules whose id % FASTOPT_KERNEL_PARTS == k
// (as the CUDA engine splits them: device.cuh), part 0 also those not per rule.
namespace scalar { template <int part> void fill_part(KernelSet& s); }
namespace avx2 { template <int part> void fill_part(KernelSet& s); }
namespace avx512 { template <int part> void fill_part(KernelSet& s); }

// A target's kernel set, assembled from its parts on first use (kernels.cpp); only where the CPU
// has the target (isa.cpp): each part is compiled with its target's flags.
const KernelSet& kernels_scalar();
const KernelSet& kernels_avx2();
const KernelSet& kernels_avx512();

}  // namespace fastopt::cpu
