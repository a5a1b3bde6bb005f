// Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019) with torch.optim
// semantics: coupled L2 decay (Adam) or decoupled decay (AdamW), AMSGrad, maximize.
// One rule for both: they differ only in where weight decay enters.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"
#include "fastopt/rules/parts.h"

namespace fastopt {

struct Adam {
  struct Hyper {
    double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
    bool amsgrad = false, maximize = false, decoupled = false;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("beta1", &Hyper::beta1), f("beta2", &Hyper::beta2), f("eps", &Hyper::eps);
    f("weight_decay", &Hyper::weight_decay), f("amsgrad", &Hyper::amsgrad), f("maximize", &Hyper::maximize);
    f("decoupled", &Hyper::decoupled);
  }

  struct Coeffs {
    float one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor;
    float neg_step_size, inv_bias_correction2_sqrt, grad_sign;
    bool decoupled, amsgrad;
  };

  static constexpr int max_state = 3;
  static constexpr int state_counts[] = {2, 3};
  static constexpr const char* state_names[max_state] = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};  // in binding order
  static constexpr unsigned nonnegative_state = 0b110;  // exp_avg_sq, max_exp_avg_sq: 8-bit state codes them unsigned

  FASTOPT_HD static int num_state(const Hyper& h) { return h.amsgrad ? 3 : 2; }

  static std::string check(const Hyper& h) { return check::adam_like(h); }

  // step is the 1-based count of updates, this one included.
  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t step) {
    const double bc1 = 1.0 - std::pow(h.beta1, double(step));
    const double bc2 = 1.0 - std::pow(h.beta2, double(step));
    return {float(1.0 - h.beta1),  float(h.beta2),          float(1.0 - h.beta2),
            float(h.eps),          float(h.weight_decay),   float(1.0 - h.lr * h.weight_decay),
            float(-h.lr / bc1),    float(1.0 / std::sqrt(bc2)), h.maximize ? -1.0f : 1.0f,
            h.decoupled,           h.amsgrad};
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    g = g * V(c.grad_sign);
    g = parts::weight_decay(g, p, c.weight_decay, c.decay_factor, c.decoupled);
    parts::adam_moments(g, s[0], s[1], c.one_minus_beta1, c.beta2, c.one_minus_beta2);
    V second = s[1];
    if (c.amsgrad) {
      s[2] = vmax(s[2], s[1]);
      second = s[2];
    }
    // sqrt(v) / sqrt(1 - beta2^t) + eps, the bias correction's reciprocal taken once per
    // step on the host: one division per element instead of two.
    const V denom = vfma(vsqrt(second), V(c.inv_bias_correction2_sqrt), V(c.eps));
    p = vfma(V(c.neg_step_size), vdiv(s[0], denom), p);
  }
};

}  // namespace fastopt
