// Adadelta (Zeiler, 2012) with torch.optim.Adadelta semantics: eps inside both square
// roots, an lr that scales the step (default 1), L2 weight decay, maximize.
#pragma once
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"

namespace fastopt {

struct Adadelta {
  struct Hyper {
    double lr = 1.0, rho = 0.9, eps = 1e-6, weight_decay = 0;
    bool maximize = false;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("rho", &Hyper::rho), f("eps", &Hyper::eps), f("weight_decay", &Hyper::weight_decay);
    f("maximize", &Hyper::maximize);
  }

  struct Coeffs {
    float neg_lr, rho, one_minus_rho, eps, weight_decay, grad_sign;
  };

  static constexpr int max_state = 2;
  static constexpr int state_counts[] = {2};
  static constexpr const char* state_names[max_state] = {"square_avg", "acc_delta"};  // in binding order
  static constexpr unsigned nonnegative_state = 0b11;  // square_avg, acc_delta: 8-bit state codes them unsigned

  FASTOPT_HD static int num_state(const Hyper&) { return 2; }

  static std::string check(const Hyper& h) {
    for (auto e : {check::non_negative("lr", h.lr), check::closed_unit_interval("rho", h.rho),
                   check::non_negative("eps", h.eps), check::non_negative("weight_decay", h.weight_decay)}) {
      if (!e.empty()) return e;
    }
    return {};
  }

  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t) {
    return {float(-h.lr), float(h.rho), float(1.0 - h.rho), float(h.eps), float(h.weight_decay),
            h.maximize ? -1.0f : 1.0f};
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    g = g * V(c.grad_sign);
    if (c.weight_decay != 0) g = vfma(V(c.weight_decay), p, g);
    s[0] = vfma(V(c.one_minus_rho) * g, g, V(c.rho) * s[0]);
    // delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g, with the old acc_delta.
    const V delta = vdiv(vsqrt(s[1] + V(c.eps)), vsqrt(s[0] + V(c.eps))) * g;
    s[1] = vfma(V(c.one_minus_rho) * delta, delta, V(c.rho) * s[1]);
    p = vfma(V(c.neg_lr), delta, p);
  }
};

}  // namespace fastopt
