// The validated table of a bound optimizer, shared by the CPU and CUDA engines' APIs: every
// check the C++ API (and so the Python and C faces) makes on tensors, hyperparameters, step
// counts and step options, with its message.
#pragma once
#include <string>
#include <type_traits>
#include <vector>

#include "fastopt/element.h"
#include "fastopt/optimizer.h"

namespace fastopt::api {

struct Table {
  RuleId rule = RuleId::probe;
  std::vector<Hyper> hypers;          // one per param group (none for the probe)
  std::vector<ParamTensors> tensors;  // by param, across groups
  std::vector<TensorSlot> slots;      // the engines' view of `tensors`
  std::vector<int> group_state;       // the fewest state arrays any param of group j has
  Device device{};
};

// Whether a rule's step is its count of buffer updates (Sgd::counts_buffer_updates).
template <class R, class = void>
struct counts_buffer_updates : std::false_type {};
template <class R>
struct counts_buffer_updates<R, decltype(void(R::counts_buffer_updates))>
    : std::integral_constant<bool, R::counts_buffer_updates> {};

// `rule` if it names a registered rule; std::invalid_argument otherwise (the probe included).
RuleId check_rule(RuleId rule);

// bind()'s rule when the groups' hyperparameters tell it (std::invalid_argument for no groups).
constexpr RuleId kRuleOfGroups = RuleId::count;

// Validates and lays out `groups` for an engine on device type `engine` (Device::kCPU or
// kCUDA), their state arrays named as `rule`'s (the probe: "state"). Every hyperparameter set
// must be `rule`'s and in range (state counts are checked by set_hyper and each step).
Table bind(std::vector<ParamGroup> groups, RuleId rule, int engine);

// std::out_of_range unless t has a param group `group`.
void check_group(const Table& t, size_t group);

// Throws unless group j of `t` exists and `h` holds hyperparameters it can step with.
void check_hyper(const Table& t, size_t group, const Hyper& h);

// Throws unless group j of `t` exists and `h` holds its rule's hyperparameters, in range (its state
// arrays unchecked: a mode switch binds none).
void check_rule_hyper(const Table& t, size_t group, const Hyper& h);

// A mode switch's coefficients (one Coeffs of `Rule` per group, ModeSwitch::run's checks) and its
// grad transform: none, and the switch's random bits.
template <class Rule>
std::vector<typename Rule::Coeffs> switch_coeffs(const Table& t, const std::vector<Hyper>& hypers,
                                                 const std::vector<int64_t>& steps, bool to_eval) {
  if (hypers.size() != t.hypers.size() || steps.size() != t.hypers.size()) {
    throw std::invalid_argument("a mode switch takes one hyperparameter set and one step count per param group (" +
                                std::to_string(t.hypers.size()) + ")");
  }
  std::vector<typename Rule::Coeffs> out;
  if constexpr (has_eval_point<Rule>::value) {
    for (size_t j = 0; j < hypers.size(); ++j) {
      check_rule_hyper(t, j, hypers[j]);
      if (steps[j] < 0) throw std::invalid_argument("step counts must be >= 0, got " + std::to_string(steps[j]));
    }
    for (size_t j = 0; j < hypers.size(); ++j) {
      out.push_back(Rule::switch_coeffs(std::get<typename Rule::Hyper>(hypers[j]), to_eval, steps[j] > 0));
    }
  }
  return out;
}
GradTransform switch_transform(const std::vector<int64_t>& steps, bool to_eval, uint64_t seed);

// std::invalid_argument unless `rule` has an eval point.
RuleId check_eval_point(RuleId rule);

// Group j's hyperparameters, read or set (checked); param i's tensors. std::out_of_range for
// an index past the end.
const Hyper& hyper(const Table& t, size_t group);
void set_hyper(Table& t, size_t group, const Hyper& h);
const ParamTensors& tensors(const Table& t, size_t param);

// Validates new grads (one per param) as bind() does and takes them into t.tensors and
// t.slots; nothing changes on an error. Returns whether any grad changed.
bool set_grads(Table& t, const std::vector<Tensor>& grads);

// The float32 unscale factor of a loss scale: float(1 / grad_scale), validated.
float unscale_factor(double grad_scale);

// Throws std::invalid_argument for out-of-range step options.
void check_options(const StepOptions& o);

// The step count each group's rule sees: options.rule_steps, or counts[j] + 1; each >= 1.
std::vector<int64_t> rule_steps(const StepOptions& o, const std::vector<int64_t>& counts);

// std::overflow_error where a step count cannot advance (2**63 - 1).
void check_can_count(const std::vector<int64_t>& counts);

// TensorError unless `x` (named `name`) has a known dtype, a shape of non-negative dimensions
// whose element count fits int64, and data wherever it has elements.
void check_tensor(const Tensor& x, const std::string& name);

// Group j's hyperparameters, all or none (each checked as set_hyper checks).
void set_hypers(Table& t, const std::vector<Hyper>& hs);

// std::invalid_argument unless `s` is a well-formed Schedule (segment, milestone and kind
// fields in range), and unless `lr`, a value it gave, is finite and >= 0.
void check_schedule(const Schedule& s);
// std::invalid_argument where the table's rule has no lr (a utility rule) for `what` to set.
void check_has_lr(const Table& t, const char* what);
void check_scheduled_lr(size_t group, double lr, int64_t step);

// Restored step counts: one per group, each >= 0.
void check_steps(const Table& t, const std::vector<int64_t>& steps);

[[noreturn]] void throw_missing_state(size_t group);

// The rule's coefficients for this step, one per group, `Rule` being t.rule's type; throws
// where a group's hyperparameters need more state arrays than were bound.
template <class Rule>
std::vector<typename Rule::Coeffs> step_coeffs(const Table& t, const std::vector<typename Rule::Hyper>& hypers,
                                               const std::vector<int64_t>& steps) {
  std::vector<typename Rule::Coeffs> out;
  out.reserve(hypers.size());
  for (size_t j = 0; j < hypers.size(); ++j) {
    if (t.group_state[j] < Rule::num_state(hypers[j])) throw_missing_state(j);
    out.push_back(Rule::coeffs(hypers[j], steps[j]));
  }
  return out;
}

// t's hyperparameters as `Rule`'s structs (lr replaced where a schedule gives it).
template <class Rule>
std::vector<typename Rule::Hyper> hypers_of(const Table& t) {
  std::vector<typename Rule::Hyper> out;
  out.reserve(t.hypers.size());
  for (const Hyper& h : t.hypers) out.push_back(std::get<typename Rule::Hyper>(h));
  return out;
}

}  // namespace fastopt::api
