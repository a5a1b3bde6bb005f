// One rule applied at one position of one tensor, for any lane type: loads the grad (and
// transforms it), the param (or its fp32 master), the state streams; runs the rule; stores them back, rounding
// the param to its storage type. The CPU vector body, the CPU scalar tail and a CUDA
// thread all call this, so the storage handling is written once as well.
#pragma once
#include <cstdint>
#include <type_traits>

#include "fastopt/numeric/convert.h"
#include "fastopt/numeric/random.h"
#include "fastopt/numeric/rounding.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/platform.h"
#include "fastopt/tensor_list.h"

namespace fastopt {

// What a step does to every grad before the rule sees it (identity by default): multiply by
// `scale` (unscaling by a loss scale and clipping by the global norm, folded into one
// factor), then clamp to [-clip_value, clip_value] when clip_value > 0. NaNs stay NaN.
struct GradTransform {
  float scale = 1.0f, clip_value = 0.0f;
  uint64_t round_key = 0;  // random::step_key of the step, for params rounded stochastically
};

template <class L>
FASTOPT_HD L transform_grad(const GradTransform& x, L g) {
  if (x.scale != 1.0f) g = g * L(x.scale);
  // vmax/vmin return their second operand when either is NaN: g goes second.
  if (x.clip_value > 0.0f) g = vmin(L(x.clip_value), vmax(L(-x.clip_value), g));
  return g;
}

// Optional parts of a rule, with their defaults:
//   num_sums (0): per-tensor sums of squares a two-pass rule takes in its first pass
//     (prepass), from which finish() makes each tensor's Coeffs for the update pass;
//   prepass_writes_state (false), update_writes_state (true): which pass stores the state.
template <class R, class = void>
struct num_sums {
  static constexpr int value = 0;
};
template <class R>
struct num_sums<R, decltype(void(R::num_sums))> {
  static constexpr int value = R::num_sums;
};
template <class R, class = void>
struct writes_state {
  static constexpr bool prepass = false, update = true;
};
template <class R>
struct writes_state<R, decltype(void(R::update_writes_state))> {
  static constexpr bool prepass = R::prepass_writes_state, update = R::update_writes_state;
};

// The grad's storage type is read from the slot at run time, not compiled into the kernels: a
// branch that every element of a tensor takes alike (free beside the memory traffic of a
// step), where a template parameter would multiply every kernel by the three grad dtypes.
template <class L>
FASTOPT_HD L load_grad(const TensorSlot& t, int64_t i) {
  switch (t.grad_dtype) {
    case DType::f16: return load(static_cast<const f16*>(t.grad) + i, Lane<L>{});
    case DType::bf16: return load(static_cast<const bf16*>(t.grad) + i, Lane<L>{});
    default: return load(static_cast<const float*>(t.grad) + i, Lane<L>{});
  }
}

// The fp32 value of a param: its master, its halves joined, or the param itself.
template <class L, class P>
FASTOPT_HD L load_value(const TensorSlot& t, int64_t i) {
  if (t.master) return load(t.master + i, Lane<L>{});
  if (t.remainder) return load_joined(static_cast<const bf16*>(t.param) + i, t.remainder + i, Lane<L>{});
  return load(static_cast<const P*>(t.param) + i, Lane<L>{});
}

// A float16/bfloat16 param rounded stochastically with its tensor's stream of the step: element
// by element (a vector lane through fp32; the bits are those of element i whatever the lane).
template <class L, class P>
FASTOPT_HD void store_stochastic(const TensorSlot& t, int64_t i, L p, uint64_t round_key) {
  if constexpr (std::is_same_v<P, bf16> || std::is_same_v<P, f16>) {
    alignas(16) float v[lane_width<L>];  // (the CUDA lane stores 16 bytes at a time)
    store(v, p);
    const uint64_t key = random::tensor_key(round_key, uint64_t(t.tensor));
    P* param = static_cast<P*>(t.param);
    for (int k = 0; k < lane_width<L>; ++k) {
      const uint32_t r = random::bits32(key, uint64_t(i + k));
      if constexpr (std::is_same_v<P, bf16>) param[i + k] = bf16_stochastic(v[k], r);
      else param[i + k] = f16_stochastic(v[k], r);
    }
  }
}

template <class L, class P>
FASTOPT_HD void store_value(const TensorSlot& t, int64_t i, L p, const GradTransform& x) {
  if (t.remainder) return store_split(static_cast<bf16*>(t.param) + i, t.remainder + i, p);
  if (t.compensation) return kahan_store(static_cast<bf16*>(t.param) + i, t.compensation + i, p);
  if (t.stochastic) return store_stochastic<L, P>(t, i, p, x.round_key);
  if (t.master) store(t.master + i, p);
  store(static_cast<P*>(t.param) + i, p);
}

template <class L, int N>
FASTOPT_HD void load_state(const TensorSlot& t, int64_t i, L (&s)[N]) {
  for (int k = 0; k < N; ++k) s[k] = k < t.num_state ? load(t.state[k] + i, Lane<L>{}) : L(0.0f);
}

template <class L, int N>
FASTOPT_HD void store_state(const TensorSlot& t, int64_t i, const L (&s)[N]) {
  for (int k = 0; k < N; ++k) {
    if (k < t.num_state) store(t.state[k] + i, s[k]);
  }
}

// The first pass of a two-pass rule at one position: out[k] are the values whose squares
// add up into the tensor's k-th sum.
template <class Rule, class L, class P>
FASTOPT_HD void prepass_element(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t,
                                int64_t i, L (&out)[num_sums<Rule>::value]) {
  const L g = transform_grad(x, load_grad<L>(t, i));
  const L p = load_value<L, P>(t, i);
  L s[Rule::max_state];
  load_state(t, i, s);
  Rule::prepass(c, p, g, s, out);
  if (writes_state<Rule>::prepass) store_state(t, i, s);
}

template <class Rule, class L, class P>
FASTOPT_HD void apply_element(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t,
                              int64_t i) {
  const L g = transform_grad(x, load_grad<L>(t, i));
  L p = load_value<L, P>(t, i);
  L s[Rule::max_state];
  load_state(t, i, s);
  Rule::update(c, p, g, s);
  if (writes_state<Rule>::update) store_state(t, i, s);
  store_value<L, P>(t, i, p, x);
}

}  // namespace fastopt
