// Python arrays bound to a C++ optimizer: each read into a fastopt::Tensor (intake.h) and kept
// alive; the optimizer (fastopt/optimizer.h) validates them. What only Python needs is here:
// PyTorch tensors whose memory torch may move, and params whose `.grad` torch may replace.
#pragma once
#include <pybind11/pybind11.h>

#include <deque>
#include <string>
#include <vector>

#include "fastopt/optimizer.h"
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
  std::vector<std::string> names;  // names[k] names views[k] in errors ("param 3", "master 3")
  std::vector<size_t> param_view, grad_view;  // index in views of param i and of grad i
  std::vector<pybind11::object> params, grads;
  std::vector<ParamGroup> groups;  // the tensors, for the optimizer to bind
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

  void rewatch();  // watched, from the views
};

// Reads the arrays of a group into a Binding: params[i] and grads[i] pair up; masters[i] is
// None or param i's fp32 master weights, remainders[i] None or the low halves of its master
// (fastopt::ParamTensors::remainder), compensations[i] None or its Kahan compensation,
// stochastic[i] whether it rounds stochastically; states[i] lists param i's state arrays. The params
// fall into param groups of group_sizes[j] consecutive params, each given `hyper`. Tensors are
// named by their index in the whole list. `engine` is the device type the engine runs on
// (DLPack: 1 CPU, 2 CUDA). Validation is the optimizer's, when it binds binding.groups.
Binding read(pybind11::sequence params, pybind11::sequence grads, pybind11::object keeps, pybind11::sequence states,
             const std::vector<int64_t>& group_sizes, RuleId rule, int engine);

// `n` empty state lists, for read() of a group bound without state (a mode switch).
inline pybind11::list no_state(size_t n) {
  pybind11::list out;
  for (size_t i = 0; i < n; ++i) out.append(pybind11::list());
  return out;
}

// New grads for a bound group: grads[i] read where it is not the object bound now (torch
// handed over a new `.grad`). Returns the grads as tensors (for the optimizer's set_grads,
// which validates them), the new views in `fresh` (by param index).
std::vector<Tensor> read_grads(const Binding& b, pybind11::sequence grads, int engine,
                               std::vector<std::pair<size_t, View>>& fresh);

// Takes what read_grads read, once the optimizer accepted the grads.
void commit_grads(Binding& b, pybind11::sequence grads, std::vector<std::pair<size_t, View>>& fresh);

}  // namespace fastopt::py_intake
