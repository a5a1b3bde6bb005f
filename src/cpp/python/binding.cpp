#include "binding.h"

#include <algorithm>

#include <pybind11/numpy.h>

#include "dlpack.h"

namespace py = pybind11;

namespace fastopt::py_intake {
namespace {

const char* kOwnMemory = " (every tensor of a group must have its own memory)";

struct Named {
  const std::string* name;  // in Binding::names, or the new grad's
  size_t order;  // position in the bind order, to name the later tensor first
  const View* view;
};

std::vector<py::object> as_list(py::handle seq) {
  std::vector<py::object> out;
  for (py::handle h : seq) out.push_back(py::reinterpret_borrow<py::object>(h));
  return out;
}

void check_overlap(std::vector<Named> all) {
  all.erase(std::remove_if(all.begin(), all.end(), [](const Named& n) { return n.view->nbytes() == 0; }),
            all.end());
  std::sort(all.begin(), all.end(), [](const Named& a, const Named& b) {
    return static_cast<char*>(a.view->data) < static_cast<char*>(b.view->data);
  });
  auto end_of = [](const Named& n) { return static_cast<char*>(n.view->data) + n.view->nbytes(); };
  const Named* reach = nullptr;  // the tensor whose end lies furthest so far
  for (const Named& n : all) {
    if (reach && static_cast<char*>(n.view->data) < end_of(*reach)) {
      const bool same = n.view->data == reach->view->data && n.view->nbytes() == reach->view->nbytes();
      const Named& later = n.order > reach->order ? n : *reach;
      const Named& earlier = n.order > reach->order ? *reach : n;
      throw TensorError(*later.name + (same ? " is the same memory as " : " overlaps ") + *earlier.name + kOwnMemory);
    }
    if (!reach || end_of(n) > end_of(*reach)) reach = &n;
  }
}

// torch's C implementations of Tensor.data_ptr() and Tensor.grad, found once on
// torch._C.TensorBase: called directly they cost a few ns a tensor, as Python calls ~60 (a
// step checks every bound torch param and grad). Null where torch defines them otherwise.
struct TorchAccess {
  PyCFunction data_ptr = nullptr;
  getter grad = nullptr;
  void* grad_closure = nullptr;

  static const TorchAccess& get() {
    static const TorchAccess access = [] {
      TorchAccess a;
      const py::object base = py::module_::import("torch._C").attr("TensorBase");
      PyObject* dict = reinterpret_cast<PyTypeObject*>(base.ptr())->tp_dict;
      PyObject* d = PyDict_GetItemString(dict, "data_ptr");
      if (d && Py_IS_TYPE(d, &PyMethodDescr_Type)) {
        const PyMethodDef* m = reinterpret_cast<PyMethodDescrObject*>(d)->d_method;
        if ((m->ml_flags & (METH_VARARGS | METH_KEYWORDS | METH_FASTCALL | METH_O)) == 0 && (m->ml_flags & METH_NOARGS)) {
          a.data_ptr = m->ml_meth;
        }
      }
      PyObject* g = PyDict_GetItemString(dict, "grad");
      if (g && Py_IS_TYPE(g, &PyGetSetDescr_Type)) {
        a.grad = reinterpret_cast<PyGetSetDescrObject*>(g)->d_getset->get;
        a.grad_closure = reinterpret_cast<PyGetSetDescrObject*>(g)->d_getset->closure;
      }
      return a;
    }();
    return access;
  }

  // New references (null with a Python error set on failure).
  PyObject* call_data_ptr(PyObject* t) const {
    static PyObject* const name = PyUnicode_InternFromString("data_ptr");
    return data_ptr ? data_ptr(t, nullptr) : PyObject_CallMethodNoArgs(t, name);
  }
  PyObject* get_grad(PyObject* t) const {
    static PyObject* const name = PyUnicode_InternFromString("grad");
    return grad ? grad(t, grad_closure) : PyObject_GetAttr(t, name);
  }
};

// Param `p`'s grad is its `.grad`: remembered, to refuse a step after torch replaced it.
BoundGrad bound_grad(const View& p, const py::object& param, const py::object& grad) {
  if (p.torch_tensor && py::getattr(param, "grad", py::none()).is(grad)) return {param, grad};
  return {py::none(), py::none()};
}

// The views of `b` by name, with replacing[k] (where given and not null) in place of views[k].
std::vector<Named> named_views(const Binding& b, const std::vector<const View*>& replacing) {
  std::vector<Named> named;
  for (size_t k = 0; k < b.views.size(); ++k) {
    named.push_back({&b.names[k], k, k < replacing.size() && replacing[k] ? replacing[k] : &b.views[k]});
  }
  return named;
}

}  // namespace

void Binding::check() const {
  if (!has_torch) return;  // (NumPy arrays are pinned, CuPy's memory cannot move)
  const TorchAccess& torch = TorchAccess::get();
  for (const Watched& w : watched) {
    PyObject* now = torch.call_data_ptr(w.tensor.ptr());
    if (!now) throw py::error_already_set();
    const bool moved = PyLong_AsVoidPtr(now) != w.data;
    Py_DECREF(now);
    if (moved) {
      throw MemoryMoved(names[w.view] + ": its memory was moved or freed since the optimizer was built (torch "
                        "resize_/share_memory_/set_, `.data = ...`, module.to(...)); fastopt updates the "
                        "memory it was bound to: build a new optimizer over the new tensors (fastopt.torch "
                        "follows them by itself)");
    }
  }
  for (size_t i = 0; i < bound_grads.size(); ++i) {
    const BoundGrad& b = bound_grads[i];
    if (b.param.is_none()) continue;
    PyObject* now = torch.get_grad(b.param.ptr());
    if (!now) throw py::error_already_set();
    const bool same = now == b.grad.ptr();
    Py_DECREF(now);
    if (!same) {
      throw MemoryMoved(names[param_view[i]] + ": its .grad is no longer the grad tensor bound to it (torch replaced it: "
                        "zero_grad(set_to_none=True), backward(create_graph=True), DDP's "
                        "gradient_as_bucket_view); the step would read a stale gradient: zero the grads with "
                        "set_to_none=False, or use fastopt.torch, which reads .grad at every step");
    }
  }
}

Binding bind(py::sequence params, py::sequence grads, py::sequence masters, py::sequence states,
             const std::vector<std::string>& state_names, const std::vector<int64_t>& group_sizes, int engine) {
  Binding b;
  const auto p_objs = as_list(params), g_objs = as_list(grads), m_objs = as_list(masters),
             s_objs = as_list(states);
  const size_t n = p_objs.size();
  if (g_objs.size() != n) {
    throw std::invalid_argument("got " + std::to_string(n) + " params but " + std::to_string(g_objs.size()) +
                                " grads: every param needs its grad");
  }
  if (m_objs.size() != n || s_objs.size() != n) throw std::invalid_argument("one masters/states entry per param");
  int64_t total = 0;
  for (int64_t s : group_sizes) total += s;
  if (total != int64_t(n)) throw std::invalid_argument("group_sizes must add up to the number of params");

  auto name = [](const std::string& role, size_t i) { return role + " " + std::to_string(i); };

  // Devices first, so that a mixed group is reported as such before anything is exported.
  Device first_dev{engine, 0};
  std::string first_name;
  for (size_t i = 0; i < 2 * n; ++i) {
    const py::object& o = i % 2 ? g_objs[i / 2] : p_objs[i / 2];
    const std::string nm = name(i % 2 ? "grad" : "param", i / 2);
    const Device d = device_of(o);
    if (first_name.empty()) {
      first_dev = d;
      first_name = nm;
    } else if (!(d == first_dev)) {
      throw TensorError(nm + " is on " + d.str() + " but " + first_name + " is on " + first_dev.str() +
                        ": all tensors of a group must be on one device");
    }
  }

  // The same array object twice is caught here even when it has no bytes to overlap.
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (p_objs[i].is(p_objs[j])) {
        throw TensorError(name("param", i) + " is the same memory as " + name("param", j) + kOwnMemory);
      }
    }
    if (g_objs[i].is(p_objs[i])) {
      throw TensorError(name("grad", i) + " is the same memory as " + name("param", i) + kOwnMemory);
    }
  }

  b.engine = engine;
  b.params = p_objs;
  b.grads = g_objs;
  auto take = [&](const py::object& o, const std::string& nm, bool writable, bool watched = false) -> const View& {
    b.views.push_back(intake(o, nm, engine, watched));
    b.names.push_back(nm);
    const View& v = b.views.back();
    if (writable && v.readonly) throw TensorError(nm + ": is read-only (fastopt updates it in place)");
    return v;
  };
  auto same_shape = [](const View& v, const View& p, const std::string& nm, const std::string& pn) {
    if (v.shape != p.shape) {
      throw TensorError(nm + ": shape " + v.shape_str() + " differs from " + pn + "'s shape " + p.shape_str());
    }
  };
  auto must_f32 = [](const View& v, const std::string& nm) {
    if (v.dtype != DType::f32) {
      throw TensorError(nm + ": dtype " + std::string(dtype_name(v.dtype)) + ", expected float32");
    }
  };

  std::vector<TensorSlot> slots(n);
  b.group_state.assign(group_sizes.size(), kMaxState);
  size_t i = 0;
  for (size_t j = 0; j < group_sizes.size(); ++j) {
    for (int64_t k = 0; k < group_sizes[j]; ++k, ++i) {
      const std::string pn = name("param", i), gn = name("grad", i);
      b.param_view.push_back(b.views.size());
      const View& p = take(p_objs[i], pn, true, true);  // params and grads are watched (rewatch)
      b.grad_view.push_back(b.views.size());
      const View& g = take(g_objs[i], gn, false, true);  // grads are only read
      same_shape(g, p, gn, pn);
      b.bound_grads.push_back(bound_grad(p, p_objs[i], g_objs[i]));
      TensorSlot& t = slots[i];
      t = TensorSlot{};
      t.param = p.data;
      t.grad = g.data;
      t.numel = p.numel;
      t.ndim = int(p.shape.size());
      t.param_dtype = p.dtype;
      t.grad_dtype = g.dtype;
      t.hyper_index = int(j);
      if (!m_objs[i].is_none()) {
        const std::string mn = name("master", i);
        if (p.dtype == DType::f32) {
          throw TensorError(pn + ": master weights are for float16/bfloat16 params; this one is float32");
        }
        const View& m = take(m_objs[i], mn, true);
        must_f32(m, mn);
        same_shape(m, p, mn, pn);
        t.master = static_cast<float*>(m.data);
      }
      const auto st = as_list(s_objs[i]);
      if (st.size() > state_names.size() || st.size() > size_t(kMaxState)) {
        throw std::invalid_argument(pn + ": too many state arrays");
      }
      t.num_state = int(st.size());
      for (size_t s = 0; s < st.size(); ++s) {
        const std::string sn = name(state_names[s], i);
        const View& sv = take(st[s], sn, true);
        must_f32(sv, sn);
        same_shape(sv, p, sn, pn);
        t.state[s] = static_cast<float*>(sv.data);
      }
      b.group_state[j] = std::min(b.group_state[j], t.num_state);
    }
  }
  check_overlap(named_views(b, {}));
  b.slots = std::move(slots);
  b.device = first_dev;
  b.rewatch();
  return b;
}

void Binding::rewatch() {
  watched.clear();
  has_torch = std::any_of(views.begin(), views.end(), [](const View& v) { return bool(v.torch_tensor); });
  // The caller's tensors: the params and grads, and the rest where watch_state says so (else
  // they are the optimizer's own torch tensors, which nobody else moves).
  std::vector<bool> callers(views.size(), watch_state);
  for (size_t i = 0; i < param_view.size(); ++i) callers[param_view[i]] = callers[grad_view[i]] = true;
  for (size_t k = 0; k < views.size(); ++k) {
    if (callers[k] && views[k].torch_tensor && views[k].numel > 0) {
      watched.push_back({k, views[k].torch_tensor, views[k].data});
    }
  }
}

bool Binding::rebind_grads(py::sequence new_grads) {
  const auto g_objs = as_list(new_grads);
  if (g_objs.size() != params.size()) {
    throw std::invalid_argument("got " + std::to_string(g_objs.size()) + " grads for " + std::to_string(params.size()) +
                                " params");
  }
  std::vector<std::pair<size_t, View>> fresh;  // validated before anything changes
  for (size_t i = 0; i < params.size(); ++i) {
    if (g_objs[i].is(grads[i])) continue;
    const std::string gn = "grad " + std::to_string(i);
    if (g_objs[i].is(params[i])) throw TensorError(gn + " is the same memory as " + names[param_view[i]] + kOwnMemory);
    View v = intake(g_objs[i], gn, engine, true);
    const Device d = v.device.type == dlpack::kCUDAHost ? Device{dlpack::kCPU, 0} : v.device;  // as device_of
    if (!(d == device)) {
      throw TensorError(gn + " is on " + d.str() + " but the group is on " + device.str() +
                        ": all tensors of a group must be on one device");
    }
    const View& p = views[param_view[i]];
    if (v.shape != p.shape) {
      throw TensorError(gn + ": shape " + v.shape_str() + " differs from " + names[param_view[i]] + "'s shape " +
                        p.shape_str());
    }
    fresh.emplace_back(i, std::move(v));
  }
  if (fresh.empty()) return false;
  std::vector<const View*> replacing(views.size(), nullptr);
  for (const auto& [i, v] : fresh) replacing[grad_view[i]] = &v;
  check_overlap(named_views(*this, replacing));
  for (auto& [i, v] : fresh) {
    TensorSlot& t = slots[i];
    t.grad = v.data;
    t.grad_dtype = v.dtype;
    views[grad_view[i]] = std::move(v);
    grads[i] = g_objs[i];
    bound_grads[i] = bound_grad(views[param_view[i]], params[i], g_objs[i]);
  }
  rewatch();
  return true;
}

}  // namespace fastopt::py_intake
