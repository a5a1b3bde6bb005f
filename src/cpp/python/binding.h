// Binding Python arrays into a tensor table, shared by the CPU and CUDA engines: every tensor
// validated once (dtype, layout, shape, writability, device, overlap) and kept alive.
#pragma once
#include <pybind11/pybind11.h>

#include <deque>
#include <stdexcept>
#include <string>
#include <vector>

#include "fastopt/tensor_list.h"
#include "intake.h"

namespace fastopt::py_intake {

// A bound PyTorch tensor (see View::torch_tensor), with where its memory was.
struct Watched {
  size_t view;  // the tensor's index in Binding::views
  pybind11::object tensor;
  const void* data;
};

// A PyTorch param bound with its `.grad` tensor as its grad: torch replaces `.grad` (zero_grad
// with set_to_none=True, backward(create_graph=True), DDP's gradient_as_bucket_view).
struct BoundGrad {
  pybind11::object param, grad;  // param None: not bound that way
};

struct Binding {
  std::deque<View> views;  // a deque: growing it never moves the views bound so far
  std::vector<std::string> names;  // names[k] names views[k] in errors ("param 3", "exp_avg 3")
  std::vector<size_t> param_view, grad_view;  // index in views of param i and of grad i
  std::vector<pybind11::object> params, grads;
  std::vector<TensorSlot> slots;
  std::vector<int> group_state;  // the fewest state arrays any param of group j has
  Device device{1, 0};
  int engine = 1;
  std::vector<Watched> watched;
  std::vector<BoundGrad> bound_grads;  // one per param
  bool has_torch = false;              // any view is a torch tensor: check() has work
  // The masters and state are the caller's as well (a functional form bound once), so they are
  // watched as the params and grads are; else they are the optimizer's own.
  bool watch_state = false;

  // MemoryMoved naming the first torch tensor whose memory moved since binding, or whose param's
  // `.grad` is no longer the grad bound to it: the step would write freed memory or update
  // memory the model no longer uses. Called (GIL held) before every pass over the tensors.
  void check() const;

  // Binds grads[i] as param i's grad where it is not the grad bound now (torch handed over a
  // new `.grad`), validated as bind() validates grads; nothing changes on an error. The slots'
  // grad pointers and dtypes are updated: the engine group must take them. Returns whether
  // any grad changed.
  bool rebind_grads(pybind11::sequence grads);

  void rewatch();  // watched, from the views
};

// params[i] and grads[i] pair up; masters[i] is None or param i's fp32 master weights;
// states[i] lists param i's state arrays, named state_names[k] in errors. The params fall
// into param groups of group_sizes[j] consecutive params. Tensors are named by their index
// in the whole list. `engine` is the device type the engine runs on (DLPack: 1 CPU, 2 CUDA).
Binding bind(pybind11::sequence params, pybind11::sequence grads, pybind11::sequence masters,
             pybind11::sequence states, const std::vector<std::string>& state_names,
             const std::vector<int64_t>& group_sizes, int engine);

// The coefficients of one step, one set per param group, after checking the hyperparameters
// and that every group has the state its rule needs.
template <class Rule>
std::vector<typename Rule::Coeffs> step_coeffs(const Binding& b, const std::vector<typename Rule::Hyper>& hypers,
                                               const std::vector<int64_t>& steps) {
  if (hypers.size() != b.group_state.size() || steps.size() != b.group_state.size()) {
    throw std::invalid_argument("one hyperparameter set and one step count per param group are required");
  }
  std::vector<typename Rule::Coeffs> coeffs;
  coeffs.reserve(hypers.size());
  for (size_t j = 0; j < hypers.size(); ++j) {
    const std::string err = Rule::check(hypers[j]);
    if (!err.empty()) throw std::invalid_argument("param group " + std::to_string(j) + ": " + err);
    if (steps[j] < 1) throw std::invalid_argument("step must be >= 1, got " + std::to_string(steps[j]));
    if (b.group_state[j] < Rule::num_state(hypers[j])) {
      throw std::invalid_argument("param group " + std::to_string(j) +
                                  " was bound with fewer state arrays than its hyperparameters need");
    }
    coeffs.push_back(Rule::coeffs(hypers[j], steps[j]));
  }
  return coeffs;
}

}  // namespace fastopt::py_intake
