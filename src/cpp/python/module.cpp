// The pybind11 module fastopt._core: ISA and thread control, hyperparameter structs,
// bound groups, exact master-weight copies and the bandwidth probe.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <deque>
#include <memory>

#include "../cpu/isa.h"
#include "../cpu/group.h"
#include "../cpu/pool.h"
#include "../cpu/reduce.h"
#include "binding.h"
#include "fastopt/numeric/convert.h"
#include "fastopt/step_control.h"
#include "rules.h"
#include "schedules.h"

namespace py = pybind11;
using namespace fastopt;
using py_intake::View;

namespace {

// (per-tensor sums of squares, per-tensor non-finite counts) as two lists.
py::tuple run_reducer(const cpu::Reducer& r) {
  std::vector<double> sums(r.num_tensors());
  std::vector<int64_t> bad(r.num_tensors());
  {
    py::gil_scoped_release nogil;
    r.run(sums.data(), bad.data());
  }
  return py::make_tuple(py::cast(sums), py::cast(bad));
}

volatile float probe_zero = 0.0f;  // read at run time, so the probe's work cannot be elided

// A group on the CPU engine: the validated binding and the engine's task table.
class CpuGroup {
 public:
  CpuGroup(RuleId rule, py::sequence params, py::sequence grads, py::sequence masters, py::sequence states,
           const std::vector<std::string>& state_names, const std::vector<int64_t>& group_sizes)
      : binding_(py_intake::bind(params, grads, masters, states, state_names, group_sizes, 1)),
        group_(rule, binding_.slots) {}

  // One step: hypers holds one of the group's rule's Hyper structs per param group; every
  // grad is multiplied by grad_scale and, when clip_value > 0, clamped to +-clip_value. With
  // diagnose, returns per tensor [sum of squared updates, sum of squared old values] (fp32
  // values, canonical order), flattened; else None.
  py::object step(py::sequence hypers, const std::vector<int64_t>& steps, float grad_scale, float clip_value,
                  bool diagnose) {
    binding_.check();
    std::vector<double> diag(diagnose ? 2 * binding_.slots.size() : 0);
    py_intake::with_rule(group_.rule(), [&](auto rule) {
      using Rule = decltype(rule);
      using C = typename Rule::Coeffs;
      const auto coeffs = py_intake::step_coeffs<Rule>(binding_, py_intake::hypers_of<Rule>(hypers), steps);
      const GradTransform x{grad_scale, clip_value};
      double* d = diagnose ? diag.data() : nullptr;
      py::gil_scoped_release nogil;
      if constexpr (num_sums<Rule>::value > 0) {  // two passes: per-tensor sums, then Coeffs
        const cpu::Group::FinishFn finish = [](const void* c, const double* sums, const TensorSlot& t, void* out) {
          *static_cast<C*>(out) = Rule::finish(*static_cast<const C*>(c), sums, t);
        };
        group_.run_two_pass(coeffs.data(), sizeof(C), x, num_sums<Rule>::value, finish, sizeof(C), d);
      } else {
        group_.run(coeffs.data(), sizeof(C), x, d);
      }
    });
    return diagnose ? py::cast(diag) : py::none();
  }

  // Per tensor: the sum of squares (canonical order) and non-finite count of the grads, or of
  // the params' fp32 values (their master weights where they have them).
  py::tuple sumsq(const std::string& which) {
    binding_.check();
    std::unique_ptr<cpu::Reducer>& r = which == "grads" ? grad_reducer_ : param_reducer_;
    if (which != "grads" && which != "params") throw std::invalid_argument("which must be 'grads' or 'params'");
    if (!r) {
      std::vector<cpu::Span> spans;
      for (const TensorSlot& t : binding_.slots) {
        spans.push_back(which == "grads" ? cpu::Span{t.grad, t.grad_dtype, t.numel}
                        : t.master      ? cpu::Span{t.master, DType::f32, t.numel}
                                        : cpu::Span{t.param, t.param_dtype, t.numel});
      }
      r = std::make_unique<cpu::Reducer>(spans);
    }
    return run_reducer(*r);
  }

  // The masters and state are the caller's too (a functional form bound once): watch them.
  void watch_state() {
    binding_.watch_state = true;
    binding_.rewatch();
  }

  // New grad tensors for some params (torch replaced their `.grad`); see Binding::rebind_grads.
  void rebind_grads(py::sequence grads) {
    if (binding_.rebind_grads(grads)) {
      group_.set_grads(binding_.slots);
      grad_reducer_.reset();
    }
  }

  // The bandwidth probe over this group's streams (a group bound with rule "probe").
  void probe() {
    if (group_.rule() != RuleId::probe) throw std::invalid_argument("not a probe group");
    const float coeffs[1] = {probe_zero};
    py::gil_scoped_release nogil;
    group_.run(coeffs, sizeof(coeffs));
  }

  const cpu::Group& group() const { return group_; }

 private:
  py_intake::Binding binding_;
  cpu::Group group_;
  std::unique_ptr<cpu::Reducer> grad_reducer_, param_reducer_;  // built on first use
};

template <class T>
void widen(const void* src, float* dst, int64_t n) {
  const T* s = static_cast<const T*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = to_f32(s[i]);
}

// Writes the exact fp32 value of every element of `src` into `dst` (same shape, float32).
void widen_into(py::handle src, py::handle dst) {
  const View v = py_intake::intake(src, "source");
  const View d = py_intake::intake(dst, "destination");
  if (d.dtype != DType::f32 || d.readonly || d.shape != v.shape) {
    throw std::invalid_argument("destination must be a writable float32 array of the source's shape");
  }
  float* out = static_cast<float*>(d.data);
  switch (v.dtype) {
    case DType::f32: widen<float>(v.data, out, v.numel); break;
    case DType::f16: widen<f16>(v.data, out, v.numel); break;
    case DType::bf16: widen<bf16>(v.data, out, v.numel); break;
  }
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastopt's C++ engine (internal: use the fastopt package)";
  auto& tensor_error = py::register_exception<py_intake::TensorError>(m, "TensorError", PyExc_ValueError);
  py::register_exception<py_intake::MemoryMoved>(m, "MemoryMoved", tensor_error);

  m.def("cpu_isa", [] { return std::string(cpu::active_kernels().isa); });
  m.def("set_cpu_isa", &cpu::set_isa, py::arg("name"));
  m.def("cpu_isa_supported", &cpu::isa_supported, py::arg("name"));
  m.def("get_num_threads", [] { return cpu::ThreadPool::instance().num_threads(); });
  m.def("set_num_threads", [](int n) { cpu::ThreadPool::instance().set_num_threads(n); }, py::arg("n"));
  m.def("widen_into", &widen_into, py::arg("src"), py::arg("dst"));
  m.def("device_of", [](py::handle a) {
    const auto d = py_intake::device_of(a);
    return py::make_tuple(d.type, d.id);
  }, py::arg("array"));
  // Shape, dtype name and read-only flag of an array in CPU or CUDA memory.
  m.def("describe", [](py::handle a, const std::string& name) {
    const int kind = py_intake::device_of(a).type;
    const View v = py_intake::intake(a, name, kind == 2 ? 2 : 1);
    return py::make_tuple(py::cast(v.shape), py_intake::dtype_name(v.dtype), v.readonly);
  }, py::arg("array"), py::arg("name"));
  m.def("step_control", [](float inv, double sumsq, int64_t nonfinite, bool skip_nonfinite, double max_grad_norm) {
    const StepControl c = step_control(inv, sumsq, nonfinite, skip_nonfinite, max_grad_norm);
    return py::make_tuple(c.norm, c.factor, c.skip);
  }, py::arg("inv"), py::arg("sumsq"), py::arg("nonfinite"), py::arg("skip_nonfinite"), py::arg("max_grad_norm"),
     "(norm, factor, skip) of a step: see fastopt/step_control.h");
  m.attr("task_elems") = cpu::Group::kTaskElems;
  m.def("sumsq", [](py::sequence tensors) {
    std::deque<View> views;  // kept alive while the reduction runs
    std::vector<cpu::Span> spans;
    size_t i = 0;
    for (py::handle t : tensors) {
      views.push_back(py_intake::intake(t, "tensor " + std::to_string(i++)));
      spans.push_back({views.back().data, views.back().dtype, views.back().numel});
    }
    return run_reducer(cpu::Reducer(spans));
  }, py::arg("tensors"), "([sum of squares], [non-finite count]) per tensor, in the canonical order");

  py_intake::bind_hypers(m);
  bind_schedules(m);

  py::class_<CpuGroup>(m, "Group")
      .def(py::init([](const std::string& rule, py::sequence params, py::sequence grads, py::sequence masters,
                       py::sequence states, std::vector<std::string> state_names,
                       std::vector<int64_t> group_sizes) {
             return new CpuGroup(py_intake::rule_id(rule, true), params, grads, masters, states, state_names, group_sizes);
           }),
           py::arg("rule"), py::arg("params"), py::arg("grads"), py::arg("masters"), py::arg("states"),
           py::arg("state_names"), py::arg("group_sizes"))
      .def("step", &CpuGroup::step, py::arg("hypers"), py::arg("steps"), py::arg("grad_scale") = 1.0f,
           py::arg("clip_value") = 0.0f, py::arg("diagnose") = false)
      .def("watch_state", &CpuGroup::watch_state, "Watch the masters and state as the params (the caller's)")
      .def("rebind_grads", &CpuGroup::rebind_grads, py::arg("grads"),
           "Binds new grad tensors where they are not the ones bound (validated; nothing changes on an error)")
      .def("sumsq", &CpuGroup::sumsq, py::arg("which"),
           "([sum of squares], [non-finite count]) per tensor of 'grads' or 'params' (fp32 values)")
      .def("probe", &CpuGroup::probe,
           "Moves this group's streams with no math (a group bound with rule 'probe')")
      .def_property_readonly("isa", [](const CpuGroup& g) { return std::string(g.group().isa()); })
      .def_property_readonly("num_tasks", [](const CpuGroup& g) { return g.group().num_tasks(); });
}
