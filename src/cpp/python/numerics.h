// Bindings of the storage numerics (fastopt/numeric/{random,rounding,quantize8}.h) into
// fastopt._core.numeric, for their tests.
#pragma once
#include <pybind11/pybind11.h>

namespace fastopt {
void bind_numerics(pybind11::module_& m);
}  // namespace fastopt
