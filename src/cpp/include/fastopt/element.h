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

// state_counts (0 .. max_state): the numbers of state streams that reach the plain update, those
// num_state() returns (a factored rule: its unfactored_state, as factored state takes its own
// loop). The CPU kernels compile their plain update once per count (cpu/kernels.inl:
// with_state_count); a count left out takes the general update, the same bits, slower.
template <class R, class = void>
struct has_state_counts : std::false_type {};
template <class R>
struct has_state_counts<R, decltype(void(R::state_counts))> : std::true_type {};
template <class R>
constexpr bool takes_state_count(int n) {
  if constexpr (has_state_counts<R>::value) {
    for (int k : R::state_counts) {
      if (k == n) return true;
    }
    return false;
  } else {
    return n <= R::max_state;
  }
}

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

// factored (false): the rule keeps factored state for params of >= 2 dims (fastopt/factored.h).
template <class R, class = void>
struct is_factored : std::false_type {};
template <class R>
struct is_factored<R, decltype(void(R::factored))> : std::integral_constant<bool, R::factored> {};

// for_tensor (none): a two-pass rule's Coeffs for one tensor, made from its group's before the
// tensor's first pass (both engines call it wherever a pass starts from the group's Coeffs).
template <class R, class = void>
struct has_for_tensor : std::false_type {};
template <class R>
struct has_for_tensor<R, decltype(void(&R::for_tensor))> : std::true_type {};

template <class Rule>
FASTOPT_HD typename Rule::Coeffs tensor_coeffs(const typename Rule::Coeffs& c, const TensorSlot& t) {
  if constexpr (has_for_tensor<Rule>::value) {
    static_assert(num_sums<Rule>::value > 0, "for_tensor is for two-pass rules");
    return Rule::for_tensor(c, t);
  } else {
    return c;
  }
}

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
// them again with the block's new absmax once the whole block is updated (kernels.inl: by_blocks;
// its vector targets' update pipelines the three steps instead: q8_update). The GPU (values null)
// dequantizes each element with the block's `absmax` as it loads it, and, having computed the
// new absmax in a first pass that wrote nothing (next_state), quantizes each new value as it
// comes, scaled by `inv` (quant::inv_absmax of the new absmax).
struct QuantBlock {
  int64_t begin;
  float absmax[kMaxState];
  float* values[kMaxState];
  float inv[kMaxState];
};

// Stream k of tensor t at index j (float32 or bfloat16 state), in fp32.
template <class L>
FASTOPT_HD L load_stream(const TensorSlot& t, int k, int64_t j) {
  if (t.state_store == StateStore::f32) return load(static_cast<const float*>(t.state[k]) + j, Lane<L>{});
  return load(static_cast<const bf16*>(t.state[k]) + j, Lane<L>{});
}

// Stream k of a tensor rounds stochastically with its own bits of the step.
FASTOPT_HD uint64_t state_key(const TensorSlot& t, uint64_t round_key, int k) {
  return random::tensor_key(random::tensor_key(round_key, uint64_t(t.tensor)), uint64_t(k) + 1);
}

// v stored into stream k of tensor t at index j (float32 or bfloat16 state; round_key: the step's,
// GradTransform::round_key, for bfloat16 rounded stochastically).
template <class L>
FASTOPT_HD void store_stream(const TensorSlot& t, int k, int64_t j, L v, uint64_t round_key) {
  switch (t.state_store) {
    case StateStore::f32: store(static_cast<float*>(t.state[k]) + j, v); break;
    case StateStore::bf16: store(static_cast<bf16*>(t.state[k]) + j, v); break;
    case StateStore::bf16_stochastic:
      store_stochastic_lane(static_cast<bf16*>(t.state[k]) + j, v, state_key(t, round_key, k), j);
      break;
    default: break;  // (8-bit state goes by blocks: store_state)
  }
}

// The rows of a factored tensor (TensorSlot::rows) that a pass meets: the row of the last element
// sought, its value (TensorSlot::row_value) and the index of its matrix's first column in
// stream 1. seek() divides only for an element beyond the next row: once per row in a loop that
// takes elements in order (the CPU's), at every element where they come in any order (the GPU's).
struct RowCursor {
  int64_t start = 0, end = 0;  // the row's elements
  int64_t row = -1, in_matrix = 0, col = 0;
  float value = 0.0f;

  FASTOPT_HD void seek(const TensorSlot& t, int64_t i) {
    if (i >= start && i < end) return;
    if (row >= 0 && i >= end && i < end + t.cols) {  // the next row
      ++row;
      start = end;
      end += t.cols;
      if (++in_matrix == t.rows) in_matrix = 0, col += t.cols;
    } else {
      row = i / t.cols;
      start = row * t.cols;
      end = start + t.cols;
      const int64_t m = row / t.rows;
      in_matrix = row - m * t.rows;
      col = m * t.cols;
    }
    value = t.row_value[row];
  }
};

// The state of a factored tensor at elements i.. (one lane): s[0] the value of each element's
// row, s[1] its column's (stream 1), the others 0. Lanes across rows take theirs one by one.
template <class L, int N>
FASTOPT_HD void load_factored(const TensorSlot& t, int64_t i, L (&s)[N], RowCursor& r) {
  static_assert(N >= 2, "factored state is two streams");
  r.seek(t, i);
  for (int k = 2; k < N; ++k) s[k] = L(0.0f);
  if (i + lane_width<L> <= r.end) {
    s[0] = L(r.value);
    s[1] = load_stream<L>(t, 1, r.col + (i - r.start));
    return;
  }
  float rows[lane_width<L>], cols[lane_width<L>];
  for (int j = 0; j < lane_width<L>; ++j) {
    r.seek(t, i + j);
    rows[j] = r.value;
    cols[j] = load_stream<float>(t, 1, r.col + (i + j - r.start));
  }
  s[0] = load(rows, Lane<L>{});
  s[1] = load(cols, Lane<L>{});
}

// Where the passes find a tensor's state: `Rows` is RowCursor* for a factored tensor (its state
// per row and per column: load_factored; written by the factor step alone, never by a pass),
// else std::nullptr_t (the streams hold one value per element), so that the loops of every
// other tensor compile as they would without factored state.
template <class Rows>
constexpr bool factored_rows = std::is_same_v<Rows, RowCursor*>;

// The state streams at position i, in fp32 (q: the block of 8-bit state, else unused).
template <class L, int N, class Rows = std::nullptr_t>
FASTOPT_HD void load_state(const TensorSlot& t, int64_t i, L (&s)[N], const QuantBlock* q, Rows rows = nullptr) {
  if constexpr (factored_rows<Rows>) {
    return load_factored(t, i, s, *rows);
  } else {
    for (int k = 0; k < N; ++k) {
      if (k >= t.num_state) {
        s[k] = L(0.0f);
      } else if (t.state_store == StateStore::q8) {
        s[k] = q->values[k] ? load(q->values[k] + (i - q->begin), Lane<L>{})
                            : load_q8(static_cast<const uint8_t*>(t.state[k]) + i, *t.quant[k], L(q->absmax[k]),
                                      Lane<L>{});
      } else {
        s[k] = load_stream<L>(t, k, i);
      }
    }
  }
}

// Stores the state streams but those whose bit is set in `skip` (read_only_state); a factored
// tensor's state is written by the factor step alone.
template <unsigned skip = 0, class L, int N, class Rows = std::nullptr_t>
FASTOPT_HD void store_state(const TensorSlot& t, int64_t i, const L (&s)[N], const GradTransform& x, QuantBlock* q,
                            Rows = nullptr) {
  if constexpr (!factored_rows<Rows>) {
    for (int k = 0; k < N; ++k) {
      if (k >= t.num_state || (skip >> k & 1u)) continue;
      if (t.state_store != StateStore::q8) {
        store_stream(t, k, i, s[k], x.round_key);
      } else if (q->values[k]) {
        store(q->values[k] + (i - q->begin), s[k]);
      } else {
        store_q8(static_cast<uint8_t*>(t.state[k]) + i, s[k] * L(q->inv[k]), quantizer(*t.quant[k], Lane<L>{}));
      }
    }
  }
}

// The first pass of a two-pass rule at one position: out[k] are the values whose squares
// add up into the tensor's k-th sum.
template <class Rule, class L, class P, class Rows = std::nullptr_t>
FASTOPT_HD void prepass_element(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t,
                                int64_t i, L (&out)[num_sums<Rule>::value], QuantBlock* q, Rows rows = nullptr) {
  const L g = transform_grad(x, load_grad<L>(t, i));
  const L p = load_value<L, P>(t, i);
  L s[Rule::max_state];
  load_state(t, i, s, q, rows);
  Rule::prepass(c, p, g, s, out);
  if (writes_state<Rule>::prepass) store_state(t, i, s, x, q, rows);
}

// The update at position i of the state s (loaded and stored by the caller): the param loaded,
// updated and stored.
template <class Rule, class L, class P>
FASTOPT_HD void update_value(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t, int64_t i,
                             L (&s)[Rule::max_state]) {
  const L g = transform_grad(x, load_grad<L>(t, i));
  L p = load_value<L, P>(t, i);
  Rule::update(c, p, g, s);
  store_value<L, P>(t, i, p, x);
}

template <class Rule, class L, class P, class Rows = std::nullptr_t>
FASTOPT_HD void apply_element(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t,
                              int64_t i, QuantBlock* q, Rows rows = nullptr) {
  L s[Rule::max_state];
  load_state(t, i, s, q, rows);
  update_value<Rule, L, P>(c, x, t, i, s);
  if (writes_state<Rule>::update) store_state<read_only_state<Rule>::value>(t, i, s, x, q, rows);
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
