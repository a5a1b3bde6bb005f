// Schedule-Free AdamW and SGD (Defazio et al., 2024, "The Road Less Scheduled", arXiv
// 2405.15682), as the authors' AdamWScheduleFree and SGDScheduleFree (facebookresearch/
// schedule_free, 1.3 and later: AdamW's bias correction in the denominator, not in lr). The
// params hold y, the point where grads are taken; the state holds z (and v for AdamW). At step t:
//   lr_t = lr * min(1, t / warmup_steps)                     (1 without warmup)
//   c_t = w_t / (w_1 + ... + w_t),  w_i = i^r * lr_i^weight_lr_power
//   AdamW: v = beta2 v + (1 - beta2) g^2;  u = g / (sqrt(v / (1 - beta2^t)) + eps)
//   SGD:   u = g
//   u += weight_decay * y
//   y = y + c_t (z - y) + lr_t (beta1 (1 - c_t) - 1) u;   z = z - lr_t u
// The first step sets z = y (the state starts at zero, as every rule's does). The averaged point
// x = y + (1 - 1/beta1)(z - y) is the one to evaluate: a mode switch (switch_coeffs) moves y
// there and back.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"

namespace fastopt {

struct ScheduleFree {
  struct Hyper {
    double lr = 0.0025, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
    double warmup_steps = 0, r = 0, weight_lr_power = 2;
    bool adaptive = true, maximize = false;  // adaptive: AdamW; otherwise SGD (beta1 is its momentum)
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("beta1", &Hyper::beta1), f("beta2", &Hyper::beta2), f("eps", &Hyper::eps);
    f("weight_decay", &Hyper::weight_decay), f("warmup_steps", &Hyper::warmup_steps), f("r", &Hyper::r);
    f("weight_lr_power", &Hyper::weight_lr_power), f("adaptive", &Hyper::adaptive), f("maximize", &Hyper::maximize);
  }

  // A step's coefficients, or (switching) a mode switch's: p + shift * (z - p), z bound as the grad.
  struct Coeffs {
    float ckp1, y_rate, neg_lr, beta2, one_minus_beta2, inv_bias_correction2_sqrt, eps, weight_decay, grad_sign;
    float shift;
    bool adaptive, first, switching;
  };

  static constexpr int max_state = 2;
  static constexpr const char* state_names[max_state] = {"z", "exp_avg_sq"};  // in binding order
  static constexpr unsigned nonnegative_state = 0b10;                         // exp_avg_sq
  static constexpr const char* no_8bit_state =
      "its z is the base sequence of the weights themselves, which 8-bit codes would lose (bfloat16 state may do)";

  // The largest r + weight_lr_power: the weights' sums are then within 2e-12 of exact (power_mean;
  // its remainder grows with the power).
  static constexpr double kMaxPower = 32;

  FASTOPT_HD static int num_state(const Hyper& h) { return h.adaptive ? 2 : 1; }

  static std::string check(const Hyper& h) {
    // beta1 = 0 would make y = z: x could not be recovered from them (x = y + (1 - 1/beta1)(z - y)).
    const char* momentum = h.adaptive ? "beta1" : "momentum";
    if (!(h.beta1 > 0 && h.beta1 < 1)) {
      return check::describe(momentum, h.beta1, "in (0, 1) (the eval point x = y + (1 - 1/beta1)(z - y))");
    }
    for (auto e : {check::non_negative("lr", h.lr), check::non_negative("weight_decay", h.weight_decay),
                   check::non_negative("r", h.r), check::non_negative("weight_lr_power", h.weight_lr_power)}) {
      if (!e.empty()) return e;
    }
    if (h.adaptive) {
      for (auto e : {check::unit_interval("beta2", h.beta2), check::non_negative("eps", h.eps)}) {
        if (!e.empty()) return e;
      }
    }
    if (!(h.warmup_steps >= 0 && h.warmup_steps <= 9007199254740992.0 && h.warmup_steps == std::floor(h.warmup_steps))) {
      return check::describe("warmup_steps", h.warmup_steps, "a whole number >= 0");
    }
    if (h.r + h.weight_lr_power > kMaxPower) {
      return check::describe("r + weight_lr_power", h.r + h.weight_lr_power, "<= 32");
    }
    return {};
  }

  // sum_{i=1..n} (i/n)^q for a whole n >= 1 and 0 <= q <= kMaxPower, in O(1): the terms below 64
  // summed, the rest by the Euler-Maclaurin formula with four Bernoulli terms: exact for whole
  // q < 8 (the formula is then Faulhaber's), else within 2e-12 relative of the exact sum (its
  // remainder; measured over q <= 32 and n up to 10^5). tests/test_schedule_free.py holds the
  // float32 weights to the authors' running sums and to exact fractions far into a run.
  FASTOPT_HD static double power_mean(double q, double n) {
    if (q == 0) return n;
    const bool faulhaber = q < 8 && q == std::floor(q);
    const double m = faulhaber ? 1 : 64;  // the formula from m on
    double s = 0;
    for (double i = 1; i < m && i <= n; ++i) s += std::pow(i / n, q);
    if (n < m) return s;
    const double a = m / n, aq = std::pow(a, q);
    s += n / (q + 1) * (1 - aq * a) + (aq + 1) / 2;  // the integral from m to n, and the ends' halves
    // B_2k / (2k)! times the (2k-1)-th derivative of (x/n)^q, q (q-1) ... x^(q-2k+1) / n^q, from m to n.
    const double bernoulli[4] = {1.0 / 12, -1.0 / 720, 1.0 / 30240, -1.0 / 1209600};
    double falling = 1;  // q (q - 1) ... (q - j + 1)
    for (int k = 0, j = 0; k < 4; ++k) {
      for (; j < 2 * k + 1; ++j) falling *= q - j;
      s += bernoulli[k] * falling * (std::pow(n, -double(j)) - aq * std::pow(m, -double(j)));
    }
    return s;
  }

  // c_t of step t: w_t / sum_{i<=t} w_i, with lr_i = lr * min(1, i / warmup_steps), the peak lr
  // taken as constant (it cancels: c_t depends on lr only through the warmup's ramp, and is 0 when
  // lr is 0 and weight_lr_power > 0, as the reference's 0/0). With s = min(1, t/W):
  //   t <= W: c_t = t^(r+p) / sum_{i<=t} i^(r+p) = 1 / power_mean(r + p, t)
  //   t > W:  c_t = t^r / (sum_{i<=W} i^(r+p) / W^p + sum_{W<i<=t} i^r)
  FASTOPT_HD static double average_weight(const Hyper& h, int64_t step) {
    const double t = double(step), w = h.warmup_steps, q = h.r + h.weight_lr_power;
    if (h.lr == 0 && h.weight_lr_power > 0) return 0;
    if (t <= w) return 1 / power_mean(q, t);
    const double f = w > 0 ? std::pow(w / t, h.r) : 0;  // (W/t)^r: the warmup's sums, scaled as t^r
    const double warm = w > 0 ? f * (power_mean(q, w) - power_mean(h.r, w)) : 0;
    return 1 / (warm + power_mean(h.r, t));
  }

  // step is the 1-based count of updates, this one included.
  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t step) {
    const double lr = h.warmup_steps > 0 && double(step) < h.warmup_steps ? h.lr * double(step) / h.warmup_steps : h.lr;
    const double c = average_weight(h, step);
    const double bc2 = 1.0 - std::pow(h.beta2, double(step));
    return {float(c),
            float(lr * (h.beta1 * (1 - c) - 1)),
            float(-lr),
            float(h.beta2),
            float(1.0 - h.beta2),
            h.adaptive ? float(1.0 / std::sqrt(bc2)) : 1.0f,
            float(h.eps),
            float(h.weight_decay),
            h.maximize ? -1.0f : 1.0f,
            0.0f,
            h.adaptive,
            step <= 1,
            false};
  }

  // A mode switch: y to x (to_eval: p + (1 - 1/beta1)(z - p)) or x back to y (p + (1 - beta1)(z - p));
  // none before the first step (z is not set yet: x = y = z).
  static Coeffs switch_coeffs(const Hyper& h, bool to_eval, bool stepped) {
    Coeffs c{};
    c.switching = true;
    c.shift = !stepped ? 0.0f : float(to_eval ? 1.0 - 1.0 / h.beta1 : 1.0 - h.beta1);
    return c;
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    if (c.switching) {  // a mode switch binds z as the grad, and no state
      if (c.shift != 0) p = vfma(V(c.shift), g - p, p);
      return;
    }
    g = g * V(c.grad_sign);
    if (c.first) s[0] = p;  // z starts at y
    V u = g;
    if (c.adaptive) {
      s[1] = vfma(V(c.one_minus_beta2) * g, g, V(c.beta2) * s[1]);
      // sqrt(v) / sqrt(1 - beta2^t) + eps: the bias correction's reciprocal taken once per step (as Adam's).
      u = vdiv(g, vfma(vsqrt(s[1]), V(c.inv_bias_correction2_sqrt), V(c.eps)));
    }
    if (c.weight_decay != 0) u = vfma(V(c.weight_decay), p, u);  // at y, as the reference
    p = vfma(V(c.ckp1), s[0] - p, p);
    p = vfma(V(c.y_rate), u, p);
    s[0] = vfma(V(c.neg_lr), u, s[0]);
  }
};

}  // namespace fastopt
