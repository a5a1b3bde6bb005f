// Pieces several rules share, written once: weight decay in its two forms and Adam's moments.
#pragma once

#include "fastopt/numeric/scalar.h"
#include "fastopt/platform.h"

namespace fastopt::parts {

// Weight decay: decoupled scales p by decay_factor (1 - lr * wd); coupled (L2) returns
// g + wd * p. Nothing when wd is 0.
template <class V>
FASTOPT_HD V weight_decay(V g, V& p, float wd, float decay_factor, bool decoupled) {
  if (wd == 0) return g;
  if (decoupled) {
    p = p * V(decay_factor);
    return g;
  }
  return vfma(V(wd), p, g);
}

// Adam's moments: m lerps toward g by 1 - beta1; v = beta2 * v + (1 - beta2) * g * g.
template <class V>
FASTOPT_HD void adam_moments(V g, V& m, V& v, float one_minus_beta1, float beta2, float one_minus_beta2) {
  m = vfma(V(one_minus_beta1), g - m, m);
  v = vfma(V(one_minus_beta2) * g, g, V(beta2) * v);
}

}  // namespace fastopt::parts
