// Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", Program 1):
//   c = beta1 * m + (1 - beta1) * g
//   p = p * (1 - lr * weight_decay) - lr * sign(c)
//   m = beta2 * m + (1 - beta2) * g
// sign(0) = 0 (no step where the interpolation is exactly zero), plus maximize.
#pragma once
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"

namespace fastopt {

struct Lion {
  struct Hyper {
    double lr = 1e-4, beta1 = 0.9, beta2 = 0.99, weight_decay = 0;
    bool maximize = false;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("beta1", &Hyper::beta1), f("beta2", &Hyper::beta2);
    f("weight_decay", &Hyper::weight_decay), f("maximize", &Hyper::maximize);
  }

  struct Coeffs {
    float one_minus_beta1, one_minus_beta2, decay_factor, neg_lr, grad_sign;
    bool decay;
  };

  static constexpr int max_state = 1;
  static constexpr int state_counts[] = {1};
  static constexpr const char* state_names[max_state] = {"exp_avg"};  // in binding order

  FASTOPT_HD static int num_state(const Hyper&) { return 1; }

  static std::string check(const Hyper& h) {
    for (auto e : {check::non_negative("lr", h.lr), check::unit_interval("beta1", h.beta1),
                   check::unit_interval("beta2", h.beta2), check::non_negative("weight_decay", h.weight_decay)}) {
      if (!e.empty()) return e;
    }
    return {};
  }

  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t) {
    return {float(1.0 - h.beta1), float(1.0 - h.beta2), float(1.0 - h.lr * h.weight_decay), float(-h.lr),
            h.maximize ? -1.0f : 1.0f, h.weight_decay != 0};
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    g = g * V(c.grad_sign);
    const V interp = vfma(V(c.one_minus_beta1), g - s[0], s[0]);  // lerp from m toward g
    if (c.decay) p = p * V(c.decay_factor);
    p = vfma(V(c.neg_lr), vsign(interp), p);
    s[0] = vfma(V(c.one_minus_beta2), g - s[0], s[0]);
  }
};

}  // namespace fastopt
