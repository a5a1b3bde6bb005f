// Sophia (Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for Language
// Model Pre-training", Algorithm 3), per element, with g the grad (negated when maximize) and h
// the average of the diagonal Hessian estimates the user supplies every k steps
// (fastopt/sophia.py: update_hessian, an EMA pass of its own, h = beta2 * h + (1 - beta2) * est):
//   m = beta1 * m + (1 - beta1) * g
//   p = p * (1 - lr * weight_decay)
//   p = p - lr * clip(m / max(rho * h, eps), 1)        clip(z, 1) = max(min(z, 1), -1)
// As the paper writes it (max(rho * h, eps)), so that a negative estimate (Hutchinson's may be)
// gives a step of lr in the direction of m, never against it.
#pragma once
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"

namespace fastopt {

struct Sophia {
  struct Hyper {
    double lr = 1e-4, beta1 = 0.965, beta2 = 0.99, rho = 0.04, eps = 1e-15, weight_decay = 0.1;
    bool maximize = false;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("beta1", &Hyper::beta1), f("beta2", &Hyper::beta2), f("rho", &Hyper::rho);
    f("eps", &Hyper::eps), f("weight_decay", &Hyper::weight_decay), f("maximize", &Hyper::maximize);
  }

  struct Coeffs {
    float one_minus_beta1, decay_factor, neg_lr, rho, eps, grad_sign;
    bool decay;
  };

  static constexpr int max_state = 2;
  static constexpr int state_counts[] = {2};
  static constexpr const char* state_names[max_state] = {"exp_avg", "hessian"};  // in binding order
  static constexpr unsigned read_only_state = 0b10;  // h: the update reads it, update_hessian writes it
  static constexpr const char* no_8bit_state =
      "its Hessian average is updated by a pass of its own (update_hessian) over float32 or bfloat16 arrays";

  FASTOPT_HD static int num_state(const Hyper&) { return 2; }

  static std::string check(const Hyper& h) {
    for (auto e : {check::non_negative("lr", h.lr), check::unit_interval("beta1", h.beta1),
                   check::unit_interval("beta2", h.beta2), check::non_negative("rho", h.rho),
                   check::non_negative("weight_decay", h.weight_decay)}) {
      if (!e.empty()) return e;
    }
    // eps > 0 keeps the denominator positive (rho * h may be 0 or negative).
    if (!(h.eps > 0 && h.eps < 1e300)) return check::describe("eps", h.eps, "finite and > 0");
    return {};
  }

  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t) {
    return {float(1.0 - h.beta1), float(1.0 - h.lr * h.weight_decay), float(-h.lr), float(h.rho), float(h.eps),
            h.maximize ? -1.0f : 1.0f, h.weight_decay != 0};
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    g = g * V(c.grad_sign);
    s[0] = vfma(V(c.one_minus_beta1), g - s[0], s[0]);  // lerp from m toward g
    if (c.decay) p = p * V(c.decay_factor);
    const V ratio = vdiv(s[0], vmax(V(c.eps), V(c.rho) * s[1]));
    p = vfma(V(c.neg_lr), vmin(V(1.0f), vmax(V(-1.0f), ratio)), p);
  }
};

}  // namespace fastopt
