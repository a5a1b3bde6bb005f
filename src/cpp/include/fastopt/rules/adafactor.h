// Adafactor (Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory
// Cost") with torch.optim.Adafactor semantics (torch >= 2.5, torch/optim/_adafactor.py). At step
// t, with g the grad (negated when maximize), per tensor:
//   beta2_hat = 1 - t^beta2_decay;  rho = min(lr, 1 / sqrt(t));  alpha = max(eps2, RMS(p)) * rho
//   p = p * (1 - lr * weight_decay)
//   >= 2 dims (a batch of rows x cols matrices, the last two dims; factored.h):
//     row_var = lerp(row_var, mean of g^2 over each row, 1 - beta2_hat)        (batch * rows)
//     col_var = lerp(col_var, mean of g^2 over each column, 1 - beta2_hat)     (batch * cols)
//     v = row_var * col_var / max(mean of row_var over the matrix's rows, eps1)
//   < 2 dims: variance = lerp(variance, g^2, 1 - beta2_hat); v = variance
//   u = g / sqrt(max(v, eps1^2));  p = p - alpha / max(1, RMS(u) / d) * u
// RMS over the tensor; eps1 "None" (eps1_from_dtype): the machine epsilon of the dtype the param's
// value is kept in (float32 with fp32 master weights or a remainder, else the param's: torch's
// finfo(param.dtype).eps, taken per param). torch's lerp: self + w (end - self) for w < 0.5, else
// end - (1 - w) (end - self).
// Passes: the engine's factor pass and step (factored.h: row and column sums, row_var, col_var,
// and per row row_var / max(mean, eps1)); then the first pass sums p^2 and u^2 (and updates a
// vector's variance), finish() takes alpha and the clip, and the update recomputes u.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "fastopt/numeric/scalar.h"
#include "fastopt/platform.h"
#include "fastopt/rules/check.h"
#include "fastopt/tensor_list.h"

namespace fastopt {

struct Adafactor {
  struct Hyper {
    double lr = 1e-2, beta2_decay = -0.8, eps1 = 0, eps2 = 1e-3, d = 1, weight_decay = 0;
    bool eps1_from_dtype = true, maximize = false;  // eps1_from_dtype: torch's eps=(None, eps2)
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("lr", &Hyper::lr), f("beta2_decay", &Hyper::beta2_decay), f("eps1", &Hyper::eps1), f("eps2", &Hyper::eps2);
    f("d", &Hyper::d), f("weight_decay", &Hyper::weight_decay), f("eps1_from_dtype", &Hyper::eps1_from_dtype);
    f("maximize", &Hyper::maximize);
  }

  struct Coeffs {
    double lr, eps2, rho, d, eps1;  // per group (eps1: per tensor, for_tensor); finish() reads them
    float weight, one_minus_weight;  // of the lerps: 1 - beta2_hat = t^beta2_decay, and 1 - that
    float eps1_f, eps1_sq, decay_factor, grad_sign;
    bool eps1_from_dtype, factored;  // factored: per tensor
    float neg_step;  // per tensor: -alpha / max(1, RMS(u) / d)
  };

  static constexpr bool factored = true;
  static constexpr int max_state = 2;
  static constexpr const char* state_names[max_state] = {"row_var", "col_var"};  // params of >= 2 dims
  static constexpr int unfactored_state = 1;
  static constexpr const char* unfactored_state_names[unfactored_state] = {"variance"};  // params of < 2 dims
  static constexpr int state_counts[] = {unfactored_state};  // (factored state takes no plain loop)
  static constexpr const char* no_8bit_state =
      "its state is already factored (one value per row and per column of a matrix), and 8-bit codes of "
      "blocks of 2048 elements would save nothing there";
  static constexpr int num_sums = 2;  // ||p||^2, ||u||^2
  static constexpr bool prepass_writes_state = true, update_writes_state = false;

  FASTOPT_HD static int num_state(const Hyper&) { return 2; }

  static std::string check(const Hyper& h) {
    for (auto e : {check::non_negative("lr", h.lr), check::non_negative("eps2", h.eps2),
                   check::non_negative("weight_decay", h.weight_decay),
                   h.eps1_from_dtype ? std::string() : check::non_negative("eps1", h.eps1)}) {
      if (!e.empty()) return e;
    }
    if (!(h.beta2_decay <= 0 && std::isfinite(h.beta2_decay))) {
      return check::describe("beta2_decay", h.beta2_decay, "finite and <= 0");
    }
    if (!(h.d >= 1 && std::isfinite(h.d))) return check::describe("d", h.d, "finite and >= 1");
    return {};
  }

  // step is the 1-based count of updates, this one included.
  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t step) {
    const double weight = std::pow(double(step), h.beta2_decay);
    Coeffs c{};
    c.lr = h.lr, c.eps2 = h.eps2, c.d = h.d, c.eps1 = h.eps1;
    const double r = 1.0 / std::sqrt(double(step));
    c.rho = r < h.lr ? r : h.lr;  // (min, max and their NaNs as Python's, which torch's host math is)
    c.weight = float(weight), c.one_minus_weight = float(1.0 - weight);
    c.decay_factor = float(1.0 - h.lr * h.weight_decay);
    c.grad_sign = h.maximize ? -1.0f : 1.0f;
    c.eps1_from_dtype = h.eps1_from_dtype;
    return c;
  }

  FASTOPT_HD static Coeffs for_tensor(Coeffs c, const TensorSlot& t) {
    if (c.eps1_from_dtype) {
      const bool fp32 = t.param_dtype == DType::f32 || t.master || t.remainder;
      c.eps1 = fp32 ? 1.1920928955078125e-07 : t.param_dtype == DType::f16 ? 9.765625e-04 : 7.8125e-03;
    }
    c.eps1_f = float(c.eps1), c.eps1_sq = float(c.eps1 * c.eps1);
    c.factored = t.rows > 0;
    return c;
  }

  // torch's lerp(self, end, weight), the weight's complement taken on the host.
  template <class V>
  FASTOPT_HD static V lerp(const Coeffs& c, V self, V end) {
    return c.weight < 0.5f ? vfma(V(c.weight), end - self, self) : vfma(V(-c.one_minus_weight), end - self, end);
  }

  // Factored state (factored.h): a row's or a column's new value from its sum of g^2 over n
  // elements; a row's value for the passes from its new value and the sum of its matrix's.
  FASTOPT_HD static float factor(const Coeffs& c, float old, double sumsq, int64_t n) {
    return lerp(c, old, float(sumsq / double(n)));
  }
  FASTOPT_HD static float row_value(const Coeffs& c, float row, double rows_sum, int64_t rows) {
    const float mean = float(rows_sum / double(rows));
    return vdiv(row, vmax(c.eps1_f, mean));  // (vmax: a NaN mean stays NaN, as in torch's clamp)
  }

  // u from g and the second moment estimate.
  template <class V>
  FASTOPT_HD static V direction(const Coeffs& c, V g, const V (&s)[max_state]) {
    const V v = c.factored ? s[0] * s[1] : s[0];
    return vdiv(g, vsqrt(vmax(V(c.eps1_sq), v)));
  }

  template <class V>
  FASTOPT_HD static void prepass(const Coeffs& c, V p, V g, V (&s)[max_state], V (&out)[num_sums]) {
    g = g * V(c.grad_sign);
    if (!c.factored) s[0] = lerp(c, s[0], g * g);
    out[0] = p;
    out[1] = direction(c, g, s);
  }

  FASTOPT_HD static Coeffs finish(Coeffs c, const double* sums, const TensorSlot& t) {
    const double root_n = std::sqrt(double(t.numel > 0 ? t.numel : 1));
    const double rms_p = std::sqrt(sums[0]) / root_n, clip = std::sqrt(sums[1]) / (root_n * c.d);
    const double alpha = (rms_p > c.eps2 ? rms_p : c.eps2) * c.rho;
    c.neg_step = float(-alpha / (clip > 1.0 ? clip : 1.0));
    return c;
  }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    const V u = direction(c, g * V(c.grad_sign), s);
    if (c.decay_factor != 1.0f) p = p * V(c.decay_factor);
    p = vfma(V(c.neg_step), u, p);
  }
};

}  // namespace fastopt
