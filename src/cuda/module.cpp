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
#include "group.h"

namespace py = pybind11;
using namespace fastopt;

namespace {

constexpr int kCudaDevice = 2;  // DLPack device type

void* as_stream(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

// A group on the CUDA engine: the validated binding and the device-resident tensor table.
class CudaGroup {
 public:
  CudaGroup(RuleId rule, py::sequence params, py::sequence grads, py::sequence masters, py::sequence states,
            const std::vector<std::string>& state_names, const std::vector<int64_t>& group_sizes)
      : binding_(py_intake::bind(params, grads, masters, states, state_names, group_sizes, kCudaDevice)),
        group_(rule, binding_.slots, binding_.device.id, int(group_sizes.size())) {}

  // One step, enqueued on `stream`: see cuda::StepArgs. With `steps` (the step count each
  // group's rule sees), the coefficients are computed here, as the CPU engine computes them;
  // without, on the device. Device buffers come as addresses (loss_scale: a float32;
  // grad_norm: a float64; skipped: a bool; diagnostics: 4 x num_tensors float64; nonfinite:
  // num_tensors int64), owned by the caller and alive until the step has run.
  void step(py::sequence hypers, uintptr_t stream, std::optional<std::vector<int64_t>> steps, float grad_scale,
            uintptr_t loss_scale, float clip_value, bool capturable, bool grad_norm, bool skip_nonfinite,
            double max_grad_norm, uintptr_t grad_norm_out, uintptr_t skipped_out, uintptr_t diagnostics,
            uintptr_t nonfinite, bool track_skip) {
    if (!(max_grad_norm >= 0 && max_grad_norm < 1e300)) throw std::invalid_argument("max_grad_norm must be finite and >= 0");
    if (steps && capturable) throw std::invalid_argument("a capturable step reads its step counts on the device");
    binding_.check();
    py_intake::with_rule(group_.rule(), [&](auto rule) {
      using Rule = decltype(rule);
      const auto hs = py_intake::hypers_of<Rule>(hypers);
      // Validates the hyperparameters (and the step counts where given).
      const auto coeffs = py_intake::step_coeffs<Rule>(binding_, hs, steps ? *steps : std::vector<int64_t>(hs.size(), 1));
      cuda::StepArgs a;
      a.hypers = hs.data();
      a.stride = sizeof(typename Rule::Hyper);
      a.coeffs = steps ? coeffs.data() : nullptr;
      a.coeffs_stride = sizeof(typename Rule::Coeffs);
      a.stream = as_stream(stream);
      a.transform = GradTransform{grad_scale, clip_value};
      a.loss_scale = reinterpret_cast<const float*>(loss_scale);
      a.lr_on_device = capturable;
      a.grad_norm = grad_norm;
      a.skip_nonfinite = skip_nonfinite;
      a.max_grad_norm = max_grad_norm;
      a.grad_norm_out = reinterpret_cast<double*>(grad_norm_out);
      a.skipped_out = reinterpret_cast<bool*>(skipped_out);
      a.diagnostics = reinterpret_cast<double*>(diagnostics);
      a.nonfinite = reinterpret_cast<int64_t*>(nonfinite);
      a.track_skip = track_skip;
      py::gil_scoped_release nogil;
      group_.step(a);
    });
  }

  // The masters and state are the caller's too (a functional form bound once): watch them.
  void watch_state() {
    binding_.watch_state = true;
    binding_.rewatch();
  }

  // New grad tensors for some params (torch replaced their `.grad`), written into the device
  // table on `stream`; see Binding::rebind_grads.
  void rebind_grads(py::sequence grads, uintptr_t stream) {
    if (binding_.rebind_grads(grads)) group_.set_grads(binding_.slots, as_stream(stream));
  }

  // Group j's lr from `schedule` (a Schedule's to_bytes()) evaluated on the device, or, with
  // None, from its hyperparameters again.
  void set_schedule(int group, py::object schedule, uintptr_t stream) {
    check_group(group);
    if (schedule.is_none()) return group_.set_schedule(group, nullptr, as_stream(stream));
    const std::string bytes = schedule.cast<py::bytes>();
    if (bytes.size() != sizeof(Schedule)) throw std::invalid_argument("not a fastopt schedule");
    Schedule s;
    std::memcpy(&s, bytes.data(), sizeof(Schedule));
    group_.set_schedule(group, &s, as_stream(stream));
  }

  void update_loss_scale(uintptr_t scale, uintptr_t clean_steps, uintptr_t floor_skips, double growth, double backoff,
                         int32_t interval, float min_scale, uintptr_t stream) {
    group_.update_loss_scale(reinterpret_cast<float*>(scale), reinterpret_cast<int32_t*>(clean_steps),
                             reinterpret_cast<int32_t*>(floor_skips), growth, backoff, interval, min_scale,
                             as_stream(stream));
  }

  void set_lr(int group, double lr, uintptr_t stream) {
    check_group(group);
    if (!(lr >= 0 && lr < 1e300)) throw std::invalid_argument("lr must be finite and >= 0");
    cuda::set_device_value(group_.lr_device() + group, lr, group_.device(), as_stream(stream));
  }

  void set_step(int group, int64_t step, uintptr_t stream) {
    check_group(group);
    if (step < 0) throw std::invalid_argument("step must be >= 0");
    cuda::set_device_value(group_.steps_device() + group, step, group_.device(), as_stream(stream));
  }

  std::vector<int64_t> read_steps(uintptr_t stream) const {
    std::vector<int64_t> out(size_t(group_.num_groups()));
    py::gil_scoped_release nogil;
    group_.read_steps(out.data(), as_stream(stream));
    return out;
  }

  int poll_skip() const { return group_.poll_skip(); }
  int device() const { return group_.device(); }
  int64_t num_chunks() const { return group_.num_chunks(); }
  int64_t num_tensors() const { return group_.num_tensors(); }

 private:
  void check_group(int group) const {
    if (group < 0 || size_t(group) >= binding_.group_state.size()) throw std::out_of_range("no such param group");
  }

  py_intake::Binding binding_;
  cuda::Group group_;
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
    } catch (const py_intake::TensorError& e) {
      PyErr_SetString(tensor_error.ptr(), e.what());
    }
  });

  m.def("device_count", &cuda::device_count);
  m.def("widen_into", [](py::handle src, py::handle dst, uintptr_t stream) {
    const auto s = py_intake::intake(src, "source", kCudaDevice);
    const auto d = py_intake::intake(dst, "destination", kCudaDevice);
    if (d.dtype != DType::f32 || d.readonly || d.shape != s.shape) {
      throw std::invalid_argument("destination must be a writable float32 array of the source's shape");
    }
    cuda::widen(s.data, s.dtype, static_cast<float*>(d.data), s.numel, d.device.id, as_stream(stream));
  }, py::arg("src"), py::arg("dst"), py::arg("stream"));
  m.attr("max_groups") = cuda::kMaxGroups;
  m.def("stream_is_capturing", [](uintptr_t stream) { return cuda::stream_is_capturing(as_stream(stream)); },
        py::arg("stream"));

  py::class_<CudaGroup>(m, "Group")
      .def(py::init([](const std::string& rule, py::sequence params, py::sequence grads, py::sequence masters,
                       py::sequence states, std::vector<std::string> state_names, std::vector<int64_t> group_sizes) {
             return new CudaGroup(py_intake::rule_id(rule, false), params, grads, masters, states, state_names, group_sizes);
           }),
           py::arg("rule"), py::arg("params"), py::arg("grads"), py::arg("masters"), py::arg("states"),
           py::arg("state_names"), py::arg("group_sizes"))
      .def("step", &CudaGroup::step, py::arg("hypers"), py::arg("stream"), py::arg("steps") = py::none(),
           py::arg("grad_scale") = 1.0f, py::arg("loss_scale") = 0, py::arg("clip_value") = 0.0f,
           py::arg("capturable") = false, py::arg("grad_norm") = false, py::arg("skip_nonfinite") = false,
           py::arg("max_grad_norm") = 0.0, py::arg("grad_norm_out") = 0, py::arg("skipped_out") = 0,
           py::arg("diagnostics") = 0, py::arg("nonfinite") = 0, py::arg("track_skip") = false)
      .def("poll_skip", &CudaGroup::poll_skip,
           "The last tracked step's skip decision: -1 while not back on the host (never waits), else 1 or 0")
      .def("watch_state", &CudaGroup::watch_state, "Watch the masters and state as the params (the caller's)")
      .def("rebind_grads", &CudaGroup::rebind_grads, py::arg("grads"), py::arg("stream"))
      .def("set_schedule", &CudaGroup::set_schedule, py::arg("group"), py::arg("schedule"), py::arg("stream"))
      .def("update_loss_scale", &CudaGroup::update_loss_scale, py::arg("scale"), py::arg("clean_steps"),
           py::arg("floor_skips"), py::arg("growth"), py::arg("backoff"), py::arg("interval"), py::arg("min_scale"),
           py::arg("stream"),
           "GradScaler's update from the last step's skip decision, on the device, floored at min_scale")
      .def("set_lr", &CudaGroup::set_lr, py::arg("group"), py::arg("lr"), py::arg("stream"))
      .def("set_step", &CudaGroup::set_step, py::arg("group"), py::arg("step"), py::arg("stream"))
      .def("read_steps", &CudaGroup::read_steps, py::arg("stream"),
           "The device-resident step counts (waits for `stream`)")
      .def_property_readonly("device", &CudaGroup::device)
      .def_property_readonly("num_chunks", &CudaGroup::num_chunks)
      .def_property_readonly("num_tensors", [](const CudaGroup& g) { return g.num_tensors(); });
}
