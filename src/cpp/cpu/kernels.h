// The kernel table that each ISA translation unit exports, and the rule registry.
#pragma once
#include <cstdint>

#include "fastopt/tensor_list.h"

namespace fastopt::cpu {

enum class RuleId : int { sgd = 0, adam = 1, count };

// Updates elements [begin, end) of one tensor; coeffs points at the rule's Coeffs.
using KernelFn = void (*)(const void* coeffs, const TensorSlot& t, int64_t begin, int64_t end);

// Moves bytes through `ro` read-only and `rw` read-write streams of n elements each
// (element sizes in bytes given per stream), leaving the data unchanged. [begin, end) in elements.
struct ProbeStream { void* data; int elem_bytes; bool writable; };
using ProbeFn = void (*)(const ProbeStream* streams, int count, int64_t begin, int64_t end,
                         uint8_t zero);

struct KernelSet {
  const char* isa;
  int width;  // fp32 lanes of the vector body
  KernelFn kernels[int(RuleId::count)][kNumDTypes][kNumDTypes];  // [rule][param][grad]
  ProbeFn probe;
};

const KernelSet& kernels_scalar();
const KernelSet& kernels_avx2();
const KernelSet& kernels_avx512();

}  // namespace fastopt::cpu
