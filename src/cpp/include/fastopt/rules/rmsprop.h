// RMSprop (Hinton, 2012; centered: Graves, 2013) with torch.optim.RMSprop semantics: eps
// added outside the square root, optional momentum buffer over g / avg, centered variance,
// L2 weight decay, maximize.
#pragma once
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"

namespace fastopt {

struct RmsProp {
  struct Hyper {
    double lr = 1e-2, alpha = 0.99, eps = 1e-8, weight_decay = 0, momentum = 0;
    bool centered = false, maximize = false;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("alpha", &Hyper::alpha), f("eps", &Hyper::eps), f("weight_decay", &Hyper::weight_decay);
    f("momentum", &Hyper::momentum), f("centered", &Hyper::centered), f("maximize", &Hyper::maximize);
  }

  struct Coeffs {
    float neg_lr, alpha, one_minus_alpha, eps, weight_decay, momentum, grad_sign;
    bool has_momentum, centered;
  };

  // square_avg, momentum_buffer, grad_avg. The bound streams are a prefix of these, so
  // centered without momentum binds an idle momentum_buffer too (left untouched).
  static constexpr int max_state = 3;
  static constexpr int state_counts[] = {1, 2, 3};
  static constexpr const char* state_names[max_state] = {"square_avg", "momentum_buffer", "grad_avg"};  // in binding order
  static constexpr unsigned nonnegative_state = 0b001;  // square_avg: 8-bit state codes them unsigned

  FASTOPT_HD static int num_state(const Hyper& h) { return h.centered ? 3 : (h.momentum != 0 ? 2 : 1); }

  static std::string check(const Hyper& h) {
    for (auto e : {check::non_negative("lr", h.lr), check::closed_unit_interval("alpha", h.alpha),
                   check::non_negative("eps", h.eps), check::non_negative("weight_decay", h.weight_decay),
                   check::non_negative("momentum", h.momentum)}) {
      if (!e.empty()) return e;
    }
    return {};
  }

  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t) {
    return {float(-h.lr),        float(h.alpha),    float(1.0 - h.alpha),       float(h.eps),
            float(h.weight_decay), float(h.momentum), h.maximize ? -1.0f : 1.0f, h.momentum != 0,
            h.centered};
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    g = g * V(c.grad_sign);
    if (c.weight_decay != 0) g = vfma(V(c.weight_decay), p, g);
    s[0] = vfma(V(c.one_minus_alpha) * g, g, V(c.alpha) * s[0]);
    V var = s[0];
    if (c.centered) {
      s[2] = vfma(V(c.one_minus_alpha), g - s[2], s[2]);  // lerp toward g
      var = vfma(V(0.0f) - s[2], s[2], s[0]);              // square_avg - grad_avg^2, one rounding
    }
    const V step = vdiv(g, vsqrt(var) + V(c.eps));
    if (c.has_momentum) {
      // Two roundings, as torch's mul_().addcdiv_(): the buffer sums terms of both signs,
      // and a fused rounding would drift visibly from torch's trajectory.
      s[1] = V(c.momentum) * s[1] + step;
      p = vfma(V(c.neg_lr), s[1], p);
    } else {
      p = vfma(V(c.neg_lr), step, p);
    }
  }
};

}  // namespace fastopt
