// The CPU kernels, written once and compiled once per ISA. The including file defines
// FASTOPT_ISA (a namespace name), FASTOPT_LANE (the vector lane type) and
// FASTOPT_KERNEL_SET (the accessor it exports). No -march=native: each target's flags
// are set by CMake on its own translation unit.
#include "fastopt/element.h"
#include "fastopt/reduce.h"
#include "fastopt/rules/registry.h"
#include "kernels.h"

namespace fastopt::cpu::FASTOPT_ISA {

// The vector body and the scalar tail call the same rule.
template <class Rule, class P, class G>
void run(const void* coeffs, const GradTransform& transform, const TensorSlot& slot, int64_t begin, int64_t end) {
  using V = FASTOPT_LANE;
  // Local copies: the stores into the tensors cannot alias them, so they stay in registers.
  const typename Rule::Coeffs c = *static_cast<const typename Rule::Coeffs*>(coeffs);
  const GradTransform x = transform;
  const TensorSlot t = slot;
  int64_t i = begin;
  for (; i + 2 * lane_width<V> <= end; i += 2 * lane_width<V>) {
    apply_element<Rule, V, P, G>(c, x, t, i);
    apply_element<Rule, V, P, G>(c, x, t, i + lane_width<V>);
  }
  for (; i + lane_width<V> <= end; i += lane_width<V>) apply_element<Rule, V, P, G>(c, x, t, i);
  for (; i < end; ++i) apply_element<Rule, float, P, G>(c, x, t, i);
}

// Sum of squares of elements [begin, end) of a tensor of T in the canonical order of
// reduce.h (begin a multiple of reduce::kSuper, at most kSuper elements), and how many are
// not finite. Lane l of reduce.h is lane l % W of accumulator l / W.
template <class T>
void sumsq(const void* data, int64_t begin, int64_t end, double* sum, int64_t* nonfinite) {
  using V = FASTOPT_LANE;
  constexpr int W = lane_width<V>, N = reduce::kLanes / W;
  const T* x = static_cast<const T*>(data);
  double total = 0;
  int64_t bad = 0;
  for (int64_t b = begin; b < end; b += reduce::kBlock) {
    const int64_t e = b + reduce::kBlock < end ? b + reduce::kBlock : end;
    V acc[N];
    for (int k = 0; k < N; ++k) acc[k] = V(0.0f);
    int64_t i = b;
    for (; i + reduce::kLanes <= e; i += reduce::kLanes) {
      for (int k = 0; k < N; ++k) {
        const V v = load(x + i + k * W, Lane<V>{});
        acc[k] = vfma(v, v, acc[k]);
        bad += count_nonfinite(v);
      }
    }
    float lanes[reduce::kLanes];
    for (int k = 0; k < N; ++k) store(lanes + k * W, acc[k]);
    for (int l = 0; i < e; ++i, ++l) {
      const float v = load(x + i, Lane<float>{});
      lanes[l] = vfma(v, v, lanes[l]);
      bad += count_nonfinite(v);
    }
    total += double(reduce::fold_lanes(lanes));
  }
  *sum = total;
  *nonfinite = bad;
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
  s.sumsq[int(DType::f32)] = &sumsq<float>;
  s.sumsq[int(DType::f16)] = &sumsq<f16>;
  s.sumsq[int(DType::bf16)] = &sumsq<bf16>;
  return s;
}

}  // namespace fastopt::cpu::FASTOPT_ISA

namespace fastopt::cpu {
const KernelSet& FASTOPT_KERNEL_SET() {
  static const KernelSet set = FASTOPT_ISA::make_set();
  return set;
}
}  // namespace fastopt::cpu
