// LAMB (You et al., 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76
// minutes", Algorithm 2), with decoupled weight decay:
//   m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g^2
//   u = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * p
//   ratio = ||p|| / ||u|| per tensor (1 where either is 0), clamped to max_trust when > 0
//     (1 at ||p|| = 0, as in LARS: with 0 a zero-initialized tensor would never move. ||u|| is
//     0 only where u is 0 everywhere (sums of squares are exact, reduce.h): the step is 0
//     whatever the ratio, so this case, unlike LARS's zero grad, needs no other rule.)
//   p = p - lr * ratio * u
// Two passes over the state: the first updates m and v and sums ||p||^2 and ||u||^2; the
// second reads m and v (not writing them) and recomputes u with the same operations.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"
#include "fastopt/rules/parts.h"
#include "fastopt/tensor_list.h"

namespace fastopt {

struct Lamb {
  struct Hyper {
    double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-6, weight_decay = 0, max_trust = 0;
    bool bias_correction = true, maximize = false;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("beta1", &Hyper::beta1), f("beta2", &Hyper::beta2), f("eps", &Hyper::eps);
    f("weight_decay", &Hyper::weight_decay), f("max_trust", &Hyper::max_trust);
    f("bias_correction", &Hyper::bias_correction), f("maximize", &Hyper::maximize);
  }

  struct Coeffs {
    double lr, max_trust;  // per group: finish() reads them
    float one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, inv_bias_correction1,
        inv_bias_correction2_sqrt, grad_sign;
    float neg_step;  // per tensor: -lr * ratio
  };

  static constexpr int max_state = 2;
  static constexpr int state_counts[] = {2};
  static constexpr const char* state_names[max_state] = {"exp_avg", "exp_avg_sq"};  // in binding order
  static constexpr unsigned nonnegative_state = 0b10;  // exp_avg_sq: 8-bit state codes them unsigned
  static constexpr int num_sums = 2;   // ||p||^2, ||u||^2
  static constexpr bool prepass_writes_state = true, update_writes_state = false;

  FASTOPT_HD static int num_state(const Hyper&) { return 2; }

  static std::string check(const Hyper& h) {
    const std::string e = check::adam_like(h);
    return e.empty() ? check::non_negative("max_trust", h.max_trust) : e;
  }


  // step is the 1-based count of updates, this one included.
  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t step) {
    const double bc1 = h.bias_correction ? 1.0 - std::pow(h.beta1, double(step)) : 1.0;
    const double bc2 = h.bias_correction ? 1.0 - std::pow(h.beta2, double(step)) : 1.0;
    return {h.lr, h.max_trust, float(1.0 - h.beta1), float(h.beta2), float(1.0 - h.beta2), float(h.eps),
            float(h.weight_decay), float(1.0 / bc1), float(1.0 / std::sqrt(bc2)), h.maximize ? -1.0f : 1.0f,
            0.0f};
  }

  // The update direction from the new moments: the same operations in both passes.
  template <class V>
  FASTOPT_HD static V direction(const Coeffs& c, V p, const V (&s)[max_state]) {
    const V denom = vfma(vsqrt(s[1]), V(c.inv_bias_correction2_sqrt), V(c.eps));
    const V u = vdiv(s[0] * V(c.inv_bias_correction1), denom);
    return c.weight_decay != 0 ? vfma(V(c.weight_decay), p, u) : u;
  }

  template <class V>
  FASTOPT_HD static void prepass(const Coeffs& c, V p, V g, V (&s)[max_state], V (&out)[num_sums]) {
    g = g * V(c.grad_sign);
    parts::adam_moments(g, s[0], s[1], c.one_minus_beta1, c.beta2, c.one_minus_beta2);
    out[0] = p;
    out[1] = direction(c, p, s);
  }

  FASTOPT_HD static Coeffs finish(Coeffs c, const double* sums, const TensorSlot&) {
    const double pn = std::sqrt(sums[0]), un = std::sqrt(sums[1]);
    double ratio = pn > 0 && un > 0 ? pn / un : 1.0;
    if (c.max_trust > 0 && ratio > c.max_trust) ratio = c.max_trust;
    c.neg_step = float(-c.lr * ratio);
    return c;
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& p, V, V (&s)[max_state]) {
    p = vfma(V(c.neg_step), direction(c, p, s), p);
  }
};

}  // namespace fastopt
