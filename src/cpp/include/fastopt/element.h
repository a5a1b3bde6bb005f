// One rule applied at one position of one tensor, for any lane type: loads the grad (and
// transforms it), the param (or its fp32 master), the state streams; runs the rule; stores them back, rounding
// the param to its storage type. The CPU vector body, the CPU scalar tail and a CUDA
// thread all call this, so the storage handling is written once as well.
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

#include "fastopt/numeric/convert.h"
#include "fastopt/numeric/quantize8.h"
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
//   prepass_writes_state (false), update_writes_state (true): which pass stores the state;
//   sums_values (false): the diagnosed update sums the squares of the new values, not of the
//     changes, and counts the non-finite ones (a rule that produces values: Accumulate).
//   switch_coeffs (none): has_eval_point below.
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

// read_only_state (0): bit k set where the update reads state stream k and never changes it
// (Sophia's Hessian average, updated by a pass of its own): the update does not store it.
template <class R, class = void>
struct read_only_state {
  static constexpr unsigned value = 0;
};
template <class R>
struct read_only_state<R, decltype(void(R::read_only_state))> {
  static constexpr unsigned value = R::read_only_state;
};

template <class R, class = void>
struct sums_values {
  static constexpr bool value = false;
};
template <class R>
struct sums_values<R, decltype(void(R::sums_values))> {
  static constexpr bool value = R::sums_values;
};

// Whether a rule's hyperparameters hold an lr (the utility rules' do not: an lr schedule or a
// device lr is refused for them when set), and setting it where they do.
template <class H, class = void>
struct has_lr : std::false_type {};
template <class H>
struct has_lr<H, decltype(void(std::declval<H&>().lr))> : std::true_type {};
template <class H>
FASTOPT_HD void set_lr(H& h, double lr) {
  if constexpr (has_lr<H>::value) h.lr = lr;
}

// The two values a diagnosed update sums the squares of, from an element's fp32 value before
// and after the update: the change and the old value; for a rule that sums_values, the new value
// and 1 where it is not finite (0 where it is), whose sum of squares counts them exactly.
template <class Rule, class L>
FASTOPT_HD void diagnosed_values(L before, L after, L (&v)[2]) {
  if constexpr (sums_values<Rule>::value) {
    v[0] = after;
    v[1] = vfinite_or(after - after, L(1.0f));  // (after - after: 0 where finite, NaN where not)
  } else {
    v[0] = after - before;
    v[1] = before;
  }
}
// switch_coeffs(h, to_eval, stepped) (none): the Coeffs of a mode switch (fastopt::ModeSwitch) of
// a rule that evaluates at another point than it trains at (Schedule-Free), run by the update
// kernels with the rule's first state stream (z) bound as the grads and no state.
template <class R, class = void>
struct has_eval_point : std::false_type {};
template <class R>
struct has_eval_point<R, decltype(void(&R::switch_coeffs))> : std::true_type {};

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

// A float16/bfloat16 param rounded stochastically with its tensor's stream of the step.
template <class L, class P>
FASTOPT_HD void store_stochastic(const TensorSlot& t, int64_t i, L p, uint64_t round_key) {
  if constexpr (std::is_same_v<P, bf16> || std::is_same_v<P, f16>) {
    store_stochastic_lane(static_cast<P*>(t.param) + i, p, random::tensor_key(round_key, uint64_t(t.tensor)), i);
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

// A block of 8-bit state being updated (quant::kQuantBlock elements from `begin`). The CPU
// dequantizes it into fp32 `values` (index i - begin) first, updates them there, and quantizes
// them again with the block's new absmax once the whole block is updated. The GPU (values null)
// dequantizes each element with the block's `absmax` as it loads it, and, having computed the
// new absmax in a first pass that wrote nothing (next_state), quantizes each new value as it
// comes, scaled by `inv` (quant::inv_absmax of the new absmax).
struct QuantBlock {
  int64_t begin;
  float absmax[kMaxState];
  float* values[kMaxState];
  float inv[kMaxState];
};

// The state streams at position i, in fp32 (q: the block of 8-bit state, else unused).
template <class L, int N>
FASTOPT_HD void load_state(const TensorSlot& t, int64_t i, L (&s)[N], const QuantBlock* q) {
  for (int k = 0; k < N; ++k) {
    if (k >= t.num_state) {
      s[k] = L(0.0f);
    } else if (t.state_store == StateStore::f32) {
      s[k] = load(static_cast<const float*>(t.state[k]) + i, Lane<L>{});
    } else if (t.state_store == StateStore::q8) {
      s[k] = q->values[k] ? load(q->values[k] + (i - q->begin), Lane<L>{})
                          : load_q8(static_cast<const uint8_t*>(t.state[k]) + i, *t.quant[k], L(q->absmax[k]), Lane<L>{});
    } else {
      s[k] = load(static_cast<const bf16*>(t.state[k]) + i, Lane<L>{});
    }
  }
}

// Stream k of a tensor rounds stochastically with its own bits of the step.
FASTOPT_HD uint64_t state_key(const TensorSlot& t, uint64_t round_key, int k) {
  return random::tensor_key(random::tensor_key(round_key, uint64_t(t.tensor)), uint64_t(k) + 1);
}

// Stores the state streams but those whose bit is set in `skip` (read_only_state).
template <unsigned skip = 0, class L, int N>
FASTOPT_HD void store_state(const TensorSlot& t, int64_t i, const L (&s)[N], const GradTransform& x, QuantBlock* q) {
  for (int k = 0; k < N; ++k) {
    if (k >= t.num_state || (skip >> k & 1u)) continue;
    switch (t.state_store) {
      case StateStore::f32: store(static_cast<float*>(t.state[k]) + i, s[k]); break;
      case StateStore::bf16: store(static_cast<bf16*>(t.state[k]) + i, s[k]); break;
      case StateStore::bf16_stochastic:
        store_stochastic_lane(static_cast<bf16*>(t.state[k]) + i, s[k], state_key(t, x.round_key, k), i);
        break;
      case StateStore::q8:
        if (q->values[k]) store(q->values[k] + (i - q->begin), s[k]);
        else store_q8(static_cast<uint8_t*>(t.state[k]) + i, s[k] * L(q->inv[k]), quantizer(*t.quant[k], Lane<L>{}));
        break;
    }
  }
}

// The first pass of a two-pass rule at one position: out[k] are the values whose squares
// add up into the tensor's k-th sum.
template <class Rule, class L, class P>
FASTOPT_HD void prepass_element(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t,
                                int64_t i, L (&out)[num_sums<Rule>::value], QuantBlock* q) {
  const L g = transform_grad(x, load_grad<L>(t, i));
  const L p = load_value<L, P>(t, i);
  L s[Rule::max_state];
  load_state(t, i, s, q);
  Rule::prepass(c, p, g, s, out);
  if (writes_state<Rule>::prepass) store_state(t, i, s, x, q);
}

template <class Rule, class L, class P>
FASTOPT_HD void apply_element(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t,
                              int64_t i, QuantBlock* q) {
  const L g = transform_grad(x, load_grad<L>(t, i));
  L p = load_value<L, P>(t, i);
  L s[Rule::max_state];
  load_state(t, i, s, q);
  Rule::update(c, p, g, s);
  if (writes_state<Rule>::update) store_state<read_only_state<Rule>::value>(t, i, s, x, q);
  store_value<L, P>(t, i, p, x);
}

// The state that a pass (the first of a two-pass rule's where `first`, else the update) leaves
// at position i, written nowhere: the GPU's first pass over a block of 8-bit state.
template <class Rule, bool first, class L, class P>
FASTOPT_HD void next_state(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t, int64_t i,
                           const QuantBlock* q, L (&s)[Rule::max_state]) {
  const L g = transform_grad(x, load_grad<L>(t, i));
  L p = load_value<L, P>(t, i);
  load_state(t, i, s, q);
  if constexpr (first) {
    L out[num_sums<Rule>::value];
    Rule::prepass(c, p, g, s, out);
  } else {
    Rule::update(c, p, g, s);
  }
}

}  // namespace fastopt
