// A group bound from Python objects: validates every tensor once (dtype, layout, shape,
// writability, device, overlap) and keeps the arrays alive for the group's lifetime.
#pragma once
#include <pybind11/pybind11.h>

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "../cpu/group.h"
#include "intake.h"

namespace fastopt::py_intake {

class BoundGroup {
 public:
  // params[i] and grads[i] pair up; masters[i] is None or param i's fp32 master weights;
  // states[i] lists param i's state arrays, named state_names[k] in errors. The params
  // fall into param groups of group_sizes[j] consecutive params, each stepped with its
  // own hyperparameters. Tensors are named by their index in the whole list.
  BoundGroup(cpu::RuleId rule, pybind11::sequence params, pybind11::sequence grads,
             pybind11::sequence masters, pybind11::sequence states,
             std::vector<std::string> state_names, std::vector<int64_t> group_sizes);

  // One step: hypers[j] and steps[j] (1-based update counts) for param group j.
  template <class Rule>
  void step(const std::vector<typename Rule::Hyper>& hypers, const std::vector<int64_t>& steps,
            cpu::RuleId id);

  // The bandwidth probe over this group's streams (a group bound with rule "probe").
  void probe();

  const cpu::Group& group() const { return *group_; }

 private:
  std::deque<View> views_;  // a deque: growing it never moves the views bound so far
  std::unique_ptr<cpu::Group> group_;
  std::vector<int> group_state_;  // the fewest state arrays any param of group j has
};

}  // namespace fastopt::py_intake
