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

}  // namespace fastopt::check
