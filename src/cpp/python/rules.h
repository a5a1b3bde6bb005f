// The registry's rules as seen from Python, shared by the CPU and CUDA modules: rule names,
// hyperparameter classes, and dispatch from a run-time RuleId to the rule's type.
#pragma once
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "fastopt/rules/registry.h"

namespace fastopt::py_intake {

// The RuleId of a registered rule's name ("probe" only where allow_probe).
inline RuleId rule_id(const std::string& name, bool allow_probe) {
#define FASTOPT_RULE_NAME(id, T) \
  if (name == #id) return RuleId::id;
  FASTOPT_RULES(FASTOPT_RULE_NAME)
#undef FASTOPT_RULE_NAME
  if (allow_probe && name == "probe") return RuleId::probe;
  throw std::invalid_argument("unknown rule '" + name + "'");
}

// Calls f(Rule{}) with the rule type registered as `id`; throws for the probe.
template <class F>
decltype(auto) with_rule(RuleId id, F&& f) {
  switch (id) {
#define FASTOPT_RULE_CASE(id, T) \
  case RuleId::id:               \
    return f(T{});
    FASTOPT_RULES(FASTOPT_RULE_CASE)
#undef FASTOPT_RULE_CASE
    default:
      throw std::invalid_argument("the probe has no hyperparameters");
  }
}

// The Hyper structs of a step, one per param group; TypeError if they are another rule's.
template <class Rule>
std::vector<typename Rule::Hyper> hypers_of(pybind11::sequence hypers) {
  std::vector<typename Rule::Hyper> out;
  for (pybind11::handle h : hypers) {
    if (!pybind11::isinstance<typename Rule::Hyper>(h)) {
      throw pybind11::type_error("these hyperparameters are for another optimizer");
    }
    out.push_back(h.cast<typename Rule::Hyper>());
  }
  return out;
}

// Registers every rule's Hyper struct as <Type>Hyper (AdamHyper, ...): fields by name,
// check() -> error message or "", num_state(); and `rules`, each rule id (its name) mapped to
// its Hyper class in the registry's order: the Python side finds its optimizers through it.
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
}

}  // namespace fastopt::py_intake
