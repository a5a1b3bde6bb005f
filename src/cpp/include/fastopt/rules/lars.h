// LARS (You, Gitman & Ginsburg, 2017, "Large Batch Training of Convolutional Networks",
// Algorithm 1): per tensor, a local lr from the trust ratio of param and grad norms,
//   local = trust_coefficient * ||p|| / (||g|| + weight_decay * ||p|| + eps)
//     (1 where ||p|| is 0 or the denominator is: no ratio to take; a zero grad with
//     weight_decay or eps > 0 takes the ratio, so the step is continuous as ||g|| -> 0),
//   v = momentum * v + lr * local * (g + weight_decay * p);   p = p - v.
// With exclude_1d, tensors of at most one dimension (biases, norm scales) take neither the
// ratio nor weight decay: v = momentum * v + lr * g. Two passes: the norms, then the update.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"
#include "fastopt/tensor_list.h"

namespace fastopt {

struct Lars {
  struct Hyper {
    double lr = 1e-3, momentum = 0.9, weight_decay = 0, trust_coefficient = 1e-3, eps = 1e-8;
    bool exclude_1d = false, maximize = false;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("momentum", &Hyper::momentum), f("weight_decay", &Hyper::weight_decay);
    f("trust_coefficient", &Hyper::trust_coefficient), f("eps", &Hyper::eps);
    f("exclude_1d", &Hyper::exclude_1d), f("maximize", &Hyper::maximize);
  }

  struct Coeffs {
    double lr, weight_decay, trust_coefficient, eps;  // per group: finish() reads them
    float momentum, grad_sign;
    float scaled_lr, decay;  // per tensor: lr * local, and the weight decay the tensor takes
    bool exclude_1d;
  };

  static constexpr int max_state = 1;
  static constexpr const char* state_names[max_state] = {"momentum_buffer"};  // in binding order
  static constexpr int num_sums = 2;   // ||p||^2, ||g||^2

  FASTOPT_HD static int num_state(const Hyper& h) { return h.momentum != 0 ? 1 : 0; }

  static std::string check(const Hyper& h) {
    for (auto e : {check::non_negative("lr", h.lr), check::non_negative("momentum", h.momentum),
                   check::non_negative("weight_decay", h.weight_decay),
                   check::non_negative("trust_coefficient", h.trust_coefficient), check::non_negative("eps", h.eps)}) {
      if (!e.empty()) return e;
    }
    return {};
  }

  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t) {
    return {h.lr, h.weight_decay, h.trust_coefficient, h.eps, float(h.momentum), h.maximize ? -1.0f : 1.0f,
            0.0f, 0.0f, h.exclude_1d};
  }

  template <class V>
  FASTOPT_HD static void prepass(const Coeffs&, V p, V g, V (&)[max_state], V (&out)[num_sums]) {
    out[0] = p;
    out[1] = g;
  }

  // The tensor's Coeffs from its sums of squares.
  FASTOPT_HD static Coeffs finish(Coeffs c, const double* sums, const TensorSlot& t) {
    if (c.exclude_1d && t.ndim <= 1) {
      c.scaled_lr = float(c.lr);
      c.decay = 0.0f;
      return c;
    }
    const double pn = std::sqrt(sums[0]), gn = std::sqrt(sums[1]);
    const double denom = gn + c.weight_decay * pn + c.eps;
    const double local = pn > 0 && denom > 0 ? c.trust_coefficient * pn / denom : 1.0;
    c.scaled_lr = float(c.lr * local);
    c.decay = float(c.weight_decay);
    return c;
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    g = g * V(c.grad_sign);
    if (c.decay != 0) g = vfma(V(c.decay), p, g);
    const V step = V(c.scaled_lr) * g;
    if (c.momentum != 0) {
      s[0] = vfma(V(c.momentum), s[0], step);
      p = p - s[0];
    } else {
      p = p - step;
    }
  }
};

}  // namespace fastopt
