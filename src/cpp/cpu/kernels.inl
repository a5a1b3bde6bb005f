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
void run(const void* coeffs, const TensorSlot& t, int64_t begin, int64_t end) {
  using V = FASTOPT_LANE;
  const typename Rule::Coeffs c = *static_cast<const typename Rule::Coeffs*>(coeffs);
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
// can be elided. 16 elements are 64 or 32 bytes: whole cache lines or halves.
void probe(const ProbeStream* streams, int count, int64_t begin, int64_t end, uint8_t zero) {
  typedef uint8_t u8x32 __attribute__((vector_size(32)));
  for (int64_t i = begin; i < end; i += 16) {
    u8x32 acc = {};
    for (int k = 0; k < count; ++k) {
      const int w = streams[k].elem_bytes;
      const uint8_t* base = static_cast<const uint8_t*>(streams[k].data) + i * w;
      for (int off = 0; off < 16 * w; off += 32) {
        u8x32 x;
        std::memcpy(&x, base + off, 32);
        acc ^= x;
      }
    }
    acc &= zero;
    for (int k = 0; k < count; ++k) {
      if (!streams[k].writable) continue;
      const int w = streams[k].elem_bytes;
      uint8_t* base = static_cast<uint8_t*>(streams[k].data) + i * w;
      for (int off = 0; off < 16 * w; off += 32) {
        u8x32 x;
        std::memcpy(&x, base + off, 32);
        x ^= acc;
        std::memcpy(base + off, &x, 32);
      }
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
