// Gradient accumulation (a utility, not an optimizer): the "param" is the accumulator a (fp32,
// the grads a step then reads), the "grad" a micro-batch's grad g (of any float dtype), per
// element
//   a = a + scale * g        (first: a = scale * g, so that no pass zeroes a beforehand)
// Its diagnosed pass sums the squares of the new values (sums_values), so that the pass over the
// last micro-batch yields the accumulated grads' norm: the step then takes no norm pass
// (StepOptions::grad_sums).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "fastopt/platform.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/rules/check.h"

namespace fastopt {

struct Accumulate {
  static constexpr bool sums_values = true;

  struct Hyper {
    double scale = 1;
    bool first = false;
  };

  template <class F>
  static void fields(F&& f) {  // every hyperparameter by name, for the bindings
    f("scale", &Hyper::scale), f("first", &Hyper::first);
  }

  struct Coeffs {
    float scale;
    bool first;  // a = scale * g: whatever a held (garbage, NaN) is dropped
  };

  static constexpr int max_state = 1;
  static constexpr int state_counts[] = {0};
  static constexpr const char* state_names[max_state] = {""};
  FASTOPT_HD static int num_state(const Hyper&) { return 0; }

  static std::string check(const Hyper& h) {
    return std::isfinite(h.scale) ? std::string() : check::describe("scale", h.scale, "finite");
  }

  FASTOPT_HD static Coeffs coeffs(const Hyper& h, int64_t) { return {float(h.scale), h.first}; }

  template <class V>
  FASTOPT_HD static void update(const Coeffs& c, V& a, V g, V (&)[max_state]) {
    a = c.first ? V(c.scale) * g : vfma(V(c.scale), g, a);
  }
};

}  // namespace fastopt
