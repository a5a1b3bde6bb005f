// The cases of rule_cases.inc (written by tests/cpp/make_rule_cases.py from the Python API) and
// the memory to replay one: buffers at the case's initial values, described as param groups
// (C++ API) or fastopt_param lists (C ABI).
#pragma once
#include <cmath>
#include <deque>
#include <optional>
#include <ostream>
#include <vector>

#include "fastopt/c_api.h"
#include "fastopt/optimizer.h"
#include "support/buffer.h"

namespace fastopt_test {

struct Field {
  const char* name;
  double value;  // flags: 0 or 1
};

struct Options {
  double max_grad_norm;
  float clip_value;
  bool skip_nonfinite, grad_norm, diagnostics;
};

struct ParamCase {
  size_t group;
  std::vector<int64_t> shape;
  fastopt::DType param_dtype, grad_dtype;
  bool master;
  Bits init, master_init;
  std::vector<Bits> state_init;  // the bound state arrays, in state_names order
  std::vector<Bits> grads;       // at each step
  Bits final, master_final;
  std::vector<Bits> state_final;
};

struct DiagnosticsCase {
  std::vector<double> grad_norm;
  std::vector<int64_t> nonfinite_grads;
  std::vector<double> param_norm, update_norm, update_ratio;  // empty for a skipped step
};

struct StepCase {
  std::vector<int64_t> rule_steps;  // the step count each group's rule saw in Python
  double grad_scale;
  bool skipped;
  std::optional<double> grad_norm;
  std::optional<DiagnosticsCase> diagnostics;
};

struct RuleCase {
  const char* name;
  const char* rule;
  std::vector<std::vector<Field>> groups;  // each group's hyperparameters, by field name
  Options options;
  std::vector<ParamCase> params;
  std::vector<StepCase> steps;
};

// gtest prints a case by its name.
inline void PrintTo(const RuleCase& c, std::ostream* os) { *os << c.name; }

// The generated cases (rule_cases.inc).
const std::vector<RuleCase>& rule_cases();

// A case's hyperparameters for group j: the rule's defaults with the case's fields set.
fastopt::Hyper case_hyper(const RuleCase& c, size_t group);

// A case's tensors in memory, at their initial values: fp32 masters are widened from the
// params (fastopt::widen), state arrays hold the case's initial values.
class CaseMemory {
 public:
  explicit CaseMemory(const RuleCase& c);

  // The param groups over this memory, with the case's hyperparameters.
  std::vector<fastopt::ParamGroup> groups();
  // The same for the C ABI (valid while this object lives), and the group sizes.
  const std::vector<fastopt_param>& c_params();
  std::vector<int64_t> group_sizes() const;

  // Writes the grads of step k.
  void load_grads(size_t k);
  // Every buffer a step may write (params, masters, state), as bits.
  std::vector<Bits> written() const;

  struct Param {
    Buffer param, grad, master;
    std::vector<Buffer> state;
    std::vector<fastopt_tensor> c_state;
  };
  std::deque<Param> params;  // (a deque: buffers never move)

 private:
  const RuleCase& case_;
  std::vector<fastopt_param> c_params_;
};

// The options of step k of a case (rule_steps left null).
fastopt::StepOptions step_options(const RuleCase& c, size_t k);
fastopt_step_options c_step_options(const RuleCase& c, size_t k);

}  // namespace fastopt_test
