// Adamax (Kingma & Ba, 2015, section 7.1) with torch.optim.Adamax semantics: the infinity
// norm u = max(beta2 * u, |g| + eps) (eps inside the max), bias correction of the first
// moment only, L2 weight decay, maximize.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"

namespace fastopt {

struct Adamax {
  struct Hyper {
    double lr = 2e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
    bool maximize = false;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("beta1", &Hyper::beta1), f("beta2", &Hyper::beta2), f("eps", &Hyper::eps);
    f("weight_decay", &Hyper::weight_decay), f("maximize", &Hyper::maximize);
  }

  struct Coeffs {
    float one_minus_beta1, beta2, eps, weight_decay, neg_step_size, grad_sign;
  };

  static constexpr int max_state = 2;
  static constexpr int state_counts[] = {2};
  static constexpr const char* state_names[max_state] = {"exp_avg", "exp_inf"};  // in binding order
  static constexpr unsigned nonnegative_state = 0b10;  // exp_inf: 8-bit state codes them unsigned

  FASTOPT_HD static int num_state(const Hyper&) { return 2; }

  static std::string check(const Hyper& h) { return check::adam_like(h); }

  // step is the 1-based count of updates, this one included.
  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t step) {
    const double bc1 = 1.0 - std::pow(h.beta1, double(step));
    return {float(1.0 - h.beta1), float(h.beta2),    float(h.eps),
            float(h.weight_decay), float(-h.lr / bc1), h.maximize ? -1.0f : 1.0f};
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    g = g * V(c.grad_sign);
    if (c.weight_decay != 0) g = vfma(V(c.weight_decay), p, g);
    s[0] = vfma(V(c.one_minus_beta1), g - s[0], s[0]);  // lerp toward g
    // The grad's term second: vmax returns it when either is NaN, so a NaN grad propagates.
    s[1] = vmax(V(c.beta2) * s[1], vabs(g) + V(c.eps));
    p = vfma(V(c.neg_step_size), vdiv(s[0], s[1]), p);
  }
};

}  // namespace fastopt
