// The rules by name and their hyperparameters as one type: fastopt::Hyper holds the Hyper
// struct of any registered rule (fastopt/rules/registry.h), so that an optimizer chooses its
// rule at run time and every field can be set by name (the C ABI, the Python bindings).
#pragma once
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "fastopt/rules/registry.h"

namespace fastopt {

// One of the registered rules' Hyper structs; its index is the rule's RuleId.
using Hyper = std::variant<
#define FASTOPT_HYPER_TYPE(id, T) T::Hyper,
    FASTOPT_RULES(FASTOPT_HYPER_TYPE)
#undef FASTOPT_HYPER_TYPE
        std::monostate>;  // (closes the list; never a rule's)

// Calls f(Rule{}) with the rule type registered as `id`; std::invalid_argument for the probe.
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

// The RuleId of a rule's name ("sgd", "adam", ... as in FASTOPT_RULES; "probe" where
// allow_probe); std::invalid_argument("unknown rule 'x'") otherwise.
RuleId rule_id(const std::string& name, bool allow_probe = false);
const char* rule_name(RuleId id);

// The rule whose Hyper struct `h` holds; std::invalid_argument for an empty Hyper.
RuleId rule_of(const Hyper& h);

// The rule's Hyper struct with its defaults (torch.optim's, see each rule header).
Hyper default_hyper(RuleId id);

// "" when every hyperparameter is in range, else the message ("lr must be finite and >= 0,
// got -1").
std::string hyper_error(const Hyper& h);

// The state arrays the rule needs with these hyperparameters (Adam: 2, 3 with amsgrad).
int num_state(const Hyper& h);

// The names of the rule's state arrays, in binding order (max_state of them).
std::vector<std::string> state_names(RuleId id);

// Whether the rule keeps factored state (fastopt/factored.h: one value per row and per column of
// a param of >= 2 dims).
bool factored_state(RuleId id);

// The names of the state arrays the rule binds for a param of `ndim` dims: state_names(id), but
// for a factored rule's param of < 2 dims (its unfactored_state_names).
std::vector<std::string> state_names(RuleId id, int ndim);

// Those names with the shapes of their arrays for a param of `shape`: the param's, but for
// factored state: the param's shape with its last dim 1 (stream 0, one value per row), and with
// its second-to-last dim 1 (stream 1, one per column), as torch's row_var and col_var.
std::vector<std::pair<std::string, std::vector<int64_t>>> state_shapes(RuleId id, const std::vector<int64_t>& shape);

// Bit k set: the rule's state stream k is never negative (8-bit state codes it with the
// unsigned map, at twice the resolution).
unsigned nonnegative_state(RuleId id);

// "" where the rule's state may be stored in 8 bits, else why not.
std::string no_8bit_state(RuleId id);

// Whether the rule evaluates at another point than it trains at (Schedule-Free): its params then
// switch between the two with a fastopt::ModeSwitch.
bool rule_has_eval_point(RuleId id);

// The names of the rule's hyperparameters (the Hyper struct's fields).
std::vector<std::string> field_names(RuleId id);

// Sets or reads a hyperparameter by its field name; a flag reads as 0 or 1 and takes only 0 or
// 1. std::invalid_argument for an unknown name or a flag given another value. Ranges are not
// checked here (hyper_error() does, and Optimizer::set_hyper calls it).
void set_field(Hyper& h, const std::string& name, double value);
double get_field(const Hyper& h, const std::string& name);

}  // namespace fastopt
