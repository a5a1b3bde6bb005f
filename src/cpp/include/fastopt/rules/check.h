// Host-side hyperparameter checks shared by the rules: each returns an error message, or
// an empty string when the value is acceptable.
#pragma once
#include <cmath>
#include <sstream>
#include <string>

namespace fastopt::check {

inline std::string describe(const char* name, double v, const char* rule) {
  std::ostringstream s;
  s << name << " must be " << rule << ", got " << v;
  return s.str();
}

inline std::string non_negative(const char* name, double v) {
  return (std::isfinite(v) && v >= 0) ? std::string() : describe(name, v, "finite and >= 0");
}

inline std::string unit_interval(const char* name, double v) {  // [0, 1)
  return (v >= 0 && v < 1) ? std::string() : describe(name, v, "in [0, 1)");
}

inline std::string closed_unit_interval(const char* name, double v) {  // [0, 1]
  return (v >= 0 && v <= 1) ? std::string() : describe(name, v, "in [0, 1]");
}

// The hyperparameters every Adam-like rule has: lr, beta1, beta2, eps, weight_decay.
template <class Hyper>
std::string adam_like(const Hyper& h) {
  for (auto e : {non_negative("lr", h.lr), unit_interval("beta1", h.beta1), unit_interval("beta2", h.beta2),
                 non_negative("eps", h.eps), non_negative("weight_decay", h.weight_decay)}) {
    if (!e.empty()) return e;
  }
  return {};
}

}  // namespace fastopt::check
