// The CPU kernels, written once and compiled once per ISA. The including file defines
// FASTOPT_ISA (a namespace name), FASTOPT_LANE (the vector lane type) and
// FASTOPT_KERNEL_SET (the accessor it exports). No -march=native: each target's flags
// are set by CMake on its own translation unit.
#include <cstring>

#include "fastopt/element.h"
#include "fastopt/rules/adam.h"
#include "fastopt/rules/sgd.h"
#include "kernels.h"

namespace fastopt::cpu::FASTOPT_ISA {

// The vector body and the scalar tail call the same rule.
template <class Rule, class P, class G>
void run(const void* coeffs, const TensorSlot& slot, int64_t begin, int64_t end) {
  using V = FASTOPT_LANE;
  // Local copies: the stores into the tensors cannot alias them, so they stay in registers.
  const typename Rule::Coeffs c = *static_cast<const typename Rule::Coeffs*>(coeffs);
  const TensorSlot t = slot;
  int64_t i = begin;
  for (; i + lane_width<V> <= end; i += lane_width<V>) apply_element<Rule, V, P, G>(c, t, i);
  for (; i < end; ++i) apply_element<Rule, float, P, G>(c, t, i);
}

template <class Rule, class P>
constexpr void fill_grads(KernelFn (&row)[kNumDTypes]) {
  row[int(DType::f32)] = &run<Rule, P, float>;
  row[int(DType::f16)] = &run<Rule, P, f16>;
  row[int(DType::bf16)] = &run<Rule, P, bf16>;
}

template <class Rule>
constexpr void fill_rule(KernelFn (&table)[kNumDTypes][kNumDTypes]) {
  fill_grads<Rule, float>(table[int(DType::f32)]);
  fill_grads<Rule, f16>(table[int(DType::f16)]);
  fill_grads<Rule, bf16>(table[int(DType::bf16)]);
}

// Bandwidth probe: per block of 16 elements, loads every stream and writes back the
// read-write ones XORed with (reads & zero), so that the data is unchanged but nothing
// can be elided. A block is one 64-byte line of a 4-byte stream, half a line of a 2-byte one.
template <int W>
struct Block {  // the 16 elements of a W-byte stream
  typedef uint8_t type __attribute__((vector_size(16 * W)));
};

template <int W>
inline typename Block<4>::type widen_block(const typename Block<W>::type& x) {
  if constexpr (W == 4) {
    return x;
  } else {
    return __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
                                   19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 0, 1, 2, 3, 4, 5, 6,
                                   7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
                                   26, 27, 28, 29, 30, 31);
  }
}

template <int W>
inline typename Block<W>::type narrow_block(const typename Block<4>::type& x) {
  if constexpr (W == 4) {
    return x;
  } else {
    return __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
                                   19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
  }
}

template <int W>
inline void probe_read(const ProbeStream& s, int64_t i, typename Block<4>::type& acc) {
  typename Block<W>::type x;
  std::memcpy(&x, static_cast<const uint8_t*>(s.data) + i * W, sizeof(x));
  acc ^= widen_block<W>(x);
}

template <int W>
inline void probe_write(const ProbeStream& s, int64_t i, const typename Block<4>::type& acc) {
  uint8_t* at = static_cast<uint8_t*>(s.data) + i * W;
  typename Block<W>::type x;
  std::memcpy(&x, at, sizeof(x));
  x ^= narrow_block<W>(acc);
  std::memcpy(at, &x, sizeof(x));
}

void probe(const ProbeStream* streams, int count, int64_t begin, int64_t end, uint8_t zero) {
  for (int64_t i = begin; i < end; i += 16) {
    typename Block<4>::type acc = {};
    for (int k = 0; k < count; ++k) {
      if (streams[k].elem_bytes == 4) probe_read<4>(streams[k], i, acc);
      else probe_read<2>(streams[k], i, acc);
    }
    acc &= zero;
    for (int k = 0; k < count; ++k) {
      if (!streams[k].writable) continue;
      if (streams[k].elem_bytes == 4) probe_write<4>(streams[k], i, acc);
      else probe_write<2>(streams[k], i, acc);
    }
  }
}

KernelSet make_set() {
  KernelSet s{};
  s.isa = FASTOPT_ISA_NAME;
  s.width = lane_width<FASTOPT_LANE>;
  fill_rule<Sgd>(s.kernels[int(RuleId::sgd)]);
  fill_rule<Adam>(s.kernels[int(RuleId::adam)]);
  s.probe = &probe;
  return s;
}

}  // namespace fastopt::cpu::FASTOPT_ISA

namespace fastopt::cpu {
const KernelSet& FASTOPT_KERNEL_SET() {
  static const KernelSet set = FASTOPT_ISA::make_set();
  return set;
}
}  // namespace fastopt::cpu
