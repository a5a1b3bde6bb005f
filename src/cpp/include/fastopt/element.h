// One rule applied at one position of one tensor, for any lane type: loads the grad, the
// param (or its fp32 master), the state streams; runs the rule; stores them back, rounding
// the param to its storage type. The CPU vector body, the CPU scalar tail and a CUDA
// thread all call this, so the storage handling is written once as well.
#pragma once
#include <cstdint>

#include "fastopt/numeric/convert.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/platform.h"
#include "fastopt/tensor_list.h"

namespace fastopt {

template <class Rule, class L, class P, class G>
FASTOPT_HD void apply_element(const typename Rule::Coeffs& c, const TensorSlot& t, int64_t i) {
  P* param = static_cast<P*>(t.param);
  const G* grad = static_cast<const G*>(t.grad);
  const L g = load(grad + i, Lane<L>{});
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
