// One rule applied at one position of one tensor, for any lane type: loads the grad (and
// transforms it), the param (or its fp32 master), the state streams; runs the rule; stores them back, rounding
// the param to its storage type. The CPU vector body, the CPU scalar tail and a CUDA
// thread all call this, so the storage handling is written once as well.
#pragma once
#include <cstdint>

#include "fastopt/numeric/convert.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/platform.h"
#include "fastopt/tensor_list.h"

namespace fastopt {

// What a step does to every grad before the rule sees it (identity by default): multiply by
// `scale` (unscaling by a loss scale and clipping by the global norm, folded into one
// factor), then clamp to [-clip_value, clip_value] when clip_value > 0. NaNs stay NaN.
struct GradTransform {
  float scale = 1.0f, clip_value = 0.0f;
};

template <class L>
FASTOPT_HD L transform_grad(const GradTransform& x, L g) {
  if (x.scale != 1.0f) g = g * L(x.scale);
  // vmax/vmin return their second operand when either is NaN: g goes second.
  if (x.clip_value > 0.0f) g = vmin(L(x.clip_value), vmax(L(-x.clip_value), g));
  return g;
}

template <class Rule, class L, class P, class G>
FASTOPT_HD void apply_element(const typename Rule::Coeffs& c, const GradTransform& x, const TensorSlot& t,
                              int64_t i) {
  P* param = static_cast<P*>(t.param);
  const G* grad = static_cast<const G*>(t.grad);
  const L g = transform_grad(x, load(grad + i, Lane<L>{}));
  L p = t.master ? load(t.master + i, Lane<L>{}) : load(param + i, Lane<L>{});
  L s[Rule::max_state];
  for (int k = 0; k < Rule::max_state; ++k) {
    s[k] = k < t.num_state ? load(t.state[k] + i, Lane<L>{}) : L(0.0f);
  }
  Rule::update(c, p, g, s);
  for (int k = 0; k < Rule::max_state; ++k) {
    if (k < t.num_state) store(t.state[k] + i, s[k]);
  }
  if (t.master) store(t.master + i, p);
  store(param + i, p);
}

}  // namespace fastopt
