// The pybind11 module fastopt._core: ISA and thread control, hyperparameter structs,
// bound groups, exact master-weight copies and the bandwidth probe.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>


#include <pybind11/numpy.h>

#include <variant>

#include "binding.h"
#include "fastopt/reduce.h"
#include "fastopt/step_control.h"
#include "rules.h"
#include "numerics.h"
#include "schedules.h"

namespace py = pybind11;
using namespace fastopt;
using py_intake::View;

namespace {

template <class T>
py::array_t<T> array(const std::vector<T>& v) {
  return py::array_t<T>(py::ssize_t(v.size()), v.data());
}

// (per-tensor sums of squares, per-tensor non-finite counts) as two lists.
template <class F>
py::tuple sums_of(size_t n, F&& run) {
  std::vector<double> sums(n);
  std::vector<int64_t> bad(n);
  {
    py::gil_scoped_release nogil;
    run(sums.data(), bad.data());
  }
  return py::make_tuple(py::cast(sums), py::cast(bad));
}

// A group on the CPU engine: the arrays read from Python and the optimizer over them.
class CpuGroup {
 public:
  CpuGroup(RuleId rule, py::sequence params, py::sequence grads, py::object keeps, py::sequence states,
           const std::vector<int64_t>& group_sizes)
      : binding_(py_intake::read(params, grads, keeps, states, group_sizes, rule, Device::kCPU)),
        opt_(make(rule, binding_.groups)) {}

  // One step with the hyperparameters `hypers` (one per param group) at the rule step counts
  // `steps`: see fastopt::StepOptions (grad_sums: ([sum of squares], [non-finite count]) per
  // tensor, or None). Returns (grad norm or None, skipped, diagnostics or None, value sums or
  // None), the diagnostics as (grad_norm, nonfinite_grads, param_norm, update_norm,
  // update_ratio) arrays, the last three None for a skipped step, the value sums as grad_sums.
  py::tuple step(py::sequence hypers, const std::vector<int64_t>& steps, double grad_scale, float clip_value,
                 double max_grad_norm, bool skip_nonfinite, bool grad_norm, bool diagnostics, int64_t round_step,
                 std::optional<float> grad_factor, py::object combine_sums, py::object grad_sums, bool value_sums) {
    binding_.check();
    Optimizer& opt = std::get<Optimizer>(opt_);
    py_intake::set_hypers(opt, hypers, &steps);
    StepOptions o =
        py_intake::step_options(grad_scale, clip_value, max_grad_norm, skip_nonfinite, grad_norm, diagnostics, &steps);
    o.round_step = round_step;
    o.grad_factor = grad_factor;
    o.value_sums = value_sums;
    GradSums given;
    if (!grad_sums.is_none()) {  // ([sum of squares], [non-finite count]) per tensor
      const auto pair = grad_sums.cast<std::pair<std::vector<double>, std::vector<int64_t>>>();
      given = {pair.first, pair.second};
      o.grad_sums = &given;
    }
    if (!combine_sums.is_none()) {  // called with a (tensors, sums) float64 array over the sums, in place
      o.combine_sums = [&combine_sums](double* sums, size_t n, int k) {
        py::gil_scoped_acquire gil;
        combine_sums(py::array_t<double>({py::ssize_t(n), py::ssize_t(k)}, sums, py::capsule(sums, [](void*) {})));
      };
    }
    StepResult r;
    {
      py::gil_scoped_release nogil;
      r = opt.step(o);
    }
    py::object diag = py::none();
    if (r.diagnostics) {
      const Diagnostics& d = *r.diagnostics;
      auto or_none = [&](const std::vector<double>& v) { return r.skipped ? py::object(py::none()) : py::object(array(v)); };
      diag = py::make_tuple(array(d.grad_norm), array(d.nonfinite_grads), or_none(d.param_norm),
                            or_none(d.update_norm), or_none(d.update_ratio));
    }
    py::object values = py::none();
    if (r.value_sums) values = py::make_tuple(py::cast(r.value_sums->sumsq), py::cast(r.value_sums->nonfinite));
    return py::make_tuple(r.grad_norm ? py::object(py::float_(*r.grad_norm)) : py::object(py::none()), r.skipped,
                          diag, values);
  }

  // Per tensor: the sum of squares (canonical order) and non-finite count of the grads, or of
  // the params' fp32 values (their master weights where they have them; a param with a
  // remainder: its bfloat16 half).
  py::tuple sumsq(const std::string& which) {
    if (which != "grads" && which != "params") throw std::invalid_argument("which must be 'grads' or 'params'");
    binding_.check();
    const Optimizer& opt = std::get<Optimizer>(opt_);
    return sums_of(opt.num_params(), [&](double* s, int64_t* b) {
      which == "grads" ? opt.grad_sumsq(s, b) : opt.param_sumsq(s, b);
    });
  }

  void set_seed(uint64_t seed) { std::get<Optimizer>(opt_).set_seed(seed); }

  void watch_state() {
    binding_.watch_state = true;
    binding_.rewatch();
  }

  // New grad tensors for some params (torch replaced their `.grad`): read, validated by the
  // optimizer, then kept; nothing changes on an error.
  void rebind_grads(py::sequence grads) {
    std::vector<std::pair<size_t, View>> fresh;
    const std::vector<Tensor> tensors = py_intake::read_grads(binding_, grads, Device::kCPU, fresh);
    std::get<Optimizer>(opt_).set_grads(tensors);
    py_intake::commit_grads(binding_, grads, fresh);
  }

  // The bandwidth probe over this group's streams (a group bound with rule "probe").
  void probe() {
    auto* p = std::get_if<BandwidthProbe>(&opt_);
    if (!p) throw std::invalid_argument("not a probe group");
    py::gil_scoped_release nogil;
    p->run();
  }

  std::string isa() const { return std::visit([](const auto& o) { return std::string(o.isa()); }, opt_); }
  size_t num_tasks() const { return std::visit([](const auto& o) { return o.num_tasks(); }, opt_); }

 private:
  using Engine = std::variant<Optimizer, BandwidthProbe>;
  static Engine make(RuleId rule, const std::vector<ParamGroup>& groups) {
    if (rule != RuleId::probe) return Engine(std::in_place_type<Optimizer>, rule, groups);
    std::vector<ParamTensors> params;
    for (const ParamGroup& g : groups) params.insert(params.end(), g.params.begin(), g.params.end());
    return Engine(std::in_place_type<BandwidthProbe>, std::move(params));
  }

  py_intake::Binding binding_;
  Engine opt_;
};

// A mode switch on the CPU engine (fastopt::ModeSwitch): params, their z bound as their grads, the
// arrays kept beside them (keeps), no state.
class CpuSwitch {
 public:
  CpuSwitch(RuleId rule, py::sequence params, py::sequence zs, py::object keeps, const std::vector<int64_t>& group_sizes)
      : binding_(py_intake::read(params, zs, keeps, py_intake::no_state(py::len(params)), group_sizes, rule, Device::kCPU)),
        switch_(rule, binding_.groups) {}

  // Moves every param of the groups with steps[j] > 0 to the eval point (to_eval) or back.
  void run(py::sequence hypers, const std::vector<int64_t>& steps, bool to_eval, uint64_t seed) {
    binding_.check();
    const std::vector<Hyper> hs = py_intake::hypers_of(switch_.rule(), hypers);
    py::gil_scoped_release nogil;
    switch_.run(hs, steps, to_eval, seed);
  }

 private:
  py_intake::Binding binding_;
  ModeSwitch switch_;
};

// Reads a Python array on the host into a tensor that the view keeps alive.
std::vector<View> read_all(py::sequence arrays, const std::string& role) {
  std::vector<View> out;
  for (py::handle a : arrays) out.push_back(py_intake::intake(a, role + " " + std::to_string(out.size())));
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastopt's C++ engine (internal: use the fastopt package)";
  auto& tensor_error = py::register_exception<TensorError>(m, "TensorError", PyExc_ValueError);
  py::register_exception<py_intake::MemoryMoved>(m, "MemoryMoved", tensor_error);

  m.def("cpu_isa", [] { return std::string(cpu_isa()); });
  m.def("set_cpu_isa", &set_cpu_isa, py::arg("name"));
  m.def("cpu_isa_supported", &cpu_isa_supported, py::arg("name"));
  m.def("get_num_threads", &num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("widen_into", [](py::handle src, py::handle dst) {
    widen(py_intake::intake(src, "source"), py_intake::intake(dst, "destination"));
  }, py::arg("src"), py::arg("dst"), "dst = the exact float32 values of src (same shape)");
  m.def("join_master", [](py::handle high, py::handle low, py::handle dst) {
    join_master(py_intake::intake(high, "param"), py_intake::intake(low, "remainder"), py_intake::intake(dst, "master"));
  }, py::arg("high"), py::arg("low"), py::arg("dst"), "dst = the fp32 masters a bf16 param and its remainder hold");
  m.def("split_master", [](py::handle src, py::handle high, py::handle low) {
    split_master(py_intake::intake(src, "master"), py_intake::intake(high, "param"), py_intake::intake(low, "remainder"));
  }, py::arg("src"), py::arg("high"), py::arg("low"), "a bf16 param and its remainder = the fp32 masters src");
  m.def("device_of", [](py::handle a, const std::string& name) {
    const auto d = py_intake::device_of(a, name);
    return py::make_tuple(d.type, d.id);
  }, py::arg("array"), py::arg("name") = "array");
  // Shape, dtype name and read-only flag of an array in CPU or CUDA memory.
  m.def("describe", [](py::handle a, const std::string& name) {
    const int kind = py_intake::device_of(a, name).type;
    const View v = py_intake::intake(a, name, kind == Device::kCUDA ? Device::kCUDA : Device::kCPU);
    return py::make_tuple(py::cast(v.shape), dtype_name(v.dtype), v.readonly);
  }, py::arg("array"), py::arg("name"));
  m.def("step_control", [](float inv, double sumsq, int64_t nonfinite, bool skip_nonfinite, double max_grad_norm) {
    const StepControl c = step_control(inv, sumsq, nonfinite, skip_nonfinite, max_grad_norm);
    return py::make_tuple(c.norm, c.factor, c.skip);
  }, py::arg("inv"), py::arg("sumsq"), py::arg("nonfinite"), py::arg("skip_nonfinite"), py::arg("max_grad_norm"),
     "(norm, factor, skip) of a step: see fastopt/step_control.h");
  m.attr("task_elems") = reduce::kSuper;  // the CPU engine's task: one super-block
  m.def("sumsq", [](py::sequence tensors) {
    const std::vector<View> views = read_all(tensors, "tensor");  // kept alive while the reduction runs
    const std::vector<Tensor> ts(views.begin(), views.end());
    return sums_of(ts.size(), [&](double* s, int64_t* b) { fastopt::sumsq(ts, s, b); });
  }, py::arg("tensors"), "([sum of squares], [non-finite count]) per tensor, in the canonical order");

  py_intake::bind_hypers(m);
  bind_schedules(m);
  bind_numerics(m);

  py::class_<CpuGroup>(m, "Group")
      .def(py::init([](const std::string& rule, py::sequence params, py::sequence grads, py::object keeps,
                       py::sequence states, std::vector<int64_t> group_sizes) {
             return new CpuGroup(rule_id(rule, true), params, grads, keeps, states, group_sizes);
           }),
           py::arg("rule"), py::arg("params"), py::arg("grads"), py::arg("keeps"), py::arg("states"),
           py::arg("group_sizes"))
      .def("step", &CpuGroup::step, py::arg("hypers"), py::arg("steps"), py::arg("grad_scale") = 1.0,
           py::arg("clip_value") = 0.0f, py::arg("max_grad_norm") = 0.0, py::arg("skip_nonfinite") = false,
           py::arg("grad_norm") = false, py::arg("diagnostics") = false, py::arg("round_step") = 0,
           py::arg("grad_factor") = py::none(), py::arg("combine_sums") = py::none(),
           py::arg("grad_sums") = py::none(), py::arg("value_sums") = false)
      .def("set_seed", [](CpuGroup& g, uint64_t seed) { g.set_seed(seed); }, py::arg("seed"),
           "The seed of stochastic rounding")
      .def("watch_state", &CpuGroup::watch_state, "Watch the masters and state as the params (the caller's)")
      .def("rebind_grads", &CpuGroup::rebind_grads, py::arg("grads"),
           "Binds new grad tensors where they are not the ones bound (validated; nothing changes on an error)")
      .def("sumsq", &CpuGroup::sumsq, py::arg("which"),
           "([sum of squares], [non-finite count]) per tensor of 'grads' or 'params' (fp32 values)")
      .def("probe", &CpuGroup::probe,
           "Moves this group's streams with no math (a group bound with rule 'probe')")
      .def_property_readonly("isa", &CpuGroup::isa)
      .def_property_readonly("num_tasks", &CpuGroup::num_tasks);

  py::class_<CpuSwitch>(m, "ModeSwitch")
      .def(py::init([](const std::string& rule, py::sequence params, py::sequence zs, py::object keeps,
                       std::vector<int64_t> group_sizes) {
             return new CpuSwitch(rule_id(rule), params, zs, keeps, group_sizes);
           }),
           py::arg("rule"), py::arg("params"), py::arg("zs"), py::arg("keeps"), py::arg("group_sizes"),
           "A mode switch over params and their z (fastopt::ModeSwitch); z i is named 'grad i' in errors")
      .def("run", &CpuSwitch::run, py::arg("hypers"), py::arg("steps"), py::arg("to_eval"), py::arg("seed") = 0,
           "Moves the params of the groups that have stepped to their eval point (to_eval) or back");
  m.def("switch_round_step", &switch_round_step, py::arg("steps"), py::arg("to_eval"),
        "The pseudo-step whose random bits a mode switch after `steps` steps draws");
}
