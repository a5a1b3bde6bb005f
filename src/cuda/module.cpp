// The pybind11 module fastopt._cuda: the CUDA engine's groups, bound through the same intake
// and validation as the CPU engine's. Imported only where a CUDA driver and device exist.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "../cpp/python/binding.h"
#include "../cpp/python/rules.h"
#include "fastopt/cuda_optimizer.h"

namespace py = pybind11;
using namespace fastopt;

namespace {

constexpr int kCudaDevice = 2;  // DLPack device type

cudaStream_t as_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// A group on the CUDA engine: the arrays read from Python and the optimizer over them.
class CudaGroup {
 public:
  CudaGroup(RuleId rule, py::sequence params, py::sequence grads, py::object keeps, py::sequence states,
            const std::vector<int64_t>& group_sizes)
      : binding_(py_intake::read(params, grads, keeps, states, group_sizes, rule, kCudaDevice)),
        opt_(rule, binding_.groups) {}

  // One step, enqueued on `stream`: see fastopt::CudaStepOptions. With `steps` (the step count
  // each group's rule sees), the coefficients are computed on the host, as the CPU engine
  // computes them; without, on the device. Device buffers come as addresses (loss_scale: a
  // float32; grad_norm: a float64; skipped: a bool; diagnostics: 4 x num_tensors float64;
  // nonfinite: num_tensors int64; grad_sumsq / value_sumsq: num_tensors float64 and
  // grad_nonfinite / value_nonfinite: num_tensors int64, given / written: gradient accumulation's),
  // owned by the caller and alive until the step has run.
  void step(py::sequence hypers, uintptr_t stream, std::optional<std::vector<int64_t>> steps, double grad_scale,
            uintptr_t loss_scale, float clip_value, bool capturable, bool grad_norm, bool skip_nonfinite,
            double max_grad_norm, uintptr_t grad_norm_out, uintptr_t skipped_out, uintptr_t diagnostics,
            uintptr_t nonfinite, bool track_skip, int64_t round_step, uintptr_t grad_sumsq, uintptr_t grad_nonfinite,
            uintptr_t value_sumsq, uintptr_t value_nonfinite) {
    binding_.check();
    const std::vector<int64_t>* given = steps ? &*steps : nullptr;
    py_intake::set_hypers(opt_, hypers, given);
    CudaStepOptions o;
    static_cast<StepOptions&>(o) = py_intake::step_options(grad_scale, clip_value, max_grad_norm, skip_nonfinite,
                                                           grad_norm, diagnostics != 0, given);
    o.loss_scale = reinterpret_cast<const float*>(loss_scale);
    o.capturable = capturable;
    o.grad_norm_out = reinterpret_cast<double*>(grad_norm_out);
    o.skipped_out = reinterpret_cast<bool*>(skipped_out);
    o.diagnostics_out = reinterpret_cast<double*>(diagnostics);
    o.nonfinite_out = reinterpret_cast<int64_t*>(nonfinite);
    o.track_skip = track_skip;
    o.round_step = round_step;
    o.grad_sumsq_in = reinterpret_cast<const double*>(grad_sumsq);
    o.grad_nonfinite_in = reinterpret_cast<const int64_t*>(grad_nonfinite);
    o.value_sums = value_sumsq != 0;
    o.value_sumsq_out = reinterpret_cast<double*>(value_sumsq);
    o.value_nonfinite_out = reinterpret_cast<int64_t*>(value_nonfinite);
    py::gil_scoped_release nogil;
    opt_.step(as_stream(stream), o);
  }

  void set_seed(uint64_t seed) { opt_.set_seed(seed); }

  // The masters and state are the caller's too (a functional form bound once): watch them.
  void watch_state() {
    binding_.watch_state = true;
    binding_.rewatch();
  }

  // New grad tensors for some params (torch replaced their `.grad`), written into the device
  // table on `stream`; nothing changes on an error.
  void rebind_grads(py::sequence grads, uintptr_t stream) {
    std::vector<std::pair<size_t, py_intake::View>> fresh;
    const std::vector<Tensor> tensors = py_intake::read_grads(binding_, grads, kCudaDevice, fresh);
    opt_.set_grads(tensors, as_stream(stream));
    py_intake::commit_grads(binding_, grads, fresh);
  }

  void write_grads(uintptr_t stream) { opt_.write_grads(as_stream(stream)); }

  // Group j's lr from `schedule` (a Schedule's to_bytes()) evaluated on the device, or, with
  // None, from its hyperparameters again.
  void set_schedule(int group, py::object schedule, uintptr_t stream) {
    if (schedule.is_none()) return opt_.set_schedule(index(group), nullptr, as_stream(stream));
    const std::string bytes = schedule.cast<py::bytes>();
    if (bytes.size() != sizeof(Schedule)) throw std::invalid_argument("not a fastopt schedule");
    Schedule s;
    std::memcpy(&s, bytes.data(), sizeof(Schedule));
    opt_.set_schedule(index(group), &s, as_stream(stream));
  }

  void update_loss_scale(uintptr_t scale, uintptr_t clean_steps, uintptr_t floor_skips, double growth, double backoff,
                         int32_t interval, float min_scale, uintptr_t stream) {
    opt_.update_loss_scale(reinterpret_cast<float*>(scale), reinterpret_cast<int32_t*>(clean_steps),
                           reinterpret_cast<int32_t*>(floor_skips), growth, backoff, interval, min_scale,
                           as_stream(stream));
  }

  void set_lr(int group, double lr, uintptr_t stream) { opt_.set_lr(index(group), lr, as_stream(stream)); }

  // The device step counts, one per group (enqueued on `stream`: no host sync).
  void set_steps(const std::vector<int64_t>& steps, uintptr_t stream) { opt_.set_steps(steps, as_stream(stream)); }

  std::vector<int64_t> read_steps(uintptr_t stream) const {
    py::gil_scoped_release nogil;
    return opt_.read_steps(as_stream(stream));
  }

  int poll_skip() const { return opt_.poll_skip(); }
  int device() const { return opt_.device(); }
  int64_t num_chunks() const { return opt_.num_chunks(); }
  int64_t num_tensors() const { return int64_t(opt_.num_params()); }

 private:
  static size_t index(int group) {
    if (group < 0) throw std::out_of_range("no such param group");
    return size_t(group);
  }

  py_intake::Binding binding_;
  CudaOptimizer opt_;
};

// A mode switch on the CUDA engine (fastopt::CudaModeSwitch), as the CPU module's ModeSwitch.
class CudaSwitch {
 public:
  CudaSwitch(RuleId rule, py::sequence params, py::sequence zs, py::object keeps, const std::vector<int64_t>& group_sizes)
      : binding_(py_intake::read(params, zs, keeps, py_intake::no_state(py::len(params)), group_sizes, rule, kCudaDevice)),
        switch_(rule, binding_.groups) {}

  void run(py::sequence hypers, const std::vector<int64_t>& steps, bool to_eval, uint64_t seed, uintptr_t stream) {
    binding_.check();
    const std::vector<Hyper> hs = py_intake::hypers_of(switch_.rule(), hypers);
    py::gil_scoped_release nogil;
    switch_.run(hs, steps, to_eval, seed, as_stream(stream));
  }

 private:
  py_intake::Binding binding_;
  CudaModeSwitch switch_;
};

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fastopt's CUDA engine (internal: use the fastopt package)";
  // Bind errors raise the CPU module's exceptions, so that callers catch one class.
  static py::handle tensor_error = py::object(py::module_::import("fastopt._core").attr("TensorError")).release();
  static py::handle memory_moved = py::object(py::module_::import("fastopt._core").attr("MemoryMoved")).release();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const py_intake::MemoryMoved& e) {
      PyErr_SetString(memory_moved.ptr(), e.what());
    } catch (const TensorError& e) {
      PyErr_SetString(tensor_error.ptr(), e.what());
    }
  });

  m.def("device_count", &cuda_device_count);
  m.def("no_device_reason", &cuda_no_device_reason);
  m.def("widen_into", [](py::handle src, py::handle dst, uintptr_t stream) {
    cuda_widen(py_intake::intake(src, "source", kCudaDevice), py_intake::intake(dst, "destination", kCudaDevice),
               as_stream(stream));
  }, py::arg("src"), py::arg("dst"), py::arg("stream"));
  m.def("stream_is_capturing", [](uintptr_t stream) { return cuda_stream_is_capturing(as_stream(stream)); },
        py::arg("stream"));

  py::class_<CudaGroup>(m, "Group")
      .def(py::init([](const std::string& rule, py::sequence params, py::sequence grads, py::object keeps,
                       py::sequence states, std::vector<int64_t> group_sizes) {
             return new CudaGroup(rule_id(rule), params, grads, keeps, states, group_sizes);
           }),
           py::arg("rule"), py::arg("params"), py::arg("grads"), py::arg("keeps"), py::arg("states"),
           py::arg("group_sizes"))
      .def("set_seed", &CudaGroup::set_seed, py::arg("seed"), "The seed of stochastic rounding")
      .def("step", &CudaGroup::step, py::arg("hypers"), py::arg("stream"), py::arg("steps") = py::none(),
           py::arg("grad_scale") = 1.0, py::arg("loss_scale") = 0, py::arg("clip_value") = 0.0f,
           py::arg("capturable") = false, py::arg("grad_norm") = false, py::arg("skip_nonfinite") = false,
           py::arg("max_grad_norm") = 0.0, py::arg("grad_norm_out") = 0, py::arg("skipped_out") = 0,
           py::arg("diagnostics") = 0, py::arg("nonfinite") = 0, py::arg("track_skip") = false,
           py::arg("round_step") = 0, py::arg("grad_sumsq") = 0, py::arg("grad_nonfinite") = 0,
           py::arg("value_sumsq") = 0, py::arg("value_nonfinite") = 0)
      .def("poll_skip", &CudaGroup::poll_skip,
           "The last tracked step's skip decision: -1 while not back on the host (never waits), else 1 or 0")
      .def("watch_state", &CudaGroup::watch_state, "Watch the masters and state as the params (the caller's)")
      .def("rebind_grads", &CudaGroup::rebind_grads, py::arg("grads"), py::arg("stream"))
      .def("write_grads", &CudaGroup::write_grads, py::arg("stream"),
           "The bound grads written into the device table again (after a graph's replay wrote its own)")
      .def("set_schedule", &CudaGroup::set_schedule, py::arg("group"), py::arg("schedule"), py::arg("stream"))
      .def("update_loss_scale", &CudaGroup::update_loss_scale, py::arg("scale"), py::arg("clean_steps"),
           py::arg("floor_skips"), py::arg("growth"), py::arg("backoff"), py::arg("interval"), py::arg("min_scale"),
           py::arg("stream"),
           "GradScaler's update from the last step's skip decision, on the device, floored at min_scale")
      .def("set_lr", &CudaGroup::set_lr, py::arg("group"), py::arg("lr"), py::arg("stream"))
      .def("set_steps", &CudaGroup::set_steps, py::arg("steps"), py::arg("stream"))
      .def("read_steps", &CudaGroup::read_steps, py::arg("stream"),
           "The device-resident step counts (waits for `stream`)")
      .def_property_readonly("device", &CudaGroup::device)
      .def_property_readonly("num_chunks", &CudaGroup::num_chunks)
      .def_property_readonly("num_tensors", [](const CudaGroup& g) { return g.num_tensors(); });

  py::class_<CudaSwitch>(m, "ModeSwitch")
      .def(py::init([](const std::string& rule, py::sequence params, py::sequence zs, py::object keeps,
                       std::vector<int64_t> group_sizes) {
             return new CudaSwitch(rule_id(rule), params, zs, keeps, group_sizes);
           }),
           py::arg("rule"), py::arg("params"), py::arg("zs"), py::arg("keeps"), py::arg("group_sizes"))
      .def("run", &CudaSwitch::run, py::arg("hypers"), py::arg("steps"), py::arg("to_eval"), py::arg("seed"),
           py::arg("stream"));
}
