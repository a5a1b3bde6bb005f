// NAdam (Dozat, 2016) with torch.optim.NAdam semantics: the momentum schedule
// mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay)), coupled L2 or decoupled weight
// decay, eps added to sqrt(v_hat), maximize.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"
#include "fastopt/rules/parts.h"

namespace fastopt {

struct NAdam {
  struct Hyper {
    double lr = 2e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0, momentum_decay = 4e-3;
    bool decoupled = false, maximize = false;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("beta1", &Hyper::beta1), f("beta2", &Hyper::beta2), f("eps", &Hyper::eps);
    f("weight_decay", &Hyper::weight_decay), f("momentum_decay", &Hyper::momentum_decay);
    f("decoupled", &Hyper::decoupled), f("maximize", &Hyper::maximize);
  }

  struct Coeffs {
    float one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor;
    float grad_coef, avg_coef, inv_bias_correction2_sqrt, grad_sign;
    bool decoupled;
  };

  static constexpr int max_state = 2;
  static constexpr int state_counts[] = {2};
  static constexpr const char* state_names[max_state] = {"exp_avg", "exp_avg_sq"};  // in binding order
  static constexpr unsigned nonnegative_state = 0b10;  // exp_avg_sq: 8-bit state codes them unsigned

  FASTOPT_HD static int num_state(const Hyper&) { return 2; }

  static std::string check(const Hyper& h) {
    const std::string e = check::adam_like(h);
    return e.empty() ? check::non_negative("momentum_decay", h.momentum_decay) : e;
  }


  FASTOPT_HD static double mu(const Hyper& h, double t) {
    return h.beta1 * (1.0 - 0.5 * std::pow(0.96, t * h.momentum_decay));
  }

  // prod_{i=1..t} mu_i in closed form, so that a step depends on its count alone (resumed,
  // functional and device-side steps need no running product). With q = 0.96^momentum_decay,
  //   log prod (1 - q^i / 2) = -sum_k 2^-k / k * sum_{i=1..t} q^(ik)
  //                          = -sum_k 2^-k / k * q^k * (1 - q^(kt)) / (1 - q^k),
  // whose terms shrink at least by half from one k to the next: ~55 terms reach double
  // precision whatever t is.
  FASTOPT_HD static double mu_product(const Hyper& h, int64_t t) {
    const double a = h.momentum_decay * std::log(0.96);  // log q <= 0
    double sum = 0, half_k = 1;
    for (int k = 1; k <= 64; ++k) {
      half_k *= 0.5;
      const double x = k * a;
      // sum_{i=1..t} q^(ik) = q^k * (1 - q^(kt)) / (1 - q^k); t terms of 1 when q = 1.
      const double geometric = x == 0 ? double(t) : std::exp(x) * (std::expm1(x * double(t)) / std::expm1(x));
      const double term = half_k / k * geometric;
      sum += term;
      if (term <= sum * 1e-17) break;
    }
    return std::pow(h.beta1, double(t)) * std::exp(-sum);
  }

  // step is the 1-based count of updates, this one included.
  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t step) {
    const double t = double(step);
    const double mu_t = mu(h, t), mu_next = mu(h, t + 1);
    const double product = mu_product(h, step);
    const double bc2 = 1.0 - std::pow(h.beta2, t);
    return {float(1.0 - h.beta1),
            float(h.beta2),
            float(1.0 - h.beta2),
            float(h.eps),
            float(h.weight_decay),
            float(1.0 - h.lr * h.weight_decay),
            float(-h.lr * (1.0 - mu_t) / (1.0 - product)),
            float(-h.lr * mu_next / (1.0 - product * mu_next)),
            float(1.0 / std::sqrt(bc2)),
            h.maximize ? -1.0f : 1.0f,
            h.decoupled};
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    g = g * V(c.grad_sign);
    g = parts::weight_decay(g, p, c.weight_decay, c.decay_factor, c.decoupled);
    parts::adam_moments(g, s[0], s[1], c.one_minus_beta1, c.beta2, c.one_minus_beta2);
    const V denom = vfma(vsqrt(s[1]), V(c.inv_bias_correction2_sqrt), V(c.eps));
    // Nesterov: the grad's share at mu_t and the moment's at mu_{t+1}, added to p one after
    // the other, as torch does. One sum would be a near-constant addend under a steady grad
    // (their coefficients trade weight as mu_t rises, their sum barely moves), and
    // round-to-nearest of p + a constant makes the same error at every step: 2e-4 after
    // 3000 steps at p ~ 6, against 1e-6 with two addends whose residues keep changing.
    p = p + vdiv(V(c.grad_coef) * g, denom);
    p = p + vdiv(V(c.avg_coef) * s[0], denom);
  }
};

}  // namespace fastopt
