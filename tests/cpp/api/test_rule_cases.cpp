// Every rule (and its variants, and the step options) against the trajectories the Python API
// produced (rule_cases.inc): replayed through fastopt::Optimizer on every CPU target and through
// the C ABI, compared bit for bit: params, masters, state, grad norms, diagnostics.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <set>
#include <string>

#include "fastopt/c_api.h"
#include "fastopt/optimizer.h"
#include "support/expect.h"
#include "support/rule_case.h"

namespace fastopt_test {
namespace {

// The rule steps of step k where they differ from what the optimizer counts (steps() + 1):
// SGD without momentum keeps its rule at step 1, as Python's SGD does.
bool counts_differ(const StepCase& s, const std::vector<int64_t>& steps) {
  for (size_t j = 0; j < steps.size(); ++j) {
    if (s.rule_steps[j] != steps[j] + 1) return true;
  }
  return false;
}

void expect_final(const RuleCase& c, const CaseMemory& m) {
  for (size_t i = 0; i < c.params.size(); ++i) {
    SCOPED_TRACE("param " + std::to_string(i));
    const ParamCase& p = c.params[i];
    const CaseMemory::Param& got = m.params[i];
    EXPECT_EQ(got.param.bits(), p.final);
    if (p.master) {
      EXPECT_EQ(got.master.bits(), p.master_final);
    }
    ASSERT_EQ(got.state.size(), p.state_final.size());
    for (size_t s = 0; s < got.state.size(); ++s) EXPECT_EQ(got.state[s].bits(), p.state_final[s]) << "state " << s;
  }
}

void expect_same_doubles(const std::vector<double>& got, const std::vector<double>& expected, const char* what) {
  ASSERT_EQ(got.size(), expected.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(same_double(got[i], expected[i])) << what << "[" << i << "]";
}

void expect_diagnostics(const fastopt::Diagnostics& d, const DiagnosticsCase& e) {
  expect_same_doubles(d.grad_norm, e.grad_norm, "grad_norm");
  EXPECT_EQ(d.nonfinite_grads, e.nonfinite_grads);
  expect_same_doubles(d.param_norm, e.param_norm, "param_norm");
  expect_same_doubles(d.update_norm, e.update_norm, "update_norm");
  expect_same_doubles(d.update_ratio, e.update_ratio, "update_ratio");
}

// The case through fastopt::Optimizer: each step's result as Python's, a skipped step writing
// nothing and counting no step, the final memory as Python's.
void run_cpp(const RuleCase& c) {
  CaseMemory m(c);
  fastopt::Optimizer opt(fastopt::rule_id(c.rule), m.groups());
  ASSERT_EQ(opt.num_groups(), c.groups.size());
  for (size_t k = 0; k < c.steps.size(); ++k) {
    SCOPED_TRACE("step " + std::to_string(k));
    const StepCase& e = c.steps[k];
    m.load_grads(k);
    fastopt::StepOptions o = step_options(c, k);
    if (counts_differ(e, opt.steps())) o.rule_steps = e.rule_steps.data();
    const std::vector<Bits> before = m.written();
    const std::vector<int64_t> steps_before = opt.steps();
    const fastopt::StepResult r = opt.step(o);
    EXPECT_EQ(r.skipped, e.skipped);
    ASSERT_EQ(r.grad_norm.has_value(), e.grad_norm.has_value());
    if (e.grad_norm) {
      EXPECT_TRUE(same_double(*r.grad_norm, *e.grad_norm)) << "grad_norm";
    }
    ASSERT_EQ(r.diagnostics.has_value(), e.diagnostics.has_value());
    if (e.diagnostics) expect_diagnostics(*r.diagnostics, *e.diagnostics);
    if (e.skipped) {
      EXPECT_EQ(m.written(), before) << "a skipped step wrote memory";
      EXPECT_EQ(opt.steps(), steps_before) << "a skipped step counted";
    } else {
      for (size_t j = 0; j < steps_before.size(); ++j) EXPECT_EQ(opt.steps()[j], steps_before[j] + 1);
    }
  }
  expect_final(c, m);
}

// The case through the C ABI: hyperparameters set by name, step counts set where the rule's
// count is not the optimizer's, results and diagnostics read back.
void run_c(const RuleCase& c) {
  CaseMemory m(c);
  const std::vector<fastopt_param>& params = m.c_params();
  const std::vector<int64_t> sizes = m.group_sizes();
  fastopt_optimizer* opt = nullptr;
  ASSERT_EQ(fastopt_optimizer_create(c.rule, params.data(), int64_t(params.size()), sizes.data(),
                                     int32_t(sizes.size()), &opt),
            FASTOPT_OK)
      << fastopt_last_error();
  std::unique_ptr<fastopt_optimizer, void (*)(fastopt_optimizer*)> owner(opt, fastopt_optimizer_destroy);
  const int32_t groups = int32_t(c.groups.size());
  for (int32_t j = 0; j < groups; ++j) {
    // All fields in one call, validated together (a group starts at the rule's defaults: LARS's
    // momentum 0.9 needs a state array that a case without momentum does not bind).
    std::vector<const char*> names;
    std::vector<double> values;
    for (const Field& f : c.groups[size_t(j)]) names.push_back(f.name), values.push_back(f.value);
    ASSERT_EQ(fastopt_set_hypers(opt, j, names.data(), values.data(), int32_t(names.size())), FASTOPT_OK)
        << fastopt_last_error();
    for (const Field& f : c.groups[size_t(j)]) {
      double back = -1;
      ASSERT_EQ(fastopt_get_hyper(opt, j, f.name, &back), FASTOPT_OK);
      EXPECT_TRUE(same_double(back, f.value)) << f.name;
    }
  }
  const size_t n = c.params.size();
  for (size_t k = 0; k < c.steps.size(); ++k) {
    SCOPED_TRACE("step " + std::to_string(k));
    const StepCase& e = c.steps[k];
    m.load_grads(k);
    std::vector<int64_t> steps(static_cast<size_t>(groups));
    ASSERT_EQ(fastopt_get_steps(opt, steps.data(), groups), FASTOPT_OK);
    if (counts_differ(e, steps)) {
      std::vector<int64_t> at(e.rule_steps);
      for (int64_t& s : at) --s;
      ASSERT_EQ(fastopt_set_steps(opt, at.data(), groups), FASTOPT_OK) << fastopt_last_error();
    }
    const fastopt_step_options o = c_step_options(c, k);
    fastopt_step_result r{};
    ASSERT_EQ(fastopt_step(opt, &o, &r), FASTOPT_OK) << fastopt_last_error();
    EXPECT_EQ(r.skipped != 0, e.skipped);
    EXPECT_TRUE(same_double(r.grad_norm, e.grad_norm ? *e.grad_norm : NAN)) << "grad_norm";
    if (e.diagnostics) {
      fastopt::Diagnostics d;
      d.grad_norm.resize(n), d.nonfinite_grads.resize(n), d.param_norm.resize(n), d.update_norm.resize(n),
          d.update_ratio.resize(n);
      ASSERT_EQ(fastopt_diagnostics(opt, d.grad_norm.data(), d.nonfinite_grads.data(), d.param_norm.data(),
                                    d.update_norm.data(), d.update_ratio.data()),
                FASTOPT_OK);
      DiagnosticsCase expected = *e.diagnostics;
      if (e.skipped) {  // the C ABI reports NaN where the C++ API has none
        expected.param_norm = expected.update_norm = expected.update_ratio = std::vector<double>(n, NAN);
      }
      expect_diagnostics(d, expected);
    } else {
      EXPECT_EQ(fastopt_diagnostics(opt, nullptr, nullptr, nullptr, nullptr, nullptr), FASTOPT_ERROR_ARGUMENT);
    }
  }
  expect_final(c, m);
}

class RuleCases : public ::testing::TestWithParam<RuleCase> {};

TEST_P(RuleCases, CppApi) { run_cpp(GetParam()); }

TEST_P(RuleCases, CAbi) { run_c(GetParam()); }

// The kernels of every CPU target give the same bits.
TEST_P(RuleCases, CppApiOnEveryIsa) {
  const std::string active = fastopt::cpu_isa();
  for (const char* isa : {"scalar", "avx2", "avx512"}) {
    if (!fastopt::cpu_isa_supported(isa)) continue;
    SCOPED_TRACE(isa);
    fastopt::set_cpu_isa(isa);
    run_cpp(GetParam());
  }
  fastopt::set_cpu_isa(active);
}

INSTANTIATE_TEST_SUITE_P(Python, RuleCases, ::testing::ValuesIn(rule_cases()),
                         [](const ::testing::TestParamInfo<RuleCase>& info) { return std::string(info.param.name); });

// The cases cover what they are meant to: every rule, and each step option acting.
TEST(RuleCaseCoverage, EveryRuleAndOption) {
  std::set<std::string> rules;
  bool scaled = false, clipped = false, clamped = false, skipped = false, diagnostics = false;
  for (const RuleCase& c : rule_cases()) {
    rules.insert(c.rule);
    clipped |= c.options.max_grad_norm > 0;
    clamped |= c.options.clip_value > 0;
    diagnostics |= c.options.diagnostics;
    for (const StepCase& s : c.steps) scaled |= s.grad_scale != 1.0, skipped |= s.skipped;
  }
  EXPECT_EQ(rules.size(), size_t(fastopt::RuleId::probe));  // every registered rule
  EXPECT_TRUE(scaled && clipped && clamped && skipped && diagnostics);
}

}  // namespace
}  // namespace fastopt_test
