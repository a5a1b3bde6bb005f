// The exponential moving average of params (a utility, not an optimizer): the "param" is the
// average e, the "grad" the model's param p (of any float dtype), per element
//   e = decay_t * e + (1 - decay_t) * p
// with decay_t as timm's ModelEmaV3.get_decay(t) at the t-th update (1-based): 0 while
// t <= update_after_step + 1 (the average starts as a copy), then, with warmup, the decay
// 1 - (1 + s / warmup_gamma)^-warmup_power (s = t - update_after_step - 1) clamped to
// [min_decay, decay]; without, decay. first_copies false: decay from the first update, no copy
// and no warmup (timm's get_decay(None); Sophia's Hessian average, which starts from zeros).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"

namespace fastopt {

struct Ema {
  struct Hyper {
    double decay = 0.9999, min_decay = 0, update_after_step = 0, warmup_gamma = 1, warmup_power = 2.0 / 3;
    bool warmup = false, first_copies = true;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("decay", &Hyper::decay), f("min_decay", &Hyper::min_decay), f("update_after_step", &Hyper::update_after_step);
    f("warmup", &Hyper::warmup), f("warmup_gamma", &Hyper::warmup_gamma), f("warmup_power", &Hyper::warmup_power);
    f("first_copies", &Hyper::first_copies);
  }

  struct Coeffs {
    float decay, one_minus_decay;
  };

  static constexpr int max_state = 1;
  static constexpr int state_counts[] = {0};
  static constexpr const char* state_names[max_state] = {""};
  FASTOPT_HD static int num_state(const Hyper&) { return 0; }

  static std::string check(const Hyper& h) {
    if (!(h.warmup_gamma > 0 && std::isfinite(h.warmup_gamma))) {
      return check::describe("warmup_gamma", h.warmup_gamma, "finite and > 0");
    }
    if (!(h.update_after_step >= 0 && h.update_after_step <= 9.0e15 &&
          h.update_after_step == std::floor(h.update_after_step))) {
      return check::describe("update_after_step", h.update_after_step, "an integer >= 0");
    }
    for (auto e : {check::closed_unit_interval("decay", h.decay), check::closed_unit_interval("min_decay", h.min_decay),
                   check::non_negative("warmup_power", h.warmup_power)}) {
      if (!e.empty()) return e;
    }
    return {};
  }

  // The decay of update `step` (1-based), in double, as timm computes it.
  FASTOPT_HD static double decay_at(const Hyper& h, int64_t step) {
    if (!h.first_copies) return h.decay;
    const double s = double(step) - h.update_after_step - 1;
    if (s <= 0) return 0.0;
    if (!h.warmup) return h.decay;
    const double d = 1.0 - std::pow(1.0 + s / h.warmup_gamma, -h.warmup_power);
    const double capped = d < h.decay ? d : h.decay;
    return capped > h.min_decay ? capped : h.min_decay;
  }

  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t step) {
    const double d = decay_at(h, step);
    return {float(d), float(1.0 - d)};
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& e, V p, V (&)[max_state]) {
    e = vfma(V(c.decay), e, V(c.one_minus_decay) * p);
  }
};

}  // namespace fastopt
