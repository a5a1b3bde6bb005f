// The registry's rules as seen from Python, shared by the CPU and CUDA modules: the
// hyperparameter classes, and their conversion to fastopt::Hyper.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "fastopt/element.h"
#include "fastopt/optimizer.h"

namespace fastopt::py_intake {

// A step's hyperparameter structs (one per param group) as fastopt::Hyper values; TypeError if
// they are another rule's.
inline std::vector<Hyper> hypers_of(RuleId rule, pybind11::sequence hypers) {
  return with_rule(rule, [&](auto r) {
    using H = typename decltype(r)::Hyper;
    std::vector<Hyper> out;
    for (pybind11::handle h : hypers) {
      if (!pybind11::isinstance<H>(h)) throw pybind11::type_error("these hyperparameters are for another optimizer");
      out.push_back(h.cast<H>());
    }
    return out;
  });
}

// Gives each param group of `opt` (an Optimizer or CudaOptimizer) its hyperparameters for the
// next step (all or none), `hypers` holding one per group, as `steps` does where given.
template <class Opt>
void set_hypers(Opt& opt, pybind11::sequence hypers, const std::vector<int64_t>* steps) {
  const std::vector<Hyper> hs = hypers_of(opt.rule(), hypers);
  if (hs.size() != opt.num_groups() || (steps && steps->size() != opt.num_groups())) {
    throw std::invalid_argument("one hyperparameter set and one step count per param group are required");
  }
  opt.set_hypers(hs);
}

// The step options the modules' step() takes, in the C++ API's struct.
inline StepOptions step_options(double grad_scale, float clip_value, double max_grad_norm, bool skip_nonfinite,
                                bool grad_norm, bool diagnostics, const std::vector<int64_t>* steps) {
  StepOptions o;
  o.grad_scale = grad_scale;
  o.clip_value = clip_value;
  o.max_grad_norm = max_grad_norm;
  o.skip_nonfinite = skip_nonfinite;
  o.grad_norm = grad_norm;
  o.diagnostics = diagnostics;
  o.rule_steps = steps ? steps->data() : nullptr;
  return o;
}

// Registers every rule's Hyper struct as <Type>Hyper (AdamHyper, ...): fields by name,
// check() -> error message or "", num_state(); and `rules`, each rule id (its name) mapped to
// its Hyper class in the registry's order: the Python side finds its optimizers through it
// (those not in `utility_rules`).
inline void bind_hypers(pybind11::module_& m) {
  namespace py = pybind11;
  auto bind = [&m](auto rule, const char* cls_name) {
    using Rule = decltype(rule);
    using H = typename Rule::Hyper;
    py::class_<H> c(m, cls_name);
    c.def(py::init<>());
    Rule::fields([&c](const char* name, auto member) { c.def_readwrite(name, member); });
    c.def("check", [](const H& h) { return Rule::check(h); });
    c.def("num_state", [](const H& h) { return Rule::num_state(h); });
  };
  py::dict rules;
#define FASTOPT_RULE_BIND(id, T) \
  bind(T{}, #T "Hyper");         \
  rules[#id] = m.attr(#T "Hyper");
  FASTOPT_RULES(FASTOPT_RULE_BIND)
#undef FASTOPT_RULE_BIND
  m.attr("rules") = rules;
  py::list utilities;  // the rules that are not optimizers (registry.h)
#define FASTOPT_RULE_UTILITY(id, T) utilities.append(#id);
  FASTOPT_UTILITY_RULES(FASTOPT_RULE_UTILITY)
#undef FASTOPT_RULE_UTILITY
  m.attr("utility_rules") = py::tuple(utilities);
  py::dict names;  // each rule's state arrays, in binding order
#define FASTOPT_RULE_STATE(id, T) names[#id] = py::tuple(py::cast(state_names(RuleId::id)));
  FASTOPT_RULES(FASTOPT_RULE_STATE)
#undef FASTOPT_RULE_STATE
  m.attr("state_names") = names;
  py::set factored;  // the rules with factored state (fastopt/factored.h)
#define FASTOPT_RULE_FACTORED(id, T) \
  if (is_factored<T>::value) factored.add(py::str(#id));
  FASTOPT_RULES(FASTOPT_RULE_FACTORED)
#undef FASTOPT_RULE_FACTORED
  m.attr("factored") = factored;
  m.def(
      "state_shapes",
      [](const std::string& rule, const std::vector<int64_t>& shape) { return state_shapes(rule_id(rule), shape); },
      py::arg("rule"), py::arg("shape"),
      "The names and shapes of the state arrays a param of `shape` binds, in binding order "
      "(fastopt::state_shapes: a factored rule's per-row and per-column state, or its vectors')");
  py::dict signs;  // each rule's state arrays that are never negative (8-bit: the unsigned map)
#define FASTOPT_RULE_SIGNS(id, T) signs[#id] = nonnegative_state(RuleId::id);
  FASTOPT_RULES(FASTOPT_RULE_SIGNS)
#undef FASTOPT_RULE_SIGNS
  m.attr("nonnegative_state") = signs;
  py::dict read_only;  // each rule's state arrays that its update only reads (bit k: stream k)
#define FASTOPT_RULE_READ_ONLY(id, T) read_only[#id] = read_only_state<T>::value;
  FASTOPT_RULES(FASTOPT_RULE_READ_ONLY)
#undef FASTOPT_RULE_READ_ONLY
  m.attr("read_only_state") = read_only;
  py::dict sums;  // each rule's per-tensor sums (a two-pass rule's first pass; 0: one pass)
#define FASTOPT_RULE_SUMS(id, T) sums[#id] = num_sums<T>::value;
  FASTOPT_RULES(FASTOPT_RULE_SUMS)
#undef FASTOPT_RULE_SUMS
  m.attr("num_sums") = sums;
  py::dict eval_points;  // whether each rule evaluates at another point than it trains at (ModeSwitch)
#define FASTOPT_RULE_EVAL(id, T) eval_points[#id] = has_eval_point<T>::value;
  FASTOPT_RULES(FASTOPT_RULE_EVAL)
#undef FASTOPT_RULE_EVAL
  m.attr("eval_point") = eval_points;
}

}  // namespace fastopt::py_intake
