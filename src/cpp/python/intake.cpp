#include "intake.h"

#include <pybind11/numpy.h>

#include <functional>
#include <unordered_map>
#include <memory>
#include <sstream>

#include "dlpack.h"

namespace py = pybind11;

namespace fastopt::py_intake {
namespace {

[[noreturn]] void fail(const std::string& name, const std::string& why) {
  throw TensorError(name + ": " + why);
}

const char* kSupported = "fastopt takes float32, float16 and bfloat16";

// "Type: message" of a Python exception, without its traceback.
std::string one_line(const py::error_already_set& e) {
  return py::str(e.type().attr("__name__")).cast<std::string>() + ": " + py::str(e.value()).cast<std::string>();
}

// True when `strides` (in elements) describe a C-contiguous layout of `shape`.
bool c_contiguous(const std::vector<int64_t>& shape, const int64_t* strides) {
  if (!strides) return true;
  int64_t expect = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    if (shape[d] == 0) return true;
    if (shape[d] != 1 && strides[d] != expect) return false;
    expect *= shape[d];
  }
  return true;
}

constexpr char kDevices[] = ": fastopt takes host (CPU) and CUDA device memory only";

// Why fastopt's CUDA engine cannot be used here ("" where it can): fastopt.cuda knows.
std::string cuda_unavailable_reason() {
  try {
    return py::module_::import("fastopt.cuda").attr("unavailable_reason")().cast<std::string>();
  } catch (const py::error_already_set& e) {
    return "fastopt.cuda.unavailable_reason() failed: " + one_line(e);
  }
}

// Whether memory on `d` is what an engine on device type `engine` works on. CUDA memory meets
// the CPU engine where the group's params are in host memory, or where the CUDA engine is missing.
void check_engine_device(const Device& d, int engine, const std::string& name, const char* what) {
  if (engine == dlpack::kCUDA ? d.type == dlpack::kCUDA : d.host()) return;
  std::string why = kDevices;
  if (d.type == dlpack::kCUDA) {
    const std::string missing = cuda_unavailable_reason();
    why = missing.empty() ? ", but the group runs on the CPU engine (its params are in host memory): all of a "
                            "group's arrays must be on one device"
                          : ", but fastopt's CUDA engine is not available here: " + missing;
  } else if (d.host()) {
    why = "; the CUDA engine takes CUDA device memory (all of a group's arrays must be on one device)";
  }
  fail(name, std::string(what) + d.str() + why);
}

// The NumPy array that owns the memory `array` views: a weak reference to it makes NumPy refuse
// to resize it. Bases are followed through arrays and through objects that keep an array as
// their `base` (as_strided's interface holder).
py::object memory_owner(py::handle array) {
  py::object owner = py::reinterpret_borrow<py::object>(array);
  for (;;) {
    const auto* a = py::detail::array_proxy(owner.ptr());
    if ((a->flags & py::detail::npy_api::NPY_ARRAY_OWNDATA_) || !a->base) return owner;
    py::object base = py::reinterpret_borrow<py::object>(a->base);
    if (!py::isinstance<py::array>(base)) base = py::getattr(base, "base", py::none());
    if (!py::isinstance<py::array>(base)) return owner;  // memory NumPy cannot resize (bytes, mmap, ...)
    owner = base;
  }
}

bool from_buffer(py::handle obj, const std::string& name, int engine, View& v) {
  if (!PyObject_CheckBuffer(obj.ptr())) return false;
  check_engine_device(Device{dlpack::kCPU, 0}, engine, name, "is on ");
  auto buffer = std::make_unique<Py_buffer>();
  *buffer = Py_buffer{};
  bool has_format = true;
  if (PyObject_GetBuffer(obj.ptr(), buffer.get(), PyBUF_STRIDES | PyBUF_FORMAT) != 0) {
    // NumPy cannot describe ml_dtypes' bfloat16 in a format string; ask without one.
    PyErr_Clear();
    has_format = false;
    *buffer = Py_buffer{};
    if (PyObject_GetBuffer(obj.ptr(), buffer.get(), PyBUF_STRIDES) != 0) {
      py::error_already_set e;
      fail(name, "cannot read its buffer: " + one_line(e));
    }
  }
  // Exported: from here on the buffer is released with its owner.
  std::shared_ptr<Py_buffer> view(buffer.release(), [](Py_buffer* b) {
    PyBuffer_Release(b);
    delete b;
  });
  v.owner = std::shared_ptr<void>(view, view.get());
  if (py::isinstance<py::array>(obj)) {
    static const py::handle masked = py::object(py::module_::import("numpy.ma").attr("MaskedArray")).release();
    if (py::isinstance(obj, masked)) {
      fail(name, "is a NumPy masked array, whose mask fastopt would ignore (masked elements updated, masked "
                 "grads used): pass .data or .filled()");
    }
    v.pin = py::weakref(memory_owner(obj));
  }
  v.data = view->buf;
  v.readonly = view->readonly != 0;
  v.shape.assign(view->shape, view->shape + view->ndim);
  if (view->ndim == 0) v.shape.clear();
  std::string dtype;
  if (has_format && view->format) {
    std::string f = view->format;
    if (!f.empty() && (f[0] == '<' || f[0] == '=' || f[0] == '@')) f = f.substr(1);
    if (f == "f") v.dtype = DType::f32;
    else if (f == "e") v.dtype = DType::f16;
    else if (f == "H") v.dtype = DType::u16;
    else if (f == "B") v.dtype = DType::u8;
    else dtype = "buffer format '" + std::string(view->format) + "'";
  } else {
    py::object dt = py::getattr(obj, "dtype", py::none());
    const std::string dname = dt.is_none() ? "" : py::str(py::getattr(dt, "name", dt));
    if (dname == "bfloat16" && view->itemsize == 2) v.dtype = DType::bf16;
    else dtype = dname.empty() ? "an unknown element type" : dname;
  }
  if (!dtype.empty()) {
    py::object dt = py::getattr(obj, "dtype", py::none());
    if (!dt.is_none()) dtype = py::str(dt);
    fail(name, "unsupported dtype " + dtype + " (" + kSupported + ")");
  }
  std::vector<int64_t> strides;
  if (view->strides) {
    for (int d = 0; d < view->ndim; ++d) {
      if (view->strides[d] % view->itemsize != 0) fail(name, "is not contiguous (strides are not whole elements)");
      strides.push_back(view->strides[d] / view->itemsize);
    }
  }
  if (!c_contiguous(v.shape, view->strides ? strides.data() : nullptr)) {
    fail(name, "is not C-contiguous (fastopt never copies; pass a contiguous array)");
  }
  return true;
}

template <class Managed>
std::shared_ptr<void> own(Managed* m) {
  return std::shared_ptr<void>(m, [](void* p) {
    auto* mt = static_cast<Managed*>(p);
    if (mt->deleter) mt->deleter(mt);
  });
}

// Whether obj is a PyTorch tensor (of torch._C.TensorBase or a subclass), remembered per type.
bool is_torch_tensor(py::handle obj) {
  static std::unordered_map<PyTypeObject*, bool> known;  // the types are kept alive (see below)
  PyTypeObject* type = Py_TYPE(obj.ptr());
  const auto hit = known.find(type);
  if (hit != known.end()) return hit->second;
  bool torch = false;
  for (py::handle t : py::type::of(obj).attr("__mro__")) {
    torch = torch || (py::str(t.attr("__name__")).equal(py::str("TensorBase")) &&
                      py::str(py::getattr(t, "__module__", py::str(""))).equal(py::str("torch._C")));
  }
  Py_INCREF(type);  // so that the address is never reused for another type
  known.emplace(type, torch);
  return torch;
}

void from_dlpack(py::handle obj, const std::string& name, int engine, View& v) {
  if (!py::hasattr(obj, "__dlpack__")) {
    fail(name, "is of type " + py::str(py::type::of(obj).attr("__name__")).cast<std::string>() +
                   ", not an array (expected a NumPy array or an object with __dlpack__)");
  }
  v.device = device_of(obj, name);
  check_engine_device(v.device, engine, name, "is on ");
  // A param that requires grad is exported through a detached alias (torch refuses to
  // export it), as torch.optim updates params outside autograd; the param itself is watched.
  const bool torch = is_torch_tensor(obj);
  // DLPack hands over the memory, which holds the values without torch's lazy sign.
  if (torch && (obj.attr("is_neg")().cast<bool>() || obj.attr("is_conj")().cast<bool>())) {
    fail(name, "has PyTorch's lazy negation or conjugation bit set, so its memory does not hold its values: pass "
               ".resolve_neg() / .resolve_conj()");
  }
  const py::object exporter = torch && py::getattr(obj, "requires_grad", py::bool_(false)).cast<bool>()
                                  ? obj.attr("detach")()
                                  : py::reinterpret_borrow<py::object>(obj);
  // Newest protocol first: versioned capsules with copy=False (the update must reach the
  // producer's memory), then without `copy`, then a producer that predates max_version.
  py::object capsule;
  // On CUDA, stream=-1: only pointers are taken at bind time, so no synchronisation is due.
  const auto version = py::make_tuple(1, 0);
  py::dict extra;
  if (v.device.type == dlpack::kCUDA) extra["stream"] = -1;
  const std::function<py::object()> attempts[] = {
      [&] { return exporter.attr("__dlpack__")(**extra, py::arg("max_version") = version, py::arg("copy") = false); },
      [&] { return exporter.attr("__dlpack__")(**extra, py::arg("max_version") = version); },
      [&] { return exporter.attr("__dlpack__")(**extra); },
  };
  if (torch) {  // torch's own exporter: its __dlpack__ adds microseconds of Python checks
    static const py::handle to_dlpack = py::object(py::module_::import("torch.utils.dlpack").attr("to_dlpack")).release();
    try {
      capsule = to_dlpack(exporter);
    } catch (py::error_already_set& e) {
      fail(name, "torch.utils.dlpack.to_dlpack failed: " + one_line(e));
    }
  }
  for (size_t a = 0; a < 3 && !capsule; ++a) {
    try {
      capsule = attempts[a]();
    } catch (py::error_already_set& e) {
      // An older producer refuses the newer keywords with TypeError (torch: BufferError).
      if (!(e.matches(PyExc_TypeError) || e.matches(PyExc_BufferError)) || a == 2) {
        fail(name, "__dlpack__ failed: " + one_line(e));
      }
    }
  }
  const dlpack::Tensor* t = nullptr;
  if (PyCapsule_IsValid(capsule.ptr(), "dltensor_versioned")) {
    auto* m = static_cast<dlpack::ManagedTensorVersioned*>(
        PyCapsule_GetPointer(capsule.ptr(), "dltensor_versioned"));
    PyCapsule_SetName(capsule.ptr(), "used_dltensor_versioned");
    v.owner = own(m);
    if (m->version.major != 1) {
      fail(name, "DLPack version " + std::to_string(m->version.major) + " is not supported (expected 1.x)");
    }
    v.readonly = (m->flags & dlpack::kFlagReadOnly) != 0;
    if (m->flags & dlpack::kFlagIsCopied) {
      fail(name, "its producer exported a copy (DLPack's is-copied flag): an update would not reach its memory");
    }
    t = &m->dl_tensor;
  } else if (PyCapsule_IsValid(capsule.ptr(), "dltensor")) {
    auto* m = static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
    PyCapsule_SetName(capsule.ptr(), "used_dltensor");
    v.owner = own(m);
    t = &m->dl_tensor;
  } else {
    fail(name, "__dlpack__ did not return a DLPack capsule");
  }
  v.device = {t->device.device_type, t->device.device_id};
  check_engine_device(v.device, engine, name, "its DLPack capsule is on ");
  v.shape.assign(t->shape, t->shape + t->ndim);
  v.data = static_cast<char*>(t->data) + t->byte_offset;
  const auto& dt = t->dtype;
  if (dt.lanes == 1 && dt.code == dlpack::kFloat && dt.bits == 32) v.dtype = DType::f32;
  else if (dt.lanes == 1 && dt.code == dlpack::kFloat && dt.bits == 16) v.dtype = DType::f16;
  else if (dt.lanes == 1 && dt.code == dlpack::kBfloat && dt.bits == 16) v.dtype = DType::bf16;
  else if (dt.lanes == 1 && dt.code == dlpack::kUInt && dt.bits == 16) v.dtype = DType::u16;
  else if (dt.lanes == 1 && dt.code == dlpack::kUInt && dt.bits == 8) v.dtype = DType::u8;
  else {
    static const char* const kinds[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
    std::ostringstream s;
    s << "unsupported dtype ";
    if (dt.code == dlpack::kBool) s << "bool";
    else if (dt.code < 6) s << kinds[dt.code] << int(dt.bits);
    else s << "with DLPack type code " << int(dt.code) << " and " << int(dt.bits) << " bits";
    if (dt.lanes != 1) s << "x" << dt.lanes;
    fail(name, s.str() + " (" + kSupported + ")");
  }
  if (!c_contiguous(v.shape, t->strides)) {
    fail(name, "is not C-contiguous (fastopt never copies; pass a contiguous array)");
  }
  if (torch) v.torch_tensor = py::reinterpret_borrow<py::object>(obj);
}

}  // namespace

Device device_of(py::handle obj, const std::string& name) {
  if (is_torch_tensor(obj)) {  // torch's own properties: its __dlpack_device__ is a slow Python call
    if (obj.attr("is_cuda").cast<bool>()) return {dlpack::kCUDA, obj.attr("get_device")().cast<int>()};
    if (obj.attr("is_cpu").cast<bool>()) return {dlpack::kCPU, 0};
    fail(name, "is on " + py::str(obj.attr("device")).cast<std::string>() + kDevices);  // (meta, mps, xpu, ...)
  }
  // The producer's word first: CuPy arrays also have the buffer protocol (which refuses).
  if (!py::hasattr(obj, "__dlpack_device__")) return {dlpack::kCPU, 0};
  py::object reported;
  try {
    reported = obj.attr("__dlpack_device__")();
  } catch (const py::error_already_set& e) {
    fail(name, "its __dlpack_device__() failed: " + one_line(e));
  }
  std::pair<int, int> dev;
  try {
    dev = reported.cast<std::pair<int, int>>();
  } catch (const py::cast_error&) {
    fail(name, "its __dlpack_device__() returned " + py::repr(reported).cast<std::string>() +
                   ", not (device_type, device_id)");
  }
  if (dev.first == dlpack::kCUDAHost) return {dlpack::kCPU, 0};  // pinned host memory
  return {dev.first, dev.second};
}

// A watched torch tensor on the plain path (a float dtype fastopt takes, contiguous, no lazy
// sign bits), read through torch's attributes; false for anything else, which DLPack reads
// (and reports).
bool from_torch(py::handle obj, const std::string& name, int engine, View& v) {
  static const py::handle torch = py::module_::import("torch").release();
  static const py::handle dtypes[3] = {py::object(torch.attr("float32")).release(),
                                       py::object(torch.attr("float16")).release(),
                                       py::object(torch.attr("bfloat16")).release()};
  const py::object dtype = obj.attr("dtype");
  int d = 0;
  while (d < 3 && !dtype.is(dtypes[d])) ++d;
  if (d == 3 || obj.attr("is_neg")().cast<bool>() || obj.attr("is_conj")().cast<bool>() ||
      !obj.attr("is_contiguous")().cast<bool>()) {
    return false;
  }
  v.device = device_of(obj, name);
  check_engine_device(v.device, engine, name, "is on ");
  v.dtype = d == 0 ? DType::f32 : d == 1 ? DType::f16 : DType::bf16;
  for (py::handle n : obj.attr("shape")) v.shape.push_back(n.cast<int64_t>());
  v.data = reinterpret_cast<void*>(obj.attr("data_ptr")().cast<uintptr_t>());
  v.torch_tensor = py::reinterpret_borrow<py::object>(obj);
  v.owner = std::make_shared<py::object>(v.torch_tensor);  // released with the GIL held, as views are
  return true;
}

View intake(py::handle obj, const std::string& name, int engine, bool watched) {
  View v;
  if (obj.is_none()) fail(name, "is None (a missing gradient? bind a persistent gradient buffer)");
  if (watched && is_torch_tensor(obj) && from_torch(obj, name, engine, v)) return v;
  // The buffer protocol only for memory on the host (NumPy, ml_dtypes' bfloat16, which has no
  // DLPack dtype); anything a producer reports elsewhere goes through DLPack.
  if (device_of(obj, name).type != dlpack::kCPU || !from_buffer(obj, name, engine, v)) from_dlpack(obj, name, engine, v);
  return v;
}

}  // namespace fastopt::py_intake
