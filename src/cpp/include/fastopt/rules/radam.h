// RAdam (Liu et al., 2020) with torch.optim.RAdam semantics: Adam's step rectified by the
// variance of the adaptive learning rate once the approximated SMA length rho_t exceeds 5,
// plain bias-corrected momentum before; eps added to sqrt(v) (not bias-corrected); coupled
// L2 or decoupled weight decay; maximize.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"
#include "fastopt/rules/parts.h"

namespace fastopt {

struct RAdam {
  struct Hyper {
    double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
    bool decoupled = false, maximize = false;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("beta1", &Hyper::beta1), f("beta2", &Hyper::beta2), f("eps", &Hyper::eps);
    f("weight_decay", &Hyper::weight_decay), f("decoupled", &Hyper::decoupled), f("maximize", &Hyper::maximize);
  }

  struct Coeffs {
    float one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor, neg_step_size, grad_sign;
    bool decoupled, rectified;
  };

  static constexpr int max_state = 2;
  static constexpr int state_counts[] = {2};
  static constexpr const char* state_names[max_state] = {"exp_avg", "exp_avg_sq"};  // in binding order
  static constexpr unsigned nonnegative_state = 0b10;  // exp_avg_sq: 8-bit state codes them unsigned

  FASTOPT_HD static int num_state(const Hyper&) { return 2; }

  static std::string check(const Hyper& h) { return check::adam_like(h); }

  // step is the 1-based count of updates, this one included. The branch depends on the step
  // alone, so it is taken here once, as torch takes it (rho_t > 5, computed as torch does).
  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t step) {
    const double t = double(step);
    const double bc1 = 1.0 - std::pow(h.beta1, t);
    const double bc2 = 1.0 - std::pow(h.beta2, t);
    const double rho_inf = 2.0 / (1.0 - h.beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * t * std::pow(h.beta2, t) / bc2;
    const bool rectified = rho_t > 5.0;
    double step_size = h.lr / bc1;
    if (rectified) {
      const double rect = std::sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
      step_size *= rect * std::sqrt(bc2);
    }
    return {float(1.0 - h.beta1), float(h.beta2),
            float(1.0 - h.beta2), float(h.eps),
            float(h.weight_decay), float(1.0 - h.lr * h.weight_decay),
            float(-step_size),    h.maximize ? -1.0f : 1.0f,
            h.decoupled,          rectified};
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    g = g * V(c.grad_sign);
    g = parts::weight_decay(g, p, c.weight_decay, c.decay_factor, c.decoupled);
    parts::adam_moments(g, s[0], s[1], c.one_minus_beta1, c.beta2, c.one_minus_beta2);
    const V direction = c.rectified ? vdiv(s[0], vsqrt(s[1]) + V(c.eps)) : s[0];
    p = vfma(V(c.neg_step_size), direction, p);
  }
};

}  // namespace fastopt
