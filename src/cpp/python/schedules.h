// Bindings of the learning-rate schedules (fastopt/schedule.h) into fastopt._core.
#pragma once
#include <pybind11/pybind11.h>

namespace fastopt {
// Registers _core.Schedule (the POD, callable) and the builders in _core.schedules.
void bind_schedules(pybind11::module_& m);
}  // namespace fastopt
