// The CPU kernels, written once and compiled once per ISA. The including file defines
// FASTOPT_ISA (a namespace name), FASTOPT_LANE (the vector lane type) and
// FASTOPT_KERNEL_SET (the accessor it exports). No -march=native: each target's flags
// are set by CMake on its own translation unit.
#include "fastopt/element.h"
#include "fastopt/rules/registry.h"
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
  for (; i + 2 * lane_width<V> <= end; i += 2 * lane_width<V>) {
    apply_element<Rule, V, P, G>(c, t, i);
    apply_element<Rule, V, P, G>(c, t, i + lane_width<V>);
  }
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

// The bandwidth probe: every stream of a step loaded and stored through the same code
// (storage conversions included), with the update replaced by x + 0*g. `zero` is 0 read
// at run time, so nothing can be elided, and the data is left unchanged.
struct Probe {
  struct Coeffs { float zero; };
  static constexpr int max_state = kMaxState;
  template <class V>
  static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    const V z = g * V(c.zero);
    p = p + z;
    for (int k = 0; k < max_state; ++k) s[k] = s[k] + z;
  }
};

KernelSet make_set() {
  KernelSet s{};
  s.isa = FASTOPT_ISA_NAME;
#define FASTOPT_FILL(id, T) fill_rule<T>(s.kernels[int(RuleId::id)]);
  FASTOPT_RULES(FASTOPT_FILL)
#undef FASTOPT_FILL
  fill_rule<Probe>(s.kernels[int(RuleId::probe)]);
  return s;
}

}  // namespace fastopt::cpu::FASTOPT_ISA

namespace fastopt::cpu {
const KernelSet& FASTOPT_KERNEL_SET() {
  static const KernelSet set = FASTOPT_ISA::make_set();
  return set;
}
}  // namespace fastopt::cpu
