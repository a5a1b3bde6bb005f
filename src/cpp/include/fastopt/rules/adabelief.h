// AdaBelief (Zhuang et al., 2020, Algorithm 2): Adam with the second moment replaced by the
// EMA of (g - m_t)^2, the "belief" in the gradient, plus eps at every step:
//   s_t = beta2 * s + (1 - beta2) * (g - m_t)^2 + eps,
//   p  -= lr * m_hat / (sqrt(s_hat) + eps)
// with m_hat, s_hat bias-corrected. Options: coupled L2 (default) or decoupled weight decay,
// AMSGrad over s_t (its running maximum), maximize.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"
#include "fastopt/rules/parts.h"

namespace fastopt {

struct AdaBelief {
  struct Hyper {
    double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-16, weight_decay = 0;
    bool amsgrad = false, decoupled = false, maximize = false;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("beta1", &Hyper::beta1), f("beta2", &Hyper::beta2), f("eps", &Hyper::eps);
    f("weight_decay", &Hyper::weight_decay), f("amsgrad", &Hyper::amsgrad), f("decoupled", &Hyper::decoupled);
    f("maximize", &Hyper::maximize);
  }

  struct Coeffs {
    float one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor;
    float neg_step_size, inv_bias_correction2_sqrt, grad_sign;
    bool decoupled, amsgrad;
  };

  static constexpr int max_state = 3;
  static constexpr int state_counts[] = {2, 3};
  static constexpr const char* state_names[max_state] = {"exp_avg", "exp_avg_var", "max_exp_avg_var"};  // in binding order
  static constexpr unsigned nonnegative_state = 0b110;  // exp_avg_var, max_exp_avg_var: 8-bit state codes them unsigned

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
    s[0] = vfma(V(c.one_minus_beta1), g - s[0], s[0]);  // lerp toward g
    const V surprise = g - s[0];                         // against the updated m_t
    s[1] = vfma(V(c.one_minus_beta2) * surprise, surprise, V(c.beta2) * s[1]) + V(c.eps);
    V second = s[1];
    if (c.amsgrad) {
      s[2] = vmax(s[2], s[1]);
      second = s[2];
    }
    // sqrt(s) / sqrt(1 - beta2^t) + eps: the bias correction's reciprocal taken on the host.
    const V denom = vfma(vsqrt(second), V(c.inv_bias_correction2_sqrt), V(c.eps));
    p = vfma(V(c.neg_step_size), vdiv(s[0], denom), p);
  }
};

}  // namespace fastopt
