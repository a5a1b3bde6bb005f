#include "fastopt/hyper.h"

#include "fastopt/element.h"

#include <cmath>
#include <iterator>
#include <sstream>
#include <type_traits>

namespace fastopt {

RuleId rule_id(const std::string& name, bool allow_probe) {
#define FASTOPT_RULE_NAME(id, T) \
  if (name == #id) return RuleId::id;
  FASTOPT_RULES(FASTOPT_RULE_NAME)
#undef FASTOPT_RULE_NAME
  if (allow_probe && name == "probe") return RuleId::probe;
  throw std::invalid_argument("unknown rule '" + name + "'");
}

const char* rule_name(RuleId id) {
  switch (id) {
#define FASTOPT_RULE_STR(id, T) \
  case RuleId::id:              \
    return #id;
    FASTOPT_RULES(FASTOPT_RULE_STR)
#undef FASTOPT_RULE_STR
    default:
      return "probe";
  }
}

RuleId rule_of(const Hyper& h) {
  if (std::holds_alternative<std::monostate>(h)) throw std::invalid_argument("empty hyperparameters (no rule)");
  return RuleId(h.index());
}

Hyper default_hyper(RuleId id) {
  return with_rule(id, [](auto rule) { return Hyper(typename decltype(rule)::Hyper{}); });
}

// f(Rule{}, the Rule::Hyper held by h).
template <class H, class F>
decltype(auto) visit_rule(H& h, F&& f) {
  return with_rule(rule_of(h), [&](auto rule) -> decltype(auto) {
    return f(rule, std::get<typename decltype(rule)::Hyper>(h));
  });
}

std::string hyper_error(const Hyper& h) {
  return visit_rule(h, [](auto rule, const auto& x) { return decltype(rule)::check(x); });
}

int num_state(const Hyper& h) {
  return visit_rule(h, [](auto rule, const auto& x) { return decltype(rule)::num_state(x); });
}

std::vector<std::string> state_names(RuleId id) {
  return with_rule(id, [](auto rule) {
    using R = decltype(rule);
    std::vector<std::string> names;
    for (const char* n : R::state_names) {
      if (*n) names.push_back(n);  // (a rule without state names "")
    }
    return names;
  });
}

bool factored_state(RuleId id) {
  return with_rule(id, [](auto rule) { return is_factored<decltype(rule)>::value; });
}

std::vector<std::string> state_names(RuleId id, int ndim) {
  return with_rule(id, [&](auto rule) {
    using R = decltype(rule);
    if constexpr (is_factored<R>::value) {
      if (ndim < 2) return std::vector<std::string>(std::begin(R::unfactored_state_names), std::end(R::unfactored_state_names));
    }
    return std::vector<std::string>(std::begin(R::state_names), std::end(R::state_names));
  });
}

std::vector<std::pair<std::string, std::vector<int64_t>>> state_shapes(RuleId id, const std::vector<int64_t>& shape) {
  const bool factor = factored_state(id) && shape.size() >= 2;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (const std::string& n : state_names(id, int(shape.size()))) {
    std::vector<int64_t> s = shape;
    if (factor) s[s.size() - 1 - out.size()] = 1;  // stream 0: per row; stream 1: per column
    out.emplace_back(n, s);
  }
  return out;
}

template <class R, class = void>
struct nonnegative : std::integral_constant<unsigned, 0> {};
template <class R>
struct nonnegative<R, decltype(void(R::nonnegative_state))> : std::integral_constant<unsigned, R::nonnegative_state> {};

unsigned nonnegative_state(RuleId id) {
  return with_rule(id, [](auto rule) { return nonnegative<decltype(rule)>::value; });
}

template <class R, class = void>
struct why_not_8bit {
  static constexpr const char* value = "";
};
template <class R>
struct why_not_8bit<R, decltype(void(R::no_8bit_state))> {
  static constexpr const char* value = R::no_8bit_state;
};

std::string no_8bit_state(RuleId id) {
  return with_rule(id, [](auto rule) { return std::string(why_not_8bit<decltype(rule)>::value); });
}

bool rule_has_eval_point(RuleId id) {
  return with_rule(id, [](auto rule) { return fastopt::has_eval_point<decltype(rule)>::value; });
}

std::vector<std::string> field_names(RuleId id) {
  return with_rule(id, [](auto rule) {
    std::vector<std::string> out;
    decltype(rule)::fields([&out](const char* name, auto) { out.push_back(name); });
    return out;
  });
}

namespace {

[[noreturn]] void unknown_field(const Hyper& h, const std::string& name) {
  throw std::invalid_argument(std::string(rule_name(rule_of(h))) + " has no hyperparameter '" + name + "'");
}

}  // namespace

void set_field(Hyper& h, const std::string& name, double value) {
  bool found = false;
  visit_rule(h, [&](auto rule, auto& x) {
    decltype(rule)::fields([&](const char* field, auto member) {
      if (name != field) return;
      found = true;
      using T = std::remove_reference_t<decltype(x.*member)>;
      if constexpr (std::is_same_v<T, bool>) {
        if (value != 0 && value != 1) {
          std::ostringstream s;
          s << name << " is a flag: it takes 0 or 1, got " << value;
          throw std::invalid_argument(s.str());
        }
        x.*member = value == 1;
      } else {
        x.*member = T(value);
      }
    });
  });
  if (!found) unknown_field(h, name);
}

double get_field(const Hyper& h, const std::string& name) {
  double out = NAN;
  bool found = false;
  visit_rule(h, [&](auto rule, const auto& x) {
    decltype(rule)::fields([&](const char* field, auto member) {
      if (name == field) found = true, out = double(x.*member);
    });
  });
  if (!found) unknown_field(h, name);
  return out;
}

}  // namespace fastopt
