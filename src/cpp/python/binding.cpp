#include "binding.h"

#include <algorithm>

#include <pybind11/stl.h>

#include "dlpack.h"

namespace py = pybind11;

namespace fastopt::py_intake {
namespace {

const char* kOwnMemory = " (every tensor of a group must have its own memory)";

std::vector<py::object> as_list(py::handle seq) {
  std::vector<py::object> out;
  for (py::handle h : seq) out.push_back(py::reinterpret_borrow<py::object>(h));
  return out;
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
                        "memory it was bound to: build a new optimizer (or bind the functional form again) over "
                        "the new tensors (fastopt.torch follows them by itself)");
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

Binding read(py::sequence params, py::sequence grads, py::object keeps, py::sequence states,
             const std::vector<int64_t>& group_sizes, RuleId rule, int engine) {
  Binding b;
  const auto p_objs = as_list(params), g_objs = as_list(grads), m_objs = as_list(keeps.attr("masters")),
             r_objs = as_list(keeps.attr("remainders")), c_objs = as_list(keeps.attr("compensations")),
             a_objs = as_list(keeps.attr("absmaxes")), s_objs = as_list(states);
  const auto stochastic = keeps.attr("stochastic").cast<std::vector<bool>>();
  const auto state_stochastic = keeps.attr("state_stochastic").cast<std::vector<bool>>();
  const size_t n = p_objs.size();
  if (g_objs.size() != n) {
    throw std::invalid_argument("got " + std::to_string(n) + " params but " + std::to_string(g_objs.size()) +
                                " grads: every param needs its grad");
  }
  if (m_objs.size() != n || r_objs.size() != n || c_objs.size() != n || stochastic.size() != n ||
      a_objs.size() != n || state_stochastic.size() != n || s_objs.size() != n) {
    throw std::invalid_argument("one keeps entry (masters, remainders, ...) and one states entry per param");
  }
  int64_t total = 0;
  for (int64_t s : group_sizes) total += s;
  if (total != int64_t(n)) throw std::invalid_argument("group_sizes must add up to the number of params");

  auto name = [](const std::string& role, size_t i) { return role + " " + std::to_string(i); };

  // Devices first, so that a mixed group is reported as such before anything is exported
  // (intake refuses memory the engine cannot use, with what this module can do about it).
  Device first_dev{engine, 0};
  std::string first_name;
  auto on_first_device = [&](const py::object& o, const std::string& nm) {
    const Device d = device_of(o, nm);
    if (first_name.empty()) {
      first_dev = d;
      first_name = nm;
    } else if (d != first_dev) {
      throw TensorError(nm + " is on " + d.str() + " but " + first_name + " is on " + first_dev.str() +
                        ": all tensors of a group must be on one device");
    }
  };
  for (size_t i = 0; i < 2 * n; ++i) {
    on_first_device(i % 2 ? g_objs[i / 2] : p_objs[i / 2], name(i % 2 ? "grad" : "param", i / 2));
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

  b.params = p_objs;
  b.grads = g_objs;
  auto take = [&](const py::object& o, const std::string& nm, bool watched = false) -> const Tensor& {
    if (!watched) on_first_device(o, nm);  // masters, states, ...: a mix, not memory the engine lacks
    b.views.push_back(intake(o, nm, engine, watched));
    b.names.push_back(nm);
    return b.views.back();
  };
  size_t i = 0;
  for (int64_t size : group_sizes) {
    ParamGroup& g = b.groups.emplace_back();
    if (rule != RuleId::probe) g.hyper = default_hyper(rule);
    for (int64_t k = 0; k < size; ++k, ++i) {
      ParamTensors& t = g.params.emplace_back();
      b.param_view.push_back(b.views.size());
      t.param = take(p_objs[i], name("param", i), true);  // params and grads are watched (rewatch)
      b.grad_view.push_back(b.views.size());
      t.grad = take(g_objs[i], name("grad", i), true);
      b.bound_grads.push_back(bound_grad(b.views[b.param_view[i]], p_objs[i], g_objs[i]));
      if (!m_objs[i].is_none()) t.master = take(m_objs[i], name("master", i));
      if (!r_objs[i].is_none()) t.remainder = take(r_objs[i], name("remainder", i));
      if (!c_objs[i].is_none()) t.compensation = take(c_objs[i], name("compensation", i));
      t.stochastic_rounding = stochastic[i];
      const std::vector<std::string> state_names =  // (a factored rule names a vector's state apart)
          rule == RuleId::probe ? std::vector<std::string>(kMaxState, "state")
                                : fastopt::state_names(rule, int(t.param.shape.size()));
      const auto st = as_list(s_objs[i]);
      if (st.size() > state_names.size()) throw std::invalid_argument(name("param", i) + ": too many state arrays");
      for (size_t s = 0; s < st.size(); ++s) t.state.push_back(take(st[s], name(state_names[s], i)));
      const auto am = as_list(a_objs[i]);
      if (am.size() > state_names.size()) throw std::invalid_argument(name("param", i) + ": too many absmax arrays");
      for (size_t s = 0; s < am.size(); ++s) t.state_absmax.push_back(take(am[s], name(state_names[s] + " absmax", i)));
      t.state_stochastic_rounding = state_stochastic[i];
    }
  }
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
    if (callers[k] && views[k].torch_tensor && views[k].numel() > 0) {
      watched.push_back({k, views[k].torch_tensor, views[k].data});
    }
  }
}

std::vector<Tensor> read_grads(const Binding& b, py::sequence grads, int engine,
                               std::vector<std::pair<size_t, View>>& fresh) {
  const auto g_objs = as_list(grads);
  if (g_objs.size() != b.params.size()) {
    throw std::invalid_argument("got " + std::to_string(g_objs.size()) + " grads for " +
                                std::to_string(b.params.size()) + " params");
  }
  std::vector<Tensor> out;
  for (size_t i = 0; i < b.params.size(); ++i) {
    if (g_objs[i].is(b.grads[i])) {
      out.push_back(b.views[b.grad_view[i]]);
      continue;
    }
    const std::string gn = "grad " + std::to_string(i);
    if (g_objs[i].is(b.params[i])) {
      throw TensorError(gn + " is the same memory as " + b.names[b.param_view[i]] + kOwnMemory);
    }
    fresh.emplace_back(i, intake(g_objs[i], gn, engine, true));
    out.push_back(fresh.back().second);
  }
  return out;
}

void commit_grads(Binding& b, py::sequence grads, std::vector<std::pair<size_t, View>>& fresh) {
  if (fresh.empty()) return;
  const auto g_objs = as_list(grads);
  for (auto& [i, v] : fresh) {
    b.views[b.grad_view[i]] = std::move(v);
    b.grads[i] = g_objs[i];
    b.bound_grads[i] = bound_grad(b.views[b.param_view[i]], b.params[i], g_objs[i]);
  }
  b.rewatch();
}

}  // namespace fastopt::py_intake
