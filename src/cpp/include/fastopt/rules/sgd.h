// SGD with momentum, dampening, Nesterov momentum, L2 weight decay and maximize, in one of
// two momentum forms that agree while lr is constant and differ when it changes:
//   torch.optim.SGD:   b = momentum * b + (1 - dampening) * g;  p -= lr * b
//                      (nesterov: p -= lr * (g + momentum * b)); the first step sets b = g.
//   Sutskever / Keras: v = momentum * v - lr * g;  p += v
//                      (nesterov: p += momentum * v - lr * g); the first step sets v = -lr * g.
// In the Sutskever form lr scales each grad as it enters the buffer, so an lr change acts
// gradually; in torch's it rescales the whole buffer at once.
#pragma once
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"

namespace fastopt {

struct Sgd {
  // The rule's step is the count of momentum buffer updates (this one included), not of
  // optimizer steps: with momentum switched on mid-run, its first step sets the buffer to the
  // grad, as torch.optim.SGD does (engines that count steps themselves follow this).
  static constexpr bool counts_buffer_updates = true;

  struct Hyper {
    double lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0;
    bool nesterov = false, maximize = false, sutskever = false;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("momentum", &Hyper::momentum), f("dampening", &Hyper::dampening);
    f("weight_decay", &Hyper::weight_decay), f("nesterov", &Hyper::nesterov), f("maximize", &Hyper::maximize);
    f("sutskever", &Hyper::sutskever);
  }

  struct Coeffs {
    float neg_lr, momentum, one_minus_dampening, weight_decay, grad_sign;
    bool has_momentum, first, nesterov, sutskever;
  };

  static constexpr int max_state = 1;
  static constexpr const char* state_names[max_state] = {"momentum_buffer"};  // in binding order

  FASTOPT_HD static int num_state(const Hyper& h) { return h.momentum != 0 ? 1 : 0; }

  static std::string check(const Hyper& h) {
    for (auto e : {check::non_negative("lr", h.lr), check::non_negative("momentum", h.momentum),
                   check::closed_unit_interval("dampening", h.dampening),
                   check::non_negative("weight_decay", h.weight_decay)}) {
      if (!e.empty()) return e;
    }
    if (h.nesterov && (h.momentum <= 0 || h.dampening != 0))
      return "nesterov requires momentum > 0 and dampening = 0";
    if (h.sutskever && h.dampening != 0) return "the sutskever momentum form has no dampening (dampening must be 0)";
    return {};
  }

  // step counts the updates of the momentum buffer, this one included (1 on the first).
  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t step) {
    return {float(-h.lr), float(h.momentum), float(1.0 - h.dampening), float(h.weight_decay),
            h.maximize ? -1.0f : 1.0f, h.momentum != 0, step <= 1, h.nesterov, h.sutskever};
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    g = g * V(c.grad_sign);
    if (c.weight_decay != 0) g = vfma(V(c.weight_decay), p, g);
    if (c.has_momentum && c.sutskever) {
      const V lr_g = V(c.neg_lr) * g;
      s[0] = c.first ? lr_g : vfma(V(c.momentum), s[0], lr_g);
      p = p + (c.nesterov ? vfma(V(c.momentum), s[0], lr_g) : s[0]);
      return;
    }
    if (c.has_momentum) {
      const V buf = c.first ? g : vfma(V(c.one_minus_dampening), g, V(c.momentum) * s[0]);
      s[0] = buf;
      g = c.nesterov ? vfma(V(c.momentum), buf, g) : buf;
    }
    p = vfma(V(c.neg_lr), g, p);
  }
};

}  // namespace fastopt
