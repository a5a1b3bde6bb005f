// fastopt._core.Schedule wraps the C++ POD, so that Python evaluates the very lr_at that
// engines run; _core.schedules holds the builders. Arguments are validated by
// python/fastopt/schedules.py, which names them; here only the chain's capacity is checked.
#include "schedules.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "fastopt/schedule.h"

namespace py = pybind11;

namespace fastopt {

void bind_schedules(py::module_& m) {
  py::class_<Schedule>(m, "Schedule", "A learning-rate schedule as the C++ POD that engines evaluate")
      .def("__call__", [](const Schedule& s, int64_t step) { return lr_at(s, step); }, py::arg("step"))
      .def(
          "lrs",
          [](const Schedule& s, int64_t n, int64_t start) {
            if (n < 0) throw py::value_error("n must be >= 0");
            py::array_t<double> out(n);
            double* d = out.mutable_data();
            for (int64_t i = 0; i < n; ++i) d[i] = lr_at(s, start + i);
            return out;
          },
          py::arg("n"), py::arg("start") = 0, "lr_at(start), ..., lr_at(start + n - 1) as float64")
      .def("to_bytes",
           [](const Schedule& s) { return py::bytes(reinterpret_cast<const char*>(&s), sizeof(Schedule)); },
           "The POD's bytes (host byte order), as an engine copies it into a kernel argument")
      .def_property_readonly("num_segments", [](const Schedule& s) { return s.num_segments; });
  m.attr("schedule_nbytes") = sizeof(Schedule);
  m.attr("schedule_max_segments") = Schedule::kMaxSegments;
  m.attr("schedule_max_milestones") = Schedule::kMaxMilestones;

  py::module_ b = m.def_submodule("schedules", "Schedule builders (unvalidated: use fastopt.schedules)");
  b.def("constant", &schedules::constant, py::arg("base_lr"), py::arg("factor"), py::arg("total_iters"));
  b.def("step", &schedules::step, py::arg("base_lr"), py::arg("step_size"), py::arg("gamma"));
  b.def("multistep", [](double base_lr, const std::vector<int64_t>& milestones, double gamma) {
    if (milestones.size() > size_t(Schedule::kMaxMilestones)) throw py::value_error("too many milestones");
    return schedules::multistep(base_lr, milestones.data(), int(milestones.size()), gamma);
  }, py::arg("base_lr"), py::arg("milestones"), py::arg("gamma"));
  b.def("exponential", &schedules::exponential, py::arg("base_lr"), py::arg("gamma"));
  b.def("cosine", &schedules::cosine, py::arg("base_lr"), py::arg("T_max"), py::arg("eta_min"));
  b.def("linear", &schedules::linear, py::arg("base_lr"), py::arg("start_factor"), py::arg("end_factor"),
        py::arg("total_iters"));
  b.def("polynomial", &schedules::polynomial, py::arg("base_lr"), py::arg("total_iters"), py::arg("power"));
  b.def("one_cycle", &schedules::one_cycle, py::arg("max_lr"), py::arg("total_steps"), py::arg("pct_start"),
        py::arg("linear"), py::arg("div_factor"), py::arg("final_div_factor"), py::arg("three_phase"));
  b.def("anneal", [](double start_lr, double end_lr, int64_t steps, int shape) {
    return schedules::anneal(start_lr, end_lr, steps, static_cast<AnnealShape>(shape));
  }, py::arg("start_lr"), py::arg("end_lr"), py::arg("steps"), py::arg("shape"));
  b.def("chain", [](const std::vector<Schedule>& parts, const std::vector<int64_t>& milestones) {
    if (parts.empty() || milestones.size() + 1 != parts.size()) {
      throw py::value_error("a chain needs one more schedule than milestones");
    }
    Schedule out;
    if (const char* err = schedules::chain(parts.data(), milestones.data(), int(parts.size()), &out)) {
      throw py::value_error(std::string("chain: ") + err + " (at most " + std::to_string(Schedule::kMaxSegments) +
                            " segments and " + std::to_string(Schedule::kMaxMilestones) + " multistep milestones)");
    }
    return out;
  }, py::arg("parts"), py::arg("milestones"));
}

}  // namespace fastopt
