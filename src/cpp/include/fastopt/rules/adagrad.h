// Adagrad (Duchi et al., 2011) with torch.optim.Adagrad semantics: a per-step learning-rate
// decay lr / (1 + (t - 1) * lr_decay), L2 weight decay, eps added outside the square root,
// maximize. The accumulator's initial value is a storage concern: the optimizer fills it.
#pragma once
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"

namespace fastopt {

struct Adagrad {
  struct Hyper {
    double lr = 1e-2, lr_decay = 0, weight_decay = 0, initial_accumulator_value = 0, eps = 1e-10;
    bool maximize = false;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("lr_decay", &Hyper::lr_decay), f("weight_decay", &Hyper::weight_decay);
    f("initial_accumulator_value", &Hyper::initial_accumulator_value), f("eps", &Hyper::eps);
    f("maximize", &Hyper::maximize);
  }

  struct Coeffs {
    float neg_clr, eps, weight_decay, grad_sign;
  };

  static constexpr int max_state = 1;
  static constexpr int state_counts[] = {1};
  static constexpr const char* state_names[max_state] = {"sum"};  // in binding order
  static constexpr unsigned nonnegative_state = 0b1;  // sum: 8-bit state codes them unsigned
  // A running sum only grows: re-quantized every step against its block's absmax, the small
  // increments of late steps vanish, and the learning-rate decay stops.
  static constexpr const char* no_8bit_state = "its state is a running sum (increments below the 8-bit resolution vanish)";

  FASTOPT_HD static int num_state(const Hyper&) { return 1; }

  static std::string check(const Hyper& h) {
    for (auto e : {check::non_negative("lr", h.lr), check::non_negative("lr_decay", h.lr_decay),
                   check::non_negative("weight_decay", h.weight_decay),
                   check::non_negative("initial_accumulator_value", h.initial_accumulator_value),
                   check::non_negative("eps", h.eps)}) {
      if (!e.empty()) return e;
    }
    return {};
  }

  // step is the 1-based count of updates, this one included.
  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t step) {
    const double clr = h.lr / (1.0 + double(step - 1) * h.lr_decay);
    return {float(-clr), float(h.eps), float(h.weight_decay), h.maximize ? -1.0f : 1.0f};
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    g = g * V(c.grad_sign);
    if (c.weight_decay != 0) g = vfma(V(c.weight_decay), p, g);
    s[0] = vfma(g, g, s[0]);
    p = vfma(V(c.neg_clr), vdiv(g, vsqrt(s[0]) + V(c.eps)), p);
  }
};

}  // namespace fastopt
