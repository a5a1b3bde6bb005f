// fastopt::Hyper and the rules by name (src/cpp/api/hyper.cpp): names, defaults, fields, state
// arrays, range checks (messages as the Python API gives them).
#include "fastopt/hyper.h"

#include <gtest/gtest.h>

#include <cmath>

#include "fastopt/element.h"
#include "fastopt/rules/registry.h"
#include "support/expect.h"

namespace fastopt_test {
namespace {

const std::vector<std::string> kRules{"sgd",   "adam",  "adagrad",   "adadelta", "rmsprop", "adamax", "nadam",
                                      "radam", "adabelief", "lion", "lars", "lamb",    "adafactor"};

TEST(RuleNames, RoundTripInRegistryOrder) {
  for (size_t k = 0; k < kRules.size(); ++k) {
    const fastopt::RuleId id = fastopt::rule_id(kRules[k]);
    EXPECT_EQ(int(id), int(k)) << kRules[k];
    EXPECT_EQ(fastopt::rule_name(id), kRules[k]);
    EXPECT_EQ(fastopt::rule_of(fastopt::default_hyper(id)), id);
  }
  EXPECT_EQ(fastopt::rule_id("probe", /*allow_probe=*/true), fastopt::RuleId::probe);
  EXPECT_TRUE(throws_exactly<std::invalid_argument>([] { fastopt::rule_of(fastopt::Hyper{std::monostate{}}); },
                                                    "empty hyperparameters (no rule)"));
}

TEST(Defaults, AreTorchs) {
  const fastopt::Hyper adam = fastopt::default_hyper(fastopt::RuleId::adam);
  EXPECT_EQ(fastopt::get_field(adam, "lr"), 1e-3);
  EXPECT_EQ(fastopt::get_field(adam, "beta2"), 0.999);
  EXPECT_EQ(fastopt::get_field(adam, "eps"), 1e-8);
  EXPECT_EQ(fastopt::get_field(fastopt::default_hyper(fastopt::RuleId::adagrad), "lr"), 1e-2);
  EXPECT_EQ(fastopt::get_field(fastopt::default_hyper(fastopt::RuleId::adadelta), "lr"), 1.0);
  EXPECT_EQ(fastopt::get_field(fastopt::default_hyper(fastopt::RuleId::lars), "momentum"), 0.9);
  for (const std::string& r : kRules) EXPECT_EQ(fastopt::hyper_error(fastopt::default_hyper(fastopt::rule_id(r))), "") << r;
}

TEST(Fields, ByName) {
  EXPECT_EQ(fastopt::field_names(fastopt::RuleId::adam),
            (std::vector<std::string>{"lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize", "decoupled"}));
  fastopt::Hyper h = fastopt::default_hyper(fastopt::RuleId::sgd);
  fastopt::set_field(h, "momentum", 0.5);
  fastopt::set_field(h, "nesterov", 1);
  EXPECT_EQ(std::get<fastopt::Sgd::Hyper>(h).momentum, 0.5);
  EXPECT_TRUE(std::get<fastopt::Sgd::Hyper>(h).nesterov);
  EXPECT_EQ(fastopt::get_field(h, "nesterov"), 1.0);
  for (const std::string& r : kRules) {
    const fastopt::Hyper d = fastopt::default_hyper(fastopt::rule_id(r));
    for (const std::string& f : fastopt::field_names(fastopt::rule_id(r))) EXPECT_FALSE(std::isnan(fastopt::get_field(d, f)));
  }
}

TEST(State, NamesAndCounts) {
  EXPECT_EQ(fastopt::state_names(fastopt::RuleId::adam),
            (std::vector<std::string>{"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}));
  EXPECT_EQ(fastopt::state_names(fastopt::RuleId::rmsprop),
            (std::vector<std::string>{"square_avg", "momentum_buffer", "grad_avg"}));
  auto count = [](fastopt::RuleId id, std::vector<std::pair<const char*, double>> fields) {
    fastopt::Hyper h = fastopt::default_hyper(id);
    for (auto [n, v] : fields) fastopt::set_field(h, n, v);
    return fastopt::num_state(h);
  };
  EXPECT_EQ(count(fastopt::RuleId::adam, {}), 2);
  EXPECT_EQ(count(fastopt::RuleId::adam, {{"amsgrad", 1}}), 3);
  EXPECT_EQ(count(fastopt::RuleId::sgd, {}), 0);
  EXPECT_EQ(count(fastopt::RuleId::sgd, {{"momentum", 0.9}}), 1);
  EXPECT_EQ(count(fastopt::RuleId::rmsprop, {{"centered", 1}}), 3);
  EXPECT_EQ(count(fastopt::RuleId::rmsprop, {{"momentum", 0.5}}), 2);
  EXPECT_EQ(count(fastopt::RuleId::lars, {{"momentum", 0}}), 0);
}

// Every state count that num_state() gives, whatever the hyperparameters (each field at its
// default, 0 or 1, in every combination), is one of the rule's state_counts, the counts that the
// CPU kernels compile their plain update for (a count left out would take the general update).
// A factored rule's plain update sees only params of < 2 dims: their unfactored state.
template <class Rule>
void expect_state_counts(fastopt::RuleId id) {
  if (fastopt::factored_state(id)) {
    const int n = int(fastopt::state_names(id, 1).size());
    EXPECT_TRUE(fastopt::takes_state_count<Rule>(n)) << fastopt::rule_name(id) << ": " << n << " unfactored";
    return;
  }
  const std::vector<std::string> fields = fastopt::field_names(id);
  std::vector<int> pick(fields.size(), 0);  // per field: 0 its default, 1 zero, 2 one
  for (;;) {
    fastopt::Hyper h = fastopt::default_hyper(id);
    for (size_t f = 0; f < fields.size(); ++f) {
      if (pick[f]) fastopt::set_field(h, fields[f], pick[f] - 1);
    }
    const int n = fastopt::num_state(h);
    ASSERT_TRUE(fastopt::takes_state_count<Rule>(n)) << fastopt::rule_name(id) << ": num_state " << n;
    size_t f = 0;
    for (; f < pick.size() && pick[f] == 2; ++f) pick[f] = 0;
    if (f == pick.size()) return;
    ++pick[f];
  }
}
TEST(State, CountsAreAmongTheRulesStateCounts) {
#define FASTOPT_EXPECT_COUNTS(id, T) expect_state_counts<fastopt::T>(fastopt::RuleId::id);
  FASTOPT_RULES(FASTOPT_EXPECT_COUNTS)
#undef FASTOPT_EXPECT_COUNTS
}

// A factored rule (Adafactor) names and shapes a param's state by its dims: one value per row
// and per column of a matrix (its last two dims, leading dims batched), one per element of a vector.
TEST(State, FactoredByTheParamsDims) {
  using fastopt::RuleId;
  using Shapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;
  EXPECT_TRUE(fastopt::factored_state(RuleId::adafactor));
  EXPECT_FALSE(fastopt::factored_state(RuleId::adam));
  EXPECT_EQ(fastopt::state_names(RuleId::adafactor), (std::vector<std::string>{"row_var", "col_var"}));
  EXPECT_EQ(fastopt::state_names(RuleId::adafactor, 3), (std::vector<std::string>{"row_var", "col_var"}));
  EXPECT_EQ(fastopt::state_names(RuleId::adafactor, 1), (std::vector<std::string>{"variance"}));
  EXPECT_EQ(fastopt::state_names(RuleId::adafactor, 0), (std::vector<std::string>{"variance"}));
  EXPECT_EQ(fastopt::state_names(RuleId::adam, 1), fastopt::state_names(RuleId::adam));
  EXPECT_EQ(fastopt::state_shapes(RuleId::adafactor, {2, 3, 5}), (Shapes{{"row_var", {2, 3, 1}}, {"col_var", {2, 1, 5}}}));
  EXPECT_EQ(fastopt::state_shapes(RuleId::adafactor, {1, 7}), (Shapes{{"row_var", {1, 1}}, {"col_var", {1, 7}}}));
  EXPECT_EQ(fastopt::state_shapes(RuleId::adafactor, {7}), (Shapes{{"variance", {7}}}));
  EXPECT_EQ(fastopt::state_shapes(RuleId::adafactor, {}), (Shapes{{"variance", {}}}));
  EXPECT_EQ(fastopt::state_shapes(RuleId::lion, {4, 5}), (Shapes{{"exp_avg", {4, 5}}}));
  EXPECT_EQ(fastopt::no_8bit_state(RuleId::adafactor).rfind("its state is already factored", 0), 0u);
}

// hyper_error's messages, as Python's ValueError for the same values.
TEST(Ranges, Messages) {
  auto error = [](fastopt::RuleId id, std::vector<std::pair<const char*, double>> fields) {
    fastopt::Hyper h = fastopt::default_hyper(id);
    for (auto [n, v] : fields) fastopt::set_field(h, n, v);
    return fastopt::hyper_error(h);
  };
  EXPECT_EQ(error(fastopt::RuleId::adam, {{"lr", -1}}), "lr must be finite and >= 0, got -1");
  EXPECT_EQ(error(fastopt::RuleId::adam, {{"lr", NAN}}), "lr must be finite and >= 0, got nan");
  EXPECT_EQ(error(fastopt::RuleId::adam, {{"beta1", 1}}), "beta1 must be in [0, 1), got 1");
  EXPECT_EQ(error(fastopt::RuleId::adam, {{"beta2", -0.5}}), "beta2 must be in [0, 1), got -0.5");
  EXPECT_EQ(error(fastopt::RuleId::adadelta, {{"rho", 2}}), "rho must be in [0, 1], got 2");
  EXPECT_EQ(error(fastopt::RuleId::lamb, {{"max_trust", -1}}), "max_trust must be finite and >= 0, got -1");
  EXPECT_EQ(error(fastopt::RuleId::sgd, {{"lr", 0.1}, {"nesterov", 1}}), "nesterov requires momentum > 0 and dampening = 0");
  EXPECT_EQ(error(fastopt::RuleId::adafactor, {{"beta2_decay", 0.5}}), "beta2_decay must be finite and <= 0, got 0.5");
  EXPECT_EQ(error(fastopt::RuleId::adafactor, {{"d", 0.5}}), "d must be finite and >= 1, got 0.5");
  EXPECT_EQ(error(fastopt::RuleId::adafactor, {{"eps2", -1}}), "eps2 must be finite and >= 0, got -1");
  EXPECT_EQ(error(fastopt::RuleId::adafactor, {{"eps1", -1}}), "");  // (eps1_from_dtype: eps1 unused)
  EXPECT_EQ(error(fastopt::RuleId::adafactor, {{"eps1", -1}, {"eps1_from_dtype", 0}}),
            "eps1 must be finite and >= 0, got -1");
}

}  // namespace
}  // namespace fastopt_test
